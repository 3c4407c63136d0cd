"""The synthetic PROSTATEx source: real layout facts, ijk/pos agreement, and labels a model can learn."""

from __future__ import annotations

import numpy as np
import pydicom

from medtf.data.deid import IdHasher
from medtf.io.dicom_series import read_dicom_series
from tests.conftest import TEST_SALT
from tests.prostate.conftest import SOURCE, examples, pos_of, read_csv
from tfrecords_builder import prostatex_layout as layout

TRAIN = "ProstateX-TrainingLesionInformationv2"


def test_layout_and_series_as_in_prostatex(prostate_source):
    patient = sorted((prostate_source / "PROSTATEx").iterdir())[0]
    folders = sorted(p.name.rsplit("-", 1)[0] for p in next(patient.iterdir()).iterdir())
    assert folders == ["3-t2tsesag", "4-t2tsetra", "7-ep2ddifftraDYNDIST", "8-ep2ddifftraDYNDISTADC",
                       "9-ep2ddifftraDYNDISTCALCBVAL"]
    dwi = next(patient.glob("*/7-ep2ddifftraDYNDIST-*"))
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(dwi.glob("*.dcm"))]
    assert len({h.SeriesInstanceUID for h in headers}) == 1  # b = 50/400/800 stacked in one series
    assert sorted({layout.b_value(p, "") for p in dwi.glob("*.dcm")}) == [50, 400, 800]
    t2 = read_dicom_series(next(patient.glob("*/4-t2tsetra-*")))
    adc = read_dicom_series(next(patient.glob("*/8-ep2ddifftraDYNDISTADC-*")))
    assert t2.spacing == (0.5, 0.5, 3.0) and adc.spacing == (2.0, 2.0, 3.6)  # T2 finer than DWI/ADC
    assert 1000 < np.median(adc.array) < 2000  # ADC in 1e-6 mm^2/s as Siemens stores it
    columns = list(read_csv(prostate_source / TRAIN / "ProstateX-Images-Train.csv")[0])
    assert columns == ["ProxID", "Name", "fid", "pos", "WorldMatrix", "ijk", "TopLevel", "SpacingBetweenSlices",
                       "VoxelSpacing", "Dim", "DCMSerDescr", "DCMSerNum"]


def test_ijk_and_pos_agree_through_each_series_geometry(prostate_source):
    checked = 0
    for row in read_csv(prostate_source / TRAIN / "ProstateX-Images-Train.csv"):
        folder = next((prostate_source / "PROSTATEx" / row["ProxID"]).glob(f"*/{row['DCMSerNum']}-*"))
        files = sorted(folder.glob("*.dcm"))
        if row["Name"] == "ep2d_diff_tra_DYNDIST0":  # the b=50 stack of the multi-b series
            files = [p for p in files if layout.b_value(p, "") == 50]
        volume = read_dicom_series(files)
        ijk = np.array([int(v) for v in row["ijk"].split()])
        deviation = np.abs(volume.physical_to_index(pos_of(row)) - ijk)
        assert deviation.max() <= 0.5 + 1e-6, (row["Name"], deviation)
        point = volume.index_to_physical(ijk)  # and back: within half a voxel of pos in mm
        assert np.all(np.abs(volume.direction_matrix.T @ (point - pos_of(row))) <= np.array(volume.spacing) / 2 + 1e-6)
        checked += 1
    assert checked >= 5 * 10


def _auc(score, label) -> float:
    pos, neg = score[label == 1], score[label == 0]
    return float(np.mean(pos[:, None] > neg[None, :]) + 0.5 * np.mean(pos[:, None] == neg[None, :]))


def _lesions(n: int, significant: bool, seed: int):
    from medtf.synth.prostate_mpmri import ProstatePhantom

    rng = np.random.default_rng(seed)
    phantom = ProstatePhantom(rng, np.zeros(3), 96.0, 36.0)
    return [phantom.add_lesion(rng, np.zeros(3), significant, "PZ") for _ in range(n)]


def test_lesion_intensities_overlap_between_the_classes():
    """The design (issue #14): ADC, T2 darkening and proton density do not decide the class; one feature must not
    separate it. Significant lesions are a little darker on ADC (0.3-0.65 pooled sd), no more."""
    sig, insig = _lesions(400, True, 1), _lesions(400, False, 2)
    adc = {k: np.array([les.adc for les in v]) for k, v in (("sig", sig), ("insig", insig))}
    pooled = np.sqrt((adc["sig"].var() + adc["insig"].var()) / 2)
    gap = (adc["insig"].mean() - adc["sig"].mean()) / pooled
    assert 0.3 <= gap <= 0.65, gap
    label = np.r_[np.ones(400), np.zeros(400)]
    assert 0.56 <= _auc(-np.r_[adc["sig"], adc["insig"]], label) <= 0.72
    for name in ("t2_factor", "s0_factor"):  # same distribution for both classes
        a, b = (np.array([getattr(les, name) for les in v]) for v in (sig, insig))
        assert abs(a.mean() - b.mean()) < 0.1 * np.sqrt((a.var() + b.var()) / 2), name


def _solidity(mask: np.ndarray) -> float:
    from scipy.spatial import ConvexHull

    points = np.argwhere(mask).astype(float)
    corners = np.concatenate([points + [dy, dx] for dy in (-0.5, 0.5) for dx in (-0.5, 0.5)])
    return float(mask.sum() / ConvexHull(corners).volume)


def test_significant_lesions_are_spiculated_heterogeneous_and_rimmed_insignificant_smooth():
    """The class signal is in the crop's morphology and texture: on the lesion's centre plane (0.5 mm grid) the
    significant outline is far from convex (spicules, lobes), its interior mottled and its ADC rim lowered."""
    yy, xx = np.mgrid[-25:25:0.5, -25:25:0.5]
    plane = np.stack([xx, yy, np.zeros_like(xx)], axis=-1)
    found = {True: [], False: []}
    for significant, seed in ((True, 3), (False, 4)):
        for les in _lesions(30, significant, seed):
            w, tex, rim = les.modulation(plane)
            core = les.radius(plane) < 0.6
            found[significant].append((_solidity(w > 0.5), tex[core].std(), rim.min(), (w > 0.5).sum() * 0.25))
    sig, insig = (np.array(found[k]) for k in (True, False))
    assert np.median(sig[:, 0]) < 0.8 and insig[:, 0].min() > 0.9, (np.median(sig[:, 0]), insig[:, 0].min())
    assert sig[:, 1].min() > 2 * insig[:, 1].max(), (sig[:, 1].min(), insig[:, 1].max())  # texture
    assert sig[:, 2].max() <= 0.85 and insig[:, 2].min() == 1.0  # restricted-diffusion rim only when significant
    assert np.median(sig[:, 3]) > 1.3 * np.median(insig[:, 3])  # larger extent (area on the plane, mm^2)


def test_challenge_test_set_findings_are_written_unlabelled(prostate_source, prostate_out):
    hasher = IdHasher(TEST_SALT.encode())
    test_rows = read_csv(prostate_source / "ProstateX-TestLesionInformation" / "ProstateX-Findings-Test.csv")
    assert "ClinSig" not in test_rows[0] and SOURCE["test_cases"] == 1
    unlabelled = {(hasher(r["ProxID"]), int(r["fid"])) for r in test_rows}
    got = {(e["patient_id"].decode(), int(e["finding_id"])): int(e["label"]) for e in examples(prostate_out)}
    assert unlabelled and all(got[k] == -1 for k in unlabelled)
    assert sum(v == -1 for v in got.values()) == len(unlabelled)


def test_b_value_from_standard_tag_siemens_tag_or_description(prostate_source, tmp_path):
    path = next((prostate_source / "PROSTATEx").glob("*/*/9-ep2ddifftraDYNDISTCALCBVAL-*/*.dcm"))
    ds = pydicom.dcmread(path)
    assert layout.b_value(path, "") == 1400  # DiffusionBValue
    del ds.DiffusionBValue
    ds.save_as(tmp_path / "siemens.dcm")
    assert layout.b_value(tmp_path / "siemens.dcm", "") == 1400  # Siemens (0019,100C) only
    del ds[0x0019100C]
    ds.save_as(tmp_path / "none.dcm")
    assert layout.b_value(tmp_path / "none.dcm", "ep2d_diff_tra_DYNDISTCALC_BVAL") == float("inf")
    assert layout.b_value(tmp_path / "none.dcm", "diff b1000 tra") == 1000
    assert layout.b_value(tmp_path / "none.dcm", "ep2d_diff_tra") is None
