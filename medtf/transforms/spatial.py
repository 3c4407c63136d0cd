"""Spatial transforms for 2D and 3D: flips, 90-degree rotations, affine, elastic, crops and resize.

One implementation serves both ranks: the rank is read from the image (`spatial_rank`). Every transform moves
``image`` (linear interpolation), the label keys ``mask``/``instances`` (nearest, dtype and values preserved; with
or without a trailing channel axis) and, for 2D, ``boxes`` ``(N, 4)`` ``[ymin, xmin, ymax, xmax]`` (pixels, max
exclusive). Boxes that leave the image are dropped, and ``classes``/``instance_ids`` (same ``N``) are filtered with
them. Output spatial shapes are static whenever the input's are: equal to the input (flip, affine, elastic, rot90 on
square planes) or to the configured ``size`` (crops, resize).

Resampling (affine, elastic, resize) maps every output voxel back to an input coordinate and reads the input with
one gather per neighbour (flattened indices), so the same code is bilinear in 2D and trilinear in 3D; labels use the
nearest neighbour at the same coordinates. Affine and elastic run as one XLA computation per example
(`geometry.warp_example`: coordinates, displacement field and reads fused, ~4x less CPU than the op-by-op graph),
and a rotation confined to one plane reads its third axis without interpolating. Coordinates are voxel indices,
voxel ``i`` covering ``[i, i + 1)`` in the box convention.

Example:
    >>> aug = build_transforms([{"name": "random_flip", "axes": [0, 1, 2]},
    ...                         {"name": "random_affine", "rotation_deg": 15, "scale": [0.9, 1.1]}])
    >>> out = aug({"image": volume, "mask": mask}, seed=tf.constant([0, 7]))   # volume (D, H, W, C)
"""

from __future__ import annotations

import math

import tensorflow as tf

from medtf.transforms.base import register_transform, spatial_rank
from medtf.transforms.geometry import (
    axis_grid,
    boxes_from_instances,
    crop,
    get_boxes,
    is_linear,
    map_arrays,
    maybe_apply,
    moved_keys,
    pad_to_size,
    per_axis,
    resample_example,
    rotation_matrix,
    set_boxes,
    shift_boxes,
    spatial_shape,
    uniform,
    value_range,
    warp_example,
)


# ----------------------------------------------------------------------------------------------- flips, rot90
@register_transform("random_flip")
class RandomFlip:
    """Flip each spatial axis independently with probability ``prob``.

    Args:
        axes: spatial axes that may flip (``0`` = first spatial axis: H in 2D, D in 3D); default all.
        prob: probability of each axis flipping.

    Example:
        >>> out = RandomFlip(axes=[0, 1, 2])({"image": vol, "mask": mask}, tf.constant([1, 2]))
    """

    def __init__(self, axes=None, prob: float = 0.5):
        self.axes, self.prob = (None if axes is None else [int(a) for a in axes]), float(prob)

    def __call__(self, example, seed):
        rank = spatial_rank(example["image"])
        axes = list(range(rank)) if self.axes is None else self.axes
        if any(not 0 <= a < rank for a in axes):
            raise ValueError(f"flip axes {axes} out of range for a {rank}D image")
        flags = uniform(seed, [len(axes)], 0.0, 1.0) < self.prob
        dims = tf.boolean_mask(tf.constant(axes, tf.int32), flags)
        out = map_arrays(example, rank, lambda x: tf.reverse(x, dims), lambda x: tf.reverse(x, dims))
        boxes = get_boxes(example, rank)
        if boxes is not None:
            ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=1)
            h, w = (tf.cast(s, tf.float32) for s in spatial_shape(example["image"], rank))
            fy = tf.reduce_any(flags & tf.equal(axes, 0))
            fx = tf.reduce_any(flags & tf.equal(axes, 1))
            boxes = tf.stack([tf.where(fy, h - ymax, ymin), tf.where(fx, w - xmax, xmin),
                              tf.where(fy, h - ymin, ymax), tf.where(fx, w - xmin, xmax)], axis=1)
            out["boxes"] = tf.cast(boxes, example["boxes"].dtype)
        return out


def _rot90(x: tf.Tensor, k: int, a: int, b: int) -> tf.Tensor:
    """``np.rot90(x, k, axes=(a, b))`` in TF."""
    perm = list(range(x.shape.rank))
    perm[a], perm[b] = b, a
    if k == 0:
        return tf.identity(x)
    if k == 1:
        return tf.transpose(tf.reverse(x, [b]), perm)
    if k == 2:
        return tf.reverse(x, [a, b])
    return tf.reverse(tf.transpose(x, perm), [b])


@register_transform("random_rot90")
class RandomRot90:
    """With probability ``prob`` rotate by ``k * 90`` degrees (``k`` in 1..3) in one plane drawn from ``axes``.

    Rotation follows ``np.rot90(x, k, axes=plane)``. The static shape is kept when the plane is square; on a
    non-square plane the two sizes swap for odd ``k``, so those dims become dynamic (``None``).

    Args:
        axes: a plane ``(a, b)`` of spatial axes or a list of planes; default ``(0, 1)`` in 2D and the ``(H, W)``
            plane ``(1, 2)`` in 3D.
        prob: probability of rotating at all.
    """

    def __init__(self, axes=None, prob: float = 0.5):
        if axes is not None and not isinstance(axes[0], (list, tuple)):
            axes = [axes]
        self.planes = None if axes is None else [tuple(int(a) for a in p) for p in axes]
        self.prob = float(prob)

    def __call__(self, example, seed):
        rank = spatial_rank(example["image"])
        planes = self.planes or ([(0, 1)] if rank == 2 else [(1, 2)])
        for a, b in planes:
            if a == b or not (0 <= a < rank and 0 <= b < rank):
                raise ValueError(f"rot90 plane {(a, b)} invalid for a {rank}D image")
        u = uniform(seed, [3], 0.0, 1.0)
        k = tf.where(u[0] < self.prob, 1 + tf.minimum(tf.cast(u[1] * 3, tf.int32), 2), 0)
        plane = tf.minimum(tf.cast(u[2] * len(planes), tf.int32), len(planes) - 1)
        keys = moved_keys(example)
        sub = {key: example[key] for key in keys}
        branches = [lambda p=p, k=k_: self._rotate(sub, rank, k, p) for p in planes for k_ in range(4)]
        return {**example, **tf.switch_case(plane * 4 + k, branches)}

    @staticmethod
    def _rotate(example, rank, k, plane):
        out = map_arrays(example, rank, lambda x: _rot90(x, k, *plane), lambda x: _rot90(x, k, *plane))
        boxes = get_boxes(example, rank)
        if boxes is not None:
            ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=1)
            h, w = (tf.cast(s, tf.float32) for s in spatial_shape(example["image"], rank))
            new = [[ymin, xmin, ymax, xmax], [w - xmax, ymin, w - xmin, ymax],
                   [h - ymax, w - xmax, h - ymin, w - xmin], [xmin, h - ymax, xmax, h - ymin]][k]
            out["boxes"] = tf.cast(tf.stack(new, axis=1), example["boxes"].dtype)
        return out


# ----------------------------------------------------------------------------------------------- affine, elastic
@register_transform("random_affine")
class RandomAffine:
    """One random affine per example (rotation, scale, shear, translation) about the image centre.

    The forward map is ``x' = R @ Sh @ diag(s) @ (x - c) + c + t``; the image is sampled at the inverse map with
    bi/trilinear interpolation and ``fill_value`` outside, labels with nearest and ``label_fill``. 2D boxes: the
    four corners are mapped, the enclosing box is clipped to the image, empty boxes are dropped.

    Args:
        rotation_deg: ``r`` (uniform in ``[-r, r]``) or ``(lo, hi)`` degrees; in 3D one range for all three axes
            or a list of three (about axes 0, 1, 2, e.g. ``[0, 0, 15]`` rotates only in the ``(D, H)`` plane).
        scale: ``(lo, hi)`` zoom factor (> 1 enlarges); one factor for all axes unless ``isotropic_scale=False``.
        translate: ``t`` or ``(lo, hi)`` per axis, as a fraction of the axis size (voxels if
            ``translate_in_voxels``).
        shear: ``s`` or ``(lo, hi)`` for every off-diagonal shear coefficient.
        prob: probability of applying the transform.
        image_interpolation: ``"linear"`` or ``"nearest"``; fill_value / label_fill: values outside the input.

    Example:
        >>> aug = RandomAffine(rotation_deg=[10, 10, 10], scale=(0.9, 1.1), prob=1.0)
    """

    def __init__(self, rotation_deg=15.0, scale=(0.9, 1.1), translate=0.0, shear=0.0, prob: float = 0.5, *,
                 isotropic_scale: bool = True, translate_in_voxels: bool = False,
                 image_interpolation: str = "linear", fill_value: float = 0.0, label_fill: int = 0):
        self.rotation_deg, self.scale = rotation_deg, value_range(scale, "scale")
        self.translate, self.shear = value_range(translate, "translate"), value_range(shear, "shear")
        self.prob, self.isotropic_scale, self.translate_in_voxels = float(prob), isotropic_scale, translate_in_voxels
        self.linear, self.fill_value, self.label_fill = is_linear(image_interpolation), fill_value, label_fill

    def _rotation_ranges(self, rank: int) -> list:
        value, n = self.rotation_deg, 1 if rank == 2 else 3
        if n == 3 and isinstance(value, (list, tuple)) and len(value) == 3:
            return [value_range(v, "rotation_deg") for v in value]
        return [value_range(value, "rotation_deg")] * n

    def matrix(self, seed, rank: int, size: tf.Tensor):
        """Draw the forward ``(rank, rank)`` matrix and ``(rank,)`` translation in voxels for ``seed``."""
        def draw(i, shape, bounds):
            lo, hi = (tf.constant(v, tf.float32) for v in zip(*bounds)) if isinstance(bounds, list) else bounds
            return lo + (hi - lo) * uniform(tf.random.fold_in(seed, i), shape, 0.0, 1.0)

        angles = draw(0, [1 if rank == 2 else 3], self._rotation_ranges(rank)) * (math.pi / 180.0)
        scale = draw(1, [1 if self.isotropic_scale else rank], self.scale) * tf.ones([rank])
        off_diagonal = 1.0 - tf.eye(rank)
        shear = tf.eye(rank) + off_diagonal * draw(2, [rank, rank], self.shear)
        shift = draw(3, [rank], self.translate) * (1.0 if self.translate_in_voxels else size)
        return tf.matmul(rotation_matrix(rank, angles), shear) * scale[None, :], shift

    def fixed_axes(self, rank: int) -> tuple:
        """Axes every drawn map leaves alone: with no scale, shear or translation, a 3D rotation confined to one
        plane (ranges zero about the other two axes) keeps the third axis, so it is read without interpolating."""
        if self.scale != (1.0, 1.0) or self.shear != (0.0, 0.0) or self.translate != (0.0, 0.0):
            return ()
        still = [r == (0.0, 0.0) for r in self._rotation_ranges(rank)]  # no rotation about axis k
        if rank == 2:
            return (0, 1) if still[0] else ()
        return tuple(a for a in range(3) if all(still[b] for b in range(3) if b != a))

    def __call__(self, example, seed):
        rank = spatial_rank(example["image"])
        return maybe_apply(example, seed, self.prob, lambda ex: self._apply(ex, seed, rank))

    def _apply(self, example, seed, rank):
        shape = spatial_shape(example["image"], rank)
        size = tf.cast(tf.stack(shape), tf.float32)
        forward, shift = self.matrix(seed, rank, size)
        inverse = tf.linalg.inv(forward)
        centre = (size - 1.0) / 2.0
        offset = centre - tf.linalg.matvec(inverse, centre + shift)
        out = warp_example(example, rank, inverse=inverse, offset=offset, fixed=self.fixed_axes(rank),
                           linear=self.linear, fill=self.fill_value, label_fill=self.label_fill)
        boxes = get_boxes(example, rank)
        if boxes is not None:
            corners = tf.stack([tf.gather(boxes, idx, axis=1) for idx in ([0, 1], [0, 3], [2, 1], [2, 3])], 1)
            moved = tf.einsum("ij,nkj->nki", forward, corners - size / 2.0) + size / 2.0 + shift
            boxes = tf.concat([tf.reduce_min(moved, 1), tf.reduce_max(moved, 1)], axis=1)
            out = set_boxes(out, boxes, shape)
        return out


@register_transform("random_elastic")
class RandomElastic:
    """Elastic deformation: a random coarse displacement field, smoothly upsampled, added to the identity grid.

    Control-point displacements are ``N(0, magnitude^2)`` voxels on a ``grid`` of points spanning the image; the
    bicubic upsampling to full resolution is the smoothing (as B-spline control points in TorchIO). Image linear,
    labels nearest. 2D boxes are recomputed from ``instances`` (needs ``instances`` and ``instance_ids``).

    Args:
        grid: control points per axis (int or one per spatial axis), >= 2.
        magnitude: standard deviation of the control-point displacements, in voxels.
        prob: probability of applying the transform.
        image_interpolation, fill_value, label_fill: as in `RandomAffine`.
    """

    def __init__(self, grid=4, magnitude: float = 2.0, prob: float = 0.5, *, image_interpolation: str = "linear",
                 fill_value: float = 0.0, label_fill: int = 0):
        self.grid, self.magnitude, self.prob = grid, float(magnitude), float(prob)
        self.linear, self.fill_value, self.label_fill = is_linear(image_interpolation), fill_value, label_fill

    def __call__(self, example, seed):
        rank = spatial_rank(example["image"])
        if "boxes" in example and not {"instances", "instance_ids"} <= set(example):
            raise ValueError("random_elastic moves boxes by recomputing them from 'instances' and 'instance_ids'")
        return maybe_apply(example, seed, self.prob, lambda ex: self._apply(ex, seed, rank))

    def _apply(self, example, seed, rank):
        shape = spatial_shape(example["image"], rank)
        grid = [int(g) for g in per_axis(self.grid, rank, "grid")]
        coarse = tf.random.stateless_normal([*grid, rank], seed, stddev=self.magnitude, dtype=tf.float32)
        out = warp_example(example, rank, coarse=coarse, linear=self.linear, fill=self.fill_value,
                           label_fill=self.label_fill)
        if "boxes" in example:
            boxes = boxes_from_instances(out["instances"], out["instance_ids"])
            out = set_boxes(out, boxes, shape)
        return out


# ----------------------------------------------------------------------------------------------- crops, resize
class _Sized:
    def __init__(self, size):
        self.size = size

    def _size(self, rank: int) -> list:
        size = [int(s) for s in per_axis(self.size, rank, "size")]
        if min(size) < 1:
            raise ValueError(f"size must be positive, got {self.size}")
        return size


@register_transform("random_crop")
class RandomCrop(_Sized):
    """Crop a ``size`` window at a uniformly random position (axes shorter than ``size`` are zero-padded first).

    Args:
        size: output spatial size, an int (all axes) or one per spatial axis.
    """

    def __call__(self, example, seed):
        rank = spatial_rank(example["image"])
        size = self._size(rank)
        example = pad_to_size(example, rank, size, pad_value=0)
        shape = spatial_shape(example["image"], rank)
        u = uniform(seed, [rank], 0.0, 1.0)
        begin = [tf.minimum(tf.cast(u[k] * tf.cast(n - s + 1, tf.float32), tf.int32), n - s)
                 for k, (n, s) in enumerate(zip(shape, size))]
        return crop(example, rank, begin, size)


@register_transform("center_crop")
class CenterCrop(_Sized):
    """Crop the central ``size`` window (zero-padding axes shorter than ``size``). ``seed`` is unused."""

    def __call__(self, example, seed=None):
        rank = spatial_rank(example["image"])
        size = self._size(rank)
        example = pad_to_size(example, rank, size, pad_value=0)
        shape = spatial_shape(example["image"], rank)
        return crop(example, rank, [(n - s) // 2 for n, s in zip(shape, size)], size)


def _crop_resize(example: dict, rank: int, begin: list, extent: list, size: list, linear: bool) -> dict:
    """Resample the box ``[begin, begin + extent)`` (float voxels) onto a ``size`` grid (half-pixel centres)."""
    scale = [tf.cast(e, tf.float32) / s for e, s in zip(extent, size)]
    coords = [(axis_grid(s, rank, k) + 0.5) * scale[k] + (tf.cast(b, tf.float32) - 0.5)
              for k, (b, s) in enumerate(zip(begin, size))]
    out = resample_example(example, rank, coords, linear=linear, fill=None, label_fill=None)
    return shift_boxes(example, out, rank, begin, scale, size)


@register_transform("resize")
class Resize(_Sized):
    """Resize to ``size``: image linear (or nearest), labels nearest, boxes scaled. ``seed`` is unused.

    Uses half-pixel centres like ``tf.image.resize`` (no antialiasing); labels follow
    ``tf.image.resize(method="nearest")``.
    """

    def __init__(self, size, image_interpolation: str = "linear"):
        super().__init__(size)
        self.linear = is_linear(image_interpolation)

    def __call__(self, example, seed=None):
        rank = spatial_rank(example["image"])
        shape = spatial_shape(example["image"], rank)
        return _crop_resize(example, rank, [0] * rank, shape, self._size(rank), self.linear)


@register_transform("random_resized_crop")
class RandomResizedCrop(_Sized):
    """Crop a random box covering ``scale`` of the image volume/area, resized to ``size``.

    Args:
        size: output spatial size.
        scale: ``(lo, hi)`` fraction of the input area (2D) / volume (3D) kept by the crop.
        ratio: ``(lo, hi)`` per-axis aspect jitter: each side is multiplied by ``exp(u)``,
            ``u ~ U(log lo, log hi)``, then renormalised to the drawn fraction; ``(1, 1)`` keeps the input aspect.
        image_interpolation: ``"linear"`` or ``"nearest"``.
    """

    def __init__(self, size, scale=(0.5, 1.0), ratio=(1.0, 1.0), image_interpolation: str = "linear"):
        super().__init__(size)
        self.scale, self.ratio = value_range(scale, "scale"), value_range(ratio, "ratio")
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0 or self.ratio[0] <= 0.0:
            raise ValueError(f"need 0 < scale <= 1 and ratio > 0, got {scale}, {ratio}")
        self.linear = is_linear(image_interpolation)

    def __call__(self, example, seed):
        rank = spatial_rank(example["image"])
        shape = spatial_shape(example["image"], rank)
        u = uniform(seed, [2 * rank + 1], 0.0, 1.0)
        fraction = self.scale[0] + (self.scale[1] - self.scale[0]) * u[0]
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        jitter = lo + (hi - lo) * u[1:rank + 1]
        jitter = tf.exp(jitter - tf.reduce_mean(jitter)) * fraction ** (1.0 / rank)
        dims = [tf.cast(n, tf.float32) for n in shape]
        extent = [tf.clip_by_value(d * jitter[k], 1.0, d) for k, d in enumerate(dims)]
        begin = [u[rank + 1 + k] * (d - e) for k, (d, e) in enumerate(zip(dims, extent))]
        return _crop_resize(example, rank, begin, extent, self._size(rank), self.linear)
