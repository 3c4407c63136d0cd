"""`medtf.evaluation.baselines` on hand-made arrays: the threshold rules and their fitting."""

from __future__ import annotations

import numpy as np
import pytest

from medtf.evaluation.baselines import (fit_flair_threshold, fit_hu_threshold, flair_threshold_mask,
                                        hu_threshold_mask, tumour_slice_dice)


def test_hu_threshold_drops_small_components():
    hu = np.zeros((5, 8, 8), np.float32)
    hu[2, 2, 1:7] = 1000.0  # a 6-voxel line
    hu[4, 7, 7] = 1000.0    # a 1-voxel speck
    assert hu_threshold_mask(hu, 500).sum() == 7
    kept = hu_threshold_mask(hu, 500, min_voxels=3)
    assert kept.sum() == 6 and not kept[4, 7, 7]
    assert hu_threshold_mask(hu, 1000).sum() == 0  # strictly above


def test_fit_hu_threshold_picks_the_level_that_separates():
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(2):
        hu = rng.normal(0.0, 20.0, (6, 16, 16)).astype(np.float32)
        mask = np.zeros(hu.shape, bool)
        mask[3, 4:12, 8] = True
        hu[mask] = 700.0
        hu[1, 1, 1] = 1500.0  # a bright single-voxel distractor: removed by the component size
        cases.append((hu, mask))
    rule = fit_hu_threshold(cases, thresholds=(100, 600, 800), min_voxels=(1, 5))
    assert rule["params"] == {"threshold": 100.0, "min_voxels": 5} and rule["train_dice"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no threshold"):
        fit_hu_threshold(cases, thresholds=(5000,))


def test_flair_rules_and_fit():
    slices = np.zeros((2, 4, 4, 3), np.float32)
    slices[0, ..., 1] = np.arange(16).reshape(4, 4)
    np.testing.assert_array_equal(flair_threshold_mask(slices, "fraction", 0.9)[0].ravel(), np.arange(16) > 13.5)
    assert flair_threshold_mask(slices, "percentile", 75.0)[0].sum() == 4
    assert flair_threshold_mask(slices, "fraction", 0.5)[1].sum() == 0  # an all-zero slice marks nothing
    with pytest.raises(ValueError, match="rule"):
        flair_threshold_mask(slices, "otsu", 0.5)
    mask = np.zeros((2, 4, 4), bool)
    mask[0, 3, :] = True  # the 4 brightest voxels of slice 0; slice 1 has no tumour and is not scored
    assert tumour_slice_dice(flair_threshold_mask(slices, "fraction", 0.75), mask) == [1.0]
    rule = fit_flair_threshold([(slices, mask)])
    assert rule["train_dice"] == pytest.approx(1.0)
    assert tumour_slice_dice(flair_threshold_mask(slices, **rule["params"]), mask) == [1.0]
