"""Non-finite voxels (NaN, +Inf, -Inf): found by every reader, rejected by default, filled only on request.

A float image can hold NaN/Inf (a failed reconstruction, a division by zero in a derived map, a broken DICOM
RescaleSlope). Normalising such an image spreads the damage silently (SimpleITK even reads NIfTI NaN/Inf as 0,
which z-scores to a plausible-looking value), so the readers raise `InputError` with the count instead;
``fill_nonfinite=VALUE`` (converters: ``--nonfinite fill:VALUE``) replaces them and records how many in
``Volume.metadata["nonfinite_filled"]``.
"""

from __future__ import annotations

import math

import numpy as np

from medtf.io.errors import InputError

NONFINITE_HELP = ("non-finite (NaN/Inf) voxels: 'error' (default) fails the case naming the file and the count; "
                  "'fill:VALUE' replaces them by VALUE and records how many were filled")


def parse_nonfinite(text: str) -> float | None:
    """``"error"`` -> None (reject), ``"fill:VALUE"`` -> VALUE (a finite float).

    Raises:
        ValueError: anything else, naming the option.

    Example:
        >>> parse_nonfinite("fill:0"), parse_nonfinite("error")
        (0.0, None)
    """
    text = str(text).strip()
    if text == "error":
        return None
    kind, _, value = text.partition(":")
    try:
        number = float(value) if kind == "fill" and value else math.nan
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"--nonfinite expects 'error' or 'fill:VALUE' with a finite number, got {text!r}")
    return number


def nonfinite_mask(array: np.ndarray) -> np.ndarray | None:
    """Boolean mask of the non-finite values of a float array; None when there are none (or it is not float)."""
    if array.dtype.kind not in "fc":
        return None
    finite = np.isfinite(array)
    return None if finite.all() else ~finite


def describe(values: np.ndarray, total: int) -> str:
    """``"4 non-finite voxels (2 NaN, 1 +Inf, 1 -Inf) of 120"`` for the non-finite ``values`` of an image."""
    kinds = [(int(np.isnan(values).sum()), "NaN"), (int(np.isposinf(values).sum()), "+Inf"),
             (int(np.isneginf(values).sum()), "-Inf")]
    detail = ", ".join(f"{n} {name}" for n, name in kinds if n)
    return f"{values.size} non-finite voxel{'s' if values.size != 1 else ''} ({detail}) of {total}"


def reject_or_fill(path, array: np.ndarray, mask: np.ndarray | None, fill: float | None,
                   values: np.ndarray | None = None, where: str = "") -> tuple[np.ndarray, int]:
    """``(array, number filled)``: ``array`` unchanged when ``mask`` is None, else filled with ``fill``.

    Args:
        path: the file named by the error.
        array: the image data; filled in place (it must be the reader's own copy).
        mask: its non-finite voxels (`nonfinite_mask`), or None.
        fill: the fill value, or None to raise.
        values: the non-finite values as stored (when ``array`` no longer holds them), for the message.
        where: extra context for the message (``" in 2 slices (first: IM0004.dcm)"``).

    Raises:
        InputError: ``mask`` marks voxels and ``fill`` is None.
    """
    if mask is None:
        return array, 0
    if fill is None:
        found = array[mask] if values is None else values
        raise InputError(path, f"{describe(found, int(array.size))}{where}; fix the source, or fill them on "
                               "purpose (readers: fill_nonfinite=VALUE; converters of NIfTI/MHD/NRRD images: "
                               "--nonfinite fill:VALUE)")
    array[mask] = fill
    return array, int(mask.sum())


__all__ = ["NONFINITE_HELP", "describe", "nonfinite_mask", "parse_nonfinite", "reject_or_fill"]
