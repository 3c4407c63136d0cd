"""Save reconstructed catheters: a small JSON file, or a brachytherapy RT Plan attached to the planning CT.

JSON layout (``version`` 1)::

    {"version": 1, "units": "mm", "coordinate_system": "LPS", "frame_of_reference_uid": "1.2...",
     "step_mm": 1.0, "metadata": {...},
     "catheters": [{"number": 1, "length_mm": 83.0, "tip": [x, y, z], "points": [[x, y, z], ...]}, ...]}

Points are tip (distal end) first. Files are written atomically (temporary file + ``os.replace``), so a reader
never sees half a file.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from medtf.rt.polyline import polyline_length
from medtf.rt.rtplan_writer import DeliverySetup, write_brachy_plan

JSON_VERSION = 1


def _as_catheters(catheters: Sequence[np.ndarray]) -> list[np.ndarray]:
    out = []
    for k, c in enumerate(catheters):
        pts = np.asarray(c, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0 or not np.all(np.isfinite(pts)):
            raise ValueError(f"catheter {k} must be a finite non-empty (N, 3) array, got shape {pts.shape}")
        out.append(pts)
    return out


def _atomic_write(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_catheters_json(
    path: str | os.PathLike,
    catheters: Sequence[np.ndarray],
    *,
    frame_of_reference_uid: str | None = None,
    step_mm: float | None = None,
    **metadata,
) -> Path:
    """Write catheter centrelines (LPS mm, tip first) as JSON; returns the path.

    Args:
        path: output file (parent folders are created).
        catheters: ``(N, 3)`` arrays.
        frame_of_reference_uid: the image's FrameOfReferenceUID (the points' coordinate frame).
        step_mm: point spacing, when resampled.
        **metadata: JSON-serialisable extras stored under ``"metadata"`` (model name, threshold, ...; no PHI).

    Example:
        >>> write_catheters_json(run / "catheters.json", reconstruct_catheters(mask, ct), step_mm=1.0)
    """
    cats = _as_catheters(catheters)
    doc = {
        "version": JSON_VERSION,
        "units": "mm",
        "coordinate_system": "LPS",
        "frame_of_reference_uid": frame_of_reference_uid,
        "step_mm": None if step_mm is None else float(step_mm),
        "metadata": metadata,
        "catheters": [
            {"number": k, "length_mm": round(polyline_length(c), 4), "tip": c[0].tolist(), "points": c.tolist()}
            for k, c in enumerate(cats, start=1)
        ],
    }
    text = json.dumps(doc, indent=1)
    return _atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_catheters_json(path: str | os.PathLike) -> list[np.ndarray]:
    """Catheters ``(N, 3)`` float64 (LPS mm, tip first) from a `write_catheters_json` file, in file order."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if doc.get("version") != JSON_VERSION or doc.get("units") != "mm" or doc.get("coordinate_system") != "LPS":
        raise ValueError(f"{path}: not a medtf catheter file (version {JSON_VERSION}, mm, LPS)")
    cats = sorted(doc["catheters"], key=lambda c: c["number"])
    return [np.asarray(c["points"], dtype=np.float64).reshape(-1, 3) for c in cats]


def write_reconstructed_plan(
    path: str | os.PathLike,
    catheters: Sequence[np.ndarray],
    *,
    reference_ct: pydicom.Dataset | None = None,
    frame_of_reference_uid: str | None = None,
    dwell_step_mm: float | None = None,
    dwell_time_s: float = 0.0,
    plan_label: str = "RECONSTRUCTED",
    referenced_structure_set_uid: str | None = None,
    channel_numbers: Sequence[int] | None = None,
    source_plan: pydicom.Dataset | str | os.PathLike | None = None,
) -> Path:
    """Write reconstructed catheters as a brachytherapy RT Plan on the CT's frame of reference.

    The plan is a clinical object attached to the planning CT: Patient and General Study attributes (name, ID,
    birth date, sex, StudyInstanceUID, ...) are copied from ``reference_ct`` (one CT slice header) and the
    FrameOfReferenceUID is the CT's, so a TPS files it with that image. New Series/SOP Instance UIDs are
    generated per call. Nothing is printed or logged. Without a structure set to reference, RTPlanGeometry is
    ``TREATMENT_DEVICE`` (DICOM requires ReferencedStructureSetSequence only for ``PATIENT``). Dwell times are
    ``dwell_time_s`` (0: geometry only, the planner sets times). The plan is UNAPPROVED.

    With ``source_plan`` (the implant's original plan) the new plan carries its treatment machine, source(s),
    treatment type and technique, application setup type, and each channel's applicator data (ChannelLength,
    SourceApplicator ID/type/length/step size, transfer tube, ...) by channel number; a catheter the source plan
    does not have gets the applicator data of its first channel. Without one, the documented defaults are an
    empty TreatmentMachineName (type 2: unknown), an HDR Ir-192 source, ApplicationSetupType
    `medtf.rt.rtplan_writer.DEFAULT_APPLICATION_SETUP_TYPE`, flexible applicators and SourceApplicatorStepSize =
    ``dwell_step_mm`` or the spacing of the given points (1 mm for `medtf.rt.reconstruct_catheters` output).

    Args:
        path: output file (written atomically).
        catheters: ``(N, 3)`` LPS mm centrelines, tip first (one channel each).
        channel_numbers: ``ChannelNumber`` per catheter (distinct); default ``1..n``. When the catheters were
            matched to a plan, `medtf.rt.CatheterMatch.channel_numbers` gives each one its planned channel's
            number, so the reconstructed plan maps back onto the original.
        reference_ct: a slice of the planning CT (``pydicom.dcmread(f, stop_before_pixels=True)`` is enough).
        frame_of_reference_uid: needed when ``reference_ct`` is None; must equal the CT's when both are given.
        dwell_step_mm: control points every this many mm; None keeps every given point, so
            ``read_brachy_plan(path).polylines`` returns ``catheters`` (to the DS precision, < 1e-3 mm).
        dwell_time_s, plan_label, referenced_structure_set_uid: see `medtf.rt.rtplan_writer.write_brachy_plan`.
        source_plan: the original RT Plan (dataset or file) whose machine and applicator data are copied.

    Example:
        >>> hdr = pydicom.dcmread(first_ct_slice, stop_before_pixels=True)
        >>> write_reconstructed_plan(out / "RP.reconstructed.dcm", catheters, reference_ct=hdr)
    """
    cats = _as_catheters(catheters)
    if not cats:
        raise ValueError("write_reconstructed_plan needs at least one catheter")
    ct_for = str(reference_ct.get("FrameOfReferenceUID", "") or "") if reference_ct is not None else ""
    if frame_of_reference_uid and ct_for and str(frame_of_reference_uid) != ct_for:
        raise ValueError("frame_of_reference_uid differs from the reference CT's FrameOfReferenceUID")
    for_uid = str(frame_of_reference_uid or ct_for)
    if not for_uid:
        raise ValueError("a FrameOfReferenceUID is required (pass reference_ct or frame_of_reference_uid)")
    now = datetime.datetime.now()
    # Without a CT header an empty dataset is the identity source: patient attributes are written empty instead
    # of the synthetic writer's placeholders.
    identity = reference_ct if reference_ct is not None else pydicom.Dataset()
    if source_plan is not None:
        source = source_plan if isinstance(source_plan, pydicom.Dataset) else pydicom.dcmread(source_plan)
        delivery = DeliverySetup.from_plan(source)
        treatment_type = str(source.get("BrachyTreatmentType") or "HDR")
    else:
        delivery, treatment_type = DeliverySetup(machine_name=""), "HDR"
    return _atomic_write(Path(path), lambda tmp: write_brachy_plan(
        tmp, cats, frame_of_reference_uid=for_uid, dwell_step_mm=dwell_step_mm, dwell_time_s=dwell_time_s,
        plan_label=plan_label, channel_numbers=channel_numbers, sop_instance_uid=generate_uid(),
        series_uid=generate_uid(),
        study_uid=generate_uid(), identity_source=identity,
        plan_geometry="PATIENT" if referenced_structure_set_uid else "TREATMENT_DEVICE",
        referenced_structure_set_uid=referenced_structure_set_uid,
        plan_datetime=(now.strftime("%Y%m%d"), now.strftime("%H%M%S")),
        series_description="Catheters reconstructed by medtf", manufacturer="medtf",
        implementation_version="MEDTF", delivery=delivery, treatment_type=treatment_type,
    ))


__all__ = ["read_catheters_json", "write_catheters_json", "write_reconstructed_plan"]
