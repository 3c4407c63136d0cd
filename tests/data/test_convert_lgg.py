"""lgg-mri end to end through the real `medtf` entry point: shards, manifest, PHI, determinism, resume, verify."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from medtf.data.decoder import make_decoder
from medtf.data.deid import IdHasher
from medtf.data.manifest import read_manifest, shard_paths
from medtf.data.schema import LGG_MRI
from tests.conftest import TEST_SALT, find_phi, run_medtf, sha256_tree

FOLDER_RE = re.compile(r"^(TCGA_\w\w_\w{4})_(\d{8})$")


def _convert(src, out, *extra):
    return run_medtf("convert", "lgg-mri", "--input", src, "--output", out, "--id-salt", TEST_SALT,
                     "--split", "0.5,0.25,0.25", "--shard-size-mb", "0.05", *extra)


def _decoded(out: Path, split=None):
    manifest = read_manifest(out)
    files = [str(p) for p in shard_paths(out, manifest, split)]
    ds = tf.data.TFRecordDataset(files, compression_type=manifest["compression"] or "").map(make_decoder(LGG_MRI))
    return list(ds.as_numpy_iterator())


@pytest.fixture(scope="module")
def converted(lgg_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("lgg") / "shards"
    assert _convert(lgg_source, out) == 0
    return out


def test_manifest_counts_match_source_and_shards(lgg_source, converted):
    manifest = read_manifest(converted)
    folders = sorted((lgg_source / "kaggle_3m").iterdir())
    n_slices = sum(len([p for p in f.glob("*.tif") if "_mask" not in p.name]) for f in folders)
    assert sum(s["num_examples"] for s in manifest["splits"].values()) == n_slices
    assert sum(s["num_patients"] for s in manifest["splits"].values()) == len(folders)
    for name, split in manifest["splits"].items():
        assert len(split["shards"]) > 1  # 0.05 MB shards force several
        assert sum(sh["num_examples"] for sh in split["shards"]) == split["num_examples"]
        assert [sh["file"] for sh in split["shards"]] == [
            f"{name}-{i:05d}-of-{len(split['shards']):05d}.tfrecord" for i in range(len(split["shards"]))
        ]
    assert manifest["failures"] == [] and manifest["kind"] == "lgg-mri"


def test_round_trip_is_pixel_exact(lgg_source, converted):
    hasher = IdHasher(TEST_SALT.encode())
    by_key = {(e["patient_id"].decode(), int(e["slice_index"])): e for e in _decoded(converted)}
    for folder in sorted((lgg_source / "kaggle_3m").iterdir()):
        patient = hasher(FOLDER_RE.match(folder.name)[1])
        slices = sorted(int(p.stem.rsplit("_", 1)[1]) for p in folder.glob("*.tif") if "_mask" not in p.name)
        for n in slices:
            example = by_key[(patient, n)]
            image = np.asarray(Image.open(folder / f"{folder.name}_{n}.tif"))
            mask = np.asarray(Image.open(folder / f"{folder.name}_{n}_mask.tif")) > 127
            np.testing.assert_array_equal(example["image"], image)
            np.testing.assert_array_equal(example["mask"][..., 0], mask.astype(np.uint8))
            assert example["label"] == int(mask.any()) and example["num_slices"] == len(slices)


def test_no_patient_in_two_splits_and_splits_stratified(converted):
    manifest = read_manifest(converted)
    seen = {}
    for split in manifest["splits"]:
        for e in _decoded(converted, split):
            assert seen.setdefault(e["patient_id"], split) == split
    assert sorted(seen) == sorted(p.encode() for s in manifest["splits"].values() for p in s["patients"])
    # Strata are tumour-share quantile bins; each bin is spread over the splits within one patient of its share.
    strata = manifest["split"]["strata"]
    share = {}
    for e in _decoded(converted):
        share.setdefault(e["patient_id"].decode(), []).append(e["label"])
    by_share = sorted(share, key=lambda p: np.mean(share[p]))
    assert [strata[p] for p in by_share] == sorted(strata[p] for p in by_share)  # bins are monotone in share
    fractions = manifest["split"]["fractions"]
    for stratum in set(strata.values()):
        members = [p for p in strata if strata[p] == stratum]
        for split, fraction in fractions.items():
            n = sum(p in manifest["splits"][split]["patients"] for p in members)
            assert abs(n - fraction * len(members)) <= 1.0


def test_no_phi_anywhere_in_output(lgg_source, converted, capsys):
    needles = set()
    for folder in (lgg_source / "kaggle_3m").iterdir():
        patient, date = FOLDER_RE.match(folder.name).groups()
        needles |= {folder.name, patient, patient.split("_", 1)[1], date}
    assert find_phi(converted, needles) == []
    assert find_phi(converted.parent, needles) == []  # includes the .idkey beside the output


def test_same_input_and_seed_give_byte_identical_shards(lgg_source, converted, tmp_path):
    again = tmp_path / "again"
    assert _convert(lgg_source, again, "--workers", "2") == 0
    assert {k: v for k, v in sha256_tree(again).items()} == sha256_tree(converted)


def test_rerun_is_a_no_op_and_key_is_outside_the_shards(lgg_source, tmp_path):
    out = tmp_path / "shards"
    assert run_medtf("convert", "lgg-mri", "--input", lgg_source, "--output", out, "--split", "0.5,0.25,0.25") == 0
    key_file = tmp_path / "shards.idkey"
    assert key_file.exists() and oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert key_file.read_text().strip() not in (out / "manifest.json").read_text()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert run_medtf("convert", "lgg-mri", "--input", lgg_source, "--output", out, "--split", "0.5,0.25,0.25") == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_gzip_shards_round_trip(lgg_source, converted, tmp_path):
    out = tmp_path / "gz"
    assert _convert(lgg_source, out, "--compression", "GZIP") == 0
    manifest = read_manifest(out)
    assert all(sh["file"].endswith(".tfrecord.gz") for s in manifest["splits"].values() for sh in s["shards"])
    assert run_medtf("verify", out) == 0
    plain = {e["example_id"]: e["image"] for e in _decoded(converted)}
    packed = {e["example_id"]: e["image"] for e in _decoded(out)}
    assert plain.keys() == packed.keys()
    assert all(np.array_equal(plain[k], packed[k]) for k in plain)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_verify_catches_damaged_shards(converted, tmp_path, damage, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(converted, copy)
    assert run_medtf("verify", copy) == 0
    shard = sorted(copy.glob("val-*.tfrecord"))[0]
    data = bytearray(shard.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(bytes(data[: len(data) // 2]))
    else:
        shard.unlink()
    capsys.readouterr()
    assert run_medtf("verify", copy) == 1
    err = capsys.readouterr().err
    assert shard.name in err


def test_bad_inputs_are_recorded_and_the_rest_converted(lgg_source, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(lgg_source, src)
    folders = sorted((src / "kaggle_3m").iterdir())
    broken = folders[0]
    next(broken.glob("*_3_mask.tif")).unlink()  # a slice without its mask
    (src / "kaggle_3m" / "notes").mkdir()  # a folder that is not a patient
    (src / "kaggle_3m" / "notes" / "x.txt").write_text("hello")
    out = tmp_path / "out"
    assert _convert(src, out) == 1  # inputs failed: exit 1, the other cases are converted
    manifest = read_manifest(out)
    assert manifest["num_failed"] == 2
    reasons = {f["reason"] for f in manifest["failures"]}
    assert any("no mask file" in r for r in reasons) and any("folder name" in r for r in reasons)
    raw = FOLDER_RE.match(broken.name)[1]
    text = json.dumps(manifest["failures"])
    assert raw not in text and broken.name not in text  # the failing path is de-identified ...
    assert IdHasher(TEST_SALT.encode())(raw) in text  # ... but still traceable with the key
    assert sum(s["num_patients"] for s in manifest["splits"].values()) == len(folders) - 1
    assert run_medtf("verify", out) == 0
    assert raw not in capsys.readouterr().err  # nor in the log lines


def test_strict_mode_fails_without_writing_a_manifest(lgg_source, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(lgg_source, src)
    next(sorted((src / "kaggle_3m").iterdir())[-1].glob("*_2_mask.tif")).unlink()
    out = tmp_path / "out"
    assert _convert(src, out, "--strict") == 2
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("*.tfrecord"))


def test_interrupted_run_resumes_finished_cases(lgg_source, tmp_path, monkeypatch):
    from tfrecords_builder import lgg_mri

    src = tmp_path / "src"
    shutil.copytree(lgg_source, src)
    last = sorted((src / "kaggle_3m").iterdir())[-1]
    hidden = next(last.glob("*_2_mask.tif"))
    hidden.rename(hidden.with_suffix(".bak"))
    out = tmp_path / "out"
    assert _convert(src, out, "--strict") == 2  # like a preemption: five cases done, the run stopped
    assert len(list((out / ".work").glob("*.rec"))) == 5
    hidden.with_suffix(".bak").rename(hidden)

    calls = []
    original = lgg_mri.LggMriConverter.convert_case
    monkeypatch.setattr(lgg_mri.LggMriConverter, "convert_case",
                        lambda self, case, options: calls.append(case.key) or original(self, case, options))
    assert _convert(src, out) == 0
    assert calls == [last.name]  # only the unfinished case was converted again
    assert not (out / ".work").exists()
    fresh = tmp_path / "fresh"
    assert _convert(src, fresh) == 0
    assert sha256_tree(fresh) == sha256_tree(out)


def test_failed_shard_write_leaves_no_complete_looking_file(tmp_path, monkeypatch):
    from medtf.data import shards

    def records():
        yield b"x" * 100
        raise OSError("disk full")

    with pytest.raises(OSError):
        shards.write_shard(tmp_path / "train-00000-of-00001.tfrecord", records())
    assert list(tmp_path.iterdir()) == []


def test_inspect_summarises_and_writes_previews(converted, capsys):
    from PIL import Image

    assert run_medtf("inspect", converted) == 0
    out = capsys.readouterr().out
    manifest = read_manifest(converted)
    for name, split in manifest["splits"].items():
        assert f"{name}:" in out and f"{split['num_examples']} examples" in out
        preview = np.asarray(Image.open(converted / "previews" / f"{name}.png"))
        assert preview.shape == (64, 64, 3)
        # The chosen slice shows tumour: some pixels are tinted red by the mask overlay.
        assert ((preview[..., 0].astype(int) - preview[..., 1]) > 60).sum() > 0


def test_a_split_left_empty_is_an_error(tmp_path, caplog):
    """One patient cannot fill train, val and test: say so (with the count) instead of writing a train-only set."""
    from medtf.synth.lgg_mri import generate_lgg_mri

    generate_lgg_mri(tmp_path / "src", cases=1, seed=1, num_slices=3, size=32)
    out = tmp_path / "out"
    caplog.clear()
    assert run_medtf("convert", "lgg-mri", "--input", tmp_path / "src", "--output", out, "--id-salt", TEST_SALT,
                     "--split", "0.8,0.1,0.1") == 2
    message = " ".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert "--split 0.8,0.1,0.1 leaves val and test empty" in message, message
    assert "1 patient" in message and "--split 1,0,0" in message and "--folds" in message, message
    assert not (out / "manifest.json").exists() and not list(out.glob("*.tfrecord"))
    caplog.clear()
    assert run_medtf("convert", "lgg-mri", "--input", tmp_path / "src", "--output", tmp_path / "folds",
                     "--id-salt", TEST_SALT, "--folds", "2", "--split", "1") == 2
    message = " ".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert "--folds 2 leaves fold-1 empty" in message and "1 patient" in message, message
    # Asking for train only is explicit, and works.
    assert run_medtf("convert", "lgg-mri", "--input", tmp_path / "src", "--output", out, "--id-salt", TEST_SALT,
                     "--split", "1,0,0") == 0
    assert list(read_manifest(out)["splits"]) == ["train"]
