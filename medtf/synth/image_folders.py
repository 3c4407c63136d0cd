"""Synthetic brain MRI slices with and without a tumour in the Kaggle "Brain MRI Images for Brain Tumor Detection"
layout, for `medtf convert image-folders`.

Layout written (as the Kaggle download: no patient IDs, mixed names, sizes, formats and colour modes)::

    <out>/yes/Y1.jpg  Y2.JPG  Y3.png ...     tumour
    <out>/no/N1.jpg   no 2.jpg  N3.png ...   no tumour

Each slice: a rotated elliptical head on a black background (a black margin of random width), skull and scalp
rings, grey matter with smooth texture, a white-matter core, two dark ventricles, a symmetric pair of bright
spots (choroid-plexus-like distractors in every image), a random global gain (0.6-1.35) and offset, blur and
noise.

The class is carried by **morphology and texture**, the same cue family as the prostate and lung generators
(`medtf.synth.morphology`; irregular margins and heterogeneity are malignancy signs across organs):

* ``yes``: a tumour inside the brain with a spiculated, lobulated margin and a heterogeneous interior, often with an
  oedema halo and sometimes a dark necrotic core;
* ``no``: nothing, or (in `BENIGN_LESION_SHARE` of the images) a smooth, homogeneous round/ellipsoid lesion (a
  cyst-like mimic) of the same size range and contrast, so that "is there a blob" does not decide.

Both are hyper- or hypo-intense at random (so neither moves the mean one way): the mean intensity of an image says
next to nothing about its class (tests/image_folders/test_image_folders_synth.py); the blob's shape does. A network
pretrained on these slices learns margin and texture features that the prostate task needs (the TL chain).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from medtf.synth.morphology import lesion_margin, texture_amplitude, unit

#: Share of ``no`` images with a smooth, homogeneous (benign-looking) lesion.
BENIGN_LESION_SHARE = 0.6


def _smooth(rng, shape, sigma):
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return field / (np.abs(field).max() + 1e-9)


def lesion_distance(trng: np.random.Generator, u: np.ndarray, v: np.ndarray, ax: float, ay: float,
                    tumour: bool) -> tuple[np.ndarray | None, dict]:
    """Normalised distance map of the slice's lesion (< 1 inside its margin) on head coordinates ``u, v``
    (semi-axes ``ax, ay``), or None for a ``no`` slice without a mimic; and its draws (contrast, heterogeneity,
    halo, necrosis: the last two only for a tumour)."""
    mimic = trng.random() < BENIGN_LESION_SHARE
    for _ in range(20):  # a centre well inside the brain
        tu, tv = trng.uniform(-0.6, 0.6) * ax, trng.uniform(-0.6, 0.6) * ay
        if (tu / ax) ** 2 + (tv / ay) ** 2 < 0.4:
            break
    radius = trng.uniform(0.15, 0.3) * min(ax, ay)
    lesion = {"contrast": trng.choice([1.0, -1.0]) * trng.uniform(0.18, 0.35)}
    margin = lesion_margin(trng, malignant=tumour, dims=2)
    lesion["heterogeneity"] = texture_amplitude(trng, malignant=tumour)
    lesion["halo"], lesion["necrosis"] = bool(tumour and trng.random() < 0.7), bool(tumour and trng.random() < 0.35)
    if not (tumour or mimic):
        return None, lesion
    if not tumour:  # the mimic: a smooth ellipse
        return np.hypot((u - tu) / (radius * 1.15), (v - tv) / (radius * 0.87)), lesion
    rel = np.stack([u - tu, v - tv], axis=-1) / radius
    return np.linalg.norm(rel, axis=-1) / margin(unit(rel)), lesion


def brain_slice(rng: np.random.Generator, shape: tuple[int, int], tumour: bool) -> np.ndarray:
    """One ``(H, W)`` float slice in about [0, 1] (see the module docstring); ``tumour`` adds the blob."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    cy, cx = h / 2 + rng.uniform(-0.05, 0.05) * h, w / 2 + rng.uniform(-0.05, 0.05) * w
    ay, ax = rng.uniform(0.28, 0.36) * h, rng.uniform(0.24, 0.32) * w  # scalp ends >= 4 % inside
    angle = rng.uniform(-0.35, 0.35)
    dy, dx = yy - cy, xx - cx
    u, v = dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)
    r = np.sqrt((u / ax) ** 2 + (v / ay) ** 2)  # 1 at the inner skull edge
    image = np.zeros(shape)
    image[(r >= 1.0) & (r < 1.08)] = 0.85  # skull (T1-like: bright fat / marrow)
    image[(r >= 1.08) & (r < 1.13)] = 0.35  # scalp
    brain = r < 0.98
    texture = _smooth(rng, shape, 3.0)
    image[brain] = 0.45 + 0.06 * texture[brain]
    core = r + 0.08 * _smooth(rng, shape, 6.0) < 0.72
    image[core & brain] += 0.12
    for side in (-1, 1):  # ventricles and a bright symmetric distractor pair
        vu, vv = side * 0.12 * ax, -0.05 * ay
        image[((u - vu) / (0.07 * ax)) ** 2 + ((v - vv) / (0.22 * ay)) ** 2 < 1] = 0.12
        pu, pv = side * 0.2 * ax, 0.25 * ay
        image[((u - pu) ** 2 + (v - pv) ** 2) < (0.05 * ax) ** 2] = 0.8
    # The lesion draws from its own stream, in the same order for both classes: a slice with and without a tumour
    # differ only where the lesion is (a smooth mimic at the same place, or nothing).
    trng = np.random.default_rng(rng.integers(0, 2**63))
    d, lesion = lesion_distance(trng, u, v, ax, ay, tumour)
    if d is not None:
        contrast = lesion["contrast"]
        if lesion["halo"]:  # oedema halo
            image[(d >= 1) & (d < 1.6) & brain] += 0.07 * np.sign(contrast)
        blob = np.clip(1.2 - d, 0, 1) ** 0.5
        texture = 1 + lesion["heterogeneity"] * 2.0 * _smooth(trng, shape, 1.5)  # _smooth is in [-1, 1]
        image += contrast * blob * texture * brain
        if lesion["necrosis"]:  # necrotic core
            image[(d < 0.4) & brain] = 0.1
    image = ndimage.gaussian_filter(image, rng.uniform(0.5, 1.2))
    head = r < 1.13
    image = image * rng.uniform(0.6, 1.35) + rng.uniform(-0.05, 0.05) * head
    image += rng.normal(0, rng.uniform(0.01, 0.03), shape) * head
    return np.clip(image, 0, 1)


def _save(image: np.ndarray, path: Path, rgb: bool) -> Path:
    from PIL import Image

    pixels = np.rint(image * 255).astype(np.uint8)
    if rgb:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    Image.fromarray(pixels).save(path, format="JPEG" if suffix in (".jpg", ".jpeg") else "PNG",
                                 **({"quality": 92} if suffix in (".jpg", ".jpeg") else {}))
    return path


def generate_image_folders(out_dir: str | os.PathLike, cases: int = 4, seed: int = 0, size: int = 128) -> list[Path]:
    """Write ``cases`` tumour slices to ``out/yes`` and ``cases`` without to ``out/no``.

    Args:
        out_dir: created if needed.
        cases: images per class (the Kaggle set has no patient IDs: each image is its own unit).
        seed: everything is a deterministic function of the seed.
        size: nominal side in pixels; each image's height and width vary by about +-25 % (and so does the
            black margin around the head).

    Returns:
        The written image files, ``yes`` first.

    Example:
        >>> files = generate_image_folders(tmp_path / "brain", cases=3, seed=1)
        >>> sorted(p.parent.name for p in files)
        ['no', 'no', 'no', 'yes', 'yes', 'yes']
    """
    out = Path(out_dir)
    written = []
    for cls, letter, tumour in (("yes", "Y", True), ("no", "N", False)):
        for i in range(1, cases + 1):
            rng = np.random.default_rng([seed, int(tumour), i, 14])
            shape = (int(size * rng.uniform(0.8, 1.25)), int(size * rng.uniform(0.8, 1.25)))
            style = rng.random()
            name = (f"{letter}{i}.png" if style < 0.15 else f"{letter}{i}.JPG" if style < 0.3 else
                    f"no {i}.jpg" if (not tumour and style < 0.45) else f"{letter}{i}.jpg")
            written.append(_save(brain_slice(rng, shape, tumour), out / cls / name, rgb=rng.random() < 0.5))
    return written


__all__ = ["BENIGN_LESION_SHARE", "brain_slice", "generate_image_folders", "lesion_distance"]
