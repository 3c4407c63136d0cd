"""The prostate one-feature baseline: mean ADC in the lesion disc, and a 1-D logistic regression (vs NumPy and
scikit-learn references)."""

from __future__ import annotations

import numpy as np
import pytest

from medtf.evaluation.baselines import fit_logistic_1d, lesion_roi_mean, predict_logistic_1d


def test_lesion_roi_mean_is_the_disc_around_the_centre():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(9, 9, 3))
    # 1 mm pixels, radius 1 mm: the centre and its 4 neighbours; radius 1.5 mm adds the 4 diagonals
    c = image[..., 2]
    cross = [c[4, 4], c[3, 4], c[5, 4], c[4, 3], c[4, 5]]
    assert lesion_roi_mean(image, (1.0, 1.0), radius_mm=1.0) == pytest.approx(np.mean(cross))
    square = c[3:6, 3:6]
    assert lesion_roi_mean(image, (1.0, 1.0), radius_mm=1.5) == pytest.approx(square.mean())
    # anisotropic pixels: 0.5 mm in x doubles the reach in columns
    row = [c[4, j] for j in (2, 3, 4, 5, 6)]
    assert lesion_roi_mean(image, (0.5, 2.0), radius_mm=1.0) == pytest.approx(np.mean(row))
    assert lesion_roi_mean(image, (1.0, 1.0), channel=0, radius_mm=0.1) == pytest.approx(image[4, 4, 0])
    # even sizes: the centre lies between pixels
    even = np.arange(16, dtype=float).reshape(4, 4, 1)
    assert lesion_roi_mean(even, (1.0, 1.0), channel=0, radius_mm=0.75) == pytest.approx(even[1:3, 1:3].mean())
    with pytest.raises(ValueError, match="no pixel"):
        lesion_roi_mean(even, (1.0, 1.0), channel=0, radius_mm=0.5)


def test_logistic_1d_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(780, 100, 40), rng.normal(1230, 150, 60)])
    y = np.concatenate([np.ones(40), np.zeros(60)])
    params = fit_logistic_1d(x, y, l2=0.0)
    z = ((x - x.mean()) / x.std())[:, None]
    ref = LogisticRegression(C=1e12, tol=1e-12, max_iter=10000).fit(z, y)
    assert params["a"] == pytest.approx(ref.coef_[0, 0], rel=1e-4)
    assert params["b"] == pytest.approx(ref.intercept_[0], rel=1e-4)
    np.testing.assert_allclose(predict_logistic_1d(x, **params), ref.predict_proba(z)[:, 1], rtol=1e-5, atol=1e-9)
    assert params["a"] < 0  # low ADC = significant


def test_logistic_1d_is_finite_on_separable_data_and_checks_inputs():
    x, y = np.array([0.0, 1.0, 2.0, 3.0]), np.array([0, 0, 1, 1])
    params = fit_logistic_1d(x, y)
    p = predict_logistic_1d(x, **params)
    assert np.all(np.isfinite(p)) and np.all(np.diff(p) > 0) and p[0] < 0.5 < p[-1]
    with pytest.raises(ValueError, match="both classes"):
        fit_logistic_1d(x, np.zeros(4))
