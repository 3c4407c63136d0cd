"""`medtf convert` exit codes (issue #13, defect 8), through the real entry point.

0: every input converted (or ``--allow-failures``); 1: some inputs failed, recorded in manifest.json, the shards
hold the other cases; 2: options or inputs that allow no conversion; 3: a converter bug (an exception that is not
`InputError`), shown with its traceback. A cluster task with failed inputs exits 0 (the merge gives the verdict).
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from medtf.data.manifest import read_manifest
from tests.conftest import TEST_SALT, run_medtf, sha256_tree
from tfrecords_builder.lgg_mri import LggMriConverter

OPTIONS = ("--id-salt", TEST_SALT, "--split", "0.5,0.25,0.25", "--shard-size-mb", "0.05")


def convert(src, out, *extra) -> int:
    return run_medtf("convert", "lgg-mri", "--input", src, "--output", out, *OPTIONS, *extra)


@pytest.fixture(scope="module")
def broken_source(lgg_source, tmp_path_factory):
    """The 6-patient lgg source with one mask file removed: 1 bad case, 5 good ones."""
    src = tmp_path_factory.mktemp("exit_codes") / "src"
    shutil.copytree(lgg_source, src)
    next(sorted((src / "kaggle_3m").iterdir())[-1].glob("*_2_mask.tif")).unlink()
    return src


def test_failed_inputs_exit_1_and_lose_nothing(broken_source, tmp_path):
    strict, lenient = tmp_path / "strict", tmp_path / "lenient"
    assert convert(broken_source, strict) == 1
    assert convert(broken_source, lenient, "--allow-failures") == 0
    for out in (strict, lenient):
        manifest = read_manifest(out)
        assert manifest["num_failed"] == 1 and "no mask file" in manifest["failures"][0]["reason"]
        assert sum(s["num_patients"] for s in manifest["splits"].values()) == 5  # the good cases are all there
    assert sha256_tree(strict) == sha256_tree(lenient)  # same shards, manifest and previews either way
    # Up to date (nothing to do) still reports the failure.
    assert convert(broken_source, strict) == 1


def test_clean_input_exits_0_without_the_flag(lgg_source, tmp_path):
    assert convert(lgg_source, tmp_path / "out") == 0


def _buggy(monkeypatch, victim: str):
    """Make the lgg converter crash (ZeroDivisionError, naming the raw case) on the case whose key is ``victim``."""
    real = LggMriConverter.convert_case

    def convert_case(self, case, options):
        if case.key == victim:
            raise ZeroDivisionError(f"bug while reading {case.key} of {case.patient_id}")
        return real(self, case, options)

    monkeypatch.setattr(LggMriConverter, "convert_case", convert_case)


def test_converter_bug_exits_3_with_traceback_and_resumes(lgg_source, tmp_path, monkeypatch, caplog):
    folders = sorted((lgg_source / "kaggle_3m").iterdir())
    victim = folders[2]
    patient = victim.name[:12]  # TCGA_XX_XXXX
    _buggy(monkeypatch, victim.name)
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR, logger="medtf.convert"):
        assert convert(lgg_source, out, "--allow-failures") == 3  # a bug is not an input failure
    log = caplog.text
    assert "Traceback (most recent call last)" in log and "ZeroDivisionError: bug while reading" in log, log
    assert "in convert_case" in log and "bug in the lgg-mri converter" in log
    assert patient not in log and victim.name not in log  # de-identified like every other message
    assert not (out / "manifest.json").exists() and not list(out.glob("*.tfrecord"))
    work = out / ".work"
    finished = [json.loads(p.read_text()) for p in work.glob("c*.json")]
    assert any(s["ok"] for s in finished) and [s for s in finished if s.get("bug")]
    # Fixed: the re-run converts, reusing the cases finished before the bug.
    monkeypatch.undo()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medtf.convert"):
        assert convert(lgg_source, out) == 0
    assert "resuming:" in caplog.text
    assert read_manifest(out)["num_failed"] == 0


def test_a_task_with_failed_inputs_exits_0_and_the_merge_decides(broken_source, tmp_path):
    out = tmp_path / "tasks"
    for index in range(2):  # no --allow-failures: a task records its failures for the merge and succeeds
        assert convert(broken_source, out, "--num-tasks", 2, "--task-index", index) == 0
    assert convert(broken_source, out, "--merge") == 1
    manifest = read_manifest(out)
    assert manifest["num_failed"] == 1 and sum(s["num_patients"] for s in manifest["splits"].values()) == 5
    out2 = tmp_path / "tasks_allowed"
    for index in range(2):
        assert convert(broken_source, out2, "--num-tasks", 2, "--task-index", index, "--allow-failures") == 0
    assert convert(broken_source, out2, "--merge", "--allow-failures") == 0
    assert sha256_tree(out) == sha256_tree(out2)


def test_a_task_with_a_converter_bug_exits_3(lgg_source, tmp_path, monkeypatch):
    folders = sorted((lgg_source / "kaggle_3m").iterdir())
    _buggy(monkeypatch, folders[0].name)
    out = tmp_path / "tasks"
    codes = [convert(lgg_source, out, "--num-tasks", 2, "--task-index", i, "--allow-failures") for i in range(2)]
    assert sorted(codes) == [0, 3]  # the task holding the bad case fails (its afterok merge never runs)
