"""`evaluate_run` / `medtf evaluate` on tiny real shards with known-output (threshold) models."""

from __future__ import annotations

import csv
import json
from collections import defaultdict

import numpy as np
import pytest

from medtf.evaluation import evaluate_run
from medtf.metrics.surface import evaluate_case
from tests.conftest import run_medtf
from tests.evaluation.conftest import BRACHY_HU, LGG_FLAIR, decoded

METRICS = ("dice", "hd95", "msd", "volume_pred_ml", "volume_true_ml")


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def column(rows, name) -> np.ndarray:
    return np.array([float(r[name]) for r in rows])


def check_summary_matches_csv(summary: dict, rows: list[dict], names) -> None:
    for name in names:
        values = column(rows, name)
        ok = values[~np.isnan(values)]
        assert summary["metrics"][name]["mean"] == pytest.approx(float(np.mean(ok)), rel=1e-12)
        assert summary["metrics"][name]["median"] == pytest.approx(float(np.median(ok)), rel=1e-12)
        assert summary["metrics"][name]["sd"] == pytest.approx(float(np.std(ok)), rel=1e-12, abs=1e-15)
        assert summary["metrics"][name]["n"] + summary["metrics"][name]["n_nan"] == len(rows)


def test_brachy_per_case_metrics_match_independent_computation(brachy_run, brachy_data, tmp_path):
    summary = evaluate_run(brachy_run, split="test", output=tmp_path / "out", verbose=False)
    rows = read_csv(tmp_path / "out" / "per_case.csv")
    examples = decoded(brachy_data, "test")
    assert len(rows) == len(examples) == summary["n_cases"] == 1
    for row, ex in zip(rows, examples):
        assert row["case_id"] == ex["example_id"].decode()
        pred = ex["image"] > BRACHY_HU          # the model is "HU > 400" after the config's window preprocessing
        true = ex["mask"] > 0
        expected = evaluate_case(pred, true, tuple(ex["spacing"]))
        for name in METRICS:
            assert float(row[name]) == pytest.approx(expected[name], rel=1e-6), name
        assert int(row["voxels_pred"]) == int(pred.sum()) > 0
        assert int(row["voxels_true"]) == int(true.sum()) > 0
        assert 0.0 < float(row["dice"]) < 1.0      # a non-trivial case: the numbers can be wrong
    assert tuple(float(s) for s in examples[0]["spacing"]) == (2.0, 2.0, 4.0)  # HD95 really in mm, anisotropic
    check_summary_matches_csv(summary, rows, METRICS)
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["split"] == "test" and written["checkpoint"] == "best" and written["n_cases"] == 1
    assert written["config"].endswith("config.yaml")
    assert written["metrics"]["dice"]["mean"] == pytest.approx(float(rows[0]["dice"]), rel=1e-12)


def test_cli_evaluate_val_split_default_output(brachy_run, brachy_data, capsys):
    assert run_medtf("evaluate", brachy_run, "--split", "val", "--overlap", "0.25") == 0
    out = brachy_run / "eval-val"
    rows = read_csv(out / "per_case.csv")
    summary = json.loads((out / "summary.json").read_text())
    examples = decoded(brachy_data, "val")
    assert len(rows) == len(examples) == summary["n_cases"]
    assert [r["case_id"] for r in rows] == [ex["example_id"].decode() for ex in examples]
    assert summary["split"] == "val" and summary["overlap"] == 0.25
    check_summary_matches_csv(summary, rows, ("dice", "hd95"))
    ex = examples[0]
    expected = evaluate_case(ex["image"] > BRACHY_HU, ex["mask"] > 0, tuple(ex["spacing"]))
    assert float(rows[0]["hd95"]) == pytest.approx(expected["hd95"], rel=1e-6)
    printed = capsys.readouterr().out
    assert "brachy-ct val (best checkpoint): 1 cases" in printed and "dice" in printed


def test_cli_errors_and_last_checkpoint(brachy_run, tmp_path):
    assert run_medtf("evaluate", brachy_run, "--checkpoint", "nope", "--output", tmp_path / "x") == 2
    assert run_medtf("evaluate", brachy_run, "--split", "fold-9", "--output", tmp_path / "y") == 2
    last = evaluate_run(brachy_run, split="test", checkpoint="last", output=tmp_path / "last", verbose=False)
    best = evaluate_run(brachy_run, split="test", checkpoint="best", output=tmp_path / "best", verbose=False)
    assert last["checkpoint_path"].endswith("last.keras")
    assert last["metrics"]["dice"]["mean"] == best["metrics"]["dice"]["mean"]  # same weights in both files


def test_lgg_patient_volumes_and_tumour_slice_dice(lgg_run, lgg_data, tmp_path):
    summary = evaluate_run(lgg_run, split="test", output=tmp_path / "lgg", verbose=False)
    rows = read_csv(tmp_path / "lgg" / "per_case.csv")
    patients = defaultdict(list)
    for ex in decoded(lgg_data, "test"):
        patients[ex["patient_id"].decode()].append(ex)
    assert [r["case_id"] for r in rows] == list(patients)  # one row per patient, manifest order
    pooled = []
    for row, (patient, slices) in zip(rows, patients.items()):
        slices.sort(key=lambda e: int(e["slice_index"]))
        pred = np.stack([e["image"][..., 1] > LGG_FLAIR * 255 for e in slices])   # (S, H, W)
        true = np.stack([e["mask"][..., 0] > 0 for e in slices])
        assert int(row["n_slices"]) == len(slices) == int(slices[0]["num_slices"])
        expected = evaluate_case(pred, true, (1.0, 1.0, 1.0))   # lgg stores no geometry: 1 mm
        for name in ("dice", "hd95", "msd"):
            assert float(row[name]) == pytest.approx(expected[name], rel=1e-6), (patient, name)
        # Tumour-slice Dice by hand: 2|P and T| / (|P| + |T|) on slices with a non-empty ground truth.
        by_hand = [2.0 * np.sum(p & t) / (np.sum(p) + np.sum(t)) for p, t in zip(pred, true) if t.any()]
        assert int(row["n_tumour_slices"]) == len(by_hand) > 0
        assert float(row["dice_tumour_slices"]) == pytest.approx(np.mean(by_hand), rel=1e-9)
        pooled += by_hand
    assert summary["extra"]["dice_tumour_slices"] == pytest.approx(np.mean(pooled), rel=1e-9)
    assert summary["extra"]["n_tumour_slices"] == len(pooled)
    assert 0.0 < summary["extra"]["dice_tumour_slices"] < 1.0
    check_summary_matches_csv(summary, rows, ("dice", "hd95", "dice_tumour_slices"))
