"""Patch sampling with foreground oversampling (nnU-Net / MONAI ``RandCropByPosNegLabel``), 2D and 3D.

`RandomPatch` crops a static ``size`` patch: with probability ``foreground_ratio`` it is centred on a uniformly
chosen foreground voxel (``label > 0``), otherwise it lies uniformly at random in the volume; either way it is
clamped inside the (padded) volume. Volumes smaller than the patch are padded first, centred: the image with its
per-channel minimum (or ``pad_value``), labels with 0. The crop is an exact ``tf.slice`` (no resampling): a patch
equals the source region voxel for voxel. 2D ``boxes`` are shifted, clipped and filtered with the patch.

Example:
    >>> sampler = RandomPatch(size=[96, 96, 96], foreground_ratio=0.33)
    >>> patch = sampler({"image": ct, "mask": mask}, seed=tf.constant([3, 4]))   # ct (D, H, W, C)
    >>> patch["image"].shape                                                     # (96, 96, 96, C), static
"""

from __future__ import annotations

import tensorflow as tf

from medtf.transforms.base import register_transform, spatial_rank
from medtf.transforms.geometry import crop, map_arrays, pad_to_size, per_axis, shift_boxes, spatial_shape


def _size(size, rank: int) -> list[int]:
    size = [int(s) for s in per_axis(size, rank, "size")]
    if min(size) < 1:
        raise ValueError(f"patch size must be positive, got {size}")
    return size


def foreground(label: tf.Tensor, rank: int) -> tf.Tensor:
    """Boolean ``label > 0`` over the spatial axes (any channel)."""
    fg = tf.not_equal(label, tf.zeros([], label.dtype))
    if fg.shape.rank > rank:
        fg = tf.reduce_any(fg, axis=list(range(rank, fg.shape.rank)))
    return fg


@register_transform("random_patch")
class RandomPatch:
    """Random ``size`` patch, centred on a foreground voxel with probability ``foreground_ratio``.

    Args:
        size: patch spatial size (int for all axes or one per axis); the output shape is static.
        foreground_ratio: share of patches centred on a uniformly chosen voxel with ``label_key > 0`` (nnU-Net's
            ``oversample_foreground_percent`` = 0.33); the rest are uniformly random. An example without
            foreground (or without ``label_key``) always gets a uniformly random patch.
        label_key: the label map that defines foreground.
        pad_value: image value for padding volumes smaller than the patch (None: the per-channel minimum).

    "Centred" means the chosen voxel sits at index ``size // 2`` of the patch, unless the patch had to be shifted
    to stay inside the volume (then the voxel is still inside the patch).

    Example:
        >>> RandomPatch(size=64, foreground_ratio=0.5)({"image": vol, "mask": m}, tf.constant([0, 1]))
    """

    def __init__(self, size, foreground_ratio: float = 0.33, label_key: str = "mask", pad_value=None):
        if not 0.0 <= float(foreground_ratio) <= 1.0:
            raise ValueError(f"foreground_ratio must be in [0, 1], got {foreground_ratio}")
        self.size, self.foreground_ratio, self.label_key, self.pad_value = size, float(foreground_ratio), \
            label_key, pad_value

    def __call__(self, example, seed):
        rank = spatial_rank(example["image"])
        size = _size(self.size, rank)
        example = pad_to_size(example, rank, size, self.pad_value)
        shape = spatial_shape(example["image"], rank)
        limit = tf.stack([tf.cast(n - s, tf.int32) for n, s in zip(shape, size)])  # largest valid begin
        u = tf.random.stateless_uniform([rank + 2], seed, dtype=tf.float32)
        random_begin = tf.minimum(tf.cast(u[2:] * tf.cast(limit + 1, tf.float32), tf.int32), limit)
        begin = random_begin
        if self.foreground_ratio > 0.0 and self.label_key in example:
            fg = foreground(example[self.label_key], rank)

            def centred():
                where = tf.cast(tf.where(fg), tf.int32)  # (M, rank)
                count = tf.shape(where)[0]
                pick = tf.minimum(tf.cast(u[1] * tf.cast(count, tf.float32), tf.int32), tf.maximum(count - 1, 0))
                centre = tf.gather(tf.concat([where, tf.zeros([1, rank], tf.int32)], 0), pick)
                start = tf.clip_by_value(centre - tf.constant([s // 2 for s in size], tf.int32), 0, limit)
                return tf.where(count > 0, start, random_begin)

            begin = tf.cond(u[0] < self.foreground_ratio, centred, lambda: random_begin)
        return crop(example, rank, tf.unstack(begin, num=rank), size)


@register_transform("center_patch")
class CenterPatch:
    """The central ``size`` patch (padding as `RandomPatch`), for validation. ``seed`` is unused.

    Example:
        >>> CenterPatch(size=[96, 96, 96])({"image": vol, "mask": m})["image"].shape   # (96, 96, 96, C)
    """

    def __init__(self, size, pad_value=None):
        self.size, self.pad_value = size, pad_value

    def __call__(self, example, seed=None):
        rank = spatial_rank(example["image"])
        size = _size(self.size, rank)
        example = pad_to_size(example, rank, size, self.pad_value)
        shape = spatial_shape(example["image"], rank)
        return crop(example, rank, [(n - s) // 2 for n, s in zip(shape, size)], size)
