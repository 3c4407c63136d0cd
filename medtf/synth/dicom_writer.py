"""Write a `Volume` as a DICOM CT/MR series (one file per slice) or as one Enhanced multi-frame file.

Used by the tests and by the synthetic-data generators. Geometry is written from the `Volume` exactly:
the row cosine (``ImageOrientationPatient[:3]``) is the x index axis, the column cosine the y axis, and slice
``k`` sits at ``origin + k * spacing_z * direction[:, 2]``. Everything is deterministic: UIDs derive from
``seed`` through ``pydicom.uid.generate_uid(entropy_srcs=...)``, so the same call writes the same bytes.

Single-frame CT/MR series pass dicom3tools' ``dciodvfy`` without errors (tests/dicom_validation.py). The Enhanced
multi-frame writer is a reader-test fixture only: it leaves out most of the Enhanced CT/MR functional groups.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

from medtf.io.volume import Volume

SOP_CLASSES = {
    ("CT", False): "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    ("MR", False): "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    ("CT", True): "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    ("MR", True): "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
}
STUDY_DATE = "20240102"
STUDY_TIME = "101500"
_AUTO = "auto"
#: MR Image module type 2 timing written by default (a T2-weighted turbo spin echo); ``extra_tags`` override it.
MR_TIMING = {"RepetitionTime": 5000.0, "EchoTime": 100.0, "EchoTrainLength": 16}


def _ds(value: float) -> DSfloat:
    """A DS value that fits the 16-character limit (full precision otherwise)."""
    return DSfloat(float(value), auto_format=True)


def _uid(*parts: Any) -> str:
    return generate_uid(entropy_srcs=["medtf.synth", *[str(p) for p in parts]])


def _geometry(volume: Volume):
    if volume.ndim != 3 or volume.is_vector:
        raise ValueError(f"expected a scalar 3D Volume, got array {volume.array.shape} (is_vector={volume.is_vector})")
    d = volume.direction_matrix
    row, col, normal = d[:, 0], d[:, 1], d[:, 2]
    spacing = np.asarray(volume.spacing)
    origin = np.asarray(volume.origin)
    positions = origin[None, :] + np.arange(volume.array.shape[0])[:, None] * spacing[2] * normal[None, :]
    return row, col, normal, spacing, positions


def _stored_values(array: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Round ``(value - intercept) / slope`` to the nearest stored integer, as int16 or else uint16."""
    if slope == 0:
        raise ValueError("rescale_slope must be non-zero")
    stored = np.rint((np.asarray(array, dtype=np.float64) - intercept) / slope)
    lo, hi = (float(stored.min()), float(stored.max())) if stored.size else (0.0, 0.0)
    if lo >= -32768 and hi <= 32767:
        return stored.astype(np.int16)
    if lo >= 0 and hi <= 65535:
        return stored.astype(np.uint16)
    raise ValueError(
        f"values [{array.min()}, {array.max()}] do not fit 16-bit storage with slope={slope}, intercept={intercept}"
    )


def _defaults(modality: str, rescale_intercept, window):
    modality = modality.upper()
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality must be 'CT' or 'MR', got {modality!r}")
    if rescale_intercept is None:
        rescale_intercept = -1024.0 if modality == "CT" else 0.0
    if isinstance(window, str) and window == _AUTO:
        window = (40.0, 400.0) if modality == "CT" else None
    return modality, float(rescale_intercept), window


def _common_dataset(
    modality: str, *, patient_name, patient_id, birth_date, study_uid, series_uid, frame_of_reference_uid,
    series_description, stored: np.ndarray, window, seed,
) -> Dataset:
    """Patient/study/series/frame-of-reference/image-pixel attributes shared by every file of the series."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = STUDY_DATE
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = STUDY_TIME
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = "medtf synthetic"
    ds.InstitutionName = "SYNTH"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic study"
    ds.SeriesDescription = series_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = "O"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = int(seed) % 1000 + 1
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[2])
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    if modality == "CT":
        ds.KVP = _ds(120)
    else:
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.MagneticFieldStrength = _ds(1.5)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = _ds(window[0]), _ds(window[1])
    return ds


def finish_dataset(ds: Dataset, sop_class: str, sop_uid: str, extra_tags: dict | None) -> Dataset:
    """Set the SOP Common identifiers, extra tags and an explicit-VR little-endian file meta header."""
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    for keyword, value in (extra_tags or {}).items():
        setattr(ds, keyword, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDTF_SYNTH"
    ds.file_meta = meta
    return ds


def write_dicom_series(
    volume: Volume,
    out_dir: str | os.PathLike,
    *,
    modality: str = "CT",
    patient_name: str = "SYNTH^PATIENT",
    patient_id: str = "SYN0001",
    birth_date: str = "19700101",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_description: str = "",
    rescale_slope: float = 1.0,
    rescale_intercept: float | None = None,
    window: tuple[float, float] | None | str = _AUTO,
    file_names: str | Callable[[int, Dataset], str] = "sop",
    instance_numbers: Sequence[int] | None = None,
    seed: int = 0,
    body_part: str | None = None,
    laterality: str | None = None,
    extra_tags: dict[str, Any] | None = None,
) -> list[Path]:
    """Write one single-frame CT/MR Image Storage file per z-slice of ``volume``.

    Args:
        volume: scalar 3D volume, array ``(z, y, x)``; its values become ``stored * slope + intercept``
            (stored rounded to the nearest integer, int16 or uint16 when the range needs it).
        out_dir: created if needed.
        modality: ``"CT"`` or ``"MR"``.
        rescale_intercept: defaults to ``-1024`` for CT and ``0`` for MR.
        window: ``(center, width)``; default ``(40, 400)`` for CT, none for MR; ``None`` writes no window.
        file_names: ``"sop"`` (``<SOPInstanceUID>.dcm``), ``"index"`` (``IM0000.dcm`` by z index) or a callable
            ``(z_index, dataset) -> file name``.
        instance_numbers: InstanceNumber per z-slice (default ``1..n``); need not be monotonic.
        seed: entropy for every generated UID (same seed and arguments -> identical files).
        body_part: ``BodyPartExamined`` (e.g. ``"BREAST"``, ``"PROSTATE"``).
        laterality: ``Laterality`` (``"L"``/``"R"``) of a paired body part. Without ``body_part`` and
            ``laterality`` it is written empty (type 2C: unknown), which dciodvfy accepts with a warning.
        extra_tags: ``{keyword: value}`` set on every dataset after the defaults.

    Returns:
        The written paths, in z order.

    Example:
        >>> paths = write_dicom_series(vol, tmp_path / "ct", series_description="synthetic CT")
    """
    modality, intercept, window = _defaults(modality, rescale_intercept, window)
    row, col, normal, spacing, positions = _geometry(volume)
    nz = volume.array.shape[0]
    if instance_numbers is None:
        instance_numbers = list(range(1, nz + 1))
    if len(instance_numbers) != nz:
        raise ValueError(f"instance_numbers has {len(instance_numbers)} values for {nz} slices")
    study_uid = study_uid or _uid("study", seed)
    series_uid = series_uid or _uid("series", seed, modality, series_description)
    frame_of_reference_uid = frame_of_reference_uid or _uid("frame-of-reference", seed)
    stored = _stored_values(volume.array, float(rescale_slope), intercept)
    sop_class = SOP_CLASSES[(modality, False)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    paths = []
    for k in range(nz):
        ds = _common_dataset(
            modality, patient_name=patient_name, patient_id=patient_id, birth_date=birth_date,
            study_uid=study_uid, series_uid=series_uid, frame_of_reference_uid=frame_of_reference_uid,
            series_description=series_description, stored=stored, window=window, seed=seed,
        )
        # Value 3: AXIAL is a CT defined term; MR has none for a plain acquired image (OTHER).
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if modality == "CT" else "OTHER"]
        if body_part:
            ds.BodyPartExamined = body_part
        if laterality or not body_part:
            ds.Laterality = laterality or ""
        if modality == "MR":
            ds.RepetitionTime, ds.EchoTime = _ds(MR_TIMING["RepetitionTime"]), _ds(MR_TIMING["EchoTime"])
            ds.EchoTrainLength = MR_TIMING["EchoTrainLength"]
        ds.InstanceNumber = int(instance_numbers[k])
        ds.SliceThickness = _ds(spacing[2])
        ds.SpacingBetweenSlices = _ds(spacing[2])
        ds.ImagePositionPatient = [_ds(v) for v in positions[k]]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
        ds.SliceLocation = _ds(float(positions[k] @ normal))
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # [row spacing (y), column spacing (x)]
        if modality == "CT" or rescale_slope != 1.0 or intercept != 0.0:
            ds.RescaleIntercept = _ds(intercept)
            ds.RescaleSlope = _ds(rescale_slope)
            ds.RescaleType = "HU" if modality == "CT" else "US"
        ds.PixelData = np.ascontiguousarray(stored[k]).astype(stored.dtype.newbyteorder("<")).tobytes()
        finish_dataset(ds, sop_class, _uid("sop", series_uid, k), extra_tags)
        if file_names == "sop":
            name = f"{ds.SOPInstanceUID}.dcm"
        elif file_names == "index":
            name = f"IM{k:04d}.dcm"
        elif callable(file_names):
            name = file_names(k, ds)
        else:
            raise ValueError(f"file_names must be 'sop', 'index' or a callable, got {file_names!r}")
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_multiframe(
    volume: Volume,
    path: str | os.PathLike,
    *,
    modality: str = "CT",
    patient_name: str = "SYNTH^PATIENT",
    patient_id: str = "SYN0001",
    birth_date: str = "19700101",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_description: str = "",
    rescale_slope: float = 1.0,
    rescale_intercept: float | None = None,
    window: tuple[float, float] | None | str = _AUTO,
    seed: int = 0,
    extra_tags: dict[str, Any] | None = None,
) -> Path:
    """Write ``volume`` as one Enhanced CT/MR Image Storage file, one frame per z-slice.

    Geometry lives in the functional groups: shared ``PixelMeasuresSequence`` (PixelSpacing, SliceThickness,
    SpacingBetweenSlices), ``PlaneOrientationSequence`` and ``PixelValueTransformationSequence`` (rescale),
    and per frame ``PlanePositionSequence`` plus ``FrameContentSequence``. Arguments as `write_dicom_series`.
    """
    modality, intercept, window = _defaults(modality, rescale_intercept, window)
    row, col, normal, spacing, positions = _geometry(volume)
    nz = volume.array.shape[0]
    study_uid = study_uid or _uid("study", seed)
    series_uid = series_uid or _uid("series", seed, modality, series_description, "enhanced")
    frame_of_reference_uid = frame_of_reference_uid or _uid("frame-of-reference", seed)
    stored = _stored_values(volume.array, float(rescale_slope), intercept)
    ds = _common_dataset(
        modality, patient_name=patient_name, patient_id=patient_id, birth_date=birth_date,
        study_uid=study_uid, series_uid=series_uid, frame_of_reference_uid=frame_of_reference_uid,
        series_description=series_description, stored=stored, window=None, seed=seed,
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.ContentQualification = "RESEARCH"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.NumberOfFrames = nz
    dim_org_uid = _uid("dimension-organization", series_uid)
    ds.DimensionOrganizationSequence = DicomSequence([Dataset()])
    ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = dim_org_uid
    index = Dataset()
    index.DimensionOrganizationUID = dim_org_uid
    index.DimensionIndexPointer = 0x00209057  # InStackPositionNumber
    index.FunctionalGroupPointer = 0x00209111  # FrameContentSequence
    index.DimensionDescriptionLabel = "In-Stack Position"
    ds.DimensionIndexSequence = DicomSequence([index])

    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
    measures.SliceThickness = _ds(spacing[2])
    measures.SpacingBetweenSlices = _ds(spacing[2])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    orientation = Dataset()
    orientation.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    transform = Dataset()
    transform.RescaleIntercept = _ds(intercept)
    transform.RescaleSlope = _ds(rescale_slope)
    transform.RescaleType = "HU" if modality == "CT" else "US"
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    if window is not None:
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = _ds(window[0]), _ds(window[1])
        shared.FrameVOILUTSequence = DicomSequence([voi])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    frames = []
    for k in range(nz):
        frame = Dataset()
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = k + 1
        content.DimensionIndexValues = [k + 1]
        frame.FrameContentSequence = DicomSequence([content])
        position = Dataset()
        position.ImagePositionPatient = [_ds(v) for v in positions[k]]
        frame.PlanePositionSequence = DicomSequence([position])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.PixelData = np.ascontiguousarray(stored).astype(stored.dtype.newbyteorder("<")).tobytes()
    finish_dataset(ds, SOP_CLASSES[(modality, True)], _uid("sop", series_uid, "multiframe"), extra_tags)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


__all__ = ["write_dicom_series", "write_multiframe", "SOP_CLASSES"]
