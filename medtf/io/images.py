"""Read research image formats into a `Volume`: 3D/2D files through SimpleITK, 2D slides/slices through PIL/tifffile.

`read_image` keeps the geometry exactly as SimpleITK reads it (LPS; a NIfTI's RAS affine is converted by ITK),
so ``read_image(p).to_sitk()`` equals ``sitk.ReadImage(p)`` voxel for voxel and in spacing/origin/direction.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medtf.io.errors import InputError
from medtf.io.nonfinite import nonfinite_mask, reject_or_fill
from medtf.io.volume import Volume

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
SLICE_SUFFIXES = (".tif", ".tiff", ".png")
_FORMAT = {".nii.gz": "nifti", ".nii": "nifti", ".mha": "metaimage", ".mhd": "metaimage", ".nrrd": "nrrd",
           ".nhdr": "nrrd"}


def _suffix(path: Path, allowed: tuple[str, ...]) -> str:
    name = path.name.lower()
    for suffix in allowed:
        if name.endswith(suffix):
            return suffix
    raise InputError(path, f"unsupported file extension (expected one of {', '.join(allowed)})")


def _check_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file does not exist")
    if not path.is_file():
        raise InputError(path, "not a file")
    return path


def _nifti_nonfinite(path: Path, array: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(mask, values)`` of the NIfTI's non-finite voxels as stored in the file, the mask laid out like
    SimpleITK's ``array``; ``(None, None)`` when there are none.

    ITK's NIfTI reader turns NaN/Inf into 0, so they are looked up with nibabel, and only when they can exist:
    float data (or scaling) and zeros in ITK's array.
    """
    import nibabel as nib

    if array.dtype.kind not in "fc" or not np.any(array == 0):
        return None, None
    try:
        image = nib.load(str(path))
        if image.get_data_dtype().kind not in "fc" and all(
                v is None or np.isfinite(v) for v in (image.dataobj.slope, image.dataobj.inter)):
            return None, None
        data = np.asanyarray(image.dataobj)
    except Exception as exc:  # noqa: BLE001 - SimpleITK read it; say why the check could not be made
        raise InputError(path, f"cannot check the NIfTI for NaN/Inf voxels with nibabel ({type(exc).__name__}: "
                               f"{exc})") from None
    bad = ~np.isfinite(data)
    if not bad.any():
        return None, None
    values = data[bad]
    spatial = bad.reshape(bad.shape + (1,) * (3 - bad.ndim)) if bad.ndim < 3 else bad
    zyx = spatial.reshape(spatial.shape[:3] + (-1,)).transpose(2, 1, 0, 3)  # nibabel (x, y, z, ...) -> ITK
    if zyx.size != array.size:
        raise InputError(path, f"{values.size} NaN/Inf voxels in a NIfTI of shape {data.shape} that SimpleITK "
                               f"reads as {array.shape}; cannot locate them")
    return zyx.reshape(array.shape), values


def read_image(path: str | os.PathLike, *, fill_nonfinite: float | None = None) -> Volume:
    """Read a NIfTI (``.nii``/``.nii.gz``), MetaImage (``.mha``/``.mhd`` + data file) or NRRD image.

    Args:
        path: the image file (for ``.mhd``/``.nhdr`` the header; its data file must sit where it says).
        fill_nonfinite: None (default) rejects an image holding NaN/Inf voxels; a number replaces them by it
            (`medtf.io.nonfinite`). SimpleITK alone reads NIfTI NaN/Inf as 0; here they are found either way.

    Returns:
        `Volume` with SimpleITK's array ``(z, y, x)`` and LPS geometry; multi-component images come back
        with ``is_vector=True``. ``metadata["format"]`` names the format; with ``fill_nonfinite``,
        ``metadata["nonfinite_filled"]`` is the number of voxels filled.

    Raises:
        InputError: missing file, unsupported extension, unreadable/corrupt file, not 2D/3D, or NaN/Inf voxels
            (the message gives their count) without ``fill_nonfinite``.

    Example:
        >>> t1 = read_image("sub-01_T1w.nii.gz")
        >>> t1.spacing, t1.direction
    """
    import SimpleITK as sitk

    path = _check_file(path)
    suffix = _suffix(path, IMAGE_SUFFIXES)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = next((ln for ln in reversed(lines) if "rror" in ln or "annot" in ln), lines[-1] if lines else "")
        raise InputError(path, f"SimpleITK cannot read this {_FORMAT[suffix]} file: {detail[-300:]}") from None
    if image.GetDimension() not in (2, 3):
        raise InputError(path, f"{image.GetDimension()}D images are not supported (2D or 3D only)")
    volume = Volume.from_sitk(image, metadata={"format": _FORMAT[suffix]})
    mask, values = nonfinite_mask(volume.array), None
    if mask is None and _FORMAT[suffix] == "nifti":
        mask, values = _nifti_nonfinite(path, volume.array)
    volume.array, filled = reject_or_fill(path, volume.array, mask, fill_nonfinite, values)
    if fill_nonfinite is not None:
        volume.metadata["nonfinite_filled"] = filled
    return volume


def _tiff_spacing(page) -> tuple[float, float] | None:
    """(x, y) pixel size in mm from TIFF XResolution/YResolution when the unit is inch or centimetre."""
    tags = page.tags
    unit = tags.get("ResolutionUnit")
    xres, yres = tags.get("XResolution"), tags.get("YResolution")
    if unit is None or xres is None or yres is None:
        return None
    mm_per_unit = {2: 25.4, 3: 10.0}.get(int(unit.value))
    if mm_per_unit is None:
        return None
    (xn, xd), (yn, yd) = xres.value, yres.value
    if not (xn and yn and xd and yd):
        return None
    return mm_per_unit * xd / xn, mm_per_unit * yd / yn


def _read_tiff(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        array = series.asarray()
        axes = series.axes
        spacing = _tiff_spacing(tif.pages[0])
    if axes.startswith("S") and array.ndim == 3:  # planar configuration: (S, Y, X) -> (Y, X, S)
        array = np.moveaxis(array, 0, -1)
    return array, spacing


def _read_png(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        dpi = img.info.get("dpi")
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif img.mode == "LA":
            img = img.convert("L")
        elif img.mode == "1":
            img = img.convert("L")
        array = np.asarray(img)
    spacing = (25.4 / dpi[0], 25.4 / dpi[1]) if dpi and dpi[0] and dpi[1] else None
    return array, spacing


def read_slice_2d(path: str | os.PathLike, *, fill_nonfinite: float | None = None) -> Volume:
    """Read a 2D TIFF or PNG slice/tile; grayscale -> ``(H, W)``, colour -> ``(H, W, 3)`` with ``is_vector``.

    An alpha channel is dropped. Spacing ``(x, y)`` in mm comes from the file's resolution (TIFF
    X/YResolution in inch or cm; PNG pHYs) and is ``(1, 1)`` when the file states none. Origin ``(0, 0)``,
    identity direction. Float TIFFs holding NaN/Inf are rejected unless ``fill_nonfinite`` is given (as
    `read_image`; ``metadata["nonfinite_filled"]`` counts them).

    Raises:
        InputError: missing file, unsupported extension, corrupt file, not a single 2D image, or NaN/Inf values.

    Example:
        >>> tile = read_slice_2d("tile_000.png")
        >>> tile.array.shape, tile.is_vector
    """
    path = _check_file(path)
    suffix = _suffix(path, SLICE_SUFFIXES)
    try:
        array, spacing = _read_tiff(path) if suffix in (".tif", ".tiff") else _read_png(path)
    except InputError:
        raise
    except Exception as exc:  # tifffile / PIL raise many types on corrupt files
        raise InputError(path, f"cannot read {suffix[1:].upper()} file ({type(exc).__name__}: {exc})") from None
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array, is_vector = np.ascontiguousarray(array[..., :3]), True
    elif array.ndim == 3 and array.shape[-1] == 2:  # gray + alpha
        array, is_vector = np.ascontiguousarray(array[..., 0]), False
    elif array.ndim == 2:
        is_vector = False
    else:
        raise InputError(path, f"expected a single 2D grayscale or RGB image, got array shape {array.shape}")
    metadata = {"format": "tiff" if suffix != ".png" else "png"}
    mask = nonfinite_mask(array)
    if mask is not None:
        array = np.array(array)  # the reader's own, writeable copy
    array, filled = reject_or_fill(path, array, mask, fill_nonfinite)
    if fill_nonfinite is not None:
        metadata["nonfinite_filled"] = filled
    return Volume(array=array, spacing=spacing or (1.0, 1.0), origin=(0.0, 0.0), is_vector=is_vector,
                  metadata=metadata)
