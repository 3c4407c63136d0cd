"""Write an HDR interstitial brachytherapy RT Plan (RT Plan Storage) with pydicom.

Used by the synthetic brachy-CT generator and tests (no installable package ships a brachytherapy plan) and by
`medtf.rt.catheter_io.write_reconstructed_plan` for catheters reconstructed from a predicted mask. Each catheter
becomes one ``ChannelSequence`` item whose ``BrachyControlPointSequence`` holds a dwell pair (arrival and
departure control points at the same position, cumulative time weight rising by the dwell time) at every dwell
position. `medtf.rt.read_brachy_plan` merges each pair back into one polyline vertex.

What the plan says about the afterloader and the applicators (treatment machine, source, application setup type,
per-channel applicator ID/type/length/step size, transfer tubes) is a `DeliverySetup`: its defaults describe the
synthetic HDR unit, `DeliverySetup.from_plan` copies a real plan's, so a plan rebuilt from reconstructed catheters
can carry the source plan's machine and applicators (`medtf.rt.catheter_io.write_reconstructed_plan`).

Written plans pass dicom3tools' ``dciodvfy`` without errors (tests/dicom_validation.py): channels always carry
``SourceApplicatorStepSize`` (type 1C for STEPWISE movement) and a zero-length ``ReferencedROINumber`` (type 2C
with a source applicator: the applicator ROI of a structure set, which these plans do not have).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

from medtf.rt.brachy_plan import RT_PLAN_STORAGE
from medtf.rt.polyline import dedup_consecutive, resample_polyline

PLAN_DATE = "20240103"
PLAN_TIME = "091500"
CHANNEL_LENGTH_MM = 1000.0  # afterloader channel length (transfer tube + applicator)
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
#: DICOM has no Application Setup Type for a free-hand or breast interstitial implant; PERINEAL (template-guided
#: interstitial implant) is the closest defined term. A source plan's own value replaces it (`DeliverySetup`).
DEFAULT_APPLICATION_SETUP_TYPE = "PERINEAL"
DEFAULT_MACHINE_NAME = "SYNTH_HDR"

#: Channel attributes that describe the afterloader channel and its applicator (copied from a source plan).
CHANNEL_KEYWORDS = (
    "ChannelLength", "ChannelEffectiveLength", "ChannelInnerLength", "AfterloaderChannelID", "SourceMovementType",
    "ReferencedSourceNumber", "SourceApplicatorNumber", "SourceApplicatorID", "SourceApplicatorType",
    "SourceApplicatorName", "SourceApplicatorLength", "SourceApplicatorManufacturer", "SourceApplicatorStepSize",
    "SourceApplicatorTipLength", "SourceApplicatorWallNominalThickness", "SourceApplicatorWallNominalTransmission",
    "TransferTubeNumber", "TransferTubeLength", "ChannelShieldSequence", "NumberOfPulses", "PulseRepetitionInterval",
)

#: Patient and General Study attributes copied from ``identity_source`` (e.g. one CT slice header), so that a
#: plan attached to a real image belongs to the same patient and study.
IDENTITY_KEYWORDS = (
    "SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "StudyDescription",
)
_TYPE2_IDENTITY = {"PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                   "ReferringPhysicianName", "StudyID", "AccessionNumber"}


def _ds(value: float) -> DSfloat:
    return DSfloat(float(value), auto_format=True)


def _uid(*parts: Any) -> str:
    return generate_uid(entropy_srcs=["medtf.synth.rtplan", *[str(p) for p in parts]])


@dataclasses.dataclass
class DeliverySetup:
    """The afterloader and applicators a plan describes (everything but the catheter paths and dwell times).

    Args:
        machine_name: ``TreatmentMachineName`` (type 2: empty when unknown).
        machine_manufacturer: the machine's ``Manufacturer`` (None: the plan's manufacturer).
        application_setup_type: ``ApplicationSetupType`` (a DICOM defined term, see
            `DEFAULT_APPLICATION_SETUP_TYPE`).
        treatment_technique: ``BrachyTreatmentTechnique`` (INTERSTITIAL, INTRACAVITARY, ...).
        sources: ``SourceSequence`` items (None: one Ir-192 HDR source of 40700 uGy/h at 1 m).
        channels: ``{ChannelNumber: {keyword: value}}`` of `CHANNEL_KEYWORDS` per channel; a channel not listed
            gets `default_channel` and its own number as applicator and transfer tube number.
        default_channel: applicator attributes of channels not in ``channels`` (e.g. a catheter found by
            reconstruction that the source plan did not have).
        step_size_mm: ``SourceApplicatorStepSize`` where neither of the above gives one (None: the dwell step
            of the written plan, or the median spacing of its control points).

    Example:
        >>> setup = DeliverySetup.from_plan(pydicom.dcmread("RP.original.dcm"))
        >>> setup.machine_name, sorted(setup.channels)
    """

    machine_name: str = DEFAULT_MACHINE_NAME
    machine_manufacturer: str | None = None
    application_setup_type: str = DEFAULT_APPLICATION_SETUP_TYPE
    treatment_technique: str = "INTERSTITIAL"
    sources: list[Dataset] | None = None
    channels: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    default_channel: dict[str, Any] = dataclasses.field(default_factory=dict)
    step_size_mm: float | None = None

    @classmethod
    def from_plan(cls, plan: Dataset | str | os.PathLike) -> "DeliverySetup":
        """The machine, sources, setup type and per-channel applicator data of an RT Plan (a dataset or a file).

        Channels not in the plan get the applicator data of the plan's first channel (same implant, same
        applicator kind) without its identifiers (number, ID, name, transfer tube number).
        """
        ds = plan if isinstance(plan, Dataset) else pydicom.dcmread(plan, stop_before_pixels=True)
        machines = ds.get("TreatmentMachineSequence") or [Dataset()]
        setups = ds.get("ApplicationSetupSequence") or [Dataset()]
        channels: dict[int, dict[str, Any]] = {}
        for setup in setups:
            for ch in setup.get("ChannelSequence") or []:
                channels[int(ch.ChannelNumber)] = {k: copy.deepcopy(ch.data_element(k).value)
                                                   for k in CHANNEL_KEYWORDS if k in ch}
        first = next(iter(channels.values()), {})
        own = {"SourceApplicatorNumber", "SourceApplicatorID", "SourceApplicatorName", "TransferTubeNumber",
               "AfterloaderChannelID"}
        steps = [float(c["SourceApplicatorStepSize"]) for c in channels.values() if "SourceApplicatorStepSize" in c]
        return cls(
            machine_name=str(machines[0].get("TreatmentMachineName", "") or ""),
            machine_manufacturer=machines[0].get("Manufacturer"),
            application_setup_type=str(setups[0].get("ApplicationSetupType") or DEFAULT_APPLICATION_SETUP_TYPE),
            treatment_technique=str(ds.get("BrachyTreatmentTechnique") or "INTERSTITIAL"),
            sources=[copy.deepcopy(s) for s in ds.get("SourceSequence") or []] or None,
            channels=channels,
            default_channel={k: v for k, v in first.items() if k not in own},
            step_size_mm=float(np.median(steps)) if steps else None,
        )


def _default_source(reference_date: str) -> Dataset:
    source = Dataset()
    source.SourceNumber = 1
    source.SourceType = "POINT"
    source.SourceIsotopeName = "Ir-192"
    source.SourceIsotopeHalfLife = _ds(73.83)  # days
    source.SourceStrengthUnits = "AIR_KERMA_RATE"
    source.ReferenceAirKermaRate = _ds(40700.0)  # uGy h^-1 at 1 m (~10 Ci)
    source.SourceStrengthReferenceDate, source.SourceStrengthReferenceTime = reference_date, "000000"
    return source


def _dwell_positions(catheter, k: int, dwell_step_mm: float | None) -> np.ndarray:
    pts = np.asarray(catheter, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0 or not np.all(np.isfinite(pts)):
        raise ValueError(f"catheter {k} must be a finite non-empty (N, 3) array, got shape {pts.shape}")
    if dwell_step_mm is None:
        return dedup_consecutive(pts)[0]
    return resample_polyline(pts, dwell_step_mm)


def _step_size(delivery: DeliverySetup, dwell_step_mm: float | None, positions: np.ndarray) -> float:
    """SourceApplicatorStepSize where the channel's applicator data gives none (see `write_brachy_plan`)."""
    if delivery.step_size_mm is not None:
        return float(delivery.step_size_mm)
    if dwell_step_mm is not None:
        return float(dwell_step_mm)
    gaps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    return round(float(np.median(gaps)), 3) if len(gaps) else 0.0


def _finish(ds: Dataset, sop_uid: str, version: str) -> None:
    """SOP Common identifiers and an explicit-VR little-endian file meta header."""
    ds.SOPClassUID = RT_PLAN_STORAGE
    ds.SOPInstanceUID = sop_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_PLAN_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = version
    ds.file_meta = meta


def _channel(number: int, positions: np.ndarray, dwell_s: np.ndarray, step: float,
             applicator: Mapping[str, Any] | None = None, source_number: int = 1) -> Dataset:
    ch = Dataset()
    ch.ChannelNumber = number
    ch.ChannelLength = _ds(CHANNEL_LENGTH_MM)
    ch.ChannelTotalTime = _ds(float(dwell_s.sum()))
    ch.SourceMovementType = "STEPWISE"
    ch.ReferencedSourceNumber = source_number
    ch.SourceApplicatorNumber = number
    ch.SourceApplicatorID = f"NEEDLE{number:02d}"
    ch.SourceApplicatorType = "FLEXIBLE"
    ch.SourceApplicatorLength = _ds(CHANNEL_LENGTH_MM)
    ch.SourceApplicatorStepSize = _ds(step)
    ch.TransferTubeNumber = number
    ch.TransferTubeLength = _ds(CHANNEL_LENGTH_MM - 200.0)
    for keyword, value in (applicator or {}).items():
        setattr(ch, keyword, copy.deepcopy(value))  # one source value may serve several channels
    if "SourceApplicatorNumber" in ch:
        ch.ReferencedROINumber = None  # type 2C: the applicator's ROI in a structure set (none here)
    # Relative position: arc length from the first (distal-most) dwell position.
    rel = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(positions, axis=0), axis=1))])
    cps, cumulative = [], 0.0
    for p, r, t in zip(positions, rel, dwell_s):
        for w in (cumulative, cumulative + float(t)):  # arrival, departure
            cp = Dataset()
            cp.ControlPointIndex = len(cps)
            cp.CumulativeTimeWeight = _ds(w)
            cp.ControlPointRelativePosition = _ds(r)
            cp.ControlPoint3DPosition = [_ds(v) for v in p]
            cps.append(cp)
        cumulative += float(t)
    ch.NumberOfControlPoints = len(cps)
    ch.FinalCumulativeTimeWeight = _ds(cumulative)
    ch.BrachyControlPointSequence = DicomSequence(cps)
    return ch


def write_brachy_plan(
    path: str | os.PathLike,
    catheters: Sequence[np.ndarray],
    *,
    frame_of_reference_uid: str,
    patient_name: str = "SYNTH^BRACHY",
    patient_id: str = "SYNBR000",
    birth_date: str = "19700101",
    study_uid: str | None = None,
    seed: int = 0,
    dwell_step_mm: float | None = 5.0,
    dwell_time_s: float | Sequence[np.ndarray] = 5.0,
    channel_numbers: Sequence[int] | None = None,
    treatment_type: str = "HDR",
    plan_label: str = "SYNTH BRACHY",
    referenced_structure_set_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_uid: str | None = None,
    identity_source: Dataset | None = None,
    plan_geometry: str = "PATIENT",
    plan_datetime: tuple[str, str] = (PLAN_DATE, PLAN_TIME),
    series_description: str = "Synthetic HDR plan",
    manufacturer: str = "medtf synthetic",
    implementation_version: str = "MEDTF_SYNTH",
    delivery: DeliverySetup | None = None,
) -> Path:
    """Write an HDR interstitial RT Plan with one channel per catheter.

    Args:
        path: output file (parent folders are created).
        catheters: one ``(N, 3)`` polyline per catheter in LPS mm; the first point is the distal tip.
        frame_of_reference_uid: the image's FrameOfReferenceUID (the plan's coordinates live in it).
        patient_name, patient_id, birth_date, study_uid: synthetic identifiers (must match the CT's).
        seed: entropy for the generated UIDs (same arguments -> same file).
        dwell_step_mm: dwell positions every this many mm of arc length (end point included); ``None`` puts one
            dwell at every given vertex, so reading the plan back returns the input polylines exactly.
        dwell_time_s: one time for every dwell, or one ``(M,)`` array per catheter (M = dwell positions).
        channel_numbers: ``ChannelNumber`` per catheter (default ``1..n``).
        treatment_type: ``BrachyTreatmentType`` (HDR, PDR, LDR, MANUAL).
        referenced_structure_set_uid: the RTSTRUCT this plan refers to (required for PATIENT geometry); a
            deterministic placeholder UID is used when None.
        sop_instance_uid: the plan's SOPInstanceUID (derived from ``seed`` when None).
        series_uid: the plan's SeriesInstanceUID (derived from ``seed`` when None).
        identity_source: a dataset (e.g. one CT slice header) whose Patient and General Study attributes
            (`IDENTITY_KEYWORDS`) replace the synthetic identifiers; nothing else is read from it.
        plan_geometry: ``RTPlanGeometry``; ``"TREATMENT_DEVICE"`` writes no ReferencedStructureSetSequence
            (DICOM requires one only for ``"PATIENT"``).
        plan_datetime: ``(date, time)`` DICOM strings for RTPlanDate/Time and InstanceCreationDate/Time.
        series_description, manufacturer, implementation_version: descriptive strings.
        delivery: machine, sources, setup type and applicator data (default `DeliverySetup()`: the synthetic HDR
            unit, ``SourceApplicatorStepSize`` = ``dwell_step_mm`` or, without one, the median spacing of each
            channel's dwell positions).

    Returns:
        The written path.

    Example:
        >>> write_brachy_plan(tmp / "RP.dcm", [needle], frame_of_reference_uid=ct_for_uid, seed=1)
    """
    if not catheters:
        raise ValueError("write_brachy_plan needs at least one catheter")
    numbers = list(channel_numbers) if channel_numbers is not None else list(range(1, len(catheters) + 1))
    if len(numbers) != len(catheters):
        raise ValueError(f"{len(numbers)} channel numbers for {len(catheters)} catheters")
    if len(set(numbers)) != len(numbers) or any(int(n) < 1 for n in numbers):
        raise ValueError(f"channel numbers must be distinct positive integers, got {numbers}")
    study_uid = study_uid or _uid("study", seed, patient_id)
    series_uid = series_uid or _uid("series", seed, patient_id, frame_of_reference_uid)
    sop_uid = sop_instance_uid or _uid("sop", seed, patient_id, frame_of_reference_uid)

    delivery = delivery if delivery is not None else DeliverySetup()
    sources = delivery.sources or [_default_source(plan_datetime[0])]
    channels = []
    for k, (cath, number) in enumerate(zip(catheters, numbers)):
        positions = _dwell_positions(cath, k, dwell_step_mm)
        if np.isscalar(dwell_time_s):
            times = np.full(len(positions), float(dwell_time_s))
        else:
            times = np.asarray(dwell_time_s[k], dtype=np.float64)
            if times.shape != (len(positions),):
                raise ValueError(f"catheter {k}: {times.shape} dwell times for {len(positions)} dwell positions")
        applicator = delivery.channels.get(int(number), delivery.default_channel)
        ch = _channel(int(number), positions, times, _step_size(delivery, dwell_step_mm, positions), applicator,
                      source_number=int(sources[0].SourceNumber))
        if treatment_type == "PDR" and "NumberOfPulses" not in ch:  # type 1C attributes for pulsed treatments
            ch.NumberOfPulses = 1
            ch.PulseRepetitionInterval = 3600.0
        channels.append(ch)

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    # Patient, General Study
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate, ds.StudyTime = "20240102", "101500"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    # RT Series, General Equipment, Frame of Reference
    ds.Modality = "RTPLAN"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 900 + int(seed) % 100
    ds.SeriesDescription = series_description
    ds.OperatorsName = ""
    ds.Manufacturer = manufacturer
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    # RT General Plan
    ds.RTPlanLabel = plan_label[:16]
    ds.RTPlanName = plan_label
    ds.RTPlanDate, ds.RTPlanTime = plan_datetime
    ds.RTPlanGeometry = plan_geometry
    if plan_geometry == "PATIENT" or referenced_structure_set_uid:
        ref_ss = Dataset()
        ref_ss.ReferencedSOPClassUID = RT_STRUCTURE_SET_STORAGE
        ref_ss.ReferencedSOPInstanceUID = referenced_structure_set_uid or _uid("structure-set", seed, patient_id)
        ds.ReferencedStructureSetSequence = DicomSequence([ref_ss])
    # RT Fraction Scheme
    fg = Dataset()
    fg.FractionGroupNumber = 1
    fg.NumberOfFractionsPlanned = 1
    fg.NumberOfBeams = 0
    fg.NumberOfBrachyApplicationSetups = 1
    ref_setup = Dataset()
    ref_setup.ReferencedBrachyApplicationSetupNumber = 1
    fg.ReferencedBrachyApplicationSetupSequence = DicomSequence([ref_setup])
    ds.FractionGroupSequence = DicomSequence([fg])
    # RT Brachy Application Setups
    ds.BrachyTreatmentTechnique = delivery.treatment_technique
    ds.BrachyTreatmentType = treatment_type
    machine = Dataset()
    machine.TreatmentMachineName = delivery.machine_name
    machine.Manufacturer = delivery.machine_manufacturer or manufacturer
    ds.TreatmentMachineSequence = DicomSequence([machine])
    ds.SourceSequence = DicomSequence(sources)
    setup = Dataset()
    setup.ApplicationSetupType = delivery.application_setup_type
    setup.ApplicationSetupNumber = 1
    setup.ApplicationSetupName = "Interstitial implant"
    total_s = sum(float(c.ChannelTotalTime) for c in channels)
    rate = float(sources[0].get("ReferenceAirKermaRate", 0.0) or 0.0)
    setup.TotalReferenceAirKerma = _ds(rate * total_s / 3600.0)  # uGy at 1 m
    setup.ChannelSequence = DicomSequence(channels)
    ds.ApplicationSetupSequence = DicomSequence([setup])
    ds.ApprovalStatus = "UNAPPROVED"
    # SOP Common + file meta
    ds.InstanceCreationDate, ds.InstanceCreationTime = plan_datetime
    if identity_source is not None:
        for keyword in IDENTITY_KEYWORDS:
            if keyword in identity_source:
                setattr(ds, keyword, identity_source.data_element(keyword).value)
            elif keyword in _TYPE2_IDENTITY:  # present but empty, never a synthetic placeholder
                setattr(ds, keyword, "")
            elif keyword in ds:
                delattr(ds, keyword)
    _finish(ds, sop_uid, implementation_version)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


__all__ = ["DEFAULT_APPLICATION_SETUP_TYPE", "DeliverySetup", "IDENTITY_KEYWORDS", "write_brachy_plan"]
