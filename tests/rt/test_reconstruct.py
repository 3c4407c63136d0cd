"""Catheter reconstruction from binary masks: known centrelines rasterised, reconstructed, and matched back."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medtf.io import read_dicom_series
from medtf.io.volume import Volume
from medtf.rt import match_catheters, orient_catheter, rasterize_polylines, read_brachy_plan, reconstruct_catheters
from medtf.rt.reconstruct import estimate_radius
from medtf.synth.brachy_ct import generate_brachy_ct

SPACINGS = [(1.0, 1.0, 2.0), (0.8, 0.8, 1.5)]


def _grid(spacing, shape=(30, 64, 64), direction=None) -> Volume:
    nz, ny, nx = shape
    origin = -np.array([nx * spacing[0], ny * spacing[1], nz * spacing[2]]) / 2 + 0.3  # voxel centres off-line
    kw = {} if direction is None else {"direction": direction}
    return Volume(np.zeros(shape, np.int16), spacing=spacing, origin=origin, **kw)


def _curve(p0, p1, bend=(0.0, 0.0, 0.0), n=60) -> np.ndarray:
    u = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    return p0 + u * (p1 - p0) + 4.0 * u * (1.0 - u) * np.asarray(bend, float)


CASES = {
    # three curved needles in different directions (one mostly along y), 5+ mm apart
    "curved": [_curve([-20, -10, -5], [20, -8, -3], [0, 3, 2]), _curve([20, 5, 4], [-18, 8, 6], [0, -2, 3]),
               _curve([-5, -20, 16], [-2, 20, 18], [3, 0, 0])],
    # parallel, 3 mm apart in-plane: one 26-connected component, split by blob width
    "parallel_3mm": [_curve([-20, 0, 0], [20, 0, 1]), _curve([20, 3, 0], [-20, 3, 1])],
    # a tip lying alongside another needle, 3 mm away: the second track is born inside a merged blob
    "tip_alongside": [_curve([-20, 0, 0], [20, 0, 1]), _curve([-5, 3, 0], [22, 3, 1])],
    # an X in the axial plane, touching (1.5 mm apart in z) where they cross
    "crossing": [_curve([-20, -8, 0], [20, 8, 0]), _curve([-20, 8, 1.5], [20, -8, 1.5])],
    # perpendicular crossing: one along x, one along z, touching at the centre
    "crossing_steep": [_curve([-20, 0, 0], [20, 0, 0]), _curve([0, -1.5, -20], [0, 1.5, 20])],
}


def _check(rec, truth, *, mean_mm=1.0, max_mm=2.0, tip_mm=2.0):
    match = match_catheters(rec, truth)
    s = match.summary()
    assert (len(rec), s["found"], s["missed"], s["spurious"]) == (len(truth), len(truth), 0, 0), s
    assert s["mean_distance_mm"] < mean_mm and s["max_distance_mm"] < max_mm, s
    assert s["tip_error_max_mm"] < tip_mm, s  # tip-first ordering is right
    for c in rec:
        assert c.dtype == np.float64 and c.shape[1] == 3
        steps = np.linalg.norm(np.diff(c, axis=0), axis=1)
        assert np.all(np.abs(steps - 1.0) <= 0.05), (steps.min(), steps.max())
    return s


@pytest.mark.parametrize("spacing", SPACINGS, ids=["1x1x2", "0.8x0.8x1.5"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_reconstructs_known_centrelines(spacing, name):
    truth = CASES[name]
    ref = _grid(spacing)
    mask, _ = rasterize_polylines(truth, ref, radius_mm=1.0)
    rec = reconstruct_catheters(mask, ref, tip_hint=np.array([c[0] for c in truth]))
    _check(rec, truth)


MERGED = {
    # voxel-centred lines, so a 1.5 mm mask (a fat prediction) fuses them into one component
    "parallel_3mm": [_curve([-20, 0.3, 0], [20, 0.3, 1]), _curve([20, 3.3, 0], [-20, 3.3, 1])],
    "tip_alongside": [_curve([-20, 0.3, 0], [20, 0.3, 1]), _curve([-5, 3.3, 0], [22, 3.3, 1])],
    "oblique_3.5mm": [_curve([-20, -10, -3], [20, 10, 3], [0, 0, 2]), _curve([-20, -7, -3], [20, 13, 3], [0, 0, 2])],
}


@pytest.mark.parametrize("spacing", SPACINGS, ids=["1x1x2", "0.8x0.8x1.5"])
@pytest.mark.parametrize("name", sorted(MERGED))
def test_touching_catheters_in_one_component_are_split(spacing, name):
    truth = MERGED[name]
    ref = _grid(spacing)
    radius = 1.0 if name == "oblique_3.5mm" else 1.5
    mask, _ = rasterize_polylines(truth, ref, radius_mm=radius)
    assert ndimage.label(mask, np.ones((3, 3, 3)))[1] == 1  # connected components alone cannot separate them
    _check(reconstruct_catheters(mask, ref, radius_mm=radius, tip_hint=[c[0] for c in truth]), truth)


def test_parallel_3mm_apart_along_slices_on_fine_grid():
    # Separated along the slice axis: resolvable with 1.5 mm slices (with 2 mm slices, 3 mm is below the limit).
    truth = [_curve([-20, 0, 0], [20, 1, 0]), _curve([-20, 0, 3], [20, 1, 3])]
    ref = _grid((0.8, 0.8, 1.5))
    mask, _ = rasterize_polylines(truth, ref, radius_mm=1.0)
    _check(reconstruct_catheters(mask, ref, tip_hint=[c[0] for c in truth]), truth)


def test_oblique_direction_cosines():
    c, s = np.cos(0.4), np.sin(0.4)
    direction = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]).ravel()
    truth = CASES["curved"]
    ref = _grid((1.0, 1.0, 2.0), shape=(30, 80, 80), direction=direction)
    centre_offset = ref.index_to_physical(np.array([40.0, 40.0, 15.0])) - np.asarray(ref.origin)
    ref = ref.with_array(ref.array, origin=0.3 - centre_offset)  # grid centred on the catheters
    mask, _ = rasterize_polylines(truth, ref, radius_mm=1.0)
    assert mask.sum() > 150  # ~pi r^2 / voxel volume = 1.6 voxels per mm of catheter
    _check(reconstruct_catheters(mask, ref, tip_hint=[c[0] for c in truth]), truth)


def test_orientation_rules():
    # Needles entering from the patient's right (-x) edge of the image: the connector end touches the border.
    truth = [_curve([10, -6, 0], [-32, -6, 2], [0, 2, 0]), _curve([6, 6, 4], [-32, 6, 6])]
    ref = _grid((1.0, 1.0, 2.0))
    mask, _ = rasterize_polylines(truth, ref, radius_mm=1.0)
    auto = reconstruct_catheters(mask, ref)  # default: connector = end nearer the image border
    assert _check(auto, truth)["tip_error_max_mm"] < 2.0
    left = reconstruct_catheters(mask, ref, connector_side="L")  # connectors on the left: every tip flips
    assert all(c[0][0] < -25.0 for c in left)
    right = reconstruct_catheters(mask, ref, connector_side=(-1.0, 0.0, 0.0))
    np.testing.assert_allclose(np.array([c[0] for c in right]), np.array([c[0] for c in auto]))
    line = np.array([[0.0, 0, 0], [5.0, 0, 0], [10.0, 0, 0]])
    np.testing.assert_array_equal(orient_catheter(line, ref, tip_hint=[[11.0, 0, 0]])[0], [10.0, 0, 0])
    np.testing.assert_array_equal(orient_catheter(line, ref, connector_side="S")[0], [0.0, 0, 0])


def test_empty_specks_and_channel_axis():
    ref = _grid((1.0, 1.0, 2.0))
    assert reconstruct_catheters(np.zeros(ref.array.shape, np.uint8), ref) == []
    mask = np.zeros(ref.array.shape, bool)
    mask[10, 20:23, 30:32] = True  # a 3 x 2 voxel speck
    mask[20, 40, 10:16] = True  # a 6 mm stub, below min_length_mm
    assert reconstruct_catheters(mask, ref) == []
    line, _ = rasterize_polylines([_curve([-20, 0, 0], [20, 0, 1])], ref, 1.0)
    rec = reconstruct_catheters((line | mask)[..., None], ref, min_length_mm=10.0)  # (z, y, x, 1) accepted
    assert len(rec) == 1 and 38.0 <= len(rec[0]) <= 42
    assert len(reconstruct_catheters(mask, ref, min_length_mm=4.0)) == 1  # the 6 mm stub now counts
    with pytest.raises(ValueError, match="does not match"):
        reconstruct_catheters(mask[:-1], ref)


def test_gap_in_mask_is_bridged():
    ref = _grid((1.0, 1.0, 2.0))
    truth = [_curve([-25, 2, 0], [25, 4, 1], [0, 2, 0])]
    mask, _ = rasterize_polylines(truth, ref, 1.0)
    x_mm = ref.index_to_physical(np.array([[i, 0, 0] for i in range(64)]))[:, 0]
    mask[:, :, (x_mm > -2) & (x_mm < 3)] = 0  # a 5 mm hole, as a network may leave
    _check(reconstruct_catheters(mask, ref, tip_hint=[truth[0][0]]), truth, max_mm=2.5)


@pytest.mark.parametrize("radius", [1.0, 1.5])
def test_estimate_radius(radius):
    truth = CASES["curved"]
    for spacing in SPACINGS:
        ref = _grid(spacing)
        mask, _ = rasterize_polylines(truth, ref, radius_mm=radius)
        assert estimate_radius(mask, ref) == pytest.approx(radius, abs=0.1)
    assert estimate_radius(np.zeros(ref.array.shape, bool), ref) == 1.0  # nothing long enough: the default


@pytest.fixture(scope="module")
def synthetic_case(tmp_path_factory):
    # The old bright-needle look: test_synthetic_ct_thresholded reconstructs from a HU threshold of the CT.
    case = generate_brachy_ct(tmp_path_factory.mktemp("brachy"), cases=1, shape=(32, 96, 96), seed=1,
                              realism="bright-needles")[0]
    return read_dicom_series(case / "CT"), read_brachy_plan(next(case.glob("RP*.dcm")))


def test_synthetic_brachy_case(synthetic_case):
    ct, plan = synthetic_case
    from tfrecords_builder.brachy_ct import catheter_radius

    mask, _ = rasterize_polylines(plan.polylines, ct, catheter_radius(None, ct))  # as the brachy-ct converter does
    # No tip hint: the generator inserts all needles from one side with the connectors at the image border, so
    # the default rule (connector = end nearer the border) must find every tip.
    rec = reconstruct_catheters(mask, ct)
    s = match_catheters(rec, plan.polylines).summary()
    assert s["found"] == len(plan.polylines) >= 5 and s["missed"] == 0 and s["spurious"] == 0, s
    assert s["mean_distance_mm"] < 1.0 and s["tip_error_max_mm"] < 3.0, s


@pytest.mark.parametrize("threshold_hu", [300, 700])
def test_synthetic_ct_thresholded(synthetic_case, threshold_hu):
    # A fatter mask than the training masks (needle + partial volume, radius ~1.4-1.7 mm), as a network may
    # predict: the estimated radius keeps wide blobs from being split into duplicate catheters.
    ct, plan = synthetic_case
    mask = ct.array > threshold_hu
    assert 1.3 < estimate_radius(mask, ct) < 1.9
    rec = reconstruct_catheters(mask, ct)
    s = match_catheters(rec, plan.polylines).summary()
    assert (s["found"], s["missed"], s["spurious"]) == (len(plan.polylines), 0, 0), s
    assert s["tip_error_max_mm"] < 3.0, s
    assert s["mean_distance_mm"] < 0.5 and s["max_distance_mm"] < 2.0, s
    with_thin_radius = match_catheters(reconstruct_catheters(mask, ct, radius_mm=1.0), plan.polylines).summary()
    assert with_thin_radius["spurious"] > 0  # why the radius matters


def test_a_flooded_mask_is_refused_and_evaluates_as_nothing_found():
    from medtf.evaluation.catheters import catheter_metrics
    from medtf.rt import ImplausibleMaskError

    ref = _grid((1.0, 1.0, 2.0))
    truth = CASES["curved"]
    mask, _ = rasterize_polylines(truth, ref, radius_mm=1.0)
    assert 0 < mask.mean() < 0.05 and len(reconstruct_catheters(mask, ref)) == 3  # a real catheter mask passes
    flood = np.random.default_rng(0).random(mask.shape) < 0.3  # what a barely trained model predicts
    with pytest.raises(ImplausibleMaskError, match=r"covers 30\.\d% of the image"):
        reconstruct_catheters(flood, ref)
    assert len(reconstruct_catheters(mask, ref, max_foreground_fraction=0.001 + mask.mean())) == 3
    with pytest.raises(ImplausibleMaskError):
        reconstruct_catheters(mask, ref, max_foreground_fraction=0.5 * mask.mean())

    points = np.concatenate(truth)
    offsets = np.cumsum([0] + [len(c) for c in truth])
    example = {"catheter_points": points, "catheter_offsets": offsets, "spacing": ref.spacing,
               "origin": ref.origin, "direction": np.asarray(ref.direction).ravel()}
    out = catheter_metrics(flood.astype(np.uint8), example)
    assert (out["catheters_found"], out["catheters_missed"], out["catheters_spurious"]) == (0, 3, 0)
