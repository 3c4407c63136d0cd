"""`random_affine` / `random_elastic` (the XLA warp) against a straightforward NumPy reference of what they compute.

The reference maps every output voxel ``p`` to the input coordinate ``inverse @ p + offset`` (affine, from the
transform's own drawn matrix) or ``p + field(p)`` (elastic: the coarse draw upsampled by two `tf.image.resize`
bicubic passes, as the transform did before its separable rewrite), in float64, then reads the input trilinearly
(bilinearly in 2D) with ``fill_value`` one voxel around it, and the labels at ``floor(c + 0.5)``. The warp must give
the same image to 1e-4 and the same labels, except at voxels whose coordinate lies within 1e-3 of a rounding
boundary of the nearest read (float32 vs float64 coordinates may round either way there); such voxels are counted
and must be rare.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf

from medtf.transforms import get_transform
from medtf.transforms import geometry

TIE = 1e-3  # coordinates this close to a .5 boundary may round either way


def seed(i: int) -> tf.Tensor:
    return tf.constant([i, 29], tf.int64)


# ----------------------------------------------------------------------------------------------- reference
def reference_sample(x: np.ndarray, coords: np.ndarray, fill: float, linear: bool) -> np.ndarray:
    """``x`` ``(*S, C)`` read at ``coords`` ``(rank, *O)`` (float64): clamp to one voxel of ``fill`` around ``x``."""
    rank, shape = coords.shape[0], np.array(x.shape[: coords.shape[0]])
    c = np.clip(coords, -1.0, (shape - 0.0).reshape((rank,) + (1,) * (coords.ndim - 1)))

    def read(index):  # index (rank, *O) integer: x there, fill outside
        inside = np.all([(i >= 0) & (i < n) for i, n in zip(index, shape)], axis=0)
        clipped = [np.clip(i, 0, n - 1) for i, n in zip(index, shape)]
        return np.where(inside[..., None], x[tuple(clipped)], np.asarray(fill, x.dtype))

    if not linear:
        return read(np.floor(c + 0.5).astype(np.int64))
    lo = np.floor(c)
    frac = (c - lo)[..., None]
    lo = lo.astype(np.int64)
    out = 0.0
    for corner in itertools.product((0, 1), repeat=rank):
        weight = np.prod([f if bit else 1.0 - f for f, bit in zip(frac, corner)], axis=0)
        out = out + weight * read(lo + np.reshape(corner, (rank,) + (1,) * (lo.ndim - 1)))
    return out


def near_tie(coords: np.ndarray, shape) -> np.ndarray:
    """Voxels whose (clipped) coordinate is within ``TIE`` of a nearest-rounding boundary on some axis."""
    c = np.stack([np.clip(ci, -1.0, n) for ci, n in zip(coords, shape)])
    return np.any(np.abs(c - np.floor(c) - 0.5) < TIE, axis=0)


def affine_coords(transform, rank: int, shape, s) -> np.ndarray:
    """The transform's own draw for seed ``s`` -> input coordinates ``(rank, *shape)`` in float64."""
    size = np.asarray(shape, np.float64)
    forward, shift = transform.matrix(s, rank, tf.constant(size, tf.float32))
    inverse = np.linalg.inv(forward.numpy().astype(np.float64))
    centre = (size - 1.0) / 2.0
    offset = centre - inverse @ (centre + shift.numpy())
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    return np.tensordot(inverse, grid, axes=1) + offset.reshape((rank,) + (1,) * rank)


def old_upsample(field: tf.Tensor, shape) -> tf.Tensor:
    """The elastic field as it was computed before: `tf.image.resize` bicubic, 3D as two 2D passes."""
    if len(shape) == 2:
        return tf.image.resize(field, shape, "bicubic")
    field = tf.image.resize(field, shape[1:], "bicubic")
    field = tf.image.resize(tf.transpose(field, [1, 0, 2, 3]), [shape[0], shape[2]], "bicubic")
    return tf.transpose(field, [1, 0, 2, 3])


def elastic_coords(transform, rank: int, shape, s) -> np.ndarray:
    grid = [int(g) for g in geometry.per_axis(transform.grid, rank, "grid")]
    coarse = tf.random.stateless_normal([*grid, rank], s, stddev=transform.magnitude, dtype=tf.float32)
    field = np.moveaxis(old_upsample(coarse, list(shape)).numpy().astype(np.float64), -1, 0)
    return np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")) + field


def volume(rank: int, shape, channels: int = 1):
    """A smooth image with a bright blob (values ~0..2) and a 3-label map, so that reads differ everywhere."""
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    blob = sum((g - 0.2 * (k + 1) + 0.3) ** 2 / 0.3 for k, g in enumerate(grid)) < 1.0
    image = np.stack([np.sin(3 * sum(grid)) + 1.0 * blob + 0.1 * c for c in range(channels)], -1)
    labels = np.where(blob, 2, (np.cos(5 * grid[0]) > 0.3).astype(np.uint8)).astype(np.uint8)
    return image.astype(np.float32), labels[..., None]


def run(transform, image, labels, s, xla=None):
    old, geometry.XLA_WARP = geometry.XLA_WARP, geometry.XLA_WARP if xla is None else xla
    try:
        out = transform({"image": tf.constant(image), "mask": tf.constant(labels)}, s)
    finally:
        geometry.XLA_WARP = old
    return out["image"].numpy(), out["mask"].numpy()


def check_against_reference(image, labels, coords, out_image, out_labels, fill=0.0, label_fill=0):
    shape = image.shape[: coords.shape[0]]
    expected = reference_sample(image.astype(np.float64), coords, fill, linear=True)
    np.testing.assert_allclose(out_image, expected, atol=1e-4, rtol=0)
    expected_labels = reference_sample(labels, coords, label_fill, linear=False)
    ties = near_tie(coords, shape)
    wrong = np.any(out_labels != expected_labels, axis=-1)
    assert not np.any(wrong & ~ties), f"{int(np.sum(wrong & ~ties))} label voxels differ away from rounding ties"
    assert ties.mean() < 0.02, "the reference coordinates are too often near a tie for the check to mean much"
    return int(wrong.sum())


# ----------------------------------------------------------------------------------------------- affine
AFFINES = {
    "full": {"rotation_deg": 20, "scale": [0.85, 1.15], "translate": 0.05, "shear": 0.05},
    "rotation": {"rotation_deg": 15, "scale": [1, 1]},
    "one_plane": {"rotation_deg": [15, 0, 0], "scale": [1, 1]},  # 3D: axis 0 fixed, 2D: a plain rotation
    "plane_dh": {"rotation_deg": [0, 0, [-30, 30]], "scale": [1, 1]},
}


@pytest.mark.parametrize("rank,shape", [(2, (33, 40)), (3, (20, 23, 18)), (3, (48, 48, 48))],
                         ids=["2d", "3d", "3d-48"])
@pytest.mark.parametrize("name", list(AFFINES))
def test_affine_matches_reference(name, rank, shape):
    params = AFFINES[name]
    if rank == 2 and isinstance(params["rotation_deg"], list):
        params = {**params, "rotation_deg": 15 if name == "one_plane" else [-30, 30]}
    transform = get_transform("random_affine", **params, prob=1.0, fill_value=0.0)
    image, labels = volume(rank, shape, channels=2 if rank == 2 else 1)
    for i in range(2):
        out_image, out_labels = run(transform, image, labels, seed(i))
        coords = affine_coords(transform, rank, shape, seed(i))
        assert np.abs(coords - np.stack(np.indices(shape))).max() > 0.25, "the draw did not move the image"
        check_against_reference(image, labels, coords, out_image, out_labels)


def test_affine_fixed_axes_follow_the_configuration():
    fixed = {name: get_transform("random_affine", **params).fixed_axes(3) for name, params in AFFINES.items()}
    assert fixed == {"full": (), "rotation": (), "one_plane": (0,), "plane_dh": (2,)}
    assert get_transform("random_affine", rotation_deg=0, scale=[1, 1]).fixed_axes(3) == (0, 1, 2)
    assert get_transform("random_affine", rotation_deg=[15, 0, 0], scale=[0.9, 1.0]).fixed_axes(3) == ()
    assert get_transform("random_affine", rotation_deg=[15, 0, 0], scale=[1, 1], translate=2).fixed_axes(3) == ()
    assert get_transform("random_affine", rotation_deg=0, scale=[1, 1]).fixed_axes(2) == (0, 1)
    assert get_transform("random_affine", rotation_deg=5, scale=[1, 1]).fixed_axes(2) == ()


def test_affine_fill_values_and_integer_image():
    """Points more than a voxel outside read ``fill_value`` / ``label_fill``; integer images come back rounded."""
    image, labels = volume(3, (16, 17, 15))
    image = np.round(image * 1000).astype(np.int16)
    transform = get_transform("random_affine", rotation_deg=[40, 0, 0], scale=[1, 1], prob=1.0, fill_value=-7.0,
                              label_fill=9)
    out_image, out_labels = run(transform, image, labels, seed(3))
    coords = affine_coords(transform, 3, image.shape[:3], seed(3))
    assert out_image.dtype == np.int16
    expected = reference_sample(image.astype(np.float64), coords, -7.0, linear=True)
    assert np.abs(out_image - np.round(expected)).max() <= 1  # round() of a value within 1e-4 of x.5 may flip
    assert np.mean(out_image != np.round(expected)) < 1e-3
    assert (out_image == -7).any() and (out_labels == 9).any()
    ties = near_tie(coords, image.shape[:3])
    wrong = np.any(out_labels != reference_sample(labels, coords, 9, linear=False), axis=-1)
    assert not np.any(wrong & ~ties)


# ----------------------------------------------------------------------------------------------- elastic
@pytest.mark.parametrize("rank,shape,grid", [(2, (33, 40), 5), (3, (20, 23, 18), 4), (3, (40, 40, 40), [3, 5, 4])],
                         ids=["2d", "3d", "3d-40"])
def test_elastic_matches_reference(rank, shape, grid):
    transform = get_transform("random_elastic", grid=grid, magnitude=2.5, prob=1.0)
    image, labels = volume(rank, shape)
    for i in range(2):
        out_image, out_labels = run(transform, image, labels, seed(i))
        coords = elastic_coords(transform, rank, shape, seed(i))
        assert np.abs(coords - np.stack(np.indices(shape))).max() > 0.25
        check_against_reference(image, labels, coords, out_image, out_labels)


def test_separable_upsample_equals_two_resize_passes():
    coarse = tf.random.stateless_normal([4, 5, 3, 3], [1, 2])
    shape = [19, 24, 17]
    weights = [geometry.cubic_weights(n, g) for n, g in zip(shape, coarse.shape[:3])]
    np.testing.assert_allclose(geometry.upsample(coarse, weights).numpy(), old_upsample(coarse, shape).numpy(),
                               atol=1e-5)
    coarse2 = coarse[0]
    weights2 = [geometry.cubic_weights(n, g) for n, g in zip(shape[:2], coarse2.shape[:2])]
    np.testing.assert_allclose(geometry.upsample(coarse2, weights2).numpy(),
                               tf.image.resize(coarse2, shape[:2], "bicubic").numpy(), atol=1e-5)


# ----------------------------------------------------------------------------------------------- XLA vs graph
@pytest.mark.parametrize("name,params", [("random_affine", AFFINES["one_plane"]), ("random_affine", AFFINES["full"]),
                                         ("random_elastic", {"grid": 4, "magnitude": 2.0})])
def test_xla_and_graph_paths_agree(name, params):
    transform = get_transform(name, **params, prob=1.0)
    image, labels = volume(3, (21, 19, 22))
    a_image, a_labels = run(transform, image, labels, seed(5), xla=True)
    b_image, b_labels = run(transform, image, labels, seed(5), xla=False)
    np.testing.assert_allclose(a_image, b_image, atol=1e-5)
    assert np.mean(a_labels != b_labels) < 1e-3


def test_fixed_axis_read_is_exactly_the_full_interpolation():
    """Reading a fixed axis without interpolating gives what trilinear gives there (frac 0), in the graph path.

    Clamped borders (``fill=None``) are exact except on the last slice, where the full interpolation computes
    ``a + 1 * (b - a)`` for ``b`` (round-off)."""
    x = tf.random.stateless_uniform([9, 10, 11, 2], [4, 4])
    angle = 0.3
    inverse = tf.constant([[1.0, 0, 0], [0, math.cos(angle), math.sin(angle)], [0, -math.sin(angle), math.cos(angle)]])
    coords = geometry.grid_coords([9, 10, 11], 3, inverse, tf.constant([0.0, 1.5, -2.0]))
    coords[0] = geometry.axis_grid(9, 3, 0)
    for fill in (0.0, None):
        full = geometry.resample(x, coords, linear=True, fill=fill).numpy()
        fixed = geometry.resample(x, coords, linear=True, fill=fill, fixed=(0,)).numpy()
        exact = slice(None) if fill is not None else slice(0, -1)
        np.testing.assert_array_equal(fixed[exact], full[exact])
        np.testing.assert_allclose(fixed, full, atol=1e-6)
        near = geometry.resample(x, coords, linear=False, fill=fill)
        np.testing.assert_array_equal(geometry.resample(x, coords, linear=False, fill=fill, fixed=(0,)).numpy(),
                                      near.numpy())
