"""Test-time augmentation: average a predictor's output over flips of the input ("enhanced prediction")."""

from __future__ import annotations

import itertools
from typing import Sequence

import tensorflow as tf

from medtf.inferers.sliding_window import Predictor, call_predictor


def flip_tta(predictor: Predictor, axes: Sequence[int] | None = None) -> Predictor:
    """Wrap a predictor so it averages its predictions over every combination of flips of ``axes``.

    For each subset of ``axes`` (``2 ** len(axes)`` subsets, the empty one included) the batch is flipped along
    those axes, predicted, flipped back and summed; the mean is returned. For a flip-equivariant predictor the
    result equals the plain prediction; for a real model it averages out orientation-dependent errors, the
    "enhanced prediction" of the prostate MRI thesis. The wrapped predictor composes with
    `sliding_window_inference` (each patch batch is flip-averaged) and keeps the input's ``(N, *spatial, C)`` ->
    ``(N, *spatial, K)`` contract.

    Args:
        predictor: Keras model (called with ``training=False``) or callable ``(N, *spatial, C) -> (N, *spatial, K)``.
        axes: spatial axes to flip, 0-based over the spatial dims only (``0`` = D for ``(N, D, H, W, C)``, H for
            ``(N, H, W, C)``); None flips every spatial axis (inferred per call from the input rank).

    Returns:
        A callable ``batch -> tf.Tensor`` (float, the mean over the ``2 ** len(axes)`` flipped predictions).

    Example:
        >>> tta = flip_tta(model, axes=(1, 2))          # in-plane flips of (N, D, H, W, C): 4 predictions
        >>> probs = sliding_window_inference(volume, tta, (64, 128, 128))
    """
    fixed_axes = None if axes is None else tuple(sorted({int(a) for a in axes}))

    def predict(batch):
        x = tf.convert_to_tensor(batch)
        spatial_dims = x.shape.rank - 2
        if spatial_dims < 1:
            raise ValueError(f"flip_tta expects (N, *spatial, C), got shape {tuple(x.shape)}")
        use = tuple(range(spatial_dims)) if fixed_axes is None else fixed_axes
        if any(a < 0 or a >= spatial_dims for a in use):
            raise ValueError(f"flip axes {use} out of range for {spatial_dims} spatial dims")
        total = None
        count = 0
        for r in range(len(use) + 1):
            for subset in itertools.combinations(use, r):
                tensor_axes = [a + 1 for a in subset]  # skip the batch axis
                flipped = tf.reverse(x, tensor_axes) if subset else x
                pred = tf.convert_to_tensor(call_predictor(predictor, flipped))
                if not pred.dtype.is_floating:
                    pred = tf.cast(pred, tf.float32)
                pred = tf.reverse(pred, tensor_axes) if subset else pred
                total = pred if total is None else total + pred
                count += 1
        return total / tf.cast(count, total.dtype)

    return predict


# === Invariant TTA (classifiers): the mean of the predictions of transformed inputs, nothing mapped back ===

def _rot90(x: tf.Tensor, k: int, a: int, b: int) -> tf.Tensor:
    """Rotate ``x`` by ``k`` quarter turns in the plane of tensor axes ``(a, b)`` (a -> b)."""
    for _ in range(k % 4):
        perm = list(range(x.shape.rank))
        perm[a], perm[b] = perm[b], perm[a]
        x = tf.reverse(tf.transpose(x, perm), [a])
    return x


def _shift(x: tf.Tensor, offset: Sequence[int], axes: Sequence[int]) -> tf.Tensor:
    """Translate ``x`` by ``offset`` voxels along tensor ``axes``; the border is mirrored (no black wedge the
    network never saw in training), the size is kept."""
    pad = [[0, 0] for _ in range(x.shape.rank)]
    for axis, o in zip(axes, offset):
        pad[axis] = [max(o, 0), max(-o, 0)]
    padded = tf.pad(x, pad, mode="SYMMETRIC")
    begin = [0] * x.shape.rank
    for axis, o in zip(axes, offset):
        begin[axis] = max(-o, 0)
    return tf.slice(padded, begin, tf.shape(x))


def classification_views(spatial_dims: int, square: bool = True, flips: bool = True, rotations: bool = True,
                         shift: int = 0) -> list[tuple[str, object]]:
    """The input transforms of classifier TTA, as ``(name, fn)`` with ``fn: (N, *spatial, C) -> same shape``.

    In-plane (the last two spatial axes, H and W; a 3D volume keeps its slice axis): the 8 symmetries of the square
    (4 quarter turns, each with and without a left-right flip) when ``square`` (H == W), else the 4 that keep the
    shape (identity, flips, half turn); ``shift`` > 0 adds 4 translations by that many pixels (up, down, left,
    right, mirrored border). The identity comes first. The prostate thesis's "enhanced prediction" averages
    flips and rotations of the lesion crop.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    a, b = spatial_dims - 1, spatial_dims  # tensor axes of H, W in (N, *spatial, C)
    turns = (0, 1, 2, 3) if rotations and square else ((0, 2) if rotations else (0,))
    views = []
    for k in turns:
        for flip in ((False, True) if flips else (False,)):
            name = f"rot{90 * k}" + ("_flip" if flip else "")
            views.append((name, lambda x, k=k, flip=flip: _rot90(tf.reverse(x, [b]) if flip else x, k, a, b)))
    if flips and not (rotations and square):  # without quarter turns an up-down flip is not a composition above
        views.append(("flip_ud", lambda x: tf.reverse(x, [a])))
    if shift:
        for name, offset in (("up", (-shift, 0)), ("down", (shift, 0)), ("left", (0, -shift)),
                             ("right", (0, shift))):
            views.append((f"shift_{name}{shift}", lambda x, o=offset: _shift(x, o, (a, b))))
    return views


def invariant_tta(predictor: Predictor, views: Sequence[tuple[str, object]]) -> Predictor:
    """Wrap a classifier so it returns the mean of its outputs over ``views`` (`classification_views`).

    Unlike `flip_tta` nothing is mapped back: a class probability does not move with the image. The result is
    the arithmetic mean of the probabilities, as the thesis averaged them.

    Example:
        >>> tta = invariant_tta(model, classification_views(2, shift=2))   # 8 symmetries + 4 shifts
        >>> probs = tta(crops)                                             # (N, K)
    """
    if not views:
        raise ValueError("invariant_tta needs at least one view")

    def predict(batch):
        x = tf.convert_to_tensor(batch)
        outputs = [tf.cast(call_predictor(predictor, fn(x)), tf.float32) for _, fn in views]
        return tf.add_n(outputs) / float(len(outputs))

    return predict
