"""match_catheters: exact point-to-curve distances, one-to-one Hungarian matching, missed/spurious bookkeeping."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medtf.rt import match_catheters
from medtf.rt.catheter_match import curve_distances, point_to_polyline_distance


def _line(y=0.0, z=0.0, x0=0.0, x1=10.0):
    return np.array([[x0, y, z], [x1, y, z]])


def test_point_to_polyline_distance_is_exact():
    poly = np.array([[0.0, 0, 0], [10.0, 0, 0], [10.0, 10, 0]])
    pts = np.array([[5.0, 3, 0], [13.0, -4, 0], [12.0, 5, 1], [-3.0, 0, 4], [10.0, 0, 0]])
    np.testing.assert_allclose(point_to_polyline_distance(pts, poly), [3.0, 5.0, math.sqrt(5.0), 5.0, 0.0])
    np.testing.assert_allclose(point_to_polyline_distance(pts[:1], poly[:1]), [math.sqrt(34.0)])  # one point


def test_curve_distances_symmetric_and_hand_computed():
    assert curve_distances(_line(1.0), _line()) == pytest.approx((1.0, 1.0))
    # Half a catheter: prediction -> plan is 0; plan -> prediction at x = 0, 0.5, ..., 10 is max(0, x - 5).
    mean, worst = curve_distances(_line(x1=5.0), _line())
    assert mean == pytest.approx(0.5 * (0.0 + 27.5 / 21)) and worst == pytest.approx(5.0)
    assert curve_distances(_line(), _line(x1=5.0)) == pytest.approx((mean, worst))


def test_found_missed_spurious_and_tip_error():
    planned = [_line(0.0), _line(10.0), _line(-30.0)]
    reversed_b = _line(10.0, 2.0)[::-1]  # right place, wrong direction: tip error is the full length
    predicted = [_line(50.0), reversed_b, _line(1.0)]
    m = match_catheters(predicted, planned)
    assert [p[:2] for p in m.pairs] == [(2, 0), (1, 1)]
    assert m.pairs[0][2:] == pytest.approx((1.0, 1.0, 1.0))
    assert m.pairs[1][2:] == pytest.approx((2.0, 2.0, math.hypot(10.0, 2.0)))
    assert m.missed == [2] and m.spurious == [0]
    s = m.summary()
    assert (s["found"], s["missed"], s["spurious"]) == (2, 1, 1)
    assert s["mean_distance_mm"] == pytest.approx(1.5) and s["max_distance_mm"] == pytest.approx(2.0)
    assert s["tip_error_mm"] == pytest.approx((1.0 + math.hypot(10.0, 2.0)) / 2)
    assert s["tip_error_max_mm"] == pytest.approx(math.hypot(10.0, 2.0))


def test_one_to_one_is_globally_optimal():
    planned = [_line(0.0), _line(2.1)]
    # a is nearest to plan 0 (1.0 vs 1.1), but taking it would leave b only plan 1 at 3.2 mm (> 3 mm threshold).
    predicted = [_line(1.0), _line(-1.1)]
    m = match_catheters(predicted, planned)
    assert [p[:2] for p in m.pairs] == [(1, 0), (0, 1)]
    assert [p[2] for p in m.pairs] == pytest.approx([1.1, 1.1])
    assert m.missed == [] and m.spurious == []
    # Two predictions on one plan: only the closer is matched, the other is spurious.
    m = match_catheters([_line(0.4), _line(0.2)], [_line(0.0)])
    assert [p[:2] for p in m.pairs] == [(1, 0)] and m.spurious == [0]


def test_threshold_and_empty_inputs():
    m = match_catheters([_line(3.5)], [_line(0.0)])
    assert m.pairs == [] and m.missed == [0] and m.spurious == [0]
    assert match_catheters([_line(3.5)], [_line(0.0)], max_mean_distance_mm=4.0).summary()["found"] == 1
    s = match_catheters([], [_line()]).summary()
    assert (s["found"], s["missed"], s["spurious"]) == (0, 1, 0)
    assert all(math.isnan(s[k]) for k in ("mean_distance_mm", "max_distance_mm", "tip_error_mm", "tip_error_max_mm"))
    assert match_catheters([_line()], []).spurious == [0]


def test_channel_numbers_follow_the_matched_planned_catheters():
    planned, numbers = [_line(0.0), _line(10.0), _line(20.0)], [1, 5, 9]
    predicted = [_line(20.4), _line(40.0), _line(0.2), _line(60.0)]  # plan 2, spurious, plan 0, spurious
    m = match_catheters(predicted, planned)
    assert m.channel_numbers(numbers) == [9, 10, 1, 11]  # unmatched: above every planned number
    assert m.missed == [1] and match_catheters([], planned).channel_numbers(numbers) == []
    assert match_catheters(predicted[:1], []).channel_numbers([]) == [1]
