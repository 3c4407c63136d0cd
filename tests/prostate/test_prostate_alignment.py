"""Alignment: a lesion at a known physical point lands at the patch centre on all channels, although T2, DWI and
ADC have different spacings, fields of view, slice positions and (T2) an in-plane rotation; ijk vs pos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from medtf.data.deid import IdHasher
from medtf.data.manifest import read_manifest
from medtf.io.volume import Volume
from medtf.synth.prostate_mpmri import (FINDINGS_COLUMNS, IMAGES_COLUMNS, images_rows, prostate_identity,
                                        write_csv, write_patient_series)
from tests.conftest import TEST_SALT, run_medtf
from tests.prostate.conftest import examples, read_csv, write_rows

T2_INDEX = [(40.3, 37.7, 4), (30.6, 44.2, 3)]  # lesion of patient n at this continuous T2 index (on a slice plane)
RADIUS = 4.0
PATCH = ("--patch-mm", "25", "--patch-size", "25")  # 1 mm pixels, centre pixel (12, 12)


def _rot_z(deg):
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _grid(spacing, size_xyz, centre, direction=np.eye(3)) -> Volume:
    origin = centre - direction @ (np.asarray(spacing) * (np.asarray(size_xyz) - 1) / 2)
    return Volume(np.zeros(size_xyz[::-1], np.float32), spacing=spacing, origin=origin, direction=direction.ravel())


def _sphere(vol: Volume, centre, inside: float, outside: float) -> Volume:
    d = np.linalg.norm(vol.voxel_centers() - centre, axis=-1)
    w = np.clip(RADIUS - d + 0.5, 0.0, 1.0)  # 1 mm partial-volume edge
    return vol.with_array((outside + (inside - outside) * w).astype(np.float32))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    root = tmp_path_factory.mktemp("prostate_phantom")
    findings, images, points = [], [], []
    for n, index in enumerate(T2_INDEX):
        centre = np.array([3.0, 25.0, -45.0 + 7 * n])
        t2 = _grid((0.5, 0.5, 3.0), (80, 80, 8), centre, _rot_z(10.0))
        dwi = _grid((2.0, 2.0, 3.6), (24, 20, 7), centre + [1.1, -0.7, 1.3])
        adc = _grid((1.6, 1.6, 4.0), (30, 26, 6), centre + [-0.9, 0.4, -1.7])
        p = t2.index_to_physical(index)
        volumes = {"t2_tra": _sphere(t2, p, 900, 200), "adc": _sphere(adc, p, 500, 1500),
                   # b=50 has its bright spot 8 mm away: picking it instead of b=800 would move the DWI blob
                   "dwi": {50: _sphere(dwi, p + [8.0, 0, 0], 600, 300), 800: _sphere(dwi, p, 400, 50)}}
        ident = prostate_identity(n, seed=9)
        grids = write_patient_series(root / "PROSTATEx" / ident.prox_id, ident, volumes, seed=9)
        findings.append({"ProxID": ident.prox_id, "fid": 1, "pos": " ".join(f"{v:.4f}" for v in p), "zone": "PZ",
                         "ClinSig": "TRUE"})
        images.extend(images_rows(ident.prox_id, 1, p, grids))
        points.append(p)
    write_csv(root / "ProstateX-Findings-Train.csv", findings, FINDINGS_COLUMNS)
    write_csv(root / "ProstateX-Images-Train.csv", images, IMAGES_COLUMNS)
    return root, points


def _convert(src, out, *extra):
    assert run_medtf("convert", "prostate-mpmri", "--input", src, "--output", out, "--id-salt", TEST_SALT,
                     "--split", "1", "--allow-failures", *PATCH, *extra) == 0
    hasher = IdHasher(TEST_SALT.encode())
    return {hasher(prostate_identity(n, 9).prox_id): n for n in range(len(T2_INDEX))}, examples(out)


def _blob_centre(channel: np.ndarray, dark: bool) -> np.ndarray:
    v = (channel.max() - channel) if dark else (channel - channel.min())
    w = np.where(v > 0.5 * v.max(), v, 0.0)
    ys, xs = np.mgrid[: channel.shape[0], : channel.shape[1]]
    return np.array([(w * ys).sum(), (w * xs).sum()]) / w.sum()


def test_lesion_lands_at_the_patch_centre_on_every_channel(phantom, tmp_path):
    src, points = phantom
    which, exs = _convert(src, tmp_path / "out")
    assert len(exs) == len(T2_INDEX)
    for e in exs:
        p = points[which[e["patient_id"].decode()]]
        # ijk is the rounded T2 index: at most half a T2 voxel (0.25 mm per in-plane axis) from the true point
        assert np.linalg.norm(e["lesion_position"][:2] - p[:2]) <= 0.36 and abs(e["lesion_position"][2] - p[2]) < 1e-3
        for c, dark in enumerate((False, False, True)):  # T2 bright sphere, DWI b=800 bright, ADC dark
            np.testing.assert_allclose(_blob_centre(e["image"][..., c], dark), [12, 12], atol=1.0)


def test_locate_by_pos_agrees_with_ijk(phantom, tmp_path):
    src, points = phantom
    which, by_ijk = _convert(src, tmp_path / "ijk")
    _, by_pos = _convert(src, tmp_path / "pos", "--locate", "pos")
    by_ijk = {e["patient_id"]: e for e in by_ijk}
    for e in by_pos:
        np.testing.assert_allclose(e["lesion_position"], points[which[e["patient_id"].decode()]], atol=1e-3)
        other = by_ijk[e["patient_id"]]
        assert np.linalg.norm(e["lesion_position"] - other["lesion_position"]) <= 0.36
        for c in range(3):
            assert np.corrcoef(e["image"][..., c].ravel(), other["image"][..., c].ravel())[0, 1] > 0.97


def test_k_is_zero_based_while_instance_number_is_one_based(phantom):
    src, points = phantom
    rows = [r for r in read_csv(src / "ProstateX-Images-Train.csv") if r["Name"] == "t2_tse_tra0"]
    for row, p in zip(rows, points):
        k = int(row["ijk"].split()[2])
        folder = next((src / "PROSTATEx" / row["ProxID"]).glob("*/4-t2tsetra-*"))
        by_instance = {int(ds.InstanceNumber): ds for ds in map(pydicom.dcmread, folder.glob("*.dcm"))}
        assert float(by_instance[k + 1].ImagePositionPatient[2]) == pytest.approx(p[2], abs=1e-3)
        assert float(by_instance[k].ImagePositionPatient[2]) == pytest.approx(p[2] - 3.0, abs=1e-3)


def _one_based(src: Path, tmp_path: Path) -> Path:
    """A copy of the source whose Images CSV gives patient 0's T2 slice as a 1-based number."""
    import shutil

    copy = tmp_path / "src"
    shutil.copytree(src, copy)
    rows = read_csv(copy / "ProstateX-Images-Train.csv")
    for r in rows:
        if r["ProxID"] == prostate_identity(0, 9).prox_id and r["Name"] == "t2_tse_tra0":
            i, j, k = r["ijk"].split()
            r["ijk"] = f"{i} {j} {int(k) + 1}"
    write_rows(copy / "ProstateX-Images-Train.csv", rows)
    return copy


def test_one_based_slice_number_is_reported_not_converted(phantom, tmp_path):
    src, _ = phantom
    which, exs = _convert(_one_based(src, tmp_path), tmp_path / "out")
    assert [which[e["patient_id"].decode()] for e in exs] == [1]
    reasons = [f["reason"] for f in read_manifest(tmp_path / "out")["failures"]]
    assert any("fid 1" in r and "0-based" in r and "t2_tse_tra" in r for r in reasons), reasons


def test_unchecked_one_based_slice_misses_the_lesion_by_one_slice(phantom, tmp_path):
    """Without the ijk/pos check the same input lands 3 mm (one T2 slice) away: the alignment test above fails."""
    src, points = phantom
    which, exs = _convert(_one_based(src, tmp_path), tmp_path / "out", "--ijk-tolerance", "0")
    shifted = next(e for e in exs if which[e["patient_id"].decode()] == 0)
    assert shifted["lesion_position"][2] - points[0][2] == pytest.approx(3.0, abs=1e-3)


def test_csv_overrides_and_pos_without_an_images_csv(phantom, tmp_path):
    import shutil

    src, points = phantom
    elsewhere = tmp_path / "csv"
    elsewhere.mkdir()
    data = tmp_path / "src"
    shutil.copytree(src / "PROSTATEx", data / "PROSTATEx")
    shutil.copy(src / "ProstateX-Findings-Train.csv", elsewhere / "findings.csv")
    shutil.copy(src / "ProstateX-Images-Train.csv", elsewhere / "images.csv")
    which, exs = _convert(data, tmp_path / "a", "--findings-csv", elsewhere / "findings.csv",
                          "--images-csv", elsewhere / "images.csv")
    assert len(exs) == len(T2_INDEX)
    which, exs = _convert(data, tmp_path / "b", "--findings-csv", elsewhere / "findings.csv", "--locate", "pos")
    assert sorted(which[e["patient_id"].decode()] for e in exs) == [0, 1]
    for e in exs:
        np.testing.assert_allclose(e["lesion_position"], points[which[e["patient_id"].decode()]], atol=1e-3)
    assert run_medtf("convert", "prostate-mpmri", "--input", data, "--output", tmp_path / "c", "--id-salt",
                     TEST_SALT, "--findings-csv", elsewhere / "findings.csv") == 2  # ijk needs the Images CSV
