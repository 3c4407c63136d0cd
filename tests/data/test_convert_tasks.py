"""Conversion split over N tasks + a merge (`--num-tasks/--task-index`, `--merge`), through the real `medtf` entry
point: byte-identical to one conversion for any N, patients kept whole, failures kept, resume, refusals."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medtf.data.deid import IdHasher
from medtf.data.manifest import read_manifest
from tests.conftest import TEST_SALT, run_medtf, sha256_tree, sigkill_when

# The inputs hold bad cases; the exit codes with and without --allow-failures: tests/data/test_convert_exit_codes.py
OPTIONS = ("--split", "0.5,0.25,0.25", "--shard-size-mb", "0.05", "--id-salt", TEST_SALT, "--allow-failures")
CASE_ID = IdHasher(TEST_SALT.encode(), prefix="c")


def convert(src, out, *extra, kind="lgg-mri", options=OPTIONS) -> int:
    return run_medtf("convert", kind, "--input", src, "--output", out, *options, *extra)


def errors(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


@pytest.fixture(scope="module")
def lgg_input(lgg_source, tmp_path_factory) -> Path:
    """lgg_source (6 patients) + a second study of the first patient, one broken case, one stray folder."""
    src = tmp_path_factory.mktemp("lgg_tasks") / "src"
    shutil.copytree(lgg_source, src)
    folders = sorted((src / "kaggle_3m").iterdir())
    shutil.copytree(folders[0], folders[0].with_name(folders[0].name[:-8] + "20991231"))  # same patient, later
    next(folders[2].glob("*_3_mask.tif")).unlink()  # a case that fails (recorded)
    (src / "kaggle_3m" / "notes").mkdir()  # not a patient folder (recorded at discovery)
    return src


@pytest.fixture(scope="module")
def single(lgg_input, tmp_path_factory) -> Path:
    """The reference: one conversion without --num-tasks."""
    out = tmp_path_factory.mktemp("single") / "out"
    assert convert(lgg_input, out) == 0
    return out


@pytest.mark.parametrize("num_tasks", [1, 2, 3])
def test_tasks_then_merge_give_the_single_conversion_byte_for_byte(lgg_input, single, tmp_path, num_tasks):
    out = tmp_path / "out"
    for index in reversed(range(num_tasks)):  # order does not matter
        assert convert(lgg_input, out, "--num-tasks", num_tasks, "--task-index", index) == 0
    assert not (out / "manifest.json").exists() and not list(out.glob("*.tfrecord"))
    statuses = [json.loads((out / ".work" / f"task-{i:05d}-of-{num_tasks:05d}.json").read_text())
                for i in range(num_tasks)]
    assert all(s["finished"] for s in statuses)
    folders = sorted(p.name for p in (lgg_input / "kaggle_3m").iterdir() if p.name != "notes")
    shares = [set(s["cases"]) for s in statuses]
    assert sum(map(len, shares)) == len(folders) == 7 and set().union(*shares) == {CASE_ID(f) for f in folders}
    # Both studies of the first patient are in one task; the shares differ by at most one case.
    assert any({CASE_ID(folders[0]), CASE_ID(folders[1])} <= share for share in shares), folders[:2]
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert sum(s["num_failed"] for s in statuses) == 1

    assert convert(lgg_input, out, "--merge") == 0
    assert not (out / ".work").exists()
    assert sha256_tree(out) == sha256_tree(single)  # shards, manifest.json and previews
    manifest = read_manifest(out)
    assert manifest["num_failed"] == 2 and manifest["num_cases"] == 8
    reasons = [f["reason"] for f in manifest["failures"]]
    assert "folder name" in reasons[0] and "no mask file" in reasons[1], reasons
    broken = next(f for f in folders if not list((lgg_input / "kaggle_3m" / f).glob("*_3_mask.tif")))
    assert manifest["failures"][1]["case"] == CASE_ID(broken)
    assert sum(len(split["shards"]) for split in manifest["splits"].values()) > 3  # 0.05 MB: several shards


def test_discovery_time_splits_merge_identically(tmp_path):
    """brachy-ct decides splits before converting and streams shards: the merge must match that path too."""
    from medtf.synth.brachy_ct import generate_brachy_ct

    src = tmp_path / "src"
    folders = generate_brachy_ct(src, cases=3, seed=2, shape=(32, 96, 96), n_catheters=(2, 3))
    next(folders[1].glob("RP*.dcm")).unlink()  # a case without a plan: recorded
    options = ("--split", "0.5,0.5", "--id-salt", TEST_SALT, "--spacing", "2,2,4", "--allow-failures")
    assert convert(src, tmp_path / "single", kind="brachy-ct", options=options) == 0
    out = tmp_path / "tasks"
    for index in range(2):
        assert convert(src, out, "--num-tasks", 2, "--task-index", index, kind="brachy-ct", options=options) == 0
    assert convert(src, out, "--merge", kind="brachy-ct", options=options) == 0
    assert sha256_tree(out) == sha256_tree(tmp_path / "single")
    (failure,) = read_manifest(out)["failures"]
    assert "no RT Plan" in failure["reason"] and failure["case"] == CASE_ID(folders[1].name)


def test_split_dependent_crop_merges_identically_and_resumes_per_split(tmp_path):
    """brachy-ct --crop-margin-mm crops the training split only, so a case converts by its split: tasks + merge
    still give the single conversion byte for byte, and a task re-run with another --seed reconverts the cases
    whose split changed instead of reusing their conversion for the old split."""
    from medtf.synth.brachy_ct import generate_brachy_ct

    src = tmp_path / "src"
    generate_brachy_ct(src, cases=4, seed=3, shape=(32, 96, 96), n_catheters=(2, 3))
    options = ("--split", "0.5,0.5", "--id-salt", TEST_SALT, "--spacing", "2,2,4", "--crop-margin-mm", "8")

    def splits(out):
        return {s: v["num_examples"] for s, v in read_manifest(out)["splits"].items()}

    single = {}
    for seed in ("0", "1"):
        assert convert(src, tmp_path / f"single-{seed}", "--seed", seed, kind="brachy-ct", options=options) == 0
        single[seed] = sha256_tree(tmp_path / f"single-{seed}")
    assert single["0"] != single["1"]  # the seeds put some patient in another split: other crops
    out = tmp_path / "tasks"
    for seed in ("0", "1"):  # seed 1 resumes in the .work the seed-0 tasks left
        for index in range(2):
            assert convert(src, out, "--num-tasks", 2, "--task-index", index, "--seed", seed, kind="brachy-ct",
                           options=options) == 0
    assert convert(src, out, "--merge", "--seed", "1", kind="brachy-ct", options=options) == 0
    assert sha256_tree(out) == single["1"]
    assert splits(out) == splits(tmp_path / "single-1")


def test_a_killed_task_resumes_at_its_first_unfinished_case(lgg_source, tmp_path, monkeypatch, caplog):
    """SIGKILL while the task writes its last case (the temporary file it writes to is a FIFO nobody reads, so the
    write blocks there); the re-run converts only that case, and the merge equals one conversion."""
    from medtf.data.shards import TEMP_MARK
    from tfrecords_builder import lgg_mri

    last = sorted((lgg_source / "kaggle_3m").iterdir())[-1]  # cases convert in key order
    out = tmp_path / "out"
    work = out / ".work"
    work.mkdir(parents=True)
    args = ["convert", "lgg-mri", "--input", str(lgg_source), "--output", str(out), *OPTIONS, "--num-tasks", "1",
            "--task-index", "0"]
    log = tmp_path / "task.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "medtf.cli.main", *args], stdout=fh, stderr=subprocess.STDOUT,
                                cwd=Path(__file__).resolve().parents[2])
    os.mkfifo(work / f".{CASE_ID(last.name)}.rec{TEMP_MARK}{proc.pid}")  # long before the task gets there
    sigkill_when(proc, lambda: len(list(work.glob("c-*.json"))) == 5, 120, "the task's first cases", log.read_text)
    assert not (work / f"{CASE_ID(last.name)}.json").exists() and not (work / f"{CASE_ID(last.name)}.rec").exists()
    assert not json.loads((work / "task-00000-of-00001.json").read_text())["finished"]

    # The merge refuses while the killed task's last case is missing, and says which task to run again.
    caplog.set_level(logging.INFO, logger="medtf.convert")
    assert convert(lgg_source, out, "--merge") == 2
    message = errors(caplog)
    assert "cannot merge: 1 of 6 cases have no finished conversion" in message, message
    assert f"task 0 of 1 started but did not finish (preempted, killed or still running): case " \
           f"{CASE_ID(last.name)}" in message, message

    calls = []
    original = lgg_mri.LggMriConverter.convert_case
    monkeypatch.setattr(lgg_mri.LggMriConverter, "convert_case",
                        lambda self, case, options: calls.append(case.key) or original(self, case, options))
    caplog.clear()
    assert run_medtf(*args) == 0
    assert calls == [last.name]
    assert "resuming: 5 of 6 cases already converted" in caplog.text
    assert convert(lgg_source, out, "--merge") == 0
    assert convert(lgg_source, tmp_path / "single") == 0
    assert sha256_tree(out) == sha256_tree(tmp_path / "single")


def test_merge_refuses_missing_tasks_and_other_options(lgg_input, single, tmp_path, monkeypatch, caplog):
    out = tmp_path / "out"
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")  # the index of an array task, when --task-index is not given
    assert convert(lgg_input, out, "--num-tasks", 3) == 0
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    assert convert(lgg_input, out, "--num-tasks", 3, "--task-index", 2) == 0
    task_0 = json.loads((out / ".work" / "task-00000-of-00003.json").read_text())
    assert task_0["task"] == 0 and task_0["finished"]

    caplog.clear()
    assert convert(lgg_input, out, "--merge") == 2
    message = errors(caplog)
    # Which cases task 1 would convert (the same dealing as the tasks, from the case and patient pseudonyms).
    from tfrecords_builder.tasks import assign_tasks

    patient = IdHasher(TEST_SALT.encode())
    folders = sorted(p.name for p in (lgg_input / "kaggle_3m").iterdir() if p.name != "notes")
    share = [CASE_ID(f) for f in folders
             if assign_tasks({CASE_ID(f): patient(f[:12]) for f in folders}, 3)[CASE_ID(f)] == 1]
    assert share and f"cannot merge: {len(share)} of 7 cases have no finished conversion" in message, message
    assert f"task 1 of 3 has not started (no status file): case{'s' if len(share) > 1 else ''} " \
           f"{', '.join(share)}" in message, message
    assert "--num-tasks 3 --task-index I" in message
    assert not (out / "manifest.json").exists() and not list(out.glob("*.tfrecord"))

    # Task 1 run with another split: its cases are there, but the merge names the task and the option.
    assert convert(lgg_input, out, "--num-tasks", 3, "--task-index", 1, "--seed", 5) == 0
    caplog.clear()
    assert convert(lgg_input, out, "--merge") == 2
    assert "cannot merge: 1 task(s) ran with other input or options than this merge: task 1 of 3 " \
           "(--split / --folds / --seed)" in errors(caplog), errors(caplog)
    assert not (out / "manifest.json").exists()

    calls = []
    from tfrecords_builder import lgg_mri

    original = lgg_mri.LggMriConverter.convert_case
    monkeypatch.setattr(lgg_mri.LggMriConverter, "convert_case",
                        lambda self, case, options: calls.append(case.key) or original(self, case, options))
    assert convert(lgg_input, out, "--num-tasks", 3, "--task-index", 1) == 0
    assert calls == []  # the split is not a case option: its converted cases are reused
    assert convert(lgg_input, out, "--merge", "--num-tasks", 3) == 0
    assert sha256_tree(out) == sha256_tree(single)
    # A task started after the merge finds the output up to date.
    assert convert(lgg_input, out, "--num-tasks", 3, "--task-index", 0) == 0
    assert calls == [] and not (out / ".work").exists()


@pytest.mark.parametrize("extra, env, message", [
    (("--num-tasks", "3"), None, "--num-tasks needs --task-index I"),
    (("--num-tasks", "3"), "3", "$SLURM_ARRAY_TASK_ID 3 is outside 0..2 (--num-tasks 3)"),
    (("--num-tasks", "2", "--task-index", "-1"), None, "--task-index -1 is outside 0..1"),
    (("--task-index", "0"), None, "--task-index needs --num-tasks"),
    (("--num-tasks", "0", "--task-index", "0"), None, "--num-tasks must be at least 1"),
    (("--merge", "--task-index", "1"), None, "--merge combines every task's work: it takes no --task-index"),
])
def test_bad_task_options_fail_before_any_work(tmp_path, monkeypatch, caplog, extra, env, message):
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    if env is not None:
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", env)
    assert convert(tmp_path / "missing", tmp_path / "out", *extra) == 2
    assert message in errors(caplog)
    assert not (tmp_path / "out").exists()


def test_a_task_fails_early_on_a_split_it_cannot_fill(lgg_source, tmp_path, caplog):
    assert convert(lgg_source, tmp_path / "out", "--num-tasks", 2, "--task-index", 0, "--split", "1",
                   "--folds", 7) == 2
    assert "--folds 7 leaves fold-6 empty: the data set has 6 patients" in errors(caplog)
    assert not list((tmp_path / "out" / ".work").glob("c-*"))
