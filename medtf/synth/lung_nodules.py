"""Synthetic chest CTs with lung nodules in the LUNGx (SPIE-AAPM Lung CT Challenge) layout, for
`medtf convert lung-nodules`.

Layout written (as the TCIA download plus the nodule spreadsheet saved as CSV)::

    <out>/LUNGx/LUNGx-CT001/01-01-2000-NA-CT CHEST-<5 digits>/2.000000-NA-<5 digits>/1-001.dcm ...
    <out>/LUNGx-NoduleData.csv   Scan Number, Nodule Number, Nodule Center x,y Position*, Nodule Center Image,
                                 Diagnosis

Phantom (LPS, axial slices): air outside an elliptical body (soft tissue ~40 HU, 1 mm-ish noise texture), two
lungs (-850 HU parenchyma with texture and thin vessels), a vertebra (400 HU) behind, CT noise (sigma 20 HU).
One or two nodules per scan, centred exactly on a voxel so the CSV's (x, y, image number) is the true centre, with a
radial profile brightest at the centre. The class is carried by **morphology and texture**, the same cue family as
the prostate and brain generators (`medtf.synth.morphology`; a spiculated margin is a malignancy sign in the lung
as elsewhere): malignant nodules (radius 4-11 mm) have a spiculated, lobulated margin (spicules within ~15 degrees
of the axial plane, so an axial crop shows them) and a heterogeneous interior; benign ones (2.5-8 mm) are smooth,
slightly ellipsoid and homogeneous, some with a calcified core. Sizes and peak densities overlap, so neither alone
decides. A network pretrained on these crops learns margin and texture features that transfer to the prostate
task (the TL chain of issue #14).
The image number is the slice's InstanceNumber, written in reverse z order (as many scanners, head first), so a
reader that takes it for a 1-based z index is caught. PatientID is the scan number, as in LUNGx.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid
from scipy import ndimage

from medtf.io.volume import Volume
from medtf.synth.dicom_writer import write_dicom_series
from medtf.synth.morphology import lesion_margin, texture_amplitude, unit

CSV_NAME = "LUNGx-NoduleData.csv"
CSV_COLUMNS = ("Scan Number", "Nodule Number", "Nodule Center x,y Position*", "Nodule Center Image", "Diagnosis")


def _uid(*parts) -> str:
    return generate_uid(entropy_srcs=["medtf.synth.lung_nodules", *[str(p) for p in parts]])


def scan_number(index: int) -> str:
    """The scan number (folder name, PatientID, CSV key) of scan ``index`` (0-based): ``LUNGx-CT001``..."""
    return f"LUNGx-CT{index + 1:03d}"


def _chest(rng, shape, spacing):
    """HU volume ``(z, y, x)`` of the chest without nodules, and the lung mask."""
    nz, ny, nx = shape
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    xm, ym = (x - nx / 2) * spacing[0], (y - ny / 2) * spacing[1]
    body = (xm / (0.45 * nx * spacing[0])) ** 2 + (ym / (0.36 * ny * spacing[1])) ** 2 < 1
    hu = np.full(shape, -1000.0)
    hu[body] = 40.0
    lungs = np.zeros(shape, bool)
    for side in (-1, 1):
        cx, cy = side * 0.2 * nx * spacing[0], -0.03 * ny * spacing[1]
        lungs |= ((xm - cx) / (0.16 * nx * spacing[0])) ** 2 + ((ym - cy) / (0.26 * ny * spacing[1])) ** 2 < 1
    hu[lungs] = -850.0 + 40 * ndimage.gaussian_filter(rng.normal(size=shape), 1.5)[lungs] * 3
    vessels = ndimage.gaussian_filter(rng.normal(size=shape), (1.0, 2.0, 2.0))
    thin = (np.abs(vessels) < 0.006) & lungs  # a thin random network of vessel-like sheets
    hu[thin] = -550.0
    spine = (xm / 12.0) ** 2 + ((ym - 0.27 * ny * spacing[1]) / 12.0) ** 2 < 1
    hu[spine] = 400.0
    return hu, lungs


def _add_nodule(rng, hu, free, spacing, malignant: bool):
    """Draw one nodule centred on a voxel of ``free`` (lung, away from the pleura and other nodules; updated);
    returns its (x, y, z) voxel index and radius in mm."""
    radius = rng.uniform(4.0, 11.0) if malignant else rng.uniform(2.5, 8.0)
    depth = ndimage.distance_transform_edt(free, sampling=(spacing[2], spacing[1], spacing[0]))
    margin = int(np.ceil(radius / spacing[2])) + 1  # whole nodule inside the scan in z
    depth[:margin], depth[-margin:] = 0, 0
    candidates = np.argwhere(depth > radius * 1.4 + 3.0)
    if not len(candidates):  # a small lung: the deepest point
        candidates = np.argwhere(depth == depth.max())
    z, y, x = candidates[rng.integers(len(candidates))]
    zz, yy, xx = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in hu.shape), indexing="ij")
    dx, dy, dz = (xx - x) * spacing[0], (yy - y) * spacing[1], (zz - z) * spacing[2]
    d = np.sqrt(dx**2 + dy**2 + dz**2)
    free &= d > 3 * radius + 6.0
    rel = np.stack([dx, dy, dz], axis=-1)
    if malignant:  # spicules and lobes: the edge radius varies with direction
        d = d / lesion_margin(rng, True, dims=3, symmetric=True)(unit(rel))  # centroid = the CSV's centre
    else:  # smooth, slightly ellipsoid
        d = np.sqrt((dx / rng.uniform(0.85, 1.15)) ** 2 + (dy / rng.uniform(0.85, 1.15)) ** 2 + dz ** 2)
    profile = np.clip(1.0 - (d / radius) ** 2, 0.0, 1.0)  # brightest at the centre
    peak = rng.uniform(60.0, 120.0)
    blotches = ndimage.gaussian_filter(rng.normal(size=hu.shape), (0.8, 1.5, 1.5))
    blotches /= np.abs(blotches).max() + 1e-9
    # texture fades towards the edge (x profile): it mottles the interior without moving the outline
    density = (peak + 850.0) * profile ** 0.35 * (1 + 2.5 * texture_amplitude(rng, malignant) * blotches * profile)
    hu[:] = np.where(profile > 0, np.maximum(hu, -850.0 + density), hu)
    if not malignant and rng.random() < 0.3:  # calcified core
        hu[d < 0.4 * radius] = np.maximum(hu[d < 0.4 * radius], 350.0)
    return (int(x), int(y), int(z)), radius


def generate_lung_case(root, index: int, seed: int = 0, shape=(32, 128, 128), spacing=(2.0, 2.0, 2.5),
                       nodules: int | None = None) -> tuple[Path, list[dict]]:
    """Write scan ``index`` under ``root/LUNGx/`` and return its folder and CSV rows (with ``_radius_mm``,
    ``_xyz`` for tests: the true centre voxel)."""
    rng = np.random.default_rng([seed, index, 211])
    scan = scan_number(index)
    hu, lungs = _chest(rng, shape, spacing)
    count = int(nodules or rng.integers(1, 3))
    rows, free = [], lungs.copy()
    for k in range(1, count + 1):
        malignant = bool(rng.random() < 0.5)
        (x, y, z), radius = _add_nodule(rng, hu, free, spacing, malignant)
        diagnosis = ("Primary lung cancer" if rng.random() < 0.3 else "malignant") if malignant else "benign"
        rows.append({"Scan Number": scan, "Nodule Number": k, "Nodule Center x,y Position*": f"{x}, {y}",
                     "Nodule Center Image": shape[0] - z, "Diagnosis": diagnosis,
                     "_xyz": (x, y, z), "_radius_mm": radius})
    hu = hu + rng.normal(0.0, 20.0, shape)
    nz = shape[0]
    origin = (-shape[2] * spacing[0] / 2, -shape[1] * spacing[1] / 2, float(np.round(rng.uniform(-300, -200), 1)))
    volume = Volume(np.clip(np.rint(hu), -1024, 3071).astype(np.int16), spacing=spacing, origin=origin,
                    modality="CT")
    study = f"01-01-2000-NA-CT CHEST-{int(rng.integers(10000, 99999))}"
    folder = Path(root) / "LUNGx" / scan
    birth = f"{int(rng.integers(1935, 1975))}0{int(rng.integers(1, 10))}15"
    write_dicom_series(
        volume, folder / study / f"2.000000-NA-{int(rng.integers(10000, 99999))}", modality="CT",
        patient_name=f"SYNTH^LUNG^{index + 1:03d}", patient_id=scan, birth_date=birth,
        study_uid=_uid("study", seed, index), series_uid=_uid("series", seed, index),
        frame_of_reference_uid=_uid("for", seed, index), series_description="CHEST", rescale_intercept=-1024.0,
        window=(-600.0, 1500.0), file_names=lambda z, ds: f"1-{z + 1:03d}.dcm",
        instance_numbers=[nz - z for z in range(nz)], seed=seed, body_part="CHEST")
    return folder, rows


def write_nodule_csv(path, rows) -> Path:
    path = Path(path)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def generate_lung_nodules(out_dir: str | os.PathLike, cases: int = 4, seed: int = 0, shape=(32, 128, 128),
                          spacing=(2.0, 2.0, 2.5)) -> list[Path]:
    """Write ``cases`` scans and the nodule CSV under ``out_dir``; returns the scan folders.

    Args:
        out_dir: created if needed.
        cases: scans (1-2 nodules each, about half malignant).
        seed: everything is a deterministic function of the seed.
        shape: CT size ``(z, y, x)``; spacing: voxel size ``(x, y, z)`` in mm.

    Example:
        >>> folders = generate_lung_nodules(tmp_path / "lungx", cases=2, seed=1)
        >>> folders[0].name
        'LUNGx-CT001'
    """
    folders, rows = [], []
    for i in range(cases):
        folder, case_rows = generate_lung_case(out_dir, i, seed, shape, spacing)
        folders.append(folder)
        rows.extend(case_rows)
    write_nodule_csv(Path(out_dir) / CSV_NAME, rows)
    return folders


__all__ = ["CSV_COLUMNS", "CSV_NAME", "generate_lung_case", "generate_lung_nodules", "scan_number",
           "write_nodule_csv"]
