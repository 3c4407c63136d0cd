"""Synthetic H&E tiles with labelled nuclei in the PanNuke fold layout and the CoNSeP layout.

Layout written::

    <out>/pannuke/Fold 1/images/fold1/images.npy   (N, 256, 256, 3) float64, 0-255 (as released)
    <out>/pannuke/Fold 1/images/fold1/types.npy    (N,) tissue names, e.g. "Breast"
    <out>/pannuke/Fold 1/masks/fold1/masks.npy     (N, 256, 256, 6) float64: channels 0-4 instance ids of
                                                   Neoplastic, Inflammatory, Connective, Dead, Epithelial; 5 background
    <out>/pannuke/Fold 2/...
    <out>/consep/CoNSeP/Train/Images/train_1.png   RGBA (first image) or RGB uint8
    <out>/consep/CoNSeP/Train/Labels/train_1.mat   inst_map, type_map (H, W); inst_type (K, 1) in 1..7;
                                                   inst_centroid (K, 2) as (x, y)
    <out>/consep/CoNSeP/Test/...

Tiles look like H&E: pink stroma with fibres, a gland (white lumen, epithelial ring), a tumour nest and
inflammatory clusters. The classes differ as in tissue: inflammatory nuclei small, round, with clumped chromatin,
in clusters; neoplastic larger, pleomorphic and vesicular (pale centre, dark rim, nucleolus), packed in a nest;
connective (fibroblast) elongated spindles aligned with the fibres; dead cells fragmented specks in a pink halo
next to the tumour; epithelial ovals in a ring around a lumen. Hematoxylin density is drawn from overlapping ranges
for every class, with a per-tile stain shift, and sizes overlap, so mean colour + area classify only about half of
the nuclei (issue #15: the class must come from shape, texture and neighbourhood). CoNSeP adds muscle (long, thick,
blunt) and endothelial (thin, flat, lining a vessel) nuclei.
PanNuke instance ids are unique per tile but not consecutive (as in the release).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

PANNUKE_CLASSES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")  # mask channels 0-4
CONSEP_TYPES = {1: "dead", 2: "inflammatory", 3: "epithelial", 4: "neoplastic", 5: "connective", 6: "muscle",
                7: "endothelial"}  # CoNSeP type id -> drawing style (1 "other" drawn as apoptotic debris)
TISSUES = ("Breast", "Colon", "Lung")

# radius: (lo, hi) of the minor semi-axis in px at 256-px PanNuke scale; elong: major/minor; irregular: boundary
# harmonics amplitude; dark: (lo, hi) hematoxylin density, mixed between `PALE` and `DARK`; fragments: pieces per
# nucleus (karyorrhexis). Sizes and densities overlap between classes on purpose (issue #15 "Quality": the class must
# not be readable from mean colour + area alone); what separates them is shape (spindle vs round vs irregular vs
# fragmented), chromatin texture (vesicular rim + nucleolus, clumped specks) and neighbourhood (nest, gland ring
# around a lumen, fibre-aligned stroma, eosinophilic halo).
STYLES = {
    "neoplastic": dict(radius=(4.6, 7.0), elong=(1.0, 1.5), irregular=0.16, dark=(0.35, 0.8), vesicular=True),
    "inflammatory": dict(radius=(3.4, 5.2), elong=(1.0, 1.12), irregular=0.03, dark=(0.4, 0.85), clumped=True),
    "connective": dict(radius=(2.2, 3.2), elong=(2.8, 4.4), irregular=0.04, dark=(0.35, 0.8)),
    "dead": dict(radius=(1.4, 2.2), elong=(1.0, 1.2), irregular=0.05, dark=(0.45, 0.9), fragments=(2, 4)),
    "epithelial": dict(radius=(3.6, 5.4), elong=(1.2, 1.5), irregular=0.06, dark=(0.35, 0.8)),
    "muscle": dict(radius=(2.6, 3.4), elong=(5.0, 7.0), irregular=0.02, dark=(0.3, 0.7)),
    "endothelial": dict(radius=(1.6, 2.2), elong=(4.0, 5.5), irregular=0.03, dark=(0.4, 0.8)),
}
PALE, DARK = np.array([150.0, 100.0, 180.0]), np.array([35.0, 10.0, 75.0])  # hematoxylin at density 0 and 1


def _shape(rng, style: dict, angle: float) -> np.ndarray:
    """Boolean (s, s) mask of one nucleus centred in its patch."""
    b = rng.uniform(*style["radius"])
    a = b * rng.uniform(*style["elong"])
    pieces = int(rng.integers(*style["fragments"])) + 1 if "fragments" in style else 1
    half = int(np.ceil(a * (1 + style["irregular"] * 2))) + (6 if pieces > 1 else 1)
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
    mask = np.zeros(yy.shape, bool)
    harmonics = rng.normal(0, style["irregular"], 3)
    phases = rng.uniform(0, 2 * np.pi, 3)
    for _ in range(pieces):
        oy, ox = (rng.uniform(-4.5, 4.5, 2) if pieces > 1 else (0.0, 0.0))
        y, x = yy - oy, xx - ox
        u = x * np.cos(angle) + y * np.sin(angle)
        v = -x * np.sin(angle) + y * np.cos(angle)
        theta = np.arctan2(v, u)
        wobble = 1 + sum(h * np.cos((k + 2) * theta + p) for k, (h, p) in enumerate(zip(harmonics, phases)))
        mask |= (u / a) ** 2 + (v / b) ** 2 <= wobble ** 2
    return mask


class _Scene:
    """An image being drawn: RGB float canvas, instance map, per-instance style, and an occupancy check."""

    def __init__(self, rng, size: int):
        self.rng, self.size = rng, size
        self.fibre = rng.uniform(0, np.pi)
        noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), (1.0, 6.0))
        noise = ndimage.rotate(noise, np.degrees(self.fibre), reshape=False, mode="wrap")
        stroma = np.array([236.0, 168.0, 205.0]) + rng.normal(0, 4, 3)
        self.rgb = stroma + noise[..., None] * np.array([10.0, 22.0, 12.0]) * 3
        self.instances = np.zeros((size, size), np.int32)
        self.styles: dict[int, str] = {}
        self.stain = rng.normal(0, 10, 3)  # per-tile hematoxylin shift (staining batches differ)

    def paint(self, region: np.ndarray, colour, alpha=1.0):
        self.rgb[region] = (1 - alpha) * self.rgb[region] + alpha * np.asarray(colour, float)

    def nucleus(self, style_name: str, cy: float, cx: float, angle: float | None = None) -> bool:
        style, rng = STYLES[style_name], self.rng
        mask = _shape(rng, style, rng.uniform(0, np.pi) if angle is None else angle)
        half = mask.shape[0] // 2
        y0, x0 = int(round(cy)) - half, int(round(cx)) - half
        ys, xs = np.nonzero(mask)
        ys, xs = ys + y0, xs + x0
        inside = (ys >= 0) & (ys < self.size) & (xs >= 0) & (xs < self.size)
        ys, xs = ys[inside], xs[inside]
        if ys.size < 4:
            return False
        y_lo, y_hi, x_lo, x_hi = max(ys.min() - 1, 0), ys.max() + 2, max(xs.min() - 1, 0), xs.max() + 2
        if self.instances[y_lo:y_hi, x_lo:x_hi].any():  # keep nuclei apart by at least one pixel
            return False
        label = len(self.styles) + 1
        self.instances[ys, xs] = label
        self.styles[label] = style_name
        density = rng.uniform(*style["dark"])
        colour = (1 - density) * PALE + density * DARK + self.stain + rng.normal(0, 6, 3)
        if style_name == "dead":  # eosinophilic halo of an apoptotic cell
            halo = ndimage.binary_dilation(self.instances == label, iterations=3) & (self.instances == 0)
            self.paint(halo, (235, 120, 175), 0.7)
        self.rgb[ys, xs] = colour
        local = self.instances[y_lo:y_hi, x_lo:x_hi] == label
        if style.get("vesicular"):  # open chromatin: paler centre, darker rim, a dark nucleolus; mean ~ unchanged
            depth = ndimage.distance_transform_edt(local)
            region = self.rgb[y_lo:y_hi, x_lo:x_hi]
            region[local & (depth <= 1.5)] = colour - 0.5 * (colour - DARK)
            region[local & (depth > 1.5)] = colour + 0.45 * (255 - colour)
            peak = np.unravel_index(np.argmax(depth), depth.shape)
            region[max(peak[0] - 1, 0):peak[0] + 1, max(peak[1] - 1, 0):peak[1] + 1][
                local[max(peak[0] - 1, 0):peak[0] + 1, max(peak[1] - 1, 0):peak[1] + 1]] = DARK + self.stain
        if style.get("clumped"):  # condensed chromatin: dark and pale specks, same mean
            region = self.rgb[y_lo:y_hi, x_lo:x_hi]
            specks = rng.choice([-1.0, 1.0], size=local.shape)[..., None] * 0.3 * (colour - DARK)
            region[local] = (region + specks)[local]
        return True

    def scatter(self, style_name: str, n: int, cy, cx, spread, angle=None, tries=6):
        for _ in range(n):
            for _ in range(tries):
                if self.nucleus(style_name, *(self.rng.normal((cy, cx), spread)), angle=angle):
                    break

    def gland(self, style_name: str, cy, cx, radius):
        yy, xx = np.mgrid[:self.size, :self.size]
        r = np.hypot(yy - cy, xx - cx)
        self.paint(r < radius + 12, (215, 150, 200), 0.8)  # epithelial cytoplasm
        self.paint(r < radius, (246, 238, 244))  # lumen
        count = max(int(2 * np.pi * (radius + 7) / 11), 6)
        for k in range(count):
            t = 2 * np.pi * k / count + self.rng.normal(0, 0.04)
            self.nucleus(style_name, cy + (radius + 7) * np.sin(t), cx + (radius + 7) * np.cos(t), angle=t)

    def finish(self) -> np.ndarray:
        rgb = ndimage.gaussian_filter(self.rgb, (0.7, 0.7, 0)) + self.rng.normal(0, 3, self.rgb.shape)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def render_scene(rng: np.random.Generator, size: int, extra_styles: bool = False):
    """One H&E-like image. Returns ``(rgb (S, S, 3) uint8, instances (S, S) int32, {instance id: style})``."""
    scene, f = _Scene(rng, size), size / 256.0
    for _ in range(max(1, round(f * f))):  # the same structures per 256x256 area
        s = lambda: rng.uniform(0.15, 0.85) * size  # noqa: E731
        scene.gland("epithelial", s(), s(), rng.uniform(14, 22))
        nest = (s(), s())
        scene.paint(np.hypot(*np.mgrid[:size, :size] - np.array(nest)[:, None, None]) < 34, (200, 140, 195), 0.5)
        scene.scatter("neoplastic", 14, *nest, 18)
        scene.scatter("dead", 3, *nest, 26)
        for _ in range(2):
            scene.scatter("inflammatory", 8, s(), s(), 9)
        scene.scatter("inflammatory", 5, size / 2, size / 2, size / 3)
        scene.scatter("connective", 10, size / 2, size / 2, size / 3, angle=scene.fibre)
        if extra_styles:
            scene.scatter("muscle", 5, s(), s(), 20, angle=scene.fibre + np.pi / 2)
            vessel = (s(), s())
            scene.paint(np.hypot(*np.mgrid[:size, :size] - np.array(vessel)[:, None, None]) < 7, (225, 60, 90))
            for k in range(4):
                t = np.pi * k / 2
                scene.nucleus("endothelial", vessel[0] + 10 * np.sin(t), vessel[1] + 10 * np.cos(t),
                              angle=t + np.pi / 2)
    return scene.finish(), scene.instances, scene.styles


def _write_pannuke_fold(fold_dir: Path, fold: int, tiles: list, tissues: list[str]) -> None:
    images = np.stack([t[0] for t in tiles]).astype(np.float64)
    masks = np.zeros(images.shape[:3] + (6,), np.float64)
    for n, (_, inst, styles) in enumerate(tiles):
        for label, style in styles.items():  # ids unique in the tile, not consecutive, as in the release
            masks[n, ..., PANNUKE_CLASSES.index(style)][inst == label] = 3 * label + 100
        masks[n, ..., 5] = inst == 0
    image_dir = fold_dir / "images" / f"fold{fold}"
    mask_dir = fold_dir / "masks" / f"fold{fold}"
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    np.save(image_dir / "images.npy", images)
    np.save(image_dir / "types.npy", np.asarray(tissues))
    np.save(mask_dir / "masks.npy", masks)


def _write_consep_image(root: Path, split: str, index: int, rgb, inst, styles, rgba: bool) -> Path:
    from PIL import Image
    from scipy.io import savemat

    by_style = {v: k for k, v in CONSEP_TYPES.items()}
    types = np.asarray([by_style[styles[k]] for k in range(1, len(styles) + 1)], np.int32)
    centroids = ndimage.center_of_mass(np.ones_like(inst), inst, range(1, len(styles) + 1))
    (root / split / "Images").mkdir(parents=True, exist_ok=True)
    (root / split / "Labels").mkdir(parents=True, exist_ok=True)
    name = f"{split.lower()}_{index}"
    pixels = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]) if rgba else rgb
    Image.fromarray(pixels).save(root / split / "Images" / f"{name}.png")
    type_map = np.concatenate([[0], types])[inst]
    savemat(root / split / "Labels" / f"{name}.mat", do_compression=True, mdict={
        "inst_map": inst.astype(np.float64), "type_map": type_map.astype(np.int32),
        "inst_type": types.astype(np.float64)[:, None],
        "inst_centroid": np.asarray(centroids, np.float64)[:, ::-1].reshape(-1, 2),  # (x, y)
    })
    with open(root / split / "Labels" / f"{name}.mat", "r+b") as f:  # savemat stamps the time: make it fixed
        f.write(b"MATLAB 5.0 MAT-file, written by medtf.synth.nuclei_he".ljust(116))
    return root / split / "Images" / f"{name}.png"


def generate_nuclei_he(out_dir, cases: int = 8, seed: int = 0, tile_size: int = 256, folds: int = 2,
                       consep_images: int = 2, consep_size: int = 1000) -> list[Path]:
    """Write ``cases`` PanNuke-style tiles over ``folds`` folds and ``consep_images`` CoNSeP-style images.

    Args:
        out_dir: destination; ``pannuke/`` and ``consep/`` are created below it.
        cases: number of PanNuke tiles (dealt round-robin over the folds; within a fold, tissues cycle through
            `TISSUES`, so every tissue recurs in several folds).
        seed: random seed; the same seed gives identical files.
        tile_size: PanNuke tile side (256 in the release).
        folds: number of PanNuke folds (3 in the release).
        consep_images: number of CoNSeP images (the first ~half in ``Train``, the rest in ``Test``).
        consep_size: CoNSeP image side (1000 in the release).

    Returns:
        The fold folders and the CoNSeP image files.

    Example:
        >>> generate_nuclei_he("synth", cases=8, consep_images=2, consep_size=400)
    """
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    written = []
    folds = max(1, min(folds, cases))
    for fold in range(1, folds + 1):
        indices = list(range(fold - 1, cases, folds))
        tiles = [render_scene(rng, tile_size) for _ in indices]
        fold_dir = out / "pannuke" / f"Fold {fold}"
        _write_pannuke_fold(fold_dir, fold, tiles, [TISSUES[j % len(TISSUES)] for j in range(len(indices))])
        written.append(fold_dir)
    consep = out / "consep" / "CoNSeP"
    n_train = (consep_images + 1) // 2
    for k in range(consep_images):
        split, index = ("Train", k + 1) if k < n_train else ("Test", k - n_train + 1)
        rgb, inst, styles = render_scene(rng, consep_size, extra_styles=True)
        written.append(_write_consep_image(consep, split, index, rgb, inst, styles, rgba=(k == 0)))
    return written
