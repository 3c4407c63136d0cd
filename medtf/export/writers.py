"""Prediction outputs that need no DICOM: NIfTI mask/probabilities on the input grid, PNG overlays, the JSON summary.

Everything written here is free of patient data: NIfTI headers carry only geometry, overlays only pixels, and the
summary only counts, sizes and file names (the DICOM SEG, which must copy the patient module, is `dicom_seg`).

Example:
    >>> write_nifti(ct.with_array(mask), out / "mask.nii.gz")
    >>> write_overlays(ct, mask, out, count=3)        # [out/overlay_z012.png, ...]
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from medtf.io.volume import Volume

TINT = np.array([255, 40, 40], np.float32)   # mask fill colour (red)
CONTOUR = np.array([255, 255, 0], np.uint8)  # mask outline (yellow): visible on the tint and on bright metal
TINT_ALPHA = 0.35


def write_nifti(volume: Volume, path: str | os.PathLike) -> Path:
    """Write ``volume`` (array + spacing/origin/direction) with SimpleITK; ``.nii.gz`` keeps the geometry exactly."""
    import SimpleITK as sitk

    path = Path(path)
    sitk.WriteImage(volume.to_sitk(), str(path), useCompression=True)
    return path


def to_display(image: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.0) -> np.ndarray:
    """A 2D slice ``(H, W)`` or ``(H, W, 3)`` -> uint8 RGB for display.

    uint8 images are shown as they are; anything else (CT in HU, MR) is windowed to its ``[lo_pct, hi_pct]``
    percentiles, which shows soft tissue and metal alike without knowing the modality's window.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        values = image.astype(np.float32)
        lo, hi = np.percentile(values, [lo_pct, hi_pct])
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        image = np.clip((values - lo) * scale, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def contour(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a 2D boolean mask: inside pixels with at least one 4-neighbour outside."""
    mask = np.asarray(mask, bool)
    padded = np.pad(mask, 1, constant_values=False)
    interior = (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return mask & ~interior


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)``: the displayed slice, mask tinted red with a yellow outline."""
    rgb = to_display(image).astype(np.float32)
    inside = np.asarray(mask, bool)
    rgb[inside] = (1.0 - TINT_ALPHA) * rgb[inside] + TINT_ALPHA * TINT
    out = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    out[contour(inside)] = CONTOUR
    return out


def overlay_slices(mask: np.ndarray, count: int) -> list[int]:
    """Up to ``count`` z indices of a ``(z, y, x)`` mask: spread over the slices that hold mask voxels (over the
    whole volume when the mask is empty), so the overlays show the prediction rather than empty slices."""
    depth = mask.shape[0]
    candidates = np.flatnonzero(mask.reshape(depth, -1).any(axis=1))
    if candidates.size == 0:
        candidates = np.arange(depth)
    count = max(1, min(count, candidates.size))
    picks = np.linspace(0, candidates.size - 1, count + 2)[1:-1] if candidates.size > count else np.arange(count)
    return sorted({int(candidates[int(round(p))]) for p in picks})


def write_overlays(image: Volume, mask: np.ndarray, out_dir: str | os.PathLike, count: int = 3) -> list[Path]:
    """PNG overlays of ``mask`` on ``image`` in ``out_dir``: ``overlay.png`` for 2D, ``overlay_z###.png`` for 3D.

    Args:
        image: the input image (native grid); 2D scalar/RGB or 3D scalar.
        mask: ``image``'s spatial shape, nonzero = foreground (a label map is shown as one foreground).
        count: number of 3D slices (see `overlay_slices`).

    Returns:
        The written paths; each PNG has the slice's pixel size ``(W, H)``.
    """
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mask = np.asarray(mask) > 0
    if image.ndim == 2:
        path = out_dir / "overlay.png"
        Image.fromarray(overlay(image.array, mask)).save(path)
        return [path]
    paths = []
    for z in overlay_slices(mask, count):
        path = out_dir / f"overlay_z{z:03d}.png"
        Image.fromarray(overlay(image.array[z], mask[z])).save(path)
        paths.append(path)
    return paths


def write_summary(summary: dict, path: str | os.PathLike) -> Path:
    """``prediction.json`` (sorted keys, written atomically so a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
