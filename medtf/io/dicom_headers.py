"""Per-file DICOM header facts needed to stack slices, read once with ``stop_before_pixels``.

`read_header` parses a file's header a single time and records where the PixelData value starts, so
`read_pixels` can read the raw bytes of an uncompressed image without parsing the header again. Only
non-identifying attributes are kept (see ``METADATA_KEYWORDS``).
"""

from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path

import numpy as np
import pydicom
from pydicom import config as _pydicom_config
from pydicom import hooks as _pydicom_hooks
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag

from medtf.io.errors import InputError, SeriesGeometryError, UnreadableDicomError

METADATA_KEYWORDS = ("Modality", "SeriesDescription", "SeriesInstanceUID", "StudyInstanceUID",
                     "FrameOfReferenceUID", "Manufacturer", "SOPClassUID")
_NATIVE = {"1.2.840.10008.1.2": ("<", False), "1.2.840.10008.1.2.1": ("<", True), "1.2.840.10008.1.2.2": (">", True)}
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UC", b"UR", b"UT"}


@dataclasses.dataclass
class SliceHeader:
    """What one DICOM file contributes to a series; ``positions`` has one entry per frame."""

    path: Path
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str
    description: str
    frame_of_reference_uid: str
    rows: int
    cols: int
    n_frames: int
    has_pixels: bool
    positions: list[tuple[float, float, float]] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None  # (row spacing = y, column spacing = x)
    slice_thickness: float | None
    spacing_between_slices: float | None
    rescale: list[tuple[float, float]]  # (slope, intercept) per frame
    metadata: dict
    problems: list[str] = dataclasses.field(default_factory=list)
    transfer_syntax: str = ""
    bits_allocated: int = 16
    bits_stored: int = 16
    pixel_representation: int = 0
    samples_per_pixel: int = 1
    pixel_value_offset: int | None = None  # byte offset of the native PixelData value in the file
    pixel_length: int | None = None
    series_number: int | None = None


def _floats(value, n: int | None = None) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    try:
        out = tuple(float(v) for v in (value if isinstance(value, (list, tuple, pydicom.multival.MultiValue))
                                       else [value]))
    except (TypeError, ValueError):
        return None
    return out if n is None or len(out) == n else None


def _first_float(value) -> float | None:
    vals = _floats(value)
    return vals[0] if vals else None


# --- Fast element access --------------------------------------------------------------------------------------
# `ds.get(keyword)` costs ~15 us per element (keyword lookup, raw-value hooks, DataElement creation); a header
# needs ~25 of them. The helpers below decode the raw bytes of plain elements directly (little work per value) and
# hand anything unusual (unexpected VR, non-ASCII or multi-valued text, unparsable numbers, already converted
# elements) to pydicom, so the values are exactly those `ds.get` gives.

_TAGS = {kw: BaseTag(tag_for_keyword(kw)) for kw in (
    "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "FrameOfReferenceUID", "Modality",
    "SeriesDescription", "SeriesNumber", "Manufacturer", "Rows", "Columns", "NumberOfFrames", "BitsAllocated",
    "BitsStored", "PixelRepresentation", "SamplesPerPixel", "ImageOrientationPatient", "ImagePositionPatient",
    "PixelSpacing",
    "SliceThickness", "SpacingBetweenSlices", "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth",
    "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")}
_TEXT_VR = {"SeriesInstanceUID": "UI", "SOPInstanceUID": "UI", "SOPClassUID": "UI", "StudyInstanceUID": "UI",
            "FrameOfReferenceUID": "UI", "Modality": "CS", "SeriesDescription": "LO", "Manufacturer": "LO"}
_SLOW = object()
_DEFAULT_RAW_HOOKS = (_pydicom_hooks.raw_element_vr, _pydicom_hooks.raw_element_value)


def _fast_access_ok() -> bool:
    """Direct decoding matches pydicom only under its default value settings and hooks."""
    c = _pydicom_config
    return (c.settings.reading_validation_mode != c.RAISE and not c.use_none_as_empty_text_VR_value
            and not c.use_DS_decimal and not c.use_DS_numpy and not c.use_IS_numpy
            and (_pydicom_hooks.hooks.raw_element_vr, _pydicom_hooks.hooks.raw_element_value) == _DEFAULT_RAW_HOOKS)


class _Elements:
    """`ds.get`-equivalent accessors for the header keywords; ``fast=False`` always goes through pydicom."""

    __slots__ = ("ds", "d")

    def __init__(self, ds, fast: bool):
        self.ds = ds
        d = getattr(ds, "_dict", None) if fast else None
        self.d = d if isinstance(d, dict) else None

    def _raw(self, kw: str, vr: str):
        """Raw value bytes of ``kw``: None when absent, `_SLOW` when pydicom must convert it."""
        if self.d is None:
            return _SLOW
        elem = self.d.get(_TAGS[kw])
        if elem is None:
            return None
        if type(elem) is not RawDataElement or elem.VR not in (vr, None) or type(elem.value) is not bytes:
            return _SLOW
        return elem.value

    def present(self, kw: str) -> bool:
        return _TAGS[kw] in self.d if self.d is not None else kw in self.ds

    def text(self, kw: str) -> str:
        """``str(ds.get(kw, "") or "")`` for the UI/CS/LO keywords."""
        b = self._raw(kw, _TEXT_VR[kw])
        if b is None:
            return ""
        if b is not _SLOW and b.isascii() and b"\\" not in b and b"\x1b" not in b:
            return b.decode("ascii").rstrip("\x00 ")
        return str(self.ds.get(kw, "") or "")

    def uint(self, kw: str, default: int) -> int:
        """``int(ds.get(kw, default) or default)`` for single US values."""
        b = self._raw(kw, "US")
        if b is None:
            return default
        if b is not _SLOW:
            if len(b) == 2:
                return int.from_bytes(b, "little" if self.d[_TAGS[kw]].is_little_endian else "big") or default
            if not b:
                return default
        return int(self.ds.get(kw, default) or default)

    def int_string(self, kw: str, default: int) -> int:
        """``int(ds.get(kw, default) or default)`` for IS values."""
        b = self._raw(kw, "IS")
        if b is None or b == b"":
            return default
        if b is not _SLOW:
            try:
                return int(b) or default
            except ValueError:
                pass
        return int(self.ds.get(kw, default) or default)

    def floats(self, kw: str, n: int | None = None) -> tuple[float, ...] | None:
        """``_floats(ds.get(kw), n)`` for DS values."""
        b = self._raw(kw, "DS")
        if b is None or b == b"":
            return None
        if b is not _SLOW:
            try:
                out = tuple([float(v) for v in b.rstrip(b" \x00").split(b"\\")])
            except ValueError:
                pass
            else:
                return out if n is None or len(out) == n else None
        return _floats(self.ds.get(kw), n)

    def first_float(self, kw: str) -> float | None:
        vals = self.floats(kw)
        return vals[0] if vals else None


def _item(ds, *keywords):
    """``ds.K1[0].K2[0]...``, or None when any level is missing/empty."""
    for kw in keywords:
        seq = ds.get(kw) if ds is not None else None
        if not seq:
            return None
        ds = seq[0]
    return ds


def _group(per_frame_item, shared_item, keyword):
    """A functional group macro item: the per-frame one when present, else the shared one."""
    return _item(per_frame_item, keyword) or _item(shared_item, keyword)


def _pixel_element(fp, ts: str) -> tuple[int | None, int | None, bool]:
    """At the file position where ``stop_before_pixels`` stopped: (value offset, length, has PixelData)."""
    start = fp.tell()
    head = fp.read(12)
    if not head:
        return None, None, False
    if len(head) < 8 or (head[:4] in (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10") and len(head) < 12):
        raise EOFError("file ends inside the PixelData element header")
    if ts not in _NATIVE:  # compressed: decoded by pydicom later; deflated: positions are meaningless, check later
        return None, None, ts == "1.2.840.10008.1.2.1.99" or head[:4] == b"\xe0\x7f\x10\x00"
    endian, explicit = _NATIVE[ts]
    group, elem = struct.unpack(endian + "HH", head[:4])
    if (group, elem) != (0x7FE0, 0x0010):
        return None, None, False
    if not explicit:
        (length,) = struct.unpack(endian + "I", head[4:8])
        offset = start + 8
    elif head[4:6] in _LONG_VRS:
        (length,) = struct.unpack(endian + "I", head[8:12])
        offset = start + 12
    else:
        (length,) = struct.unpack(endian + "H", head[6:8])
        offset = start + 8
    if length == 0xFFFFFFFF:  # encapsulated in a native transfer syntax: let pydicom handle it
        return None, None, True
    return offset, length, True


def _transfer_syntax(ds) -> str:
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
    if ts:
        return ts
    implicit, little = getattr(ds, "original_encoding", (True, True))
    return "1.2.840.10008.1.2" if implicit else ("1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2")


def _truncation(ds, size: int, meta_start: int) -> str | None:
    """Why the header looks cut short (pydicom stops silently at end of file), or None."""
    meta = getattr(ds, "file_meta", None)
    group_length = meta.get("FileMetaInformationGroupLength") if meta is not None else None
    if group_length is not None and meta_start + 12 + int(group_length) > size:
        return "file ends inside the file meta information"
    if len(ds) == 0:
        return "no data elements after the file meta information"
    last = ds.get_item(max(map(int, ds.keys())))  # plain ints: BaseTag comparisons are slow Python calls
    value = getattr(last, "value", None)
    length = getattr(last, "length", 0xFFFFFFFF)
    if isinstance(value, bytes) and length != 0xFFFFFFFF and len(value) < length:
        return f"file ends inside element {last.tag} ({len(value)} of {length} bytes)"
    value_tell = getattr(last, "value_tell", None)
    if value_tell is not None and length != 0xFFFFFFFF and 0 < size - (value_tell + length) < 8:
        return f"file ends inside the element header after {last.tag}"
    return None


# What a file that is not DICOM most likely is, from its first bytes (named in messages: "a PNG image").
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"II*\x00", "a TIFF image"),
          (b"MM\x00*", "a TIFF image"), (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive"),
          (b"\x1f\x8b", "a gzip file (e.g. .nii.gz)"), (b"BM", "a BMP image"), (b"GIF8", "a GIF image"))


def file_kind(head: bytes) -> str | None:
    """What a non-DICOM file is from its first bytes (``"a PNG image"``), or None when unknown."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "a NIfTI image"
    return None


def _partial_series_uid(ds) -> str | None:
    """The SeriesInstanceUID of a damaged header when the part before the damage holds it."""
    try:
        return str(ds.get("SeriesInstanceUID", "") or "").strip() or None
    except Exception:  # noqa: BLE001 - the element itself may be the damaged one
        return None


def read_header(path: str | Path) -> SliceHeader:
    """Parse one file's header (no pixel data) into a `SliceHeader`.

    Raises:
        UnreadableDicomError: a DICOM file (or one that starts like a DICOM dataset) whose header is truncated or
            corrupt, or a file that cannot be opened.
        InputError: not DICOM (the message says what it looks like, e.g. a PNG image), or no SeriesInstanceUID.
    """
    path = Path(path)
    ds, head = None, b""
    try:
        with open(path, "rb") as fp:
            head = fp.read(348)
            # Files without the preamble (older writers) are read only when they start like a DICOM dataset.
            force = head[128:132] != b"DICM" and head[:2] in (b"\x02\x00", b"\x08\x00") and len(head) >= 8
            fp.seek(0)
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=force)
            ts = _transfer_syntax(ds)
            truncated = _truncation(ds, os.fstat(fp.fileno()).st_size, meta_start=0 if force else 132)
            if truncated:
                raise UnreadableDicomError(path, f"truncated DICOM header: {truncated}", _partial_series_uid(ds))
            offset, length, has_pixels = _pixel_element(fp, ts)
    except InputError:
        raise
    except InvalidDicomError:
        kind = file_kind(head)
        raise InputError(path, f"not a DICOM file ({kind + ', ' if kind else ''}no 'DICM' marker after the "
                               "128-byte preamble)") from None
    except OSError as exc:
        raise UnreadableDicomError(path, f"cannot open: {exc.strerror or exc}") from None
    except Exception as exc:  # pydicom raises a variety of errors on damaged files
        raise UnreadableDicomError(path, f"truncated or corrupt DICOM header ({type(exc).__name__}: {exc})",
                                   _partial_series_uid(ds) if ds is not None else None) from None
    try:
        return _parse(path, ds, ts, offset, length, has_pixels)
    except InputError:
        raise
    except Exception as exc:
        raise UnreadableDicomError(path, f"unreadable header value ({type(exc).__name__}: {exc})",
                                   _partial_series_uid(ds)) from None


def _series_number(e: _Elements) -> int | None:
    if not e.present("SeriesNumber"):
        return None
    try:
        return e.int_string("SeriesNumber", 0)
    except (TypeError, ValueError):  # an unparsable SeriesNumber only loses the number in messages
        return None


def _parse(path, ds, ts, offset, length, has_pixels) -> SliceHeader:
    e = _Elements(ds, _fast_access_ok())
    series_uid = e.text("SeriesInstanceUID")
    if not series_uid:
        raise InputError(path, "no SeriesInstanceUID (DICOMDIR or not a series object)")
    rows, cols = e.uint("Rows", 0), e.uint("Columns", 0)
    n_frames = e.int_string("NumberOfFrames", 1) if rows and cols else 0  # 0 for RTSTRUCT/RTPLAN/SR
    problems = []
    shared = _item(ds, "SharedFunctionalGroupsSequence") if e.present("SharedFunctionalGroupsSequence") else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") if e.present("PerFrameFunctionalGroupsSequence") else None
    orientation = e.floats("ImageOrientationPatient", 6)
    pixel_spacing = e.floats("PixelSpacing", 2)
    thickness = e.first_float("SliceThickness")
    between = e.first_float("SpacingBetweenSlices")
    slope, intercept = e.first_float("RescaleSlope"), e.first_float("RescaleIntercept")
    rescale = [(1.0 if slope is None else slope, 0.0 if intercept is None else intercept)] * n_frames
    window = (e.first_float("WindowCenter"), e.first_float("WindowWidth"))
    ipp = e.floats("ImagePositionPatient", 3)
    positions = [ipp] if ipp is not None and n_frames == 1 else None
    if per_frame:  # Enhanced multi-frame: geometry and rescale live in the functional groups
        if len(per_frame) != n_frames:
            problems.append(f"{len(per_frame)} per-frame functional groups for {n_frames} frames")
        positions, orients, rescale = [], [], []
        for f, fg in enumerate(per_frame):
            pos = _floats(getattr(_group(fg, shared, "PlanePositionSequence"), "ImagePositionPatient", None), 3)
            ori = _floats(getattr(_group(fg, shared, "PlaneOrientationSequence"), "ImageOrientationPatient", None), 6)
            if pos is None or ori is None:
                problems.append(f"frame {f + 1} lacks PlanePositionSequence/PlaneOrientationSequence")
            positions.append(pos)
            orients.append(ori)
            pvt = _group(fg, shared, "PixelValueTransformationSequence")
            s = _first_float(getattr(pvt, "RescaleSlope", None))
            i = _first_float(getattr(pvt, "RescaleIntercept", None))
            rescale.append((1.0 if s is None else s, 0.0 if i is None else i))
        orientation = orients[0] if orients else None
        if any(o is not None and orientation is not None and not np.allclose(o, orientation, atol=1e-4)
               for o in orients):
            problems.append("frames have different ImageOrientationPatient")
        measures = _item(per_frame[0], "PixelMeasuresSequence") or _item(shared, "PixelMeasuresSequence")
        if measures is not None:
            pixel_spacing = _floats(measures.get("PixelSpacing"), 2)
            thickness = _first_float(measures.get("SliceThickness"))
            between = _first_float(measures.get("SpacingBetweenSlices"))
        voi = _item(shared, "FrameVOILUTSequence") or _item(per_frame[0], "FrameVOILUTSequence")
        if voi is not None:
            window = (_first_float(voi.get("WindowCenter")), _first_float(voi.get("WindowWidth")))
        if any(p is None for p in positions):
            positions = None
    elif n_frames > 1 and ipp is not None and orientation is not None and (between or thickness):
        # Legacy multi-frame: frames stacked along the normal from the first position.
        normal = np.cross(orientation[:3], orientation[3:])
        step = between or thickness
        positions = [tuple(np.asarray(ipp) + k * step * normal) for k in range(n_frames)]

    metadata = {kw: e.text(kw) for kw in METADATA_KEYWORDS}
    number = _series_number(e)
    if number is not None:
        metadata["SeriesNumber"] = number
    if window[0] is not None and window[1] is not None:
        metadata["WindowCenter"], metadata["WindowWidth"] = window
    return SliceHeader(
        path=path, series_uid=series_uid, sop_uid=e.text("SOPInstanceUID") if e.d is not None
        else str(ds.get("SOPInstanceUID", "")), sop_class_uid=metadata["SOPClassUID"] if e.d is not None
        else str(ds.get("SOPClassUID", "")), modality=metadata["Modality"],
        description=metadata["SeriesDescription"], frame_of_reference_uid=metadata["FrameOfReferenceUID"],
        rows=rows, cols=cols, n_frames=n_frames,
        has_pixels=has_pixels, positions=positions, orientation=orientation, pixel_spacing=pixel_spacing,
        slice_thickness=thickness, spacing_between_slices=between, rescale=rescale, metadata=metadata,
        problems=problems, transfer_syntax=ts, bits_allocated=e.uint("BitsAllocated", 16),
        bits_stored=e.uint("BitsStored", 16), pixel_representation=e.uint("PixelRepresentation", 0),
        samples_per_pixel=e.uint("SamplesPerPixel", 1), pixel_value_offset=offset, pixel_length=length,
        series_number=number,
    )


def raw_pixel_dtype(h: SliceHeader) -> np.dtype | None:
    """Dtype (with the file's byte order) of uncompressed PixelData read straight from the file, or None when
    the file needs pydicom's decoders (compressed, bit-packed, encapsulated)."""
    if h.pixel_value_offset is None or h.bits_allocated not in (8, 16, 32) or h.bits_stored != h.bits_allocated:
        return None
    dtype = np.dtype(f"{'i' if h.pixel_representation else 'u'}{h.bits_allocated // 8}")
    return dtype.newbyteorder(_NATIVE[h.transfer_syntax][0])


def read_pixels_into(h: SliceHeader, out: np.ndarray) -> None:
    """Read the stored values of a file with a `raw_pixel_dtype` into ``out`` (C-contiguous, native byte order,
    ``n_frames * rows * cols`` values of that dtype) without intermediate copies.

    Raises:
        InputError: colour images or truncated pixel data (same checks and messages as `read_pixels`).
    """
    if h.samples_per_pixel != 1:
        raise InputError(h.path, f"SamplesPerPixel={h.samples_per_pixel} (colour) is not supported for series")
    dtype = raw_pixel_dtype(h)
    if dtype is None or out.dtype != dtype.newbyteorder("=") or not out.flags.c_contiguous:
        raise ValueError(f"read_pixels_into: {h.path} cannot be read into a {out.dtype} array")
    expected = h.n_frames * h.rows * h.cols * dtype.itemsize
    if out.nbytes != expected:
        raise ValueError(f"read_pixels_into: output holds {out.nbytes} bytes, {h.path} has {expected}")
    if h.pixel_length is not None and h.pixel_length < expected:
        raise InputError(h.path, f"PixelData holds {h.pixel_length} bytes, Rows x Columns x frames needs "
                                 f"{expected}")
    with open(h.path, "rb", buffering=0) as fp:
        fp.seek(h.pixel_value_offset)
        view = memoryview(out.reshape(-1)).cast("B")
        got = 0
        while got < expected:  # raw reads may return short counts
            n = fp.readinto(view[got:])
            if not n:
                break
            got += n
    if got < expected:
        raise InputError(h.path, f"truncated pixel data: file ends after {got} of {expected} bytes")
    if not dtype.isnative:
        out.byteswap(inplace=True)


def read_pixels(h: SliceHeader) -> np.ndarray:
    """Stored pixel values of all frames of one file, ``(n_frames, rows, cols)``; no rescale applied.

    Raises:
        InputError: truncated pixel data, colour images, undecodable compressed data.
        SeriesGeometryError: the file has no PixelData.
    """
    if h.samples_per_pixel != 1:
        raise InputError(h.path, f"SamplesPerPixel={h.samples_per_pixel} (colour) is not supported for series")
    shape = (h.n_frames, h.rows, h.cols)
    dtype = raw_pixel_dtype(h)
    if dtype is not None:
        out = np.empty(shape, dtype.newbyteorder("="))
        read_pixels_into(h, out)
        return out
    try:
        ds = pydicom.dcmread(h.path)
    except Exception as exc:
        raise InputError(h.path, f"truncated or corrupt DICOM file ({type(exc).__name__}: {exc})") from None
    if "PixelData" not in ds:
        raise SeriesGeometryError(h.path, "missing PixelData")
    try:
        array = ds.pixel_array
    except Exception as exc:
        raise InputError(h.path, f"cannot decode pixel data (transfer syntax {h.transfer_syntax}: {exc})") from None
    return np.asarray(array).reshape(shape)
