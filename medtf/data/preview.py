"""``medtf inspect``: a readable summary of a manifest and preview PNGs (a slice with its mask overlaid).

Previews show pixels only: no burnt-in text, file names carry the split name, never an identifier.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medtf.data.manifest import read_manifest, shard_paths
from medtf.data.schema import get_schema


def summarize(folder) -> str:
    m = read_manifest(folder)
    lines = [
        f"{folder}: {m['kind']} (schema v{m['schema_version']}, medtf {m['medtf_version']}, "
        f"compression {m.get('compression') or 'none'})",
        f"  split seed {m['split']['seed']}, fractions {m['split']['fractions']}"
        + (f", {m['split']['folds']} folds" if m["split"].get("folds") else "")
        + (f", stratified by {m['split']['stratified_by']}" if m["split"].get("stratified_by") else ""),
    ]
    for name, s in m["splits"].items():
        size = sum(sh["bytes"] for sh in s["shards"]) / 1e6
        lines.append(f"  {name:>8}: {s['num_patients']:4d} patients {s['num_examples']:6d} examples "
                     f"{len(s['shards']):3d} shards {size:9.1f} MB")
    lines.append(f"  failed inputs: {m['num_failed']}")
    for f in m["failures"][:20]:
        lines.append(f"    - {f['file']}: {f['reason']}")
    if len(m["failures"]) > 20:
        lines.append(f"    ... {len(m['failures']) - 20} more in manifest.json")
    return "\n".join(lines)


def _to_uint8(image: np.ndarray, window=None) -> np.ndarray:
    image = image.astype(np.float32)
    if window is not None and window[1] > 0:
        lo, hi = window[0] - window[1] / 2, window[0] + window[1] / 2
    else:
        lo, hi = np.percentile(image, [1, 99]) if image.size else (0, 1)
    return (np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def render_overlay(image: np.ndarray, mask: np.ndarray | None, window=None, alpha: float = 0.45) -> np.ndarray:
    """(H, W) or (H, W, 3) image + optional (H, W) mask -> (H, W, 3) uint8 with the mask tinted red."""
    rgb = _to_uint8(image, window) if image.dtype != np.uint8 else image
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    rgb = rgb.astype(np.float32)
    if mask is not None and mask.any():
        m = mask.astype(bool)
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.array([255.0, 0.0, 0.0])
    return rgb.astype(np.uint8)


def _volume_view(example: dict):
    """(D, H, W[, C]) volume: the axial slice with the most mask (or the middle one), first channel."""
    image, mask = example["image"], example.get("mask")
    if image.ndim == 4:
        image = image[..., 0]
    if mask is not None and mask.any():
        k = int(np.argmax(mask.reshape(mask.shape[0], -1).sum(1)))
    else:
        k = image.shape[0] // 2
    return image[k], (mask[k] if mask is not None else None)


def _rgb_view(example: dict):
    """(H, W, 3) uint8 RGB image with a dense mask or an instance map."""
    mask = example.get("mask", example.get("instances"))
    if mask is not None and mask.ndim == 3:
        mask = mask[..., 0]
    return example["image"], (mask > 0 if mask is not None else None)


def _channels_view(example: dict):
    """(H, W, C) float channels (e.g. T2 / DWI / ADC) side by side, each scaled on its own."""
    image = example["image"]
    tiles = [_to_uint8(image[..., c]) for c in range(image.shape[-1])]
    return np.concatenate(tiles, axis=1), None


def _gray_or_rgb_view(example: dict):
    """(H, W, 1) or (H, W, 3) uint8 without a mask."""
    image = example["image"]
    return (image[..., 0] if image.shape[-1] == 1 else image), None


VIEWS = {"brachy-ct": _volume_view, "lgg-mri": _rgb_view, "nuclei-he": _rgb_view,
         "prostate-mpmri": _channels_view, "mri-reports": _volume_view, "image-folders": _gray_or_rgb_view,
         "lung-nodules": _channels_view}


def _best_view(kind: str, example: dict) -> tuple[np.ndarray, np.ndarray | None, float]:
    """The 2D view of an example and a score (mask pixels) for choosing which example to show."""
    image, mask = VIEWS[kind](example)
    return image, mask, float(mask.sum()) if mask is not None else 0.0


def write_previews(folder, out_dir=None, max_examples: int = 32) -> list[Path]:
    """One PNG per split: among its first ``max_examples`` examples, the view with the most mask."""
    import tensorflow as tf
    from PIL import Image

    from medtf.data.decoder import make_decoder

    folder = Path(folder)
    manifest = read_manifest(folder)
    schema = get_schema(manifest["kind"])
    out_dir = Path(out_dir) if out_dir else folder / "previews"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for split in manifest["splits"]:
        files = [str(p) for p in shard_paths(folder, manifest, split)]
        if not files:
            continue
        dataset = tf.data.TFRecordDataset(files, compression_type=manifest.get("compression") or "")
        best = None
        for example in dataset.take(max_examples).map(make_decoder(schema)).as_numpy_iterator():
            image, mask, score = _best_view(manifest["kind"], example)
            if best is None or score > best[2]:
                best = (image, mask, score, example.get("window"))
        if best is None:
            continue
        path = out_dir / f"{split}.png"
        Image.fromarray(render_overlay(best[0], best[1], best[3])).save(path)
        written.append(path)
    return written
