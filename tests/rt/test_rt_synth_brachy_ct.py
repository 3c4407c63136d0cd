"""Synthetic brachy CT + plan: layout, identity, frame of reference, determinism; the bright-needle variant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from medtf.io.volume import Volume
from medtf.rt import check_frame_of_reference, rasterize_polylines, read_brachy_plan, resample_polyline
from medtf.synth.brachy_ct import brachy_case_identity, generate_brachy_ct


@pytest.fixture(scope="module")
def brachy_cases(tmp_path_factory) -> list[Path]:
    return generate_brachy_ct(tmp_path_factory.mktemp("brachy"), cases=2, seed=5)


def _read_ct(ct_dir: Path) -> Volume:
    """Independent reader (SimpleITK/GDCM) so a bug in medtf.io cannot hide a bug in the generator."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(ct_dir)))
    image = reader.Execute()
    first = pydicom.dcmread(next(ct_dir.glob("*.dcm")), stop_before_pixels=True)
    return Volume.from_sitk(image, "CT", {"FrameOfReferenceUID": first.FrameOfReferenceUID})


def test_layout_identity_and_frame_of_reference(brachy_cases):
    assert [d.name for d in brachy_cases] == ["SYNBR001", "SYNBR002"]
    for i, case in enumerate(brachy_cases):
        ident = brachy_case_identity(i, seed=5)
        assert ident.patient_name == f"SYNTH^BRACHY^{i + 1:03d}" and len(ident.birth_date) == 8
        ct_files = sorted((case / "CT").glob("*.dcm"))
        plans = sorted(case.glob("RP*.dcm"))
        assert len(ct_files) == 48 and len(plans) == 1
        ct_ds = pydicom.dcmread(ct_files[0], stop_before_pixels=True)
        plan_ds = pydicom.dcmread(plans[0])
        for ds in (ct_ds, plan_ds):
            assert (str(ds.PatientName), ds.PatientID, ds.PatientBirthDate) == (
                ident.patient_name, ident.patient_id, ident.birth_date)
        assert ct_ds.StudyInstanceUID == plan_ds.StudyInstanceUID
        assert (ct_ds.RescaleSlope, ct_ds.RescaleIntercept, ct_ds.PixelRepresentation) == (1, -1024, 1)
        plan = read_brachy_plan(plans[0])
        assert 5 <= len(plan.catheters) <= 10
        ct = _read_ct(case / "CT")
        assert ct.array.shape == (48, 96, 96) and ct.spacing == pytest.approx((1.0, 1.0, 2.0))
        check_frame_of_reference(plan, ct)


@pytest.fixture(scope="module")
def bright_cases(tmp_path_factory) -> list[Path]:
    return generate_brachy_ct(tmp_path_factory.mktemp("bright"), cases=2, seed=5, realism="bright-needles")


def test_needles_bright_along_plan_and_tissue_elsewhere(bright_cases):
    """The old easy look (``realism="bright-needles"``), kept for plumbing tests with thresholding models; the
    default clinical look is checked in tests/synth/test_brachy_realism.py."""
    for case in bright_cases:
        ct = _read_ct(case / "CT")
        hu = ct.array.astype(np.float32)
        plan = read_brachy_plan(next(case.glob("RP*.dcm")))
        lines = plan.polylines
        # every point every 0.5 mm along every channel has a bright voxel among the 8 surrounding voxel centres
        for line in lines:
            pts = resample_polyline(line, 0.5)
            idx = ct.physical_to_index(pts)
            lo = np.floor(idx).astype(int)
            corners = np.array([[dx, dy, dz] for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)])
            cidx = np.clip(lo[:, None, :] + corners[None], 0, np.array(ct.shape_xyz) - 1)
            best = hu[cidx[..., 2], cidx[..., 1], cidx[..., 0]].max(axis=1)
            assert best.min() > 500, f"channel dark at {pts[best.argmin()]}: {best.min()} HU"
        near, _ = rasterize_polylines(lines, ct, radius_mm=0.8 + 0.5 * np.linalg.norm(ct.spacing))
        far, _ = rasterize_polylines(lines, ct, radius_mm=4.0)
        bright = hu > 500
        assert bright.sum() > 300
        assert np.all(near[bright] == 1), "bright voxels away from every plan channel"
        # body interior (partial-volume skin/air boundary excluded), away from the needles
        body = ndimage.binary_erosion(hu > -500, iterations=2) & (far == 0)
        tissue = hu[body]
        assert body.sum() > 50_000
        assert np.mean((tissue > -250) & (tissue < 250)) > 0.995
        assert -130 < np.median(tissue) < 60
        assert np.mean(tissue < -50) > 0.15 and np.mean(tissue > 20) > 0.15  # fat and glandular/muscle
        air = hu[ndimage.binary_erosion(hu < -500, iterations=3)]
        assert air.size > 0.2 * hu.size and abs(np.median(air) + 1000) < 5
        assert 8 < np.std(air) < 16  # noise ~12 HU (lower tail clipped at -1024)


def test_deterministic_for_a_seed(tmp_path, brachy_cases):
    again = generate_brachy_ct(tmp_path / "again", cases=1, seed=5)[0]
    other = generate_brachy_ct(tmp_path / "other", cases=1, seed=6)[0]
    files = sorted(p.name for p in (brachy_cases[0] / "CT").glob("*.dcm"))
    assert files == sorted(p.name for p in (again / "CT").glob("*.dcm"))
    for name in files[::12]:
        assert (brachy_cases[0] / "CT" / name).read_bytes() == (again / "CT" / name).read_bytes()
    plan_a = read_brachy_plan(next(brachy_cases[0].glob("RP*.dcm")))
    plan_b = read_brachy_plan(next(again.glob("RP*.dcm")))
    assert len(plan_a.catheters) == len(plan_b.catheters)
    for a, b in zip(plan_a.catheters, plan_b.catheters):
        np.testing.assert_array_equal(a.points, b.points)
    plan_c = read_brachy_plan(next(other.glob("RP*.dcm")))
    assert plan_c.frame_of_reference_uid != plan_a.frame_of_reference_uid
    assert not np.allclose(plan_c.catheters[0].points[0], plan_a.catheters[0].points[0])
