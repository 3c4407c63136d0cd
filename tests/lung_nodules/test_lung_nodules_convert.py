"""lung-nodules through the real `medtf` entry point on synthetic LUNGx scans: crops centred on the nodule, windows
by NumPy reference, InstanceNumber lookup, and malformed input (missing series, a row outside the volume, a bad
diagnosis) recorded while the rest converts."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from medtf.data.decoder import make_decoder
from medtf.data.deid import IdHasher
from medtf.data.manifest import read_manifest, shard_paths
from medtf.data.schema import LUNG_NODULES
from medtf.synth.lung_nodules import CSV_NAME, generate_lung_case, write_nodule_csv
from tests.conftest import TEST_SALT, find_phi, run_medtf

SHAPE, SPACING = (24, 96, 96), (2.0, 2.0, 2.5)
PATCH = ("--patch-mm", "64", "--patch-size", "32")  # 2 mm pixels: one patch pixel per CT voxel in-plane


def _convert(src, out, *extra):
    return run_medtf("convert", "lung-nodules", "--input", src, "--output", out, "--id-salt", TEST_SALT,
                     "--split", "1,0,0", *PATCH, *extra)


def _examples(out):
    manifest = read_manifest(out)
    files = [str(p) for p in shard_paths(out, manifest)]
    ds = tf.data.TFRecordDataset(files, compression_type=manifest["compression"] or "")
    return list(ds.map(make_decoder(LUNG_NODULES)).as_numpy_iterator())


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("lungx")
    rows = []
    for i in range(3):
        rows.extend(generate_lung_case(root, i, seed=2, shape=SHAPE, spacing=SPACING, nodules=2)[1])
    write_nodule_csv(root / CSV_NAME, rows)
    return root, rows


def _by_key(examples):
    hasher = IdHasher(TEST_SALT.encode())
    return {(e["patient_id"].decode(), int(e["nodule_number"])): e for e in examples}, hasher


def test_crops_are_centred_on_the_nodule(source, tmp_path):
    root, rows = source
    out = tmp_path / "hu"
    assert _convert(root, out, "--hu") == 0
    by_key, hasher = _by_key(_examples(out))
    assert len(by_key) == len(rows) == 6
    for row in rows:
        e = by_key[(hasher(row["Scan Number"]), row["Nodule Number"])]
        patch = e["image"][..., 0]
        assert patch.shape == (32, 32) and e["label"] == (row["Diagnosis"] != "benign")
        # The nodule: the above-half-maximum region connected to the patch centre (sample_patch puts the centre
        # at pixel ((size-1)/2, (size-1)/2)); its centroid must be that pixel within one voxel. Measured 0.28 px at
        # most; an off-by-one in x, y (--xy-base 1 on this 0-based CSV) gives 1.0-1.15 px, so the bound is 0.5.
        smooth = ndimage.gaussian_filter(patch, 0.7)
        c = (32 - 1) / 2.0
        core = smooth[int(c) - 1:int(c) + 3, int(c) - 1:int(c) + 3].max()
        labels, _ = ndimage.label(smooth > (core - 850.0) / 2)
        region = labels == labels[int(round(c)), int(round(c))]
        cy, cx = ndimage.center_of_mass(region)
        assert abs(cy - c) <= 0.5 and abs(cx - c) <= 0.5, (row, cy, cx)
        assert core > -550  # nodule tissue at the centre, well above lung (-850 HU), even for 2.5 mm ones
    manifest = read_manifest(out)
    assert manifest["options"]["windows"] is None and manifest["failures"] == []


def test_windows_are_channels_by_numpy_reference(source, tmp_path):
    root, _ = source
    hu_out, win_out = tmp_path / "hu", tmp_path / "win"
    assert _convert(root, hu_out, "--hu", "--no-alignment-pngs") == 0
    assert _convert(root, win_out, "--window=-600,1500", "--window", "mediastinal") == 0
    hu = {k: e["image"][..., 0] for k, e in _by_key(_examples(hu_out))[0].items()}
    for key, e in _by_key(_examples(win_out))[0].items():
        assert e["image"].shape == (32, 32, 2)
        np.testing.assert_allclose(e["image"][..., 0], np.clip((hu[key] + 1350) / 1500, 0, 1), atol=1e-5)
        np.testing.assert_allclose(e["image"][..., 1], np.clip((hu[key] + 160) / 400, 0, 1), atol=1e-5)
    pngs = list((win_out / "alignment").glob("*.png"))
    assert len(pngs) == 6 and not (hu_out / "alignment").exists()


def test_malformed_inputs_are_recorded_and_the_rest_converts(source, tmp_path):
    root, rows = source
    src = tmp_path / "src"
    shutil.copytree(root, src)
    shutil.rmtree(src / "LUNGx" / rows[0]["Scan Number"])  # scan 1: its series is missing
    bad = [dict(r) for r in rows]
    bad[2]["Nodule Center x,y Position*"] = "500, 20"  # scan 2 nodule 1: outside the 96x96 image
    bad[3]["Diagnosis"] = "probably fine"  # scan 2 nodule 2
    bad[4]["Nodule Center Image"] = 99  # scan 3 nodule 1: no slice has this InstanceNumber
    write_nodule_csv(src / CSV_NAME, bad)
    out = tmp_path / "out"
    assert _convert(src, out) == 1
    manifest = read_manifest(out)
    reasons = [f["reason"] for f in manifest["failures"]]
    assert len(reasons) == 5, reasons  # scan 2 lost both nodules: also "case produced no examples"
    assert "case produced no examples" in reasons
    assert any("no DICOM folder named after this scan" in r for r in reasons)
    assert any("lies outside the 96x96 image" in r for r in reasons)
    assert any("diagnosis 'probably fine' is not one of" in r for r in reasons)
    assert any("image number 99 is no slice's InstanceNumber" in r for r in reasons)
    got = _examples(out)
    assert [int(e["nodule_number"]) for e in got] == [2]  # scan 3 nodule 2: the only good row left
    names = {r["Scan Number"] for r in rows}
    assert find_phi(out, names | {"SYNTH^LUNG^001", "SYNTH^LUNG^002"}) == []


def test_missing_csv_and_bad_options_are_usage_errors(source, tmp_path):
    root, _ = source
    assert _convert(root, tmp_path / "o1", "--hu", "--window", "40,400") == 2
    assert _convert(root, tmp_path / "o2", "--window", "40") == 2
    empty = tmp_path / "nocsv"
    shutil.copytree(root / "LUNGx", empty / "LUNGx")
    assert _convert(empty, tmp_path / "o3") == 2


def test_synth_cli_writes_the_lungx_layout(tmp_path):
    assert run_medtf("synth", "lung-nodules", "--out", tmp_path / "s", "--cases", 2, "--seed", 1) == 0
    with open(tmp_path / "s" / CSV_NAME, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["Scan Number"] for r in rows} == {"LUNGx-CT001", "LUNGx-CT002"}
    assert {r["Diagnosis"].lower() for r in rows} <= {"benign", "malignant", "primary lung cancer"}
    assert len(list((tmp_path / "s" / "LUNGx" / "LUNGx-CT001").rglob("*.dcm"))) == 32
