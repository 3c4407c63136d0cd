"""The nucleus colour + area baseline (issue #15 "Quality"): per-nucleus features vs a NumPy loop, and the
multinomial logistic regression on them."""

from __future__ import annotations

import numpy as np
import pytest

from medtf.evaluation.baselines import fit_softmax_regression, nucleus_colour_area


def test_nucleus_colour_area_matches_a_per_nucleus_loop():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 10, 3)).astype(np.uint8)
    instances = np.zeros((12, 10), np.uint16)
    instances[1:4, 1:3] = 7
    instances[6:11, 4:9] = 2
    instances[0, 9] = 3
    ids = np.array([2, 7, 3, 5])  # 5 has no pixels (cropped away): NaN features
    got = nucleus_colour_area(image, instances, ids)
    assert got.shape == (4, 4)
    for row, k in zip(got[:3], ids[:3]):
        region = instances == k
        np.testing.assert_allclose(row[:3], image[region].astype(float).mean(0))
        assert row[3] == pytest.approx(np.log(region.sum()))
    assert np.isnan(got[3]).all()


def test_softmax_regression_learns_three_classes_and_refuses_bad_input():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 60)
    x = np.stack([y * 3.0 + rng.normal(0, 0.5, y.size), rng.normal(0, 1, y.size)], 1) * [100.0, 1.0]  # scales differ
    model = fit_softmax_regression(x, y)
    assert (model.predict(x) == y).mean() > 0.97
    np.testing.assert_allclose(model.predict_proba(x).sum(1), 1.0)
    with pytest.raises(ValueError, match="finite"):
        fit_softmax_regression(np.full((4, 2), np.nan), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="two classes"):
        fit_softmax_regression(x[:5], np.zeros(5))
