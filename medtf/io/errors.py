"""Errors raised by readers. Each names the offending file(s) and a human reason, never patient identifiers."""

from __future__ import annotations

import os


class InputError(Exception):
    """A source file or folder cannot be turned into data.

    Converters catch this per case, record ``path`` and ``reason`` in the manifest and carry on.
    """

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = os.fspath(path) if path is not None else None
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


class SeriesGeometryError(InputError):
    """A DICOM series has missing/duplicate slices, uneven spacing or inconsistent orientation."""


class FrameOfReferenceError(InputError):
    """An RT object refers to a different FrameOfReferenceUID than the image it is rasterised onto."""


class UnreadableDicomError(InputError):
    """A file that is, or starts like, DICOM but cannot be read: truncated or corrupt header, no permission.

    Such a file may be a slice of any series beside it, so `medtf.io.scan_dicom_folder` attaches it to the series
    it can belong to and reading those series fails naming it. ``series_uid`` is the SeriesInstanceUID when the
    readable part of the header names it, else None (never put into ``reason``).
    """

    def __init__(self, path, reason: str, series_uid: str | None = None):
        super().__init__(path, reason)
        self.series_uid = series_uid
