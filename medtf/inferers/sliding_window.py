"""Sliding-window inference over 2D/3D images of any size, with Gaussian importance weighting.

The volume is covered by a regular grid of patches (step ``patch * (1 - overlap)`` per axis, the last patch aligned
to the end of the axis, so no patch reaches beyond the volume); the patches go through the predictor in batches;
every prediction is multiplied by an importance map (a Gaussian centred on the patch, as nnU-Net does, or a
constant) and summed into an accumulator together with the weights; the result is ``sum(w * p) / sum(w)`` on the
input grid. Axes shorter than the patch are padded first and cropped back at the end.

Memory is one accumulator of the output's size plus one weight map of the spatial size (shared by the batch) plus
one batch of patches. With ``output_device="cpu"`` the accumulators are NumPy arrays in host memory, so a large
probability map never has to fit on the accelerator; only the patch batches go through the predictor's device.

Reference:
    Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image segmentation",
    Nature Methods 2021 (sliding window with Gaussian importance weighting); MONAI ``sliding_window_inference``.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

Predictor = Callable[[tf.Tensor], tf.Tensor]

_PAD_MODES = {"constant": "CONSTANT", "reflect": "REFLECT", "symmetric": "SYMMETRIC"}


def call_predictor(predictor, batch):
    """Call a Keras model/layer in inference mode (``training=False``) or any other callable as ``f(batch)``."""
    import keras

    if isinstance(predictor, keras.layers.Layer):  # keras.Model is a Layer
        return predictor(batch, training=False)
    return predictor(batch)


def patch_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices of the patches along one axis of length ``size >= patch``.

    Steps of ``max(1, floor(patch * (1 - overlap)))``; the last patch is aligned to the end (``size - patch``).

    Example:
        >>> patch_starts(10, 4, 0.5)
        [0, 2, 4, 6]
        >>> patch_starts(11, 4, 0.5)
        [0, 2, 4, 6, 7]
    """
    if size < patch:
        raise ValueError(f"axis of length {size} is shorter than the patch ({patch}); pad first")
    step = max(1, int(math.floor(patch * (1.0 - overlap))))
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def importance_map(patch_size: Sequence[int], mode: str = "gaussian", sigma_scale: float = 0.125,
                   min_weight: float = 1e-3) -> np.ndarray:
    """Per-voxel weight of a patch's prediction, ``patch_size`` shaped float32, maximum 1.

    ``"gaussian"``: separable Gaussian centred on the patch centre with ``sigma = patch * sigma_scale`` per axis,
    normalised to max 1 and clipped below at ``min_weight`` so every voxel (also the corners) keeps a positive
    weight and the normalisation ``sum(w * p) / sum(w)`` is defined everywhere. ``"constant"``: all ones.

    Example:
        >>> w = importance_map((64, 64, 64))           # 1 at the centre, 1e-3 in the corners
    """
    patch_size = tuple(int(p) for p in patch_size)
    if mode == "constant":
        return np.ones(patch_size, np.float32)
    if mode != "gaussian":
        raise ValueError(f"mode must be 'gaussian' or 'constant', got {mode!r}")
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be > 0, got {sigma_scale}")
    weights = np.ones((), np.float64)
    for p in patch_size:
        x = np.arange(p, dtype=np.float64) - (p - 1) / 2.0  # symmetric: flipping the patch keeps the map
        sigma = p * sigma_scale
        weights = np.multiply.outer(weights, np.exp(-0.5 * (x / sigma) ** 2))
    weights /= weights.max()
    return np.maximum(weights, min_weight).astype(np.float32)


def _as_tensor(x):
    return x if isinstance(x, tf.Tensor) else tf.convert_to_tensor(np.asarray(x))


class _NumpyAccumulator:
    """Host-memory accumulator of weighted predictions."""

    def __init__(self, shape, dtype):
        self.value = np.zeros(shape, dtype)

    def add(self, index, update):
        self.value[index] += update

    def result(self, weight_sum: np.ndarray):
        return self.value / weight_sum[None, ..., None]


class _TensorAccumulator:
    """Accumulator in a `tf.Variable` on ``device`` (default placement when None): no host round trip per patch."""

    def __init__(self, shape, dtype, device):
        with tf.device(device):
            self.value = tf.Variable(tf.zeros(shape, dtype), trainable=False)
        self.device = device

    def add(self, index, update):
        with tf.device(self.device):
            self.value[index].assign(self.value[index] + tf.cast(update, self.value.dtype))

    def result(self, weight_sum: np.ndarray):
        with tf.device(self.device):
            return self.value / tf.constant(weight_sum, self.value.dtype)[None, ..., None]


def sliding_window_inference(inputs, predictor: Predictor, patch_size: Sequence[int], *, overlap: float = 0.5,
                             batch_size: int = 4, mode: str = "gaussian", sigma_scale: float = 0.125,
                             pad_mode: str = "constant", cval: float = 0.0, output_device: str | None = None,
                             progress: bool | str = False):
    """Predict a whole image/volume patch by patch and blend the patches with importance weights.

    Args:
        inputs: ``(B, D, H, W, C)`` (3D) or ``(B, H, W, C)`` (2D) NumPy array or tensor, any spatial size; the
            number of spatial dims is ``len(patch_size)``.
        predictor: a Keras model (called with ``training=False``) or any callable mapping a batch of patches
            ``(N, *patch_size, C)`` to ``(N, *patch_size, K)``, e.g. probabilities; `flip_tta` wraps one.
        patch_size: spatial patch size, ``(pd, ph, pw)`` or ``(ph, pw)``.
        overlap: fraction in ``[0, 1)`` by which neighbouring patches overlap along each axis.
        batch_size: number of patches per predictor call (patches of all batch items are pooled).
        mode: ``"gaussian"`` (nnU-Net importance map, centre voxels dominate) or ``"constant"`` (plain average).
        sigma_scale: Gaussian sigma as a fraction of the patch size (nnU-Net: 1/8).
        pad_mode: how axes shorter than the patch are padded: ``"constant"`` (with ``cval``), ``"reflect"`` or
            ``"symmetric"``; the padding is cropped from the output.
        cval: fill value for ``pad_mode="constant"``.
        output_device: None accumulates in a `tf.Variable` with TensorFlow's default placement (the accelerator
            when there is one) and returns a `tf.Tensor`; ``"cpu"`` accumulates in NumPy in host memory and returns
            an `np.ndarray` (for probability maps too large for the accelerator); any other string is a TF device
            name (``"/GPU:1"``) for the accumulator.
        progress: show progress over the patch batches (`medtf.progress`: a bar on a terminal, log lines
            otherwise); a string is the label shown (default ``"sliding window"``).

    Returns:
        ``(B, *spatial, K)`` float32 (the predictor's float dtype if wider): ``sum(w * p) / sum(w)`` on the input
        grid, same spatial shape as ``inputs``.

    Example:
        >>> probs = sliding_window_inference(ct[None, ..., None], model, (96, 96, 96), overlap=0.5,
        ...                                  output_device="cpu")
        >>> probs.shape          # (1, D, H, W, num_classes), D/H/W those of ct
    """
    patch_size = tuple(int(p) for p in patch_size)
    nd = len(patch_size)
    if nd not in (2, 3) or min(patch_size) < 1:
        raise ValueError(f"patch_size must be 2 or 3 positive ints, got {patch_size}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if pad_mode not in _PAD_MODES:
        raise ValueError(f"pad_mode must be one of {sorted(_PAD_MODES)}, got {pad_mode!r}")
    weights = importance_map(patch_size, mode, sigma_scale)  # validates mode

    x = _as_tensor(inputs)
    if x.shape.rank != nd + 2:
        raise ValueError(f"inputs must be (B, *spatial, C) with {nd} spatial dims for patch {patch_size}, "
                         f"got shape {tuple(x.shape)}")
    spatial = tuple(int(s) for s in x.shape[1:-1])
    # Pad axes shorter than the patch (split evenly before/after), crop back at the end.
    pad_before = [max(p - s, 0) // 2 for s, p in zip(spatial, patch_size)]
    pad_after = [max(p - s, 0) - b for s, p, b in zip(spatial, patch_size, pad_before)]
    if any(pad_before) or any(pad_after):
        paddings = [[0, 0]] + [[b, a] for b, a in zip(pad_before, pad_after)] + [[0, 0]]
        if pad_mode == "constant":
            x = tf.pad(x, paddings, constant_values=tf.cast(cval, x.dtype))
        else:
            x = tf.pad(x, paddings, mode=_PAD_MODES[pad_mode])
    padded = tuple(int(s) for s in x.shape[1:-1])

    grid = list(itertools.product(*(patch_starts(s, p, overlap) for s, p in zip(padded, patch_size))))
    windows = [tuple(slice(o, o + p) for o, p in zip(origin, patch_size)) for origin in grid]
    # The weight map is the same for every batch item: accumulate it once, spatially, in NumPy.
    weight_sum = np.zeros(padded, np.float32)
    for window in windows:
        weight_sum[window] += weights
    jobs = [(b, w) for b in range(int(x.shape[0])) for w in windows]
    weights_t = tf.constant(weights[None, ..., None])

    bar = None
    if progress:
        from medtf.progress import Progress

        bar = Progress(math.ceil(len(jobs) / batch_size), progress if isinstance(progress, str) else "sliding window",
                       unit="patch batch")
    acc = None
    for first in range(0, len(jobs), batch_size):
        chunk = jobs[first:first + batch_size]
        batch = tf.stack([x[(b,) + window] for b, window in chunk])
        pred = _as_tensor(call_predictor(predictor, batch))
        if tuple(pred.shape[:-1]) != (len(chunk),) + patch_size:
            raise ValueError(f"predictor must map (N, *patch, C) to (N, *patch, K) with the same patch size, "
                             f"got {tuple(batch.shape)} -> {tuple(pred.shape)}")
        if not pred.dtype.is_floating or pred.dtype.size < 4:
            pred = tf.cast(pred, tf.float32)
        if acc is None:
            shape = (int(x.shape[0]),) + padded + (int(pred.shape[-1]),)
            if output_device is not None and output_device.lower() == "cpu":
                acc = _NumpyAccumulator(shape, pred.dtype.as_numpy_dtype)
            else:
                acc = _TensorAccumulator(shape, pred.dtype, output_device)
        weighted = pred * tf.cast(weights_t, pred.dtype)
        if isinstance(acc, _NumpyAccumulator):
            weighted = weighted.numpy()  # one device -> host copy per batch
        for i, (b, window) in enumerate(chunk):
            acc.add((b,) + window, weighted[i])
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()

    out = acc.result(weight_sum)
    crop = (slice(None),) + tuple(slice(b, b + s) for b, s in zip(pad_before, spatial)) + (slice(None),)
    return out[crop]
