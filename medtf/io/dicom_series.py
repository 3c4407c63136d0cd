"""Read DICOM image series into a `Volume` with pydicom, checking the geometry instead of trusting file order.

The hot path reads every header exactly once (``stop_before_pixels``) and remembers where the pixel data
starts; pixel bytes are then read straight from that offset for uncompressed transfer syntaxes (pydicom's
decoders are used only for compressed ones). The result matches SimpleITK's ``ImageSeriesReader`` (GDCM):
slices sorted along the normal ``row x col`` of ``ImageOrientationPatient``, origin at the first sorted slice,
direction columns ``(row, col, normal)``.

Output dtype rule: voxel values are ``stored * RescaleSlope + RescaleIntercept`` (HU for CT). The array is
``int16`` when every slope and intercept is an integer and all rescaled values fit int16, else ``float32``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medtf.io.dicom_headers import SliceHeader, raw_pixel_dtype, read_header, read_pixels, read_pixels_into
from medtf.io.errors import InputError, SeriesGeometryError, UnreadableDicomError
from medtf.io.nonfinite import nonfinite_mask, reject_or_fill
from medtf.io.volume import Volume

DUPLICATE_TOL_MM = 1e-3
SPACING_RTOL = 0.01
MISSING_FACTOR = 1.5


@dataclasses.dataclass
class SeriesInfo:
    """One series found by `scan_dicom_folder`. ``files`` are sorted by path, not by geometry.

    ``unreadable`` lists ``(path, reason)`` of damaged DICOM files that may belong to this series (see
    `scan_dicom_folder`); `read_dicom_series` refuses the series while there are any.
    """

    series_uid: str
    modality: str
    sop_class_uid: str
    frame_of_reference_uid: str
    description: str
    files: list[Path]
    n_frames: int
    headers: list[SliceHeader] = dataclasses.field(default_factory=list, repr=False, compare=False)
    series_number: int | None = None
    unreadable: list[tuple[Path, str]] = dataclasses.field(default_factory=list, compare=False)

    @property
    def is_image(self) -> bool:
        """True when the files carry an image (Rows/Columns), i.e. not RTSTRUCT/RTPLAN/SR objects."""
        return any(h.rows for h in self.headers) if self.headers else self.n_frames > 0

    def summary(self) -> str:
        """A PHI-free one-line description for error messages and logs (with the SeriesInstanceUID, which the
        converters pseudonymise before anything is written)."""
        return (f"{self.modality or '?'} '{self.description}' ({len(self.files)} files, {self.n_frames} frames) "
                f"uid={self.series_uid}")

    def label(self) -> str:
        """PHI- and UID-free name for messages: ``CT series 3 'Thorax 1mm' (120 slices)``."""
        number = f" {self.series_number}" if self.series_number is not None else " (no SeriesNumber)"
        description = f" '{self.description}'" if self.description else ""
        unit = "slice" if self.n_frames == 1 else "slices"
        return f"{self.modality or '?'} series{number}{description} ({self.n_frames} {unit})"


@dataclasses.dataclass
class DicomScan:
    """Result of `scan_dicom_folder`: series sorted by (modality, description, uid) and the files that are in
    none of them (``skipped``: not DICOM, no SeriesInstanceUID, or damaged; the damaged ones are also in their
    series' ``unreadable``)."""

    folder: Path
    series: list[SeriesInfo]
    skipped: list[tuple[Path, str]]

    def get(self, series_uid: str) -> SeriesInfo:
        for s in self.series:
            if s.series_uid == series_uid:
                return s
        raise InputError(self.folder, f"no series with SeriesInstanceUID {series_uid}; found: {self._listing()}")

    @property
    def image_series(self) -> list[SeriesInfo]:
        return [s for s in self.series if s.is_image]

    def _listing(self, series: Sequence[SeriesInfo] | None = None) -> str:
        return "; ".join(s.summary() for s in (self.series if series is None else series))


def _group(headers: list[SliceHeader]) -> list[SeriesInfo]:
    groups: dict[str, list[SliceHeader]] = {}
    for h in headers:
        groups.setdefault(h.series_uid, []).append(h)
    series = []
    for uid, hs in groups.items():
        hs.sort(key=lambda h: str(h.path))
        first = hs[0]
        series.append(SeriesInfo(
            series_uid=uid, modality=first.modality, sop_class_uid=first.sop_class_uid,
            frame_of_reference_uid=first.frame_of_reference_uid, description=first.description,
            files=[h.path for h in hs], n_frames=sum(h.n_frames for h in hs), headers=hs,
            series_number=first.series_number,
        ))
    series.sort(key=lambda s: (s.modality, s.description, s.series_uid))
    return series


def _attach_unreadable(series: list[SeriesInfo], broken: list[UnreadableDicomError]) -> None:
    """Attach each damaged file to the series it may belong to.

    A file cut inside its header usually no longer names its series. It is attached to the series its readable
    part names when there is one; else to every series with a file in the same folder (a folder holding one
    series: that series); else to every series of the scan (it could be a slice of any of them).
    """
    for exc in broken:
        path = Path(exc.path)
        targets = [s for s in series if exc.series_uid and s.series_uid == exc.series_uid]
        if not targets and not exc.series_uid:
            targets = [s for s in series if any(f.parent == path.parent for f in s.files)] or series
        for s in targets:
            s.unreadable.append((path, exc.reason))


def scan_dicom_folder(folder: str | os.PathLike, recursive: bool = True) -> DicomScan:
    """Read the headers of every file under ``folder`` and group them by SeriesInstanceUID.

    Files that are not DICOM, have truncated headers or lack a SeriesInstanceUID are listed in ``skipped``
    with a reason. Hidden files (``.name``) are ignored. A damaged DICOM file (truncated or corrupt header,
    unreadable) is also attached to the series it may belong to (`SeriesInfo.unreadable`; the series its
    readable part names, else every series in its folder, else every series), so reading such a series fails
    naming the file instead of returning a volume without that slice.

    Raises:
        InputError: the folder does not exist, or holds no readable DICOM file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder" if folder.exists() else "folder does not exist")
    walker = folder.rglob("*") if recursive else folder.glob("*")
    paths = sorted(p for p in walker if p.is_file() and not p.name.startswith("."))
    headers, skipped, broken = [], [], []
    for path in paths:
        try:
            headers.append(read_header(path))
        except InputError as exc:
            skipped.append((path, exc.reason))
            if isinstance(exc, UnreadableDicomError):
                broken.append(exc)
    if not headers:
        detail = f"; skipped {len(skipped)}: " + "; ".join(f"{p.name}: {r}" for p, r in skipped[:5]) if skipped else ""
        raise InputError(folder, f"no DICOM files found ({len(paths)} files){detail}")
    series = _group(headers)
    _attach_unreadable(series, broken)
    return DicomScan(folder=folder, series=series, skipped=skipped)


def _check_readable(info: SeriesInfo) -> None:
    if not info.unreadable:
        return
    (path, reason), more = info.unreadable[0], info.unreadable[1:]
    others = f"; {len(more)} more: {', '.join(p.name for p, _ in more[:5])}" if more else ""
    raise InputError(path, f"unreadable DICOM file in the folder of {info.label()}: {reason}{others}; it may be "
                           "one of the series' slices, so the series is not read: remove or replace it")


def _select(series: list[SeriesInfo], series_uid: str | None, where: str | os.PathLike) -> SeriesInfo:
    listing = "; ".join(s.summary() for s in series)
    if series_uid is not None:
        for s in series:
            if s.series_uid == series_uid:
                return s
        raise InputError(where, f"no series with SeriesInstanceUID {series_uid}; found: {listing}")
    images = [s for s in series if s.is_image]
    if len(images) == 1:
        return images[0]
    if not images:
        raise InputError(where, f"no image series found; found: {listing}")
    raise InputError(where, f"{len(images)} image series found, pass series_uid to pick one: "
                            + "; ".join(s.summary() for s in images))


def read_dicom_series(
    source: str | os.PathLike | Sequence[str | os.PathLike] | SeriesInfo,
    series_uid: str | None = None,
    *,
    fill_nonfinite: float | None = None,
) -> Volume:
    """Read one DICOM image series (single-frame slices or an Enhanced multi-frame file) into a `Volume`.

    Args:
        source: a folder (scanned recursively), one file, a list of files, or a `SeriesInfo` from
            `scan_dicom_folder` (its headers are reused, nothing is read twice).
        series_uid: which series to read when the source holds several image series.
        fill_nonfinite: None (default) rejects a series whose rescaled values hold NaN/Inf (a broken
            RescaleSlope/Intercept, float32 overflow); a number replaces them and
            ``metadata["nonfinite_filled"]`` counts them.

    Returns:
        `Volume` with array ``(z, y, x)`` in the dtype rule of this module, LPS geometry, and ``metadata`` keys
        ``Modality, SeriesDescription, SeriesInstanceUID, StudyInstanceUID, FrameOfReferenceUID, Manufacturer,
        SOPClassUID, WindowCenter, WindowWidth`` (window values as floats, first value; absent when not set),
        ``SeriesNumber`` (int, absent when not set) and ``SOPInstanceUIDs`` (per z-slice in sorted order;
        ``uid#n`` for frame n of a multi-frame file).
        No patient identifiers or dates.

    Raises:
        InputError: unreadable files (also a damaged file beside the series' files, see `scan_dicom_folder`),
            truncated pixel data, several series and no ``series_uid``, NaN/Inf
            values after rescaling (without ``fill_nonfinite``).
        SeriesGeometryError: duplicate/missing slices, uneven spacing, inconsistent orientation/size/spacing,
            missing ImagePositionPatient/ImageOrientationPatient or PixelData.

    Example:
        >>> ct = read_dicom_series("patient01/ct")
        >>> ct.array.dtype, ct.spacing
    """
    if isinstance(source, SeriesInfo):
        info = source
        if series_uid is not None and series_uid != info.series_uid:
            raise InputError(None, f"series_uid {series_uid} does not match the given SeriesInfo {info.series_uid}")
        headers = info.headers or [read_header(p) for p in info.files]
        where = info.files[0].parent if info.files else None
    elif isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        info = _select(scan_dicom_folder(source).series, series_uid, source)
        headers, where = info.headers, Path(source)
    else:
        files = [Path(source)] if isinstance(source, (str, os.PathLike)) else [Path(p) for p in source]
        if not files:
            raise InputError(None, "empty list of DICOM files")
        info = _select(_group([read_header(p) for p in files]), series_uid, files[0].parent)
        headers, where = info.headers, files[0].parent
    if not headers:
        raise InputError(where, "series has no files")
    _check_readable(info)
    return _assemble(headers, fill_nonfinite)


def _check_consistent(headers: list[SliceHeader]) -> None:
    for h in headers:
        missing = [name for name, val in (("PixelData", h.has_pixels), ("Rows/Columns", h.rows and h.cols),
                                          ("ImagePositionPatient", h.positions is not None),
                                          ("ImageOrientationPatient", h.orientation is not None),
                                          ("PixelSpacing", h.pixel_spacing is not None)) if not val]
        if missing:
            raise SeriesGeometryError(h.path, f"missing {', '.join(missing)}")
        if h.problems:
            raise SeriesGeometryError(h.path, "; ".join(h.problems))
    ref = headers[0]
    for h in headers[1:]:
        if (h.rows, h.cols) != (ref.rows, ref.cols):
            raise SeriesGeometryError(h.path, f"image size {h.cols}x{h.rows} differs from {ref.cols}x{ref.rows} "
                                              f"of {ref.path.name}")
        if not np.allclose(h.orientation, ref.orientation, atol=1e-4):
            raise SeriesGeometryError(h.path, f"ImageOrientationPatient differs from {ref.path.name} "
                                              "(several stacks or a localizer in the series)")
        if not np.allclose(h.pixel_spacing, ref.pixel_spacing, rtol=1e-4, atol=1e-6):
            raise SeriesGeometryError(h.path, f"PixelSpacing {h.pixel_spacing} differs from {ref.pixel_spacing} "
                                              f"of {ref.path.name}")


def _sort_slices(headers: list[SliceHeader], normal: np.ndarray):
    """(header, frame index, position) per slice, sorted along the normal, with the step checks applied."""
    slices = [(h, f, np.asarray(pos)) for h in headers for f, pos in enumerate(h.positions)]
    dist = np.array([pos @ normal for _, _, pos in slices])
    order = np.argsort(dist, kind="stable")
    slices = [slices[i] for i in order]
    dist = dist[order]
    name = lambda s: s[0].path.name + (f"[frame {s[1] + 1}]" if s[0].n_frames > 1 else "")  # noqa: E731
    steps = np.diff(dist)
    for i, step in enumerate(steps):
        if step < DUPLICATE_TOL_MM:
            raise SeriesGeometryError(slices[i][0].path, f"duplicate slice position {dist[i]:.3f} mm along the "
                                                         f"normal: {name(slices[i])} and {name(slices[i + 1])}")
    if len(steps) == 0:
        return slices, dist
    median = float(np.median(steps))
    for i, step in enumerate(steps):
        if step > MISSING_FACTOR * median:
            raise SeriesGeometryError(slices[i][0].path, f"missing slice(s): gap of {step:.3f} mm between "
                                      f"{name(slices[i])} and {name(slices[i + 1])} (median step {median:.3f} mm)")
        if abs(step - median) > max(SPACING_RTOL * median, DUPLICATE_TOL_MM):
            raise SeriesGeometryError(slices[i][0].path, f"uneven slice spacing: {step:.4f} mm between "
                                      f"{name(slices[i])} and {name(slices[i + 1])} (median {median:.4f} mm)")
    # Positions must lie on a line along the normal, otherwise the stack is sheared (e.g. gantry tilt).
    start = slices[0][2]
    for s, d in zip(slices[1:], dist[1:], strict=True):
        in_plane = s[2] - start - (d - dist[0]) * normal
        if np.linalg.norm(in_plane) > max(0.05 * min(slices[0][0].pixel_spacing), DUPLICATE_TOL_MM):
            raise SeriesGeometryError(s[0].path, f"slice {name(s)} is shifted {np.linalg.norm(in_plane):.3f} mm "
                                                 "in-plane (sheared stack, e.g. gantry tilt); resample it first")
    return slices, dist


def _assemble(headers: list[SliceHeader], fill_nonfinite: float | None = None) -> Volume:
    _check_consistent(headers)
    ref = headers[0]
    row, col = np.asarray(ref.orientation[:3]), np.asarray(ref.orientation[3:])
    normal = np.cross(row, col)
    if abs(np.linalg.norm(normal) - 1.0) > 1e-3 or abs(row @ col) > 1e-3:
        raise SeriesGeometryError(ref.path, f"ImageOrientationPatient {ref.orientation} is not orthonormal")
    slices, dist = _sort_slices(headers, normal)
    if len(slices) > 1:
        z_spacing = float(dist[-1] - dist[0]) / (len(slices) - 1)
    else:
        z_spacing = ref.spacing_between_slices or ref.slice_thickness or 1.0

    # Pixels: each file read once; frames distributed to their sorted z position.
    z_of = {(id(h), f): z for z, (h, f, _) in enumerate(slices)}
    stored = None
    slope = np.ones(len(slices))
    intercept = np.zeros(len(slices))
    dtypes = {raw_pixel_dtype(h) if h.samples_per_pixel == 1 else None for h in headers}
    if len(dtypes) == 1 and None not in dtypes:
        # Uncompressed files of one dtype: each file's bytes go straight into its z position(s).
        stored = np.empty((len(slices), ref.rows, ref.cols), dtype=dtypes.pop().newbyteorder("="))
        for h in headers:
            z = [z_of[(id(h), f)] for f in range(h.n_frames)]
            if h.n_frames == 1:
                read_pixels_into(h, stored[z[0]])
            else:
                frames = np.empty((h.n_frames, h.rows, h.cols), stored.dtype)
                read_pixels_into(h, frames)
                stored[z] = frames
            slope[z], intercept[z] = zip(*h.rescale[: h.n_frames], strict=True)
    else:
        for h in headers:
            frames = read_pixels(h)  # (n_frames, rows, cols), stored values
            if stored is None:
                stored = np.empty((len(slices), h.rows, h.cols), dtype=frames.dtype)
            elif frames.dtype != stored.dtype:
                stored = stored.astype(np.result_type(stored.dtype, frames.dtype))
            for f in range(h.n_frames):
                z = z_of[(id(h), f)]
                stored[z] = frames[f]
                slope[z], intercept[z] = h.rescale[f]
    array = _rescale(stored, slope, intercept)
    mask = nonfinite_mask(array)
    where, first_bad = "", ref.path
    if mask is not None:  # a broken RescaleSlope/Intercept (NaN, Inf) or float32 overflow
        bad = np.flatnonzero(mask.any(axis=(1, 2)))
        header, frame, _ = slices[bad[0]]
        first_bad = header.path
        where = (f" after RescaleSlope/RescaleIntercept, in {len(bad)} slice{'s' if len(bad) != 1 else ''} "
                 f"(first: {header.path.name}{f' frame {frame + 1}' if header.n_frames > 1 else ''})")
    array, filled = reject_or_fill(first_bad, array, mask, fill_nonfinite, where=where)

    direction = np.stack([row, col, normal], axis=1)
    meta = dict(ref.metadata)
    if fill_nonfinite is not None:
        meta["nonfinite_filled"] = filled
    meta["SOPInstanceUIDs"] = [h.sop_uid if h.n_frames == 1 else f"{h.sop_uid}#{f + 1}" for h, f, _ in slices]
    return Volume(
        array=array,
        spacing=(ref.pixel_spacing[1], ref.pixel_spacing[0], z_spacing),  # PixelSpacing is [row (y), col (x)]
        origin=tuple(slices[0][2]),
        direction=tuple(direction.ravel()),
        modality=ref.modality,
        metadata=meta,
    )


def _rescale(stored: np.ndarray, slope: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """Apply per-slice slope/intercept; int16 when all are integral and the result fits, else float32.

    ``stored`` is a scratch buffer owned by the caller and may be modified in place (and returned).
    """
    integral = np.all(slope == np.round(slope)) and np.all(intercept == np.round(intercept))
    if integral and stored.size:
        lo = stored.min(axis=(1, 2)).astype(np.float64)
        hi = stored.max(axis=(1, 2)).astype(np.float64)
        ends = np.stack([lo * slope + intercept, hi * slope + intercept])
        if ends.min() >= -32768 and ends.max() <= 32767:
            if np.all(slope == 1) and np.all(intercept == 0) and stored.dtype == np.int16:
                return stored
            if np.all(slope == 1) and stored.dtype in (np.int16, np.uint16):
                # stored + intercept in place with wrapping 16-bit arithmetic: exact, because it is exact modulo
                # 2**16 and the true result is known to fit int16.
                out = stored.view(np.int16)
                wrapped = ((intercept.astype(np.int64) + 32768) % 65536 - 32768).astype(np.int16)
                if np.all(wrapped == wrapped[0]):
                    if wrapped[0]:
                        out += wrapped[0]
                else:
                    for z in range(len(out)):
                        out[z] += wrapped[z]
                return out
            out = stored.astype(np.int32)
            out *= slope.astype(np.int32)[:, None, None]
            out += intercept.astype(np.int32)[:, None, None]
            return out.astype(np.int16)
    out = np.empty(stored.shape, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # NaN/Inf results are reported by the caller
        for z in range(len(stored)):  # float64 arithmetic per slice, float32 result
            out[z] = stored[z] * slope[z] + intercept[z]
    return out


__all__ = ["DicomScan", "SeriesInfo", "read_dicom_series", "scan_dicom_folder"]
