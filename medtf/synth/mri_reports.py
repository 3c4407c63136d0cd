"""Synthetic brain MRI studies (DWI b1000, T2*, FLAIR as NIfTI) with radiology reports, in the `mri-reports` layout.

Layout written::

    <out>/reports.csv                 case_id, patient_id, report, class (UTF-8 with BOM, as Excel exports it;
                                      reports may span several lines inside quotes)
    <out>/<case_id>/dwi_b1000.nii.gz  int16, coarsest grid
    <out>/<case_id>/t2s.nii.gz        int16, slightly rotated about the scanner z axis
    <out>/<case_id>/flair.nii.gz      int16, finest grid (``size``)

Each sequence has its own grid (size, spacing, origin shift and, for T2*, a small in-plane rotation) over the
same patient, so a reader must resample in physical space to stack them. The anatomy is defined in patient
coordinates (LPS mm; +x = patient left, +y posterior, +z superior) and sampled at every grid's voxel centres:
scalp, grey/white matter texture, ventricles, plus one class-dependent finding:

- ``infarct``: a bright DWI focus (restricted diffusion) with mild FLAIR hyperintensity,
- ``tumor``: a FLAIR-bright mass with surrounding oedema, mildly DWI-bright,
- ``hemorrhage``: a dark T2* focus (blooming, larger than on the other sequences),
- ``normal``: nothing,
- ``others``: chronic small-vessel white-matter spots on FLAIR (Fazekas 2-3), or atrophy (enlarged ventricles and
  sulci).

Focal findings sit at a random side and lobe, and the report (`medtf.synth.radiology_reports`) names that side
and location. Every study, normals included, also has a ventricle size (``normal`` / ``prominent``; ``enlarged``
with atrophy) and a white-matter hyperintensity burden (Fazekas 0 or 1: none or a few punctate FLAIR spots; 2-3
with small vessel disease), drawn in the volumes and written in the report, so that reports of the same class
differ in details an image can show. Intensities are scaled per sequence (scanner gain), with a smooth bias field
and Rician noise.
Case ids (``MR<7 digits>``) and patient ids (``PT<6 digits>``) look like real accession/patient numbers so that
de-identification can be tested; every fourth case is a follow-up study of the previous case's patient.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medtf.io.volume import Volume
from medtf.synth.radiology_reports import CLASSES, write_report

SEQUENCES = ("dwi_b1000", "t2s", "flair")
# name -> (in-plane size factor, slice factor, max in-plane rotation in degrees)
_GRIDS = {"dwi_b1000": (0.8, 0.85, 0.0), "t2s": (0.9, 1.0, 6.0), "flair": (1.0, 1.0, 0.0)}
FOV_MM = (230.0, 230.0, 150.0)
# tissue intensities per sequence (DWI, T2*, FLAIR)
_TISSUE = {"scalp": (25, 70, 95), "gm": (105, 95, 115), "wm": (85, 75, 95), "csf": (15, 160, 20)}
_FINDING = {"infarct": (300, 105, 165), "tumor": (140, 120, 185), "oedema": (110, 115, 155),
            "hemorrhage": (50, 12, 125), "small_vessel": (95, 90, 170)}
# ventricle grade -> (range of the ventricles' scale, texture threshold below which the outer cortex is sulcal CSF)
VENTRICLE_SCALES = {"normal": (0.9, 1.05), "prominent": (1.3, 1.45), "enlarged": (1.65, 1.85)}
SULCAL_THRESHOLD = {"normal": -1.2, "prominent": -0.9, "enlarged": -0.2}
# Fazekas grade -> [low, high) number of white-matter FLAIR spots of WMH_RADIUS_MM (6 mm: a spot still shows at the
# ~4.8 x 4.8 x 12.5 mm voxels of a 48x48x12 conversion; 4.5 mm spots did not, benchmarks/RESULTS.md issue #16)
FAZEKAS_SPOTS = {1: (3, 6), 2: (6, 10), 3: (10, 15)}
WMH_RADIUS_MM = 6.0
# normalised brain coordinates of a right-sided finding (x is mirrored for the left side)
LOCATIONS = {"frontal lobe": (-0.35, -0.6, 0.25), "parietal lobe": (-0.4, 0.25, 0.5),
             "temporal lobe": (-0.6, -0.1, -0.35), "occipital lobe": (-0.3, 0.7, 0.1),
             "basal ganglia": (-0.25, -0.05, 0.0), "corona radiata": (-0.28, 0.0, 0.45)}


def _soft(field, width=0.05):
    """1 inside (field < 1), 0 outside, with a smooth edge (partial volume)."""
    return 1.0 / (1.0 + np.exp(np.clip((field - 1.0) / width, -50, 50)))


class _Patient:
    """The anatomy and finding of one case in patient space; `sample` evaluates it at physical points."""

    def __init__(self, rng: np.random.Generator, class_name: str):
        self.centre = rng.uniform(-4, 4, 3)
        self.radii = np.array([68.0, 85.0, 58.0]) * rng.uniform(0.93, 1.05)
        self.waves = rng.standard_normal((8, 3))
        self.waves *= (1.0 / rng.uniform(3, 7, 8) / np.linalg.norm(self.waves, axis=1))[:, None]
        self.phases = rng.uniform(0, 2 * np.pi, 8)
        self.class_name = class_name
        self.subtype = str(rng.choice(["small_vessel", "atrophy"])) if class_name == "others" else ""
        # per-study details that every report names (normals too) and the image shows: ventricle size and the
        # white-matter hyperintensity burden (Fazekas grade: 0 none, 1 a few punctate spots, 2-3 small vessel disease)
        self.ventricles = "enlarged" if self.subtype == "atrophy" else str(rng.choice(["normal", "prominent"]))
        self.ventricle_scale = float(rng.uniform(*VENTRICLE_SCALES[self.ventricles]))
        self.fazekas = int(rng.integers(2, 4)) if self.subtype == "small_vessel" else int(rng.integers(0, 2))
        self.side = str(rng.choice(["left", "right"]))
        self.location = str(rng.choice(list(LOCATIONS)))
        where = np.array(LOCATIONS[self.location]) + rng.uniform(-0.08, 0.08, 3)
        where[0] *= -1 if self.side == "left" else 1  # LPS: +x is the patient's left
        self.lesion_centre = self.centre + where * self.radii
        self.lesion_radius = {"infarct": rng.uniform(8, 13), "tumor": rng.uniform(13, 20),
                              "hemorrhage": rng.uniform(6, 10)}.get(class_name, 0.0)
        self.lesion_axes = self.lesion_radius * rng.uniform(0.8, 1.2, 3)
        n_spots = int(rng.integers(*FAZEKAS_SPOTS[self.fazekas])) if self.fazekas else 0
        self.spots = self.centre + rng.uniform(-0.45, 0.45, (n_spots, 3)) * self.radii * [1, 1, .6]
        self.gains = rng.uniform([2, 3, 4], [4, 6, 8])
        self.bias = rng.standard_normal((3, 3)) / 400.0

    def sample(self, points: np.ndarray, channel: int, rng: np.random.Generator) -> np.ndarray:
        """Intensity of sequence ``channel`` (index into `SEQUENCES`) at LPS points ``(..., 3)``."""
        rel = points - self.centre
        r_brain = np.linalg.norm(rel / self.radii, axis=-1)
        brain = _soft(r_brain)
        skull = _soft(np.linalg.norm(rel / (self.radii + 7.0), axis=-1), 0.03)
        head = _soft(np.linalg.norm(rel / (self.radii + 12.0), axis=-1), 0.03)
        texture = np.sin(points @ self.waves.T + self.phases).sum(-1) / np.sqrt(len(self.phases))
        wm = _soft(r_brain / (0.8 + 0.1 * texture), 0.04)  # gyri: the cortex ribbon has a folded inner edge
        ventricles = sum(_soft(np.linalg.norm((rel - [dx, -5.0, 8.0]) / (np.array([7.0, 26.0, 15.0])
                                                                        * self.ventricle_scale), axis=-1), 0.1)
                         for dx in (-9.0, 9.0))
        sulci = _soft(r_brain / 0.9, 0.02) < 0.5  # outer cortex: CSF in the sulci where the texture dips
        csf = np.clip(ventricles + sulci * (texture < SULCAL_THRESHOLD[self.ventricles]), 0, 1)
        t = {k: v[channel] for k, v in _TISSUE.items()}
        parenchyma = (1 - wm) * t["gm"] + wm * t["wm"]
        image = (head - skull) * t["scalp"] + brain * ((1 - csf) * parenchyma + csf * t["csf"])
        image = self._finding(image, points, brain, channel)
        image *= self.gains[channel] * (1.0 + rel @ self.bias[channel])
        sigma = 0.03 * t["gm"] * self.gains[channel]
        return np.hypot(image + rng.normal(0, sigma, image.shape), rng.normal(0, sigma, image.shape))

    def _finding(self, image, points, brain, channel):
        def blob(centre, axes, scale=1.0, width=0.12):
            return _soft(np.linalg.norm((points - centre) / (np.asarray(axes) * scale), axis=-1), width) * brain

        f = {k: v[channel] for k, v in _FINDING.items()}
        if self.class_name == "tumor":
            oedema = blob(self.lesion_centre, self.lesion_axes, 1.7, 0.2)
            image = image * (1 - oedema) + oedema * f["oedema"]
            core = blob(self.lesion_centre, self.lesion_axes)
            image = image * (1 - core) + core * f["tumor"]
        elif self.class_name in ("infarct", "hemorrhage"):
            bloom = 1.35 if (self.class_name == "hemorrhage" and channel == SEQUENCES.index("t2s")) else 1.0
            lesion = blob(self.lesion_centre, self.lesion_axes, bloom)
            image = image * (1 - lesion) + lesion * f[self.class_name]
        for spot in self.spots:  # white-matter hyperintensities: Fazekas 1 (any class) to 3 (small vessel disease)
            lesion = blob(spot, (WMH_RADIUS_MM,) * 3, 1.0, 0.2)
            image = image * (1 - lesion) + lesion * f["small_vessel"]
        return image

    @property
    def report_fields(self) -> dict:
        return {"side": self.side, "location": self.location, "size_mm": 2 * float(self.lesion_axes.max()),
                "subtype": self.subtype, "ventricles": self.ventricles, "fazekas": self.fazekas}


def _grid(name: str, size, rng) -> Volume:
    """An empty `Volume` describing sequence ``name``'s grid: its own size, spacing, shift and rotation."""
    plane, through, max_angle = _GRIDS[name]
    n = np.maximum(np.rint(np.asarray(size, float) * [plane, plane, through]), 2).astype(int)
    spacing = np.asarray(FOV_MM) / n
    angle = np.deg2rad(rng.uniform(-max_angle, max_angle))
    c, s = np.cos(angle), np.sin(angle)
    direction = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    centre = rng.uniform(-5, 5, 3)
    origin = centre - direction @ (spacing * (n - 1) / 2.0)
    return Volume(np.zeros(n[::-1], np.int16), spacing=spacing, origin=origin, direction=direction.ravel())


def _case_ids(rng, cases: int) -> tuple[list[str], list[str]]:
    case_ids, patients = [], []
    for index in range(cases):
        while (cid := f"MR{int(rng.integers(1_000_000, 10_000_000))}") in case_ids:
            pass
        case_ids.append(cid)
        if index % 4 == 3:
            patients.append(patients[-1])  # a follow-up study of the previous patient
        else:
            while (pid := f"PT{int(rng.integers(100_000, 1_000_000))}") in patients:
                pass
            patients.append(pid)
    return case_ids, patients


def generate_mri_reports(out_dir, cases: int = 10, seed: int = 0, size=(128, 128, 24)) -> list[Path]:
    """Write ``cases`` synthetic studies and ``reports.csv``; returns the case folders.

    Args:
        out_dir: destination folder (created).
        cases: number of studies; classes are dealt round-robin over `CLASSES`, then shuffled.
        seed: random seed (same seed, same bytes).
        size: FLAIR grid size ``(x, y, z)``; DWI and T2* grids are a little coarser (see `_GRIDS`).

    Returns:
        The case folders, in case order.

    Example:
        >>> folders = generate_mri_reports("/tmp/mrirep", cases=5, seed=1, size=(48, 48, 12))
        >>> sorted(p.name for p in folders[0].iterdir())
        ['dwi_b1000.nii.gz', 'flair.nii.gz', 't2s.nii.gz']
    """
    import SimpleITK as sitk

    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 2024])
    case_ids, patients = _case_ids(rng, cases)
    classes = [CLASSES[i % len(CLASSES)] for i in range(cases)]
    classes = [classes[i] for i in rng.permutation(cases)]
    rows, folders = [], []
    for index, (case_id, class_name) in enumerate(zip(case_ids, classes)):
        case_rng = np.random.default_rng([seed, index, 17])
        patient = _Patient(case_rng, class_name)
        folder = root / case_id
        folder.mkdir(exist_ok=True)
        for channel, name in enumerate(SEQUENCES):
            grid = _grid(name, size, case_rng)
            values = patient.sample(grid.voxel_centers(), channel, case_rng)
            volume = grid.with_array(np.clip(np.rint(values), 0, 32767).astype(np.int16))
            sitk.WriteImage(volume.to_sitk(), str(folder / f"{name}.nii.gz"), useCompression=True)
        report = write_report(class_name, case_rng, **patient.report_fields)
        rows.append((case_id, patients[index], report, class_name))
        folders.append(folder)
    with open(root / "reports.csv", "w", newline="", encoding="utf-8-sig") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", "patient_id", "report", "class"])
        writer.writerows(rows[i] for i in rng.permutation(len(rows)))
    return folders
