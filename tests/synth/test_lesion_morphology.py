"""The shared lesion cue family (`medtf.synth.morphology`) and how the brain and lung generators use it: malignant
margins are irregular, benign ones smooth; symmetric margins keep the centroid; the brain's "no" class holds smooth
mimics, so blob presence alone does not decide."""

from __future__ import annotations

import numpy as np

from medtf.synth.morphology import TEXTURE, lesion_margin, texture_amplitude, unit


def _circle(n: int = 360) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t), np.zeros(n)], axis=1)


def test_malignant_margins_are_spiculated_and_benign_ones_smooth():
    rng = np.random.default_rng(0)
    u = _circle()
    for _ in range(20):
        benign = lesion_margin(rng, False)(u)
        np.testing.assert_array_equal(benign, 1.0)  # an ellipsoid stays an ellipsoid
        m = lesion_margin(rng, True)(u)
        # spicules: the in-plane radius reaches >= 1.5x the core somewhere, 0.4 core radii beyond most directions
        assert m.max() >= 1.5 and m.max() - np.percentile(m, 10) >= 0.4, (m.max(), np.percentile(m, 10))
        assert texture_amplitude(rng, True) >= TEXTURE[True][0] > TEXTURE[False][1] >= texture_amplitude(rng, False)


def test_symmetric_margin_is_point_symmetric_and_unit_handles_the_centre():
    rng = np.random.default_rng(3)
    margin = lesion_margin(rng, True, dims=3, symmetric=True)
    u = unit(rng.normal(size=(500, 3)))
    np.testing.assert_allclose(margin(u), margin(-u), rtol=1e-12)  # centroid = centre (the LUNGx CSV's point)
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0)
    assert np.all(np.isfinite(unit(np.zeros((2, 3)))))


def _solidity(mask: np.ndarray) -> float:
    """Area / convex hull area of a 2D mask: ~1 for an ellipse, lower for a spiculated outline."""
    from scipy.spatial import ConvexHull

    points = np.argwhere(mask).astype(float)
    corners = np.concatenate([points + [dy, dx] for dy in (-0.5, 0.5) for dx in (-0.5, 0.5)])
    return float(mask.sum() / ConvexHull(corners).volume)


def test_brain_yes_lesions_are_irregular_and_no_lesions_smooth_mimics_or_absent():
    from medtf.synth.image_folders import BENIGN_LESION_SHARE, lesion_distance

    yy, xx = np.mgrid[:128, :128].astype(float) - 63.5
    solidity, present = {True: [], False: []}, []
    for i in range(60):
        for tumour in (True, False):
            d, _ = lesion_distance(np.random.default_rng([4, i]), xx, yy, 40.0, 44.0, tumour)
            if not tumour:
                present.append(d is not None)
            if d is not None:
                solidity[tumour].append(_solidity(d < 1))
    # about BENIGN_LESION_SHARE of the "no" slices hold a lesion: "is there a blob" does not decide the class
    assert abs(np.mean(present) - BENIGN_LESION_SHARE) < 0.15
    # the shape does: every mimic is a convex ellipse, every tumour far less solid (spicules)
    assert min(solidity[False]) > 0.9 and np.median(solidity[True]) < 0.75 and max(solidity[True]) < 0.92, \
        (min(solidity[False]), np.median(solidity[True]), max(solidity[True]))
