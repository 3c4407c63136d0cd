"""Issue #13: a catheter split where the mask's confidence dips must come back as one catheter, tip first.

Masks are rasterised from known centrelines on a 64 x 64 x 30 grid (1 x 1 x 2 mm, x from -31.7 to +31.3 mm);
every catheter enters from the +x border (connector there), so the default orientation rule applies (no tip hint).
"""

from __future__ import annotations

import numpy as np
import pytest

from medtf.rt import match_catheters, rasterize_polylines, reconstruct_catheters
from medtf.rt.reconstruct import orient_catheters
from medtf.rt.track_merge import merge_overlapping_tracks, project_onto_polyline
from tests.rt.test_reconstruct import _curve, _grid

X_BORDER = 31.3  # last voxel centre on +x


def _line(x0, x1, y=0.0, z=0.0, n=None):
    n = n or int(abs(x1 - x0)) + 1
    return np.stack([np.linspace(x0, x1, n), np.full(n, y), np.full(n, z)], axis=1)


def _tip_error(rec, tip) -> float:
    return float(min(np.linalg.norm(c[0] - np.asarray(tip)) for c in rec))


# --- merge_overlapping_tracks on point sequences -------------------------------------------------------------

def test_project_onto_polyline_hand_computed():
    line = np.array([[0.0, 0, 0], [10.0, 0, 0], [10.0, 10, 0]])
    d, s = project_onto_polyline(np.array([[3.0, 1, 0], [-2.0, 0, 0], [12.0, 4, 0], [10.0, 13, 0]]), line)
    np.testing.assert_allclose(d, [1.0, 2.0, 2.0, 3.0])
    np.testing.assert_allclose(s, [3.0, 0.0, 14.0, 20.0])


@pytest.mark.parametrize("reverse_b", [False, True], ids=["same_order", "opposite_order"])
def test_overlapping_collinear_pieces_merge(reverse_b):
    a = _line(-20.0, 5.0)  # 25 mm
    b = _line(-3.0, 25.0, y=0.6)  # overlaps a by 8 mm, 0.6 mm aside
    out = merge_overlapping_tracks([a, b[::-1] if reverse_b else b], lateral_mm=1.0)
    assert len(out) == 1
    m = out[0] if out[0][0, 0] < out[0][-1, 0] else out[0][::-1]  # the longer piece (b) sets the order
    np.testing.assert_allclose(m[0], [-20.0, 0, 0])
    np.testing.assert_allclose(m[-1], [25.0, 0.6, 0])
    assert np.all(np.diff(m[:, 0]) > 0)  # one monotone run: the overlap was not stitched in twice
    assert len(m) == 46  # x = -20..-4 from a (17 points), then b's 29 points: nothing dropped or doubled


def test_duplicate_inside_tube_is_absorbed():
    a = _line(-20.0, 20.0)
    out = merge_overlapping_tracks([_line(-5.0, 6.0, y=-0.5), a], lateral_mm=1.0)
    assert len(out) == 1
    np.testing.assert_array_equal(out[0], a)


@pytest.mark.parametrize("case", ["parallel_2.5mm", "crossing_20deg", "end_to_end_gap"])
def test_different_catheters_or_gaps_are_not_merged_here(case):
    a = _line(-20.0, 20.0)
    if case == "parallel_2.5mm":  # a neighbour 2.5 mm away, overlapping over 30 mm
        b = _line(-10.0, 30.0, y=2.5)
    elif case == "crossing_20deg":  # crosses a mid-way: leaves its tube sideways, not past an end
        u = np.linspace(-15.0, 15.0, 31)
        b = np.stack([u * np.cos(0.35), u * np.sin(0.35), np.zeros_like(u)], axis=1)
    else:  # pieces that meet end to end are join_tracks' business, not an overlap
        b = _line(23.0, 40.0)
    out = merge_overlapping_tracks([a, b], lateral_mm=1.5)
    assert len(out) == 2


# --- reconstruct_catheters on rasterised masks ---------------------------------------------------------------

def _slice_step_mask(ref, outer_rows, deep_rows, overlap_voxels):
    """A catheter along x from a tip at x = -18 to the +x border that passes from slice 16 (tip side) to slice 15
    (connector side) near x = 0, as a predicted mask does (issue #13, test patient 1): over the overlap the blob
    holds a row on each slice, one of them thinner (lower confidence), and is split in two by its width."""
    mask = np.zeros(ref.array.shape, bool)
    x_mm = ref.index_to_physical(np.array([[i, 0, 0] for i in range(64)]))[:, 0]
    mid = int(np.searchsorted(x_mm, 0.0))
    for i in np.flatnonzero(x_mm >= -18.0):
        if i <= mid + overlap_voxels // 2:
            mask[16, list(deep_rows), i] = True
        if i >= mid - overlap_voxels // 2:
            mask[15, list(outer_rows), i] = True
    return mask


@pytest.mark.parametrize("outer_rows, deep_rows, overlap", [((31, 32, 33), (32,), 6), ((32, 33), (32,), 8)],
                         ids=["3+1_rows_6mm", "2+1_rows_8mm"])
def test_slice_step_pieces_give_one_catheter_with_its_tip(outer_rows, deep_rows, overlap):
    # Before issue #13's fix: two tracks, 2 mm apart and overlapping by ~6 mm, and the deep one (x -18..+3, no
    # end near the border; its tip end is the nearer one to the -x border) was reversed: a ~21 mm tip error.
    ref = _grid((1.0, 1.0, 2.0))
    mask = _slice_step_mask(ref, outer_rows, deep_rows, overlap)
    rec = reconstruct_catheters(mask, ref)
    assert len(rec) == 1, [c[[0, -1]] for c in rec]
    z_deep = ref.index_to_physical(np.array([[0, 0, 16]]))[0, 2]
    assert _tip_error(rec, [-18.0, 0.3, z_deep]) < 1.5  # mm; the tip voxel centre is at x = -17.7
    assert rec[0][-1][0] > X_BORDER - 2.0  # the connector end at the border
    assert 47 <= len(rec[0]) <= 51  # 49 mm of catheter at 1 mm steps: nothing doubled back


def test_overlapping_tubes_give_one_catheter_with_its_tip():
    # Two rasterised pieces of one catheter, 1.5 mm apart across the slices and overlapping by 6 mm.
    ref = _grid((1.0, 1.0, 2.0))
    outer, deep = _line(X_BORDER, -4.0, z=1.5), _line(2.0, -18.0)
    mask, _ = rasterize_polylines([outer, deep], ref, radius_mm=1.0)
    rec = reconstruct_catheters(mask, ref)
    assert len(rec) == 1, [c[[0, -1]] for c in rec]
    assert _tip_error(rec, [-18.0, 0.0, 0.0]) < 2.0  # mm
    assert 46 <= len(rec[0]) <= 52  # 49.3 mm at 1 mm steps (+ the tube's rounded end)


def test_gap_without_tip_hint_gives_one_catheter_with_its_tip():
    ref = _grid((1.0, 1.0, 2.0))
    truth = _curve([-18, -4, 2], [X_BORDER, 2, 4], [0, 2, 0])
    mask, _ = rasterize_polylines([truth], ref, 1.0)
    x_mm = ref.index_to_physical(np.array([[i, 0, 0] for i in range(64)]))[:, 0]
    mask[:, :, (x_mm > 0) & (x_mm < 6)] = 0  # a 6 mm hole where the confidence dropped below 0.5
    rec = reconstruct_catheters(mask, ref)
    assert len(rec) == 1
    assert _tip_error(rec, truth[0]) < 2.0


def test_deep_fragment_follows_its_partner_and_the_implant():
    # Three catheters from the +x border; the middle one's outer part is missing from x = 0 to x = 22, beyond
    # max_join_gap_mm: its deep fragment (x -18..0) reaches no border and must still be oriented tip first.
    ref = _grid((1.0, 1.0, 2.0))
    truth = [_line(X_BORDER, -18.0, y=-10.0), _line(X_BORDER, -18.0, y=0.0), _line(X_BORDER, -18.0, y=10.0)]
    truth = [t[::-1] for t in truth]  # tip first
    pieces = [truth[0], _line(-18.0, 0.0), _line(22.0, X_BORDER), truth[2]]
    mask, _ = rasterize_polylines(pieces, ref, 1.0)
    rec = reconstruct_catheters(mask, ref)
    assert len(rec) == 4  # the gap is too long to bridge: two pieces, both oriented
    tips = np.array(sorted((c[0] for c in rec), key=lambda p: (p[1], p[0])))
    np.testing.assert_allclose(tips[:, 0], [-18.0, -18.0, 22.0, -18.0], atol=1.5)
    # matched against the plan, the deep fragment is the one matched to the middle catheter (tip within 2 mm)
    s = match_catheters(rec, truth, max_mean_distance_mm=10.0)
    assert s.summary()["tip_error_max_mm"] < 2.0


def test_orient_catheters_votes_only_when_tracks_agree():
    ref = _grid((1.0, 1.0, 2.0))
    deep = _line(0.0, -18.0)  # reaches no border; its x = -18 end is nearer the -x border
    assert orient_catheters([deep], ref)[0][0][0] == pytest.approx(0.0)  # nothing to follow: nearer-border rule
    into_plus = _line(-15.0, X_BORDER, y=10.0)  # tip at -15, connector at the +x border
    out = orient_catheters([deep, into_plus], ref)
    assert out[0][0][0] == pytest.approx(-18.0) and out[1][0][0] == pytest.approx(-15.0)
    into_minus = _line(15.0, -X_BORDER + 0.3, y=-10.0)  # an implant from both sides: no consensus, no change
    out = orient_catheters([deep, into_plus, into_minus], ref)
    assert out[0][0][0] == pytest.approx(0.0)
    hinted = orient_catheters([deep, into_plus], ref, tip_hint=[[1.0, 0, 0], [-14.0, 10, 0]])
    assert hinted[0][0][0] == pytest.approx(0.0)  # an explicit hint wins over the vote


def test_parallel_neighbours_3mm_apart_are_not_merged():
    # A second catheter 3 mm aside whose tip stops half way: overlapping and parallel, but two catheters.
    ref = _grid((1.0, 1.0, 2.0))
    truth = [_line(-20.0, X_BORDER, y=0.3), _line(0.0, X_BORDER, y=3.3)]  # tip first
    mask, _ = rasterize_polylines(truth, ref, radius_mm=1.0)
    rec = reconstruct_catheters(mask, ref)
    s = match_catheters(rec, truth).summary()
    assert (len(rec), s["found"], s["spurious"]) == (2, 2, 0), s
    assert s["tip_error_max_mm"] < 2.0, s


def test_short_isolated_blob_is_dropped():
    ref = _grid((1.0, 1.0, 2.0))
    truth = _line(-18.0, X_BORDER)
    blob = _line(-10.0, -4.0, y=15.0, z=10.0)  # a 6 mm false positive, far from the catheter
    mask, _ = rasterize_polylines([truth, blob], ref, 1.0)
    rec = reconstruct_catheters(mask, ref)
    assert len(rec) == 1 and _tip_error(rec, truth[0]) < 2.0
