"""Readers that turn DICOM series, research image formats and 2D slices into `Volume` objects."""

from medtf.io import errors
from medtf.io.dicom_series import DicomScan, SeriesInfo, read_dicom_series, scan_dicom_folder
from medtf.io.errors import FrameOfReferenceError, InputError, SeriesGeometryError
from medtf.io.images import read_image, read_slice_2d
from medtf.io.nonfinite import parse_nonfinite
from medtf.io.volume import Volume

__all__ = [
    "DicomScan",
    "FrameOfReferenceError",
    "InputError",
    "SeriesGeometryError",
    "SeriesInfo",
    "Volume",
    "errors",
    "parse_nonfinite",
    "read_dicom_series",
    "read_image",
    "read_slice_2d",
    "scan_dicom_folder",
]
