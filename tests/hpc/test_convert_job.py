"""Conversion on a real (private) SLURM: `medtf slurm convert --num-tasks 3` runs a 3-task job array and a dependent
merge job whose shards equal a single-process conversion byte for byte; a failing task cancels the merge."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from medtf.data.manifest import read_manifest
from tests.conftest import run_medtf, sha256_tree
from tests.hpc.conftest import slurm_log, submitted_id, wait_for_job

OPTIONS = ("--split", "0.5,0.25,0.25", "--shard-size-mb", "0.01")


@pytest.fixture(scope="module")
def lgg_raw(hpc_root) -> Path:
    """5 patients x 4 slices of 32x32, the first with a second study (6 cases)."""
    from medtf.synth.lgg_mri import generate_lgg_mri

    folders = generate_lgg_mri(hpc_root / "src_convert", cases=5, seed=9, num_slices=4, size=32)
    shutil.copytree(folders[0], folders[0].with_name(folders[0].name[:-8] + "20991231"))
    return hpc_root / "src_convert"


def submit_convert(capsys, *args) -> tuple[str, str]:
    """``medtf slurm convert ARGS --submit`` in-process: (array job id, merge job id)."""
    capsys.readouterr()
    code = run_medtf("slurm", "convert", *map(str, args), "--submit")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    array = re.search(r"as job array (\d+) \(\d+ tasks\)", captured.err)
    assert array, captured.err
    return array.group(1), submitted_id(captured.out)


def test_array_of_three_and_merge_equal_one_conversion(slurm, lgg_raw, cpu_cluster_config, hpc_root, capsys):
    out = hpc_root / "converted" / "shards"
    run_dir = hpc_root / "runs" / "convert"
    array, merge = submit_convert(capsys, "lgg-mri", "--input", lgg_raw, "--output", out, "--num-tasks", 3, *OPTIONS,
                                  "--run-dir", run_dir, "--cluster-config", cpu_cluster_config, "--time", "00:10:00")
    # No --id-salt: the key was made once, at submission, beside the output; every task used it.
    key = hpc_root / "converted" / "shards.idkey"
    assert key.is_file()
    single = hpc_root / "converted" / "single"  # the reference, converted here while the jobs run
    assert run_medtf("convert", "lgg-mri", "--input", lgg_raw, "--output", single, *OPTIONS, "--id-key-file",
                     key) == 0

    merged = wait_for_job(merge, timeout=300)
    log = slurm_log(merged)
    assert merged["JobState"] == "COMPLETED" and merged["ExitCode"] == "0:0", log
    assert Path(merged["StdOut"]) == run_dir / "slurm" / f"convert-lgg-mri-merge-{merge}.out"
    assert re.search(rf"^lgg-mri -> {re.escape(str(out))}: train: 3 patients", log, re.M), log
    shares = 0
    for task in range(3):
        job = wait_for_job(f"{array}_{task}", timeout=30)
        task_log = slurm_log(job)
        assert job["JobState"] == "COMPLETED" and job["ArrayTaskId"] == str(task), task_log
        assert Path(job["StdOut"]) == run_dir / "slurm" / f"convert-lgg-mri-{array}_{task}.out"
        done = re.search(rf"^lgg-mri task {task} of 3 -> .*: (\d+) cases?, \d+ examples, 0 failed", task_log, re.M)
        assert done, task_log
        shares += int(done.group(1))
    assert shares == 6  # every case converted once, by one task
    assert sha256_tree(out) == sha256_tree(single)  # shards, manifest.json, previews
    assert not (out / ".work").exists()


def test_a_failing_task_cancels_the_merge(slurm, lgg_raw, cpu_cluster_config, hpc_root, capsys):
    src = hpc_root / "src_convert_broken"
    shutil.copytree(lgg_raw, src)
    next(sorted((src / "kaggle_3m").iterdir())[-1].glob("*_2_mask.tif")).unlink()
    out = hpc_root / "converted_broken"
    array, merge = submit_convert(capsys, "lgg-mri", "--input", src, "--output", out, "--num-tasks", 2, *OPTIONS,
                                  "--strict", "--run-dir", hpc_root / "runs" / "convert-broken", "--cluster-config",
                                  cpu_cluster_config, "--time", "00:10:00")
    jobs = [wait_for_job(f"{array}_{task}", timeout=240) for task in range(2)]
    assert sorted(job["JobState"] for job in jobs) == ["COMPLETED", "FAILED"], [slurm_log(j) for j in jobs]
    failed = next(job for job in jobs if job["JobState"] == "FAILED")
    assert failed["ExitCode"] == "2:0" and "--strict: " in slurm_log(failed) and "no mask file" in slurm_log(failed)
    cancelled = wait_for_job(merge, timeout=60)
    assert cancelled["JobState"] == "CANCELLED" and cancelled["Reason"] == "DependencyNeverSatisfied"
    assert not (out / "manifest.json").exists() and not list(out.glob("*.tfrecord"))


def test_failed_inputs_do_not_block_the_merge(slurm, lgg_raw, cpu_cluster_config, hpc_root, capsys):
    """A task whose inputs failed succeeds (its failures are recorded); the afterok merge runs and writes the shards,
    exiting 0 with --allow-failures (without it, 1: tests/data/test_convert_exit_codes.py)."""
    src = hpc_root / "src_convert_bad_input"
    shutil.copytree(lgg_raw, src)
    folders = sorted((src / "kaggle_3m").iterdir())
    next(folders[-1].glob("*_2_mask.tif")).unlink()
    out = hpc_root / "converted_bad_input"
    array, merge = submit_convert(capsys, "lgg-mri", "--input", src, "--output", out, "--num-tasks", 2, *OPTIONS,
                                  "--allow-failures", "--run-dir", hpc_root / "runs" / "convert-bad-input",
                                  "--cluster-config", cpu_cluster_config, "--time", "00:10:00")
    jobs = [wait_for_job(f"{array}_{task}", timeout=240) for task in range(2)]
    assert [job["JobState"] for job in jobs] == ["COMPLETED", "COMPLETED"], [slurm_log(j) for j in jobs]
    failed = [re.search(r"(\d+) failed inputs", slurm_log(job)) for job in jobs]
    assert sorted(int(m.group(1)) for m in failed) == [0, 1], [slurm_log(j) for j in jobs]
    merged = wait_for_job(merge, timeout=300)
    assert merged["JobState"] == "COMPLETED" and merged["ExitCode"] == "0:0", slurm_log(merged)
    manifest = read_manifest(out)
    assert manifest["num_failed"] == 1 and "no mask file" in manifest["failures"][0]["reason"]
    good_patients = {folder.name[:12] for folder in folders[:-1]}  # TCGA_XX_XXXX of the 5 good cases
    assert sum(s["num_patients"] for s in manifest["splits"].values()) == len(good_patients)
