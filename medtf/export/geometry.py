"""Prediction on the training grid: reorient and resample an input to the geometry the model was trained on, and
map the prediction back onto the input's own grid.

A model learns features in voxels: a catheter 2 voxels wide at 2 mm is 4 voxels wide at 1 mm, and a network trained
on volumes stored head-first (index z towards superior) sees a flipped anatomy in a NIfTI stored the other way. As
nnU-Net does with its plans, `medtf export` records the training data's geometry in ``medtf.json``
(``fingerprint.spacing.median`` per axis ``(x, y, z)`` in mm and ``fingerprint.orientation``, the three-letter
DICOM code of the stored arrays' index axes, e.g. ``LPS``: `medtf.export.fingerprint`) next to the intensity
preprocessing (``image_scale_divisor`` and ``preprocess``, applied by the SavedModel's ``preprocess`` signature), and
`medtf predict`:

1. reorients the input to the training orientation (`SimpleITK.DICOMOrient`: an exact permutation/flip of the
   array, no interpolation; oblique inputs go to the closest axis code);
2. resamples it linearly to the training spacing over the same physical extent (origin kept; voxels beyond the
   input's extent take the input's minimum, air for CT);
3. predicts there, then resamples the *probabilities* linearly onto the input grid (outside: 0) and only then
   thresholds / arg-maxes them, so the mask and the DICOM SEG have exactly the input's shape, spacing, origin and
   direction. Linear probabilities then threshold give smoother boundaries than nearest-neighbour labels.

An input already on the training grid (same orientation code, spacing within 0.1%) is predicted as it is, bit for
bit as without this step; 2D inputs and models without a recorded geometry too (`medtf predict` notes why).

Example:
    >>> grid, note = to_training_grid(meta, ct)           # Volume on 2 x 2 x 4 mm, LPS
    >>> probs = back_to_input_grid(model.predict(grid.array[..., None]), grid, ct)   # (D, H, W, K) on ct's grid
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from medtf.io.volume import Volume

SPACING_RTOL = 1e-3  # spacings this close count as equal: no resampling


def orientation_code(direction: Sequence[float]) -> str:
    """The three-letter DICOM orientation code (``LPS``, ``RAS`` ...) of a 3D direction matrix's index axes: the
    patient direction each of the x, y, z index axes points to (closest axis for oblique matrices)."""
    import SimpleITK as sitk

    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines([float(d) for d in direction])


def training_geometry(meta: Mapping) -> tuple[tuple[float, float, float], str] | None:
    """``(spacing (x, y, z) mm, orientation code)`` of a 3D model's training data from ``medtf.json``, or None."""
    fingerprint = meta.get("fingerprint") or {}
    spacing = (fingerprint.get("spacing") or {}).get("median")
    orientation = fingerprint.get("orientation")
    if int(meta.get("spatial_dims", 0)) != 3 or not spacing or len(spacing) != 3 or not orientation:
        return None
    return tuple(float(s) for s in spacing), str(orientation)


def reorient(volume: Volume, orientation: str) -> Volume:
    """``volume`` with its axes permuted/flipped so that its index axes point as ``orientation`` says (exact)."""
    import SimpleITK as sitk

    if orientation_code(volume.direction) == orientation:
        return volume
    image = sitk.DICOMOrient(volume.to_sitk(), orientation)
    return Volume.from_sitk(image, modality=volume.modality, metadata=volume.metadata)


def resample_to_spacing(volume: Volume, spacing: Sequence[float], default_value: float | None = None) -> Volume:
    """Linear resampling of ``volume`` to ``spacing`` (x, y, z) over the same extent (origin and direction kept).

    ``default_value`` fills voxels past the input's extent (default: the input's minimum). Float32 output.
    """
    import SimpleITK as sitk

    if np.allclose(volume.spacing, spacing, rtol=SPACING_RTOL, atol=0):
        return volume
    image = volume.to_sitk()
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    fill = float(np.min(volume.array)) if default_value is None else float(default_value)
    out = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                        [float(s) for s in spacing], image.GetDirection(), fill, sitk.sitkFloat32)
    return Volume.from_sitk(out, modality=volume.modality, metadata=volume.metadata)


def to_training_grid(meta: Mapping, volume: Volume) -> tuple[Volume, str | None]:
    """``(volume on the training grid, None)``; ``(volume unchanged, None)`` for 2D inputs and models without a
    fingerprint; ``(volume unchanged, why not)`` when the fingerprint holds no spacing/orientation."""
    geometry = training_geometry(meta)
    if volume.ndim != 3 or volume.is_vector or not meta.get("fingerprint"):
        return volume, None  # 2D: pixels as stored; no fingerprint: `medtf predict` notes it once for both uses
    if geometry is None:
        return volume, ("no reorientation/resampling: the model's medtf.json records no training spacing and "
                        "orientation (its training data stores none, or it was exported by an older medtf)")
    spacing, orientation = geometry
    return resample_to_spacing(reorient(volume, orientation), spacing), None


def back_to_input_grid(probs: np.ndarray, grid: Volume, volume: Volume) -> np.ndarray:
    """Probabilities ``(D', H', W', K)`` on ``grid`` -> ``(D, H, W, K)`` float32 on ``volume``'s grid (linear;
    0 where the input grid reaches past ``grid``). Returns ``probs`` itself when both grids are the same."""
    import SimpleITK as sitk

    if grid is volume or grid.same_grid(volume):
        return probs
    source = Volume(np.ascontiguousarray(probs, np.float32), spacing=grid.spacing, origin=grid.origin,
                    direction=grid.direction, is_vector=True).to_sitk()
    reference = Volume(np.zeros(volume.array.shape[:3], np.uint8), spacing=volume.spacing, origin=volume.origin,
                       direction=volume.direction).to_sitk()
    out = sitk.Resample(source, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat32)
    result = sitk.GetArrayFromImage(out).astype(np.float32)
    return result.reshape(volume.array.shape[:3] + (probs.shape[-1],))
