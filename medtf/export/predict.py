"""Sliding-window prediction with an exported model on one DICOM series, NIfTI/MHD volume or 2D image.

The model is the SavedModel of `medtf.export.saved_model` (``medtf export``): its ``preprocess`` signature turns
the raw image (CT in HU, RGB 0..255) into model inputs once, on the whole image, as training did; then
`medtf.inferers.sliding_window_inference` slides ``predict_patch`` over it, and the probabilities are thresholded
(one class) or arg-maxed (several classes). A 3D input is first reoriented and resampled to the training data's
orientation and spacing recorded in ``medtf.json``, and the probabilities are resampled back onto the input grid
before the threshold (`medtf.export.geometry`).

Outputs in the output folder: ``mask.nii.gz`` (uint8, the input's spacing/origin/direction), optional
``probabilities.nii.gz``, ``seg.dcm`` (DICOM input only), ``overlay*.png`` and ``prediction.json``.

Example:
    >>> summary = predict_path("runs/brachy/export/unet3d", "patient/CT", "pred/", overlap=0.5)
    >>> summary["voxels"], summary["volume_ml"]
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np

from medtf.export.layout import METADATA_FILE, ExportError, resolve_model_dir
from medtf.io.errors import InputError
from medtf.io.volume import Volume

SLICE_SUFFIXES = (".png", ".tif", ".tiff")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


@dataclasses.dataclass
class InputImage:
    """An input read for prediction: the image, its format and (DICOM) the source files in z order."""

    volume: Volume
    format: str
    source_files: list[Path] | None = None


def read_input(path: str | os.PathLike, series_uid: str | None = None) -> InputImage:
    """A DICOM series folder, a NIfTI/MetaImage/NRRD file or a PNG/TIFF slice, with the `medtf.io` readers.

    Raises:
        InputError: missing path, unsupported file type, unreadable data, several image series (pass
            ``series_uid``).
    """
    from medtf.io import read_dicom_series, read_image, read_slice_2d, scan_dicom_folder

    path = Path(path)
    if not path.exists():
        raise InputError(path, "input does not exist")
    if path.is_dir():
        scan = scan_dicom_folder(path)
        images = [s for s in scan.image_series if series_uid in (None, s.series_uid)]
        if len(images) != 1:
            listing = "; ".join(s.summary() for s in scan.image_series) or "none"
            what = f"no image series {series_uid}" if series_uid else f"{len(images)} image series"
            raise InputError(path, f"{what} in the folder (pass --series-uid to pick one); found: {listing}")
        info = images[0]
        volume = read_dicom_series(info)
        by_uid = {h.sop_uid: h.path for h in info.headers}
        uids = volume.metadata.get("SOPInstanceUIDs", [])
        files = [by_uid[u] for u in uids] if uids and all(u in by_uid for u in uids) else None  # None: multi-frame
        return InputImage(volume, "dicom", files)
    name = path.name.lower()
    if name.endswith(SLICE_SUFFIXES):
        return InputImage(read_slice_2d(path), "png" if name.endswith(".png") else "tiff")
    if name.endswith(VOLUME_SUFFIXES):
        volume = read_image(path)
        return InputImage(volume, volume.metadata.get("format", "image"))
    raise InputError(path, "unsupported input: expected a DICOM series folder, a NIfTI/MHA/MHD/NRRD volume or a "
                           f"PNG/TIFF image ({', '.join(VOLUME_SUFFIXES + SLICE_SUFFIXES)})")


class ExportedModel:
    """An exported model folder: ``medtf.json`` plus the SavedModel's ``preprocess``/``predict_patch`` signatures.

    Args:
        path: a version folder, or a model folder (its highest version is used).

    Example:
        >>> model = ExportedModel("export/unet3d")
        >>> probs = model.predict(ct.array[..., None], overlap=0.5)   # (D, H, W, K) float32
    """

    def __init__(self, path: str | os.PathLike):
        import tensorflow as tf

        self.path = resolve_model_dir(path)
        meta_path = self.path / METADATA_FILE
        if not meta_path.is_file():
            raise ExportError(f"{self.path}: no {METADATA_FILE} (export the model with `medtf export`)")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        loaded = tf.saved_model.load(str(self.path))
        self._keep = loaded  # the signatures' variables live as long as the loaded object
        self._preprocess = loaded.signatures["preprocess"]
        self._patch = loaded.signatures["predict_patch"]

    @property
    def spatial_dims(self) -> int:
        return int(self.meta["spatial_dims"])

    def patch_size(self, spatial_shape) -> tuple[int, ...]:
        """The training patch size, or (no patch in the run) the whole image rounded up to the model's divisor."""
        if self.meta.get("patch_size"):
            return tuple(int(p) for p in self.meta["patch_size"])
        div = int(self.meta.get("size_divisor", 1))
        return tuple(int(math.ceil(s / div) * div) for s in spatial_shape)

    def check_input(self, image: np.ndarray) -> None:
        """``image`` is channels-last ``(*spatial, C)``; raise a clear ValueError when the model cannot take it."""
        nd, channels = self.spatial_dims, int(self.meta["in_channels"])
        if image.ndim - 1 != nd:
            what = {2: "2D images (PNG/TIFF slices)", 3: "3D volumes (DICOM series, NIfTI)"}[nd]
            raise ValueError(f"model {self.meta.get('model')} ({self.meta.get('kind')}) expects {what}, got a "
                             f"{image.ndim - 1}D input of shape {image.shape[:-1]}")
        if image.shape[-1] != channels:
            raise ValueError(f"model expects {channels} channel(s), the input has {image.shape[-1]}")

    def check_distribution(self, source: "InputImage") -> list[str]:
        """Out-of-distribution warnings for an input against the training fingerprint in ``medtf.json``
        (`medtf.export.fingerprint.check_input`); [] when the model has no fingerprint."""
        from medtf.export.fingerprint import check_input

        fingerprint = self.meta.get("fingerprint")
        if not fingerprint:
            return []
        volume = source.volume
        return check_input(fingerprint, channels_last(volume), spacing=volume.spacing,
                           modality=volume.modality if source.format == "dicom" else None,
                           body_region=volume.metadata.get("BodyPartExamined"))

    def predict(self, image: np.ndarray, overlap: float = 0.5, batch_size: int = 4,
                progress: bool | str = False) -> np.ndarray:
        """Raw channels-last image -> probabilities ``(*spatial, K)`` float32 on the same grid.

        ``progress``: per patch batch (see `medtf.inferers.sliding_window_inference`).
        """
        import tensorflow as tf

        from medtf.inferers import sliding_window_inference

        self.check_input(image)
        x = self._preprocess(images=tf.constant(image[None], tf.float32))["images"]
        patch_fn = self._patch

        def predictor(batch):
            return patch_fn(images=tf.cast(batch, tf.float32))["probabilities"]

        probs = sliding_window_inference(x, predictor, self.patch_size(image.shape[:-1]), overlap=overlap,
                                         batch_size=batch_size, output_device="cpu", progress=progress)
        return np.asarray(probs[0], np.float32)


def channels_last(volume: Volume) -> np.ndarray:
    """The Volume's array with a channel axis: ``(D, H, W, 1)`` / ``(H, W, 1)``, or ``(H, W, 3)`` for RGB."""
    return volume.array if volume.is_vector else volume.array[..., None]


def on_grid(volume: Volume, array: np.ndarray, is_vector: bool = False) -> Volume:
    """``array`` on ``volume``'s grid (spacing/origin/direction) without its metadata (UIDs stay out of outputs)."""
    return Volume(array, spacing=volume.spacing, origin=volume.origin, direction=volume.direction,
                  is_vector=is_vector)


def to_mask(probs: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 label map: ``probs[..., 0] >= threshold`` for one class, ``argmax`` for several (0 = background)."""
    if probs.shape[-1] == 1:
        return (probs[..., 0] >= threshold).astype(np.uint8)
    return np.argmax(probs, axis=-1).astype(np.uint8)


def predict_path(model: str | os.PathLike | ExportedModel, input_path: str | os.PathLike,
                 output_dir: str | os.PathLike, *, overlap: float = 0.5, threshold: float | None = None,
                 probabilities: bool = False, overlays: int = 3, batch_size: int = 4,
                 series_uid: str | None = None) -> dict:
    """Predict ``input_path`` with an exported ``model`` and write every output into ``output_dir``.

    Args:
        model: exported model folder (or version folder, or a loaded `ExportedModel`).
        input_path: DICOM series folder, NIfTI/MHA/MHD/NRRD file, or PNG/TIFF slice (see `read_input`).
        output_dir: created if needed.
        overlap: sliding-window overlap in ``[0, 1)``.
        threshold: decision threshold for one-class models (default ``medtf.json``'s, 0.5).
        probabilities: also write ``probabilities.nii.gz``.
        overlays: number of PNG overlay slices for 3D inputs (0: none).
        batch_size: patches per SavedModel call.
        series_uid: which series when the DICOM folder holds several image series.

    Returns:
        The summary written to ``prediction.json`` (counts, physical size, output file names, notes; no PHI);
        ``"warnings"`` lists how the input differs from the training data (`medtf.export.fingerprint`).
    """
    from medtf.export.dicom_seg import write_dicom_seg
    from medtf.export.writers import write_nifti, write_overlays, write_summary
    from medtf.export.geometry import back_to_input_grid, to_training_grid

    model = model if isinstance(model, ExportedModel) else ExportedModel(model)
    source = read_input(input_path, series_uid)
    volume = source.volume
    threshold = float(model.meta.get("threshold", 0.5) if threshold is None else threshold)
    notes, warnings = [], model.check_distribution(source)
    # On the training grid (orientation + spacing of medtf.json), probabilities back on the input grid.
    grid, why_not = to_training_grid(model.meta, volume)
    if why_not:
        notes.append(why_not)
    probs = model.predict(channels_last(grid), overlap=overlap, batch_size=batch_size, progress="predict")
    probs = back_to_input_grid(probs, grid, volume)
    mask = to_mask(probs, threshold)

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    outputs = {"mask": write_nifti(on_grid(volume, mask), out / "mask.nii.gz").name}
    if probabilities:
        prob_array = probs[..., 0] if probs.shape[-1] == 1 else probs
        prob_volume = on_grid(volume, prob_array, is_vector=probs.shape[-1] > 1)
        outputs["probabilities"] = write_nifti(prob_volume, out / "probabilities.nii.gz").name
    if model.meta.get("fingerprint") is None:
        notes.append("no out-of-distribution check: the model's medtf.json has no training-data fingerprint "
                     "(exported without its training data, or by an older medtf); the input is predicted on its own "
                     "grid, not reoriented/resampled to the training data's")
    if source.format != "dicom":
        notes.append(f"no DICOM SEG: the input is {source.format}, not a DICOM series")
    elif source.source_files is None:
        notes.append("no DICOM SEG: multi-frame source images are not supported yet")
    else:
        num_segments = max(1, probs.shape[-1] - 1) if probs.shape[-1] > 1 else 1
        outputs["seg"] = write_dicom_seg(mask, source.source_files, model.meta["kind"], out / "seg.dcm",
                                         algorithm=str(model.meta.get("model", "medtf")),
                                         num_segments=num_segments).name
    if overlays > 0:
        outputs["overlays"] = [p.name for p in write_overlays(volume, mask, out, count=overlays)]

    voxel_mm = float(np.prod(volume.spacing))
    grid_shape = grid.array.shape[:grid.ndim]
    voxels = int(np.count_nonzero(mask))
    summary = {
        "model": {"name": model.meta.get("model"), "version": model.path.name, "kind": model.meta.get("kind"),
                  "checkpoint_sha256": (model.meta.get("checkpoint") or {}).get("sha256")},
        "input": {"format": source.format, "shape": list(mask.shape), "spacing": list(volume.spacing)},
        "model_grid": {"shape": list(grid_shape), "spacing": list(grid.spacing), "resampled": grid is not volume},
        "threshold": threshold, "overlap": overlap, "patch_size": list(model.patch_size(grid_shape)),
        "voxels": voxels, "outputs": outputs, "notes": notes, "warnings": warnings,
    }
    if volume.ndim == 3:
        summary["volume_ml"] = voxels * voxel_mm / 1000.0
    else:
        summary["area_mm2"] = voxels * voxel_mm
    if probs.shape[-1] > 1:
        summary["voxels_per_class"] = {str(k): int(np.count_nonzero(mask == k)) for k in range(1, probs.shape[-1])}
    write_summary(summary, out / "prediction.json")
    return summary
