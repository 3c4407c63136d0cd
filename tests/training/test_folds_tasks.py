"""Cross-validation for a non-segmentation task: `medtf train --folds` and `medtf cv-report` evaluate each fold with
the run's task (classification: AUC, sensitivity ...) and aggregate whatever its summary.json reports."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_medtf
from tests.training.test_folds import _convert_folds

REPO = Path(__file__).resolve().parents[2]
SCORES = ("auc", "sensitivity", "specificity", "balanced_accuracy", "f1", "accuracy", "n")


def test_cv_report_aggregates_any_task_summary():
    """summary.json layouts of the three tasks -> eval/<metric> values; settings and non-numbers are skipped."""
    from medtf.training.cv_report import fold_stats, summary_values

    classification = {"metrics": {"auc": {"value": 0.75, "ci_low": 0.5, "ci_high": 1.0},
                                  "f1": {"value": None, "ci_low": None, "ci_high": None}, "n": 8,
                                  "bootstrap_samples": 1000, "confidence_level": 0.95}, "threshold": 0.5}
    got = summary_values(classification)
    assert set(got) == {"eval/auc", "eval/f1", "eval/n"} and got["eval/auc"] == 0.75 and got["eval/n"] == 8.0
    assert math.isnan(got["eval/f1"])
    contrastive = {"metrics": {"n": 2, "image_to_report_recall_at_1": 0.5, "report_to_image_median_rank": 1.5}}
    assert summary_values(contrastive) == {"eval/n": 2.0, "eval/image_to_report_recall_at_1": 0.5,
                                           "eval/report_to_image_median_rank": 1.5}
    segmentation = {"metrics": {"dice": {"mean": 0.6, "sd": 0.1, "median": 0.6, "n": 2}},
                    "extra": {"dice_tumour_slices": 0.7, "note": "text", "flag": True}}
    assert summary_values(segmentation) == {"eval/dice": 0.6, "eval_extra/dice_tumour_slices": 0.7}

    stats = fold_stats([0.8, 0.9, None, float("nan"), 0.85])
    assert stats["n"] == 3 and stats["n_nan"] == 1 and stats["mean"] == pytest.approx(0.85)
    assert stats["sd"] == pytest.approx(0.05)
    half = 4.302652729911275 * 0.05 / math.sqrt(3)  # t(0.975, df=2)
    assert stats["ci_low"] == pytest.approx(0.85 - half, rel=1e-9)
    assert stats["ci_high"] == pytest.approx(0.85 + half, rel=1e-9)
    assert fold_stats([0.5, None])["ci_low"] is None and fold_stats([0.5, None])["sd"] is None


@pytest.fixture(scope="module")
def lgg_two_folds(tmp_path_factory) -> Path:
    """4 patients x 4 slices of 32x32 in fold-0, fold-1 (tumour and tumour-free slices in each)."""
    return _convert_folds(tmp_path_factory.mktemp("cls_folds"), 4, 2)


def _fold_value(run_dir: Path, k: int, name: str) -> float:
    summary = json.loads((run_dir / f"fold_{k}" / f"eval-fold-{k}" / "summary.json").read_text())
    assert summary["task"] == "classification" and summary["split"] == f"fold-{k}"
    value = summary["metrics"][name]
    value = value["value"] if isinstance(value, dict) else value
    return float("nan") if value is None else float(value)


@pytest.mark.slow  # two trainings + evaluations + one re-evaluation: ~45 s on 2 shared cores
def test_classification_cross_validation_report(lgg_two_folds, tmp_path, capsys):
    from scipy import stats

    run_dir = tmp_path / "cv"
    overrides = [f"data.dir={lgg_two_folds}", "train.epochs=1", "+train.steps_per_epoch=2", "data.batch_size=4",
                 "model.args.base_filters=4", "+train.log_every_n_steps=0", "+train.hparams=false",
                 "data.selection_fold=outer"]  # two folds: no room for an inner selection fold
    assert run_medtf("train", REPO / "experiments/lgg_classifier2d.yaml", "--run-dir", run_dir, "--folds", 2,
                     *[a for o in overrides for a in ("--set", o)], "--quiet") == 0
    out = capsys.readouterr().out
    assert "(classification): 2 folds" in out and "eval/auc" in out
    report = json.loads((run_dir / "cv_report.json").read_text())
    assert report["task"] == "classification" and report["complete"] and report["folds"] == 2
    metrics = report["metrics"]
    assert {f"eval/{n}" for n in SCORES} <= set(metrics) and "eval/bootstrap_samples" not in metrics
    assert not any(name.startswith("eval/dice") for name in metrics)  # no segmentation columns
    for name in SCORES:
        values = [_fold_value(run_dir, k, name) for k in range(2)]
        m = metrics[f"eval/{name}"]
        finite = [v for v in values if math.isfinite(v)]
        assert m["n"] == len(finite) and m["n_nan"] == 2 - len(finite), name
        assert m["values"] == [v if math.isfinite(v) else None for v in values], name  # NaN is written as null
        if len(finite) == 2:
            mean, sd = np.mean(finite), np.std(finite, ddof=1)
            assert m["mean"] == pytest.approx(mean, rel=1e-12, abs=1e-15), name
            assert m["sd"] == pytest.approx(sd, rel=1e-12, abs=1e-15), name
            half = stats.t.ppf(0.975, 1) * sd / math.sqrt(2)
            assert m["ci_low"] == pytest.approx(mean - half, abs=1e-12), name
            assert m["ci_high"] == pytest.approx(mean + half, abs=1e-12), name
    assert metrics["eval/n"]["values"] == [8.0, 8.0]  # 2 patients x 4 slices per fold
    assert metrics["eval/accuracy"]["n"] == 2  # always defined: the numbers above were really compared
    for k in range(2):
        with open(run_dir / f"fold_{k}" / "history.csv", newline="") as f:
            (row,) = list(csv.DictReader(f))  # one epoch: the best
        assert metrics["history/val_auc"]["values"][k] == pytest.approx(float(row["val_auc"]), rel=1e-12)
    with open(run_dir / "cv_report.csv", newline="") as f:
        rows = {r["metric"]: r for r in csv.DictReader(f)}
    acc = metrics["eval/accuracy"]
    assert float(rows["eval/accuracy"]["mean"]) == acc["mean"] and float(rows["eval/accuracy"]["ci_high"]) == \
        acc["ci_high"]

    # medtf cv-report: a fold without evaluation is reported (exit 1); --evaluate runs the task's evaluator again.
    shutil.rmtree(run_dir / "fold_1" / "eval-fold-1")
    assert run_medtf("cv-report", run_dir) == 1
    assert "fold 1: not_evaluated" in capsys.readouterr().out
    assert run_medtf("cv-report", run_dir, "--evaluate") == 0
    again = json.loads((run_dir / "cv_report.json").read_text())["metrics"]
    for name in SCORES:
        assert again[f"eval/{name}"]["values"] == metrics[f"eval/{name}"]["values"], name
