"""Cross-validation on a real (private) SLURM: a 2-task array trains fold 0 and 1, a dependent job aggregates them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import TEST_SALT, run_medtf
from tests.hpc.conftest import slurm_log, submit, tiny_config, wait_for_job


@pytest.fixture(scope="module")
def lgg_two_folds(hpc_root) -> Path:
    """4 patients x 4 slices of 32x32 dealt into fold-0 and fold-1 (no test split)."""
    from medtf.synth.lgg_mri import generate_lgg_mri

    generate_lgg_mri(hpc_root / "src_folds", cases=4, seed=5, num_slices=4, size=32)
    out = hpc_root / "lgg_folds"
    assert run_medtf("convert", "lgg-mri", "--input", hpc_root / "src_folds", "--output", out, "--folds", 2,
                     "--split", "1", "--id-salt", TEST_SALT) == 0
    return out


def test_array_folds_then_cv_report(slurm, lgg_two_folds, cpu_cluster_config, hpc_root, capsys):
    config = tiny_config(lgg_two_folds, epochs=1, steps_per_epoch=2, image_panels=False, log_every_n_steps=0,
                         hparams=False)
    config["data"]["selection_fold"] = "outer"  # 2 folds: no room for an inner selection fold
    path = hpc_root / "cv.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = hpc_root / "runs" / "cv-folds"
    array = submit(capsys, path, "--array", "0-1", "--gpus-per-node", "0", "--time", "00:05:00", "--run-dir",
                   run_dir, "--cluster-config", cpu_cluster_config)
    report_job = submit(capsys, "run", "--after", array, "--time", "00:05:00", "--run-dir", run_dir,
                        "--cluster-config", cpu_cluster_config, "--", "cv-report", run_dir, "--evaluate")
    for k in (0, 1):
        job = wait_for_job(f"{array}_{k}", timeout=240)
        assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", slurm_log(job)
    job = wait_for_job(report_job, timeout=180)
    log = slurm_log(job)
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", log
    assert "cross-validation" in log and "INCOMPLETE" not in log, log

    report = json.loads((run_dir / "cv_report.json").read_text())
    assert report["folds"] == 2 and report["complete"] and report["missing"] == []
    metrics = report["metrics"]
    for k in (0, 1):
        fold = run_dir / f"fold_{k}"
        resolved = yaml.safe_load((fold / "config.yaml").read_text())
        assert resolved["data"]["fold"] == k  # the array task id, passed as --set +data.fold=K
        with open(fold / "history.csv", newline="") as f:
            (row,) = list(csv.DictReader(f))  # 1 epoch, so it is the best one
        assert metrics["history/val_dice"]["values"][k] == float(row["val_dice"])
        assert metrics["history/val_loss"]["values"][k] == float(row["val_loss"])
        summary = json.loads((fold / f"eval-fold-{k}" / "summary.json").read_text())
        assert summary["split"] == f"fold-{k}" and summary["n_cases"] == 2
        assert metrics["eval/dice"]["values"][k] == summary["metrics"]["dice"]["mean"]
        assert metrics["eval_extra/dice_tumour_slices"]["values"][k] == summary["extra"]["dice_tumour_slices"]
    for name in ("history/val_dice", "history/val_loss", "eval/dice"):
        values = metrics[name]["values"]
        assert metrics[name]["n"] == 2
        assert metrics[name]["mean"] == pytest.approx(np.mean(values), rel=1e-12)
        assert metrics[name]["sd"] == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    # The two folds validated on different patients, so their validation results differ.
    assert metrics["history/val_loss"]["values"][0] != metrics["history/val_loss"]["values"][1]
    with open(run_dir / "cv_report.csv", newline="") as f:
        rows = {r["metric"]: r for r in csv.DictReader(f)}
    assert float(rows["eval/dice"]["mean"]) == metrics["eval/dice"]["mean"] and rows["eval/dice"]["n"] == "2"
