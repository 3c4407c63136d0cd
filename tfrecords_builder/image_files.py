"""2D image files of any common format as uint8 arrays, plus the image-folders preparation steps.

Formats: PNG / JPEG through PIL, TIFF through `medtf.io.images.read_slice_2d` (tifffile), DICOM through pydicom
(recognised by extension or by the ``DICM`` marker of an extension-less file). Everything becomes uint8
``(H, W)`` or ``(H, W, 3)``: 8-bit sources as stored; deeper ones (16-bit PNG/TIFF, float TIFF, DICOM) scaled
linearly to 0..255, a DICOM through its first stored window (WindowCenter/Width) when it has one, else every
image from its own minimum to maximum. ``MONOCHROME1`` DICOMs are inverted so that bright means dense.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medtf.io.errors import InputError

PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
TIFF_SUFFIXES = (".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")


def image_type(path: Path) -> str | None:
    """``"pil"``, ``"tiff"``, ``"dicom"`` or None (not an image this reader knows) from the name, else the
    DICOM marker (bytes 128..131 ``DICM``) of a file without a known extension."""
    suffix = path.suffix.lower()
    if suffix in PIL_SUFFIXES:
        return "pil"
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    if suffix in DICOM_SUFFIXES:
        return "dicom"
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return None
    return "dicom" if head[128:132] == b"DICM" else None


def to_uint8(array: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """``array`` as uint8: unchanged when it already is, else ``window`` (centre, width) or its own min..max
    mapped linearly to 0..255 (a constant image gives zeros)."""
    if array.dtype == np.uint8:
        return array
    data = array.astype(np.float64)
    if window is not None:
        lo, hi = window[0] - window[1] / 2.0, window[0] + window[1] / 2.0
    else:
        lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        return np.zeros(array.shape, np.uint8)
    return np.rint(np.clip((data - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def _message(exc: Exception, path: Path) -> str:
    """``Type: message`` of a reader's exception without the file's full path (folders may be named by ID)."""
    return f"{type(exc).__name__}: {str(exc).replace(str(path), path.name)}"


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("P", "PA", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("RGB")
            elif img.mode in ("LA", "1"):
                img = img.convert("L")
            array = np.asarray(img)
    except Exception as exc:  # PIL raises many types on truncated or corrupt files
        raise InputError(path, f"cannot read {path.suffix.lstrip('.').upper()} image ({_message(exc, path)})") from None
    return array


def _read_dicom(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    import pydicom
    from pydicom.multival import MultiValue
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as exc:  # InvalidDicomError, missing pixel data, unsupported compression ...
        raise InputError(path, f"cannot read DICOM image ({_message(exc, path)})") from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise InputError(path, f"multi-frame DICOM ({frames} frames): one 2D image per file is expected")
    if int(getattr(ds, "SamplesPerPixel", 1)) == 3:
        return to_uint8(np.asarray(pixels)), None
    values = np.asarray(apply_modality_lut(pixels, ds), np.float64)
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        values = values.max() + values.min() - values
        return values, None  # the stored window refers to the uninverted values
    centre, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    first = (lambda v: float(v[0]) if isinstance(v, MultiValue) else float(v))
    window = (first(centre), first(width)) if centre is not None and width is not None else None
    return values, window


def read_2d(path: Path) -> np.ndarray:
    """The image in ``path`` as uint8 ``(H, W)`` or ``(H, W, 3)`` (see the module docstring).

    Raises:
        InputError: not an image this reader knows, unreadable or corrupt, not a single 2D image.
    """
    kind = image_type(path)
    window = None
    if kind == "pil":
        array = _read_pil(path)
    elif kind == "tiff":
        from medtf.io.images import read_slice_2d

        try:
            array = np.asarray(read_slice_2d(path).array)
        except InputError as exc:
            raise InputError(path, exc.reason.replace(str(path), path.name)) from None
    elif kind == "dicom":
        array, window = _read_dicom(path)
    else:
        raise InputError(path, "not an image file (PNG, JPG, TIFF or DICOM expected)")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] >= 3:
        array = array[..., :3]
    if array.ndim not in (2, 3) or min(array.shape[:2]) < 2:
        raise InputError(path, f"expected a single 2D grayscale or RGB image, got array shape {array.shape}")
    return to_uint8(array, window)


def crop_black_margin(image: np.ndarray, threshold: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """``image`` cut to the bounding box of the pixels brighter than ``threshold`` (any channel), and that box
    ``(top, left, bottom, right)`` (bottom/right exclusive). Raises ValueError for an all-dark image."""
    bright = image > threshold if image.ndim == 2 else (image > threshold).any(axis=-1)
    rows, cols = np.flatnonzero(bright.any(axis=1)), np.flatnonzero(bright.any(axis=0))
    if not len(rows):
        raise ValueError(f"no pixel brighter than the black threshold {threshold}")
    box = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
    return image[box[0]:box[2], box[1]:box[3]], box


def to_channels(image: np.ndarray, grayscale: bool) -> np.ndarray:
    """``(H, W, 1)`` luminance (ITU-R 601: 0.299 R + 0.587 G + 0.114 B, as PIL's "L") with ``grayscale``, else
    ``(H, W, 3)`` RGB (a gray image repeated), so every example of a data set has one channel count."""
    if grayscale:
        if image.ndim == 3:
            luma = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
            image = np.clip(np.rint(luma), 0, 255).astype(np.uint8)
        return image[..., None]
    return image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(H, W, C)`` uint8 -> ``(size[0], size[1], C)`` with bicubic interpolation (PIL), per channel."""
    from PIL import Image

    if image.shape[:2] == tuple(size):
        return image
    channels = [np.asarray(Image.fromarray(image[..., c]).resize((size[1], size[0]), Image.BICUBIC))
                for c in range(image.shape[-1])]
    return np.stack(channels, axis=-1)
