"""Synthetic prostate multi-parametric MRI in the PROSTATEx layout (TCIA "SPIE-AAPM-NCI PROSTATEx Challenges").

Layout written (as a TCIA download plus the lesion-information CSVs)::

    <out>/PROSTATEx/ProstateX-0000/
        07-07-2011-MR prostaat kanker detectie NDmc MCAPRODETN-05711/     # study (synthetic date)
            3-t2tsesag-00231/1-01.dcm ...                                  # sagittal T2 (a distractor)
            4-t2tsetra-00702/1-01.dcm ...                                  # transverse T2, 0.5 mm in-plane
            7-ep2ddifftraDYNDIST-83202/1-01.dcm ...                        # DWI b = 50, 400, 800 in one series
            8-ep2ddifftraDYNDISTADC-49281/1-01.dcm ...                     # ADC map (1e-6 mm^2/s), 2 mm
            9-ep2ddifftraDYNDISTCALCBVAL-11203/1-01.dcm ...                # computed b = 1400
    <out>/ProstateX-TrainingLesionInformationv2/ProstateX-Findings-Train.csv   # ProxID,fid,pos,zone,ClinSig
    <out>/ProstateX-TrainingLesionInformationv2/ProstateX-Images-Train.csv     # ProxID,Name,fid,pos,...,ijk,...
    <out>/ProstateX-TestLesionInformation/ProstateX-{Findings,Images}-Test.csv # only with test_cases > 0

Phantom (LPS: +x left, +y posterior, +z superior): a lobulated gland (bright peripheral zone, darker nodular
transition zone), a rectum behind it, textured fat/muscle around. Every tissue property (T2, proton density S0,
ADC) is a function of the *physical* point, so each series samples the same anatomy on its own grid: T2 at
0.5 mm in-plane / 3 mm slices, DWI/ADC at 2 mm / 3.6 mm with a different FOV and slice offset. DWI follows
``S_b = S0 * exp(-b * ADC)`` with Rician noise. Lesions are dark on T2 and ADC and bright at high b. Each lesion
centre lies on a T2 slice plane (it was "clicked" on the T2), ``pos`` is that point and ``ijk`` its rounded 0-based
voxel index in every series. Per-patient gains on T2/DWI mimic uncalibrated MR intensities (ADC is quantitative).

What tells the classes apart (about one finding in four is clinically significant) is **morphology and texture**,
not intensity, so that a one-feature baseline (mean ADC at the finding) stays weak and a model has to look at the
crop (issue #14's "learnable but not trivial"):

* intensity overlaps: lesion ADC ~N(1020, 170) significant vs ~N(1100, 170) insignificant (1e-6 mm^2/s, about
  0.5 sd apart), the same T2 darkening (x0.5-0.85) and proton density (x0.95-1.2) for both classes;
* significant: a spiculated, lobulated margin (`medtf.synth.morphology.lesion_margin`: 5-9 spicules reaching up to
  2.4 core radii), a heterogeneous interior (texture amplitude 0.22-0.38 on T2, S0 and ADC) and a
  restricted-diffusion rim (ADC 15-30 % lower near the margin: a bright ring at high b); core radius 4-7 mm;
* insignificant: a smooth ellipsoid, homogeneous (texture <= 0.04), no rim; core radius 3.5-6.5 mm.

The same cue family (irregular spiculated heterogeneous = malignant, smooth homogeneous = benign) is drawn by the
brain and lung generators, so that pretraining on them can help a small prostate set (the TL chain).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from medtf.io.volume import Volume
from medtf.synth.dicom_writer import write_dicom_series
from medtf.synth.morphology import Margin, lesion_margin, texture_amplitude, unit

# key: (series number, folder description, Name in the Images CSV (= DCMSerDescr + "0"), DCMSerDescr)
SERIES = {
    "t2_sag": (3, "t2tsesag", "t2_tse_sag"),
    "t2_tra": (4, "t2tsetra", "t2_tse_tra"),
    "dwi": (7, "ep2ddifftraDYNDIST", "ep2d_diff_tra_DYNDIST"),
    "adc": (8, "ep2ddifftraDYNDISTADC", "ep2d_diff_tra_DYNDIST_ADC"),
    "bval": (9, "ep2ddifftraDYNDISTCALCBVAL", "ep2d_diff_tra_DYNDISTCALC_BVAL"),
}
#: (RepetitionTime ms, EchoTime ms, EchoTrainLength) per series, as a 3 T prostate protocol (TSE T2, EPI DWI).
TIMING = {"t2_sag": (5660.0, 104.0, 25), "t2_tra": (5660.0, 104.0, 25), "dwi": (2700.0, 63.0, 1),
          "adc": (2700.0, 63.0, 1), "bval": (2700.0, 63.0, 1)}
FINDINGS_COLUMNS = ("ProxID", "fid", "pos", "zone", "ClinSig")
IMAGES_COLUMNS = ("ProxID", "Name", "fid", "pos", "WorldMatrix", "ijk", "TopLevel", "SpacingBetweenSlices",
                  "VoxelSpacing", "Dim", "DCMSerDescr", "DCMSerNum")
CSV_FOLDERS = {"Train": "ProstateX-TrainingLesionInformationv2", "Test": "ProstateX-TestLesionInformation"}
DWI_B_VALUES = (50, 400, 800)
CALC_B_VALUE = 1400


@dataclasses.dataclass(frozen=True)
class ProstateIdentity:
    """Synthetic identifiers of one patient: ProxID (folder, CSVs, PatientID), name, birth and study dates."""

    prox_id: str
    patient_name: str
    birth_date: str
    study_date: str

    @property
    def study_folder(self) -> str:
        d = self.study_date
        return f"{d[4:6]}-{d[6:8]}-{d[:4]}-MR prostaat kanker detectie NDmc MCAPRODETN-{int(d) % 99991:05d}"


def prostate_identity(index: int, seed: int = 0) -> ProstateIdentity:
    """Identifiers of patient ``index`` (0-based): ``ProstateX-<nnnn>``, ``SYNTH^PROSTATE^<nnn>``, dates."""
    rng = np.random.default_rng([seed, index, 31])
    birth = f"{int(rng.integers(1935, 1970))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    study = f"{int(rng.integers(2011, 2013))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    return ProstateIdentity(f"ProstateX-{index:04d}", f"SYNTH^PROSTATE^{index + 1:03d}", birth, study)


def _uid(*parts) -> str:
    return generate_uid(entropy_srcs=["medtf.synth.prostate_mpmri", *[str(p) for p in parts]])


class _Field:
    """Smooth random field defined at any physical point (random Fourier features), roughly in [-1, 1]."""

    def __init__(self, rng: np.random.Generator, scale_mm: float, n: int = 16):
        self.w = rng.normal(size=(n, 3)) / scale_mm
        self.phase = rng.uniform(0, 2 * np.pi, n)
        self.amp = np.sqrt(2.0 / n) * np.ones(n)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return np.cos(points @ self.w.T + self.phase) @ self.amp


def _ramp(inside: np.ndarray, width: float = 0.15) -> np.ndarray:
    """Soft membership from an implicit function that is < 1 inside (partial-volume edge)."""
    return np.clip((1.0 - inside) / width + 0.5, 0.0, 1.0)


@dataclasses.dataclass
class Lesion:
    centre: np.ndarray  # mm LPS
    radii: np.ndarray  # core ellipsoid semi-axes, mm
    significant: bool
    zone: str
    t2_factor: float
    adc: float
    s0_factor: float
    texture: float  # internal heterogeneity (relative amplitude)
    field: _Field  # margin wobble
    margin: Margin  # spicules and lobes (none when insignificant)
    rim: float = 0.0  # restricted-diffusion rim: relative ADC drop near the margin
    wobble: float = 0.05
    texture_field: _Field = None  # set by add_lesion

    def radius(self, p: np.ndarray) -> np.ndarray:
        """Normalised radius of points ``p (..., 3)``: < 1 inside the (spiculated) margin, 1 on it."""
        rel = (p - self.centre) / self.radii
        return np.linalg.norm(rel, axis=-1) / self.margin(unit(rel))

    def modulation(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(membership, texture, rim)`` at points ``p (..., 3)``: soft membership in [0, 1] (partial-volume edge,
        a smooth wobble of the margin), relative texture (blotches of ~7 mm: coarse enough to survive the 2 mm
        DWI / ADC grid) and the ADC factor of the restricted-diffusion rim (1 without one)."""
        s = self.radius(p)
        w = _ramp(s ** 2 + self.wobble * self.field(p), 0.3)
        tex = np.clip(self.texture * self.texture_field(p), -0.6, 0.6)
        return w, tex, 1.0 - self.rim * np.exp(-(((s - 0.8) / 0.15) ** 2))


class ProstatePhantom:
    """Tissue properties (T2, S0, ADC in 1e-6 mm^2/s) of one patient as functions of the physical point."""

    def __init__(self, rng: np.random.Generator, centre: np.ndarray, fov_mm: float, z_cover_mm: float):
        self.c = centre + np.array([rng.uniform(-3, 3), rng.uniform(-2, 2), 0.0])
        self.a = np.array([min(22.0, 0.3 * fov_mm), min(17.0, 0.24 * fov_mm), min(16.0, 0.4 * z_cover_mm)])
        self.a *= rng.uniform(0.85, 1.1, 3)
        self.tz_c = self.c + np.array([0.0, -0.2 * self.a[1], 0.1 * self.a[2]])
        self.tz_a = self.a * np.array([0.6, 0.5, 0.7]) * rng.uniform(0.85, 1.15)
        self.rectum = self.c + np.array([0.0, self.a[1] + 8.0, 0.0])
        self.shape, self.bg, self.nodules = _Field(rng, 12.0), _Field(rng, 6.0), _Field(rng, 2.5)
        self.gain_t2, self.gain_s0 = rng.uniform(0.7, 1.4), rng.uniform(0.7, 1.4)
        self.lesions: list[Lesion] = []

    def zone_of(self, p: np.ndarray) -> str:
        if np.sum(((p - self.tz_c) / self.tz_a) ** 2) < 1.0:
            return "TZ"
        return "AS" if p[1] < self.c[1] - 0.55 * self.a[1] else "PZ"

    def in_gland(self, p: np.ndarray, margin: float = 0.6) -> bool:
        return float(np.sum(((p - self.c) / self.a) ** 2)) < margin

    def add_lesion(self, rng, centre, significant: bool, zone: str) -> Lesion:
        # Intensities overlap between the classes (see the module docstring); shape, texture and rim do not.
        r = rng.uniform(4.0, 7.0) if significant else rng.uniform(3.5, 6.5)
        r = min(r, 0.45 * float(self.a.min()))
        lesion = Lesion(
            centre=np.asarray(centre, float), radii=r * rng.uniform(0.8, 1.2, 3), significant=significant,
            zone=zone, t2_factor=rng.uniform(0.5, 0.85),
            adc=float(max(rng.normal(1020, 170) if significant else rng.normal(1100, 170), 450.0)),
            s0_factor=rng.uniform(0.95, 1.2), texture=texture_amplitude(rng, significant), field=_Field(rng, 1.5),
            margin=lesion_margin(rng, significant, dims=3), rim=rng.uniform(0.15, 0.3) if significant else 0.0,
            wobble=0.15 if significant else 0.05, texture_field=_Field(rng, 2.0),
        )
        self.lesions.append(lesion)
        return lesion

    def properties(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(t2, s0, adc)`` at points ``p`` of shape ``(..., 3)``."""
        g = np.sum(((p - self.c) / self.a) ** 2, axis=-1) + 0.12 * self.shape(p)
        wg = _ramp(g)
        wt = _ramp(np.sum(((p - self.tz_c) / self.tz_a) ** 2, axis=-1) + 0.1 * self.shape(p))
        wr = _ramp(np.sum(((p[..., :2] - self.rectum[:2]) / 7.0) ** 2, axis=-1))
        bg, nod = self.bg(p), self.nodules(p)
        mix = lambda bgv, pz, tz, rect: ((bgv * (1 - wg) + (pz * (1 - wt) + tz * wt) * wg) * (1 - wr)  # noqa: E731
                                         + rect * wr)
        t2 = mix(250 + 120 * bg, 620 + 50 * bg, 360 + 90 * nod, 40.0)
        s0 = mix(320 + 60 * bg, 620 + 40 * bg, 520 + 60 * nod, 20.0)
        adc = mix(1450 + 150 * bg, 1750 + 100 * bg, 1250 + 120 * nod, 200.0)
        for les in self.lesions:
            w, tex, rim = les.modulation(p)
            t2 = t2 * (1 - w) + t2 * les.t2_factor * (1 + tex) * w
            s0 = s0 * (1 - w) + s0 * les.s0_factor * (1 + 0.5 * tex) * w
            adc = adc * (1 - w) + les.adc * (1 + tex) * rim * w
        return t2 * self.gain_t2, s0 * self.gain_s0, adc


def _grid(spacing, size_xyz, centre, direction=None) -> Volume:
    d = np.eye(3) if direction is None else np.asarray(direction, float).reshape(3, 3)
    spacing, size = np.asarray(spacing, float), np.asarray(size_xyz)
    origin = centre - d @ (spacing * (size - 1) / 2)
    return Volume(np.zeros(tuple(size[::-1]), np.float32), spacing=spacing, origin=origin, direction=d.ravel())


def _rician(rng, signal: np.ndarray, sigma: float) -> np.ndarray:
    return np.hypot(signal + rng.normal(0, sigma, signal.shape), rng.normal(0, sigma, signal.shape))


def _stored(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 32767).astype(np.int16)


def write_patient_series(patient_dir, identity: ProstateIdentity, volumes: dict, seed: int = 0) -> dict[str, Volume]:
    """Write the DICOM series of one patient under ``patient_dir/<study folder>/<n>-<desc>-<nnnnn>/1-<i>.dcm``.

    Args:
        patient_dir: the ``<ProxID>`` folder.
        identity: identifiers written into every file.
        volumes: ``{key: Volume}`` for ``t2_tra``/``t2_sag``/``adc`` and ``{key: {b: Volume}}`` for ``dwi``/``bval``
            (several b-values of one key share one series, as in PROSTATEx). Keys as in `SERIES`.
        seed: entropy for UIDs.

    Returns:
        ``{key: grid Volume}`` (for several b-values, the first one's grid) for computing ``ijk``.
    """
    study = Path(patient_dir) / identity.study_folder
    study_uid, for_uid = _uid("study", seed, identity.prox_id), _uid("for", seed, identity.prox_id)
    grids = {}
    for key, value in volumes.items():
        number, folder, descr = SERIES[key]
        series_dir = study / f"{number}-{folder}-{int(_uid('f', seed, identity.prox_id, key)[-6:]) % 99991:05d}"
        stacks = value if isinstance(value, dict) else {None: value}
        series_uid = _uid("series", seed, identity.prox_id, key)
        for bi, (b, vol) in enumerate(stacks.items()):
            nz = vol.array.shape[0]
            paths = write_dicom_series(
                vol.with_array(_stored(vol.array)), series_dir, modality="MR", patient_name=identity.patient_name,
                patient_id=identity.prox_id, birth_date=identity.birth_date, study_uid=study_uid,
                series_uid=_uid("stack", series_uid, b), frame_of_reference_uid=for_uid, series_description=descr,
                window=None, instance_numbers=[bi * nz + k + 1 for k in range(nz)], seed=seed, body_part="PROSTATE",
                file_names=lambda k, ds: f"1-{int(ds.InstanceNumber):02d}.dcm",
                extra_tags={"SeriesNumber": number, "ProtocolName": descr, "StudyDate": identity.study_date,
                            "SeriesDate": identity.study_date, "RepetitionTime": TIMING[key][0],
                            "EchoTime": TIMING[key][1], "EchoTrainLength": TIMING[key][2]},
            )
            for path in paths:  # one series for all b-values, each slice tagged with its b
                ds = pydicom.dcmread(path)
                ds.SeriesInstanceUID = series_uid
                if b is not None:
                    ds.DiffusionBValue = float(b)
                    ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0C, "IS", str(int(b)))
                ds.save_as(path, enforce_file_format=True)
            grids.setdefault(key, vol)
    return grids


def images_rows(prox_id: str, fid: int, pos, grids: dict[str, Volume]) -> list[dict]:
    """Rows of ``ProstateX-Images-*.csv`` for one finding: ``ijk`` = rounded 0-based index of ``pos`` per series."""
    rows = []
    for key, vol in grids.items():
        number, _, descr = SERIES[key]
        ijk = np.rint(vol.physical_to_index(pos)).astype(int)
        world = vol.affine_lps.ravel()
        dim = "x".join(str(n) for n in vol.shape_xyz) + ("x3" if key == "dwi" else "")
        rows.append({"ProxID": prox_id, "Name": descr + "0", "fid": fid, "pos": _text(pos),
                     "WorldMatrix": ",".join(f"{v:.6g}" for v in world), "ijk": " ".join(str(i) for i in ijk),
                     "TopLevel": "0", "SpacingBetweenSlices": f"{vol.spacing[2]:g}",
                     "VoxelSpacing": ",".join(f"{s:g}" for s in vol.spacing), "Dim": dim, "DCMSerDescr": descr,
                     "DCMSerNum": number})
    return rows


def _text(pos) -> str:
    return " ".join(f"{v:.4f}" for v in pos)


def write_csv(path, rows: list[dict], columns) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _place_lesions(rng, phantom: ProstatePhantom, t2: Volume, labels: list[bool]) -> list[Lesion]:
    """Lesions at distinct points of the gland, zone PZ/TZ/AS as in PROSTATEx, centre on a T2 slice plane."""
    for significant in labels:
        want = rng.choice(["PZ", "TZ", "AS"], p=[0.68, 0.25, 0.07])
        for attempt in range(400):
            u = rng.normal(size=3)
            p = phantom.c + phantom.a * u / np.linalg.norm(u) * rng.uniform(0.0, 0.75) ** (1 / 3)
            k = np.clip(np.rint(t2.physical_to_index(p)[2]), 1, t2.array.shape[0] - 2)
            p = p + t2.direction_matrix[:, 2] * (k - t2.physical_to_index(p)[2]) * t2.spacing[2]
            # cores apart (a neighbour's spicules may reach into a crop, as in real glands)
            far = all(np.linalg.norm(p - q.centre) > 2 * q.radii.max() + 3.0 for q in phantom.lesions)
            if phantom.in_gland(p) and far and (phantom.zone_of(p) == want or attempt > 300):
                phantom.add_lesion(rng, p, bool(significant), phantom.zone_of(p))
                break
    return phantom.lesions


def generate_prostate_case(
    root, index: int, labels: list[bool], *, seed: int = 0, fov_mm: float = 96.0, t2_spacing: float = 0.5,
    dwi_spacing: float = 2.0, t2_slices: int = 12, sagittal: bool = True,
) -> tuple[Path, list[dict], list[dict]]:
    """Write one patient; returns ``(patient folder, findings rows, images rows)`` (one finding per label)."""
    rng = np.random.default_rng([seed, index, 4242])
    ident = prostate_identity(index, seed)
    centre = np.array([rng.uniform(-8, 8), rng.uniform(20, 40), rng.uniform(-60, -30)])
    z_cover = t2_slices * 3.0
    n2 = int(round(fov_mm / t2_spacing))
    t2 = _grid((t2_spacing, t2_spacing, 3.0), (n2, n2, t2_slices), centre)
    dwi_size = (int(round(1.25 * fov_mm / dwi_spacing)), int(round(fov_mm / dwi_spacing)), int(round(z_cover / 3.6)))
    dwi = _grid((dwi_spacing, dwi_spacing, 3.6), dwi_size, centre + rng.uniform(-1.5, 1.5, 3))
    phantom = ProstatePhantom(rng, centre, fov_mm, z_cover)
    lesions = _place_lesions(rng, phantom, t2, labels)

    t2_img, _, _ = phantom.properties(t2.voxel_centers())
    volumes = {"t2_tra": t2.with_array(_rician(rng, t2_img, 12.0))}
    if sagittal:
        sag_dir = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float)  # columns: row +y, col -z, normal -x
        sag = _grid((1.0, 1.0, 4.0), (int(fov_mm), int(z_cover), max(3, int(0.6 * fov_mm / 4))), centre, sag_dir)
        volumes["t2_sag"] = sag.with_array(_rician(rng, phantom.properties(sag.voxel_centers())[0], 12.0))
    _, s0, adc = phantom.properties(dwi.voxel_centers())
    volumes["dwi"] = {b: dwi.with_array(_rician(rng, s0 * np.exp(-b * adc * 1e-6), 8.0)) for b in DWI_B_VALUES}
    volumes["adc"] = dwi.with_array(np.clip(adc + rng.normal(0, 60.0, adc.shape), 0, None))
    volumes["bval"] = {CALC_B_VALUE: dwi.with_array(_rician(rng, s0 * np.exp(-CALC_B_VALUE * adc * 1e-6), 4.0))}
    patient_dir = Path(root) / ident.prox_id
    grids = write_patient_series(patient_dir, ident, volumes, seed=seed)

    findings, images = [], []
    for fid, lesion in enumerate(lesions, start=1):
        findings.append({"ProxID": ident.prox_id, "fid": fid, "pos": _text(lesion.centre), "zone": lesion.zone,
                         "ClinSig": "TRUE" if lesion.significant else "FALSE"})
        images.extend(images_rows(ident.prox_id, fid, lesion.centre, grids))
    return patient_dir, findings, images


def generate_prostate_mpmri(
    out_dir: str | os.PathLike, cases: int = 4, seed: int = 0, test_cases: int = 0, fov_mm: float = 96.0,
    t2_spacing: float = 0.5, dwi_spacing: float = 2.0, t2_slices: int = 12, sagittal: bool = True,
    workers: int = 1,
) -> list[Path]:
    """Write ``cases`` labelled (training) and ``test_cases`` unlabelled (challenge test) synthetic patients.

    Args:
        out_dir: created if needed; DICOM under ``PROSTATEx/<ProxID>/``, CSVs in the lesion-information folders.
        cases: patients listed in ``ProstateX-Findings-Train.csv`` (with ClinSig).
        seed: everything is a deterministic function of the seed.
        test_cases: further patients listed in ``ProstateX-Findings-Test.csv`` (no ClinSig column).
        fov_mm: transverse T2 field of view (square); DWI/ADC cover 1.25x that in x.
        t2_spacing / dwi_spacing: in-plane pixel size in mm (T2 slices are 3 mm, DWI/ADC 3.6 mm).
        t2_slices: number of transverse T2 slices.
        sagittal: also write a sagittal T2 series (PROSTATEx has one; the converter must not pick it).
        workers: patients written in this many spawned processes (each patient is a function of (seed, index)
            alone, so the output is the same for any count; a 200-patient cohort takes ~30 min in one).

    Returns:
        The patient folders, in ProxID order.

    Example:
        >>> folders = generate_prostate_mpmri(tmp_path / "px", cases=4, seed=1, fov_mm=48, t2_slices=8)
        >>> sorted(p.name for p in folders)[0]
        'ProstateX-0000'
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng([seed, 77])
    counts = rng.integers(1, 4, cases + test_cases)
    labels = rng.random(int(counts[:cases].sum())) < 0.25
    if len(labels) >= 2 and (labels.all() or not labels.any()):  # both classes present
        labels[rng.integers(len(labels))] = not labels.all()
    options = dict(seed=seed, fov_mm=fov_mm, t2_spacing=t2_spacing, dwi_spacing=dwi_spacing, t2_slices=t2_slices,
                   sagittal=sagittal)
    jobs, start = [], 0
    for i in range(cases + test_cases):
        subset = "Train" if i < cases else "Test"
        case_labels = list(labels[start:start + counts[i]]) if subset == "Train" else [False] * int(counts[i])
        start += counts[i] if subset == "Train" else 0
        jobs.append((subset, i, case_labels))
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from functools import partial

        # spawn, not fork: the caller may have TensorFlow loaded, and forking its threads can deadlock
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = list(pool.map(partial(generate_prostate_case, out_dir / "PROSTATEx", **options),
                                 [i for _, i, _ in jobs], [lab for _, _, lab in jobs]))
    else:
        done = [generate_prostate_case(out_dir / "PROSTATEx", i, lab, **options) for _, i, lab in jobs]
    folders = []
    sets = {"Train": ([], []), "Test": ([], [])}
    for (subset, _, _), (folder, findings, images) in zip(jobs, done):
        sets[subset][0].extend(findings)
        sets[subset][1].extend(images)
        folders.append(folder)
    for subset, folder in CSV_FOLDERS.items():
        findings, images = sets[subset]
        if findings:
            columns = FINDINGS_COLUMNS if subset == "Train" else FINDINGS_COLUMNS[:-1]
            write_csv(out_dir / folder / f"ProstateX-Findings-{subset}.csv", findings, columns)
            write_csv(out_dir / folder / f"ProstateX-Images-{subset}.csv", images, IMAGES_COLUMNS)
    return folders


__all__ = ["ProstateIdentity", "ProstatePhantom", "SERIES", "generate_prostate_case", "generate_prostate_mpmri",
           "images_rows", "prostate_identity", "write_csv", "write_patient_series"]
