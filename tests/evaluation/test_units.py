"""Small pieces of `medtf.evaluation`: patch sizes, thresholds, planned catheters, CSV round trip."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from medtf.evaluation.catheters import planned_catheters, planned_channel_numbers
from medtf.evaluation.predict import probabilities_to_mask
from medtf.evaluation.report import statistics, write_per_case
from medtf.evaluation.run import eval_patch_size


@pytest.mark.parametrize("config, shape, expected", [
    (None, (40, 96, 96), (40, 96, 96)),
    (32, (40, 96, 96), (32, 32, 32)),
    ([16, 32, 32], (40, 96, 96), (16, 32, 32)),
    ({"name": "random_patch", "size": [8, 16, 16], "foreground_ratio": 0.5}, (40, 96, 96), (8, 16, 16)),
    (64, (256, 256), (64, 64)),
])
def test_eval_patch_size(config, shape, expected):
    assert eval_patch_size(config, shape) == expected


def test_eval_patch_size_rejects_wrong_rank():
    with pytest.raises(ValueError, match="spatial dims"):
        eval_patch_size([16, 16], (8, 8, 8))


def test_probabilities_to_mask_sigmoid_and_softmax():
    sigmoid = np.array([[0.2], [0.5], [0.51]], np.float32)
    np.testing.assert_array_equal(probabilities_to_mask(sigmoid), [False, False, True])
    softmax = np.array([[0.6, 0.3, 0.1], [0.2, 0.3, 0.5], [0.4, 0.45, 0.15]], np.float32)
    np.testing.assert_array_equal(probabilities_to_mask(softmax), [False, True, True])


def test_planned_catheters_row_splits():
    points = np.arange(18, dtype=np.float32).reshape(6, 3)
    cats = planned_catheters({"catheter_points": points, "catheter_offsets": np.array([0, 2, 6])})
    assert [c.shape for c in cats] == [(2, 3), (4, 3)]
    np.testing.assert_array_equal(cats[1][0], [6, 7, 8])


def test_planned_channel_numbers_stored_or_positional():
    assert planned_channel_numbers({"catheter_offsets": np.array([0, 2, 6]), "channel_numbers": np.array([3, 9])}) \
        == [3, 9]
    assert planned_channel_numbers({"catheter_offsets": np.array([0, 2, 6]), "channel_numbers": np.array([], int)}) \
        == [1, 2]  # a record written before channel numbers were stored
    assert planned_channel_numbers({"catheter_offsets": [0, 2, 6, 9]}) == [1, 2, 3]


def test_csv_round_trip_and_statistics(tmp_path):
    rows = [{"case_id": "a", "dice": 0.1 + 0.2, "hd95": float("nan"), "voxels_pred": 3},
            {"case_id": "b", "dice": 0.5, "hd95": 2.0, "voxels_pred": 5}]
    write_per_case(rows, tmp_path / "c.csv")
    with open(tmp_path / "c.csv", newline="") as f:
        back = list(csv.DictReader(f))
    assert float(back[0]["dice"]) == 0.1 + 0.2           # repr precision: exact
    assert np.isnan(float(back[0]["hd95"])) and back[1]["voxels_pred"] == "5"
    stats = statistics(rows)
    assert set(stats) == {"dice", "hd95", "voxels_pred"}
    assert stats["dice"]["mean"] == pytest.approx((0.3 + 0.5) / 2) and stats["dice"]["sd"] == pytest.approx(0.1)
    assert stats["hd95"] == {"mean": 2.0, "sd": 0.0, "median": 2.0, "n": 1, "n_nan": 1}
