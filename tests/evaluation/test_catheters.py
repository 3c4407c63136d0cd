"""Catheter columns of `evaluate_run` on brachy-ct."""

from __future__ import annotations

import numpy as np
import pytest

from medtf.evaluation import evaluate_run
from medtf.io import Volume
from tests.evaluation.conftest import BRACHY_HU, decoded
from tests.evaluation.test_evaluate import read_csv

from medtf.rt import catheter_match, reconstruct

COLUMNS = {"catheters_found": "found", "catheters_missed": "missed", "catheters_spurious": "spurious",
           "catheter_mean_mm": "mean_distance_mm", "catheter_max_mm": "max_distance_mm",
           "tip_error_mm": "tip_error_mm"}


def test_brachy_catheter_columns_match_direct_reconstruction(brachy_run, brachy_data, tmp_path):
    summary = evaluate_run(brachy_run, split="test", output=tmp_path / "out", verbose=False)
    assert summary["notes"] == []
    rows = read_csv(tmp_path / "out" / "per_case.csv")
    for row, ex in zip(rows, decoded(brachy_data, "test")):
        pred = (ex["image"] > BRACHY_HU).astype(np.uint8)
        reference = Volume(pred, spacing=ex["spacing"], origin=ex["origin"], direction=ex["direction"])
        predicted = reconstruct.reconstruct_catheters(pred, reference, step_mm=1.0, min_length_mm=10.0)
        offsets = np.asarray(ex["catheter_offsets"])
        planned = np.split(ex["catheter_points"].astype(np.float64), offsets[1:-1])
        expected = catheter_match.match_catheters(predicted, planned, max_mean_distance_mm=3.0).summary()
        for column, key in COLUMNS.items():
            value = expected[key]
            if value is None or (isinstance(value, float) and np.isnan(value)):
                assert np.isnan(float(row[column])), column
            else:
                assert float(row[column]) == pytest.approx(float(value), rel=1e-6), column
        assert int(row["catheters_found"]) + int(row["catheters_missed"]) == len(offsets) - 1 == len(planned)
    for column in COLUMNS:
        assert column in summary["metrics"]
