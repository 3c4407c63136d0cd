"""Prostate lesion patches from one patient's T2 / DWI / ADC series: read, z-score, resample, crop, resize.

Shared by the ``prostate-mpmri`` converter (`tfrecords_builder.prostate_mpmri`) and `medtf predict` on a study
folder (`medtf.tasks.lesions`), so a lesion predicted from a user's folder gets exactly the crop the converter
wrote for training. The converter's options travel with the model: the export copies the shard manifest's
``options`` (``patch_mm``, ``patch_size``, ``channel_set``, ``native_crop_px``, ...) into ``medtf.json`` as
``conversion``, and `load_sequences` / `lesion_patch` take that dict.

Two crop modes:

- physical (default): a square of ``patch_mm`` at ``patch_size`` pixels, sequences finer than the patch
  Gaussian-smoothed first (no aliasing);
- native (``native_crop_px``, the thesis's 130 px -> 65 px): a square of ``native_crop_px`` pixels at the T2's own
  in-plane pixel size (no smoothing), every channel sampled on that grid, then resized to ``patch_size`` with
  bicubic interpolation (`bicubic_resize`, PIL's kernel).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from medtf.io.errors import InputError, UnreadableDicomError
from tfrecords_builder import prostatex_layout as layout

#: ``--channels`` -> the sequences stacked as channels, in order. DWI alone is sampled on the T2's plane
#: through the T2's geometry ("aligned through T2"), as in the thesis's transfer-learning chain.
CHANNEL_SETS = {"t2-dwi-adc": ("t2_tra", "dwi", "adc"), "dwi": ("dwi",)}
CHANNEL_NAMES = {"t2_tra": "T2 transverse", "dwi": "DWI highest b", "adc": "ADC"}


def channel_kinds(settings: dict) -> tuple[str, ...]:
    return CHANNEL_SETS[settings.get("channel_set") or "t2-dwi-adc"]


def sequences_needed(settings: dict) -> tuple[str, ...]:
    """The T2 (it fixes the patch plane and the ijk) plus the channels' sequences."""
    return tuple(dict.fromkeys(("t2_tra", *channel_kinds(settings))))


def zscore(volume):
    """``(float32 array, mean, std)`` of a `Volume` normalised over all its voxels (per patient, per sequence).

    Args:
        volume: one native series of one patient, array ``(z, y, x)``.

    Example:
        >>> normalised, mean, std = zscore(read_dicom_series(t2_files))
        >>> float(normalised.mean()), float(normalised.std())   # ~(0.0, 1.0)
    """
    data = volume.array.astype(np.float64)
    mean, std = float(data.mean()), float(data.std())
    if not np.isfinite(std) or std < 1e-6:
        raise ValueError("image is constant; cannot z-score it")
    return ((data - mean) / std).astype(np.float32), mean, std


def antialiased(volume, array: np.ndarray, patch_spacing: float):
    """SimpleITK image of ``array`` on ``volume``'s grid, Gaussian-smoothed in-plane where the patch is coarser."""
    import SimpleITK as sitk

    image = volume.with_array(array).to_sitk()
    sigma_px = [max(0.0, (patch_spacing / s - 1.0) / 2.0) for s in volume.spacing[:2]]
    if max(sigma_px) > 0:
        variance = [(p * s) ** 2 for p, s in zip(sigma_px, volume.spacing[:2])] + [0.0]
        image = sitk.DiscreteGaussian(image, variance, 32, 0.01, True)
    return image


def sample_patch(image, centre, direction: np.ndarray, spacing: float, size: int) -> np.ndarray:
    """``(size, size)`` float32 plane through ``centre`` (mm LPS) spanned by ``direction``'s first two columns
    (rows follow the second column, as a DICOM slice); pixel ``((size-1)/2, (size-1)/2)`` is the centre.

    Args:
        image: SimpleITK image (any grid); sampled with linear interpolation, 0 outside it.
        centre: lesion centre ``(x, y, z)`` in mm.
        direction: 3x3 matrix whose columns are the patch's x (columns) and y (rows) axes and the normal.
        spacing: patch pixel size in mm; ``size``: patch side in pixels.

    Example:
        >>> t2_patch = sample_patch(t2.to_sitk(), centre, t2.direction_matrix, 1.0, 65)   # (65, 65)
    """
    import SimpleITK as sitk

    half = (size - 1) / 2.0 * spacing
    origin = np.asarray(centre, float) - direction[:, 0] * half - direction[:, 1] * half
    out = sitk.Resample(image, [size, size, 1], sitk.Transform(), sitk.sitkLinear, origin.tolist(),
                        [spacing, spacing, 1.0], direction.ravel().tolist(), 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)[0]


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def cubic_weights(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` resampling matrix of PIL's BICUBIC (Keys, a = -0.5; pixel centres at ``i + 0.5``; the
    kernel widened by the scale when shrinking, so 130 -> 65 does not alias; weights renormalised at borders)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    weights = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        taps = np.arange(lo, hi)
        w = _cubic((taps - centre + 0.5) / filterscale)
        weights[i, lo:hi] = w / w.sum()
    return weights


def bicubic_resize(image: np.ndarray, size: int) -> np.ndarray:
    """``(H, W[, C])`` -> ``(size, size[, C])`` float32 by `cubic_weights` along rows and columns."""
    image = np.asarray(image, np.float64)
    rows, cols = cubic_weights(image.shape[0], size), cubic_weights(image.shape[1], size)
    return np.einsum("ih,jw,hw...->ij...", rows, cols, image).astype(np.float32)


def inside(volume, index, margin: float = 0.5) -> bool:
    size = np.asarray(volume.shape_xyz)
    return bool(np.all(np.asarray(index) >= -margin) and np.all(np.asarray(index) <= size - 1 + margin))


def read_series(series, files):
    """The chosen files of a series folder as a `Volume`; a damaged DICOM file anywhere in the folder (also in
    another b-value stack, where it could be one of the chosen stack's slices) fails the series, naming it."""
    from medtf.io.dicom_headers import read_header
    from medtf.io.dicom_series import read_dicom_series

    chosen = set(files)
    try:
        for path in series.files:
            if path not in chosen:
                try:
                    read_header(path)
                except UnreadableDicomError:
                    raise
                except InputError:  # not DICOM, or no series object: not a slice of this series
                    pass
        return read_dicom_series(files)
    except UnreadableDicomError as exc:
        raise InputError(exc.path, f"unreadable DICOM file in the folder of {series.label}: {exc.reason}; it may "
                                   "be one of the series' slices, so the series is not read: remove or replace "
                                   "it") from None


@dataclasses.dataclass
class Sequences:
    """One patient's chosen series: ``chosen[kind] = (series, files, note)``, native ``volumes``, the z-scored
    (and anti-aliased) SimpleITK ``images`` of the channels, and the sampling grid (``spacing`` mm, ``size`` px)."""

    chosen: dict
    volumes: dict
    images: dict
    kinds: tuple
    spacing: float
    size: int

    def out_spacing(self, settings: dict) -> float:
        """Pixel size in mm of the stored patch (after the native crop's resize)."""
        return self.spacing * self.size / settings["patch_size"]


def load_sequences(folder, referenced: set, settings: dict) -> Sequences:
    """Read, z-score and prepare the sequences of one patient folder for `lesion_patch`.

    Args:
        folder: the patient's folder (series folders anywhere below it).
        referenced: series numbers an Images CSV names (preferred for T2 / ADC); empty at prediction time.
        settings: the converter's case options (see the module docstring).

    Raises:
        InputError: a sequence is missing, unreadable or constant (naming the series).
    """
    series = layout.list_series(folder)
    chosen = layout.choose_series(series, referenced, needed=sequences_needed(settings))
    volumes = {kind: read_series(*chosen[kind][:2]) for kind in sequences_needed(settings)}
    native = settings.get("native_crop_px")
    spacing = float(volumes["t2_tra"].spacing[0]) if native else settings["patch_mm"] / settings["patch_size"]
    size = int(native) if native else int(settings["patch_size"])
    images = {}
    for kind in channel_kinds(settings):
        try:
            normalised, _, _ = zscore(volumes[kind])
        except ValueError as exc:
            raise InputError(chosen[kind][0].path, f"{chosen[kind][0].label}: {exc}") from None
        images[kind] = antialiased(volumes[kind], normalised, spacing)
    return Sequences(chosen, volumes, images, channel_kinds(settings), spacing, size)


def check_centre(seq: Sequences, centre) -> None:
    """`ValueError` naming the series when the lesion centre (mm LPS) lies outside any sequence read."""
    for kind, volume in seq.volumes.items():
        if not inside(volume, volume.physical_to_index(centre)):
            raise ValueError(f"lesion centre {np.round(np.asarray(centre, float), 2).tolist()} mm lies outside the "
                             f"{seq.chosen[kind][0].label} image")


def lesion_patch(seq: Sequences, centre, settings: dict) -> np.ndarray:
    """``(patch_size, patch_size, C)`` float32 patch centred on ``centre`` (mm LPS) in the T2's plane."""
    direction = seq.volumes["t2_tra"].direction_matrix
    patch = np.stack([sample_patch(seq.images[k], centre, direction, seq.spacing, seq.size) for k in seq.kinds], -1)
    if seq.size != settings["patch_size"]:
        patch = bicubic_resize(patch, settings["patch_size"])
    return patch.astype(np.float32)
