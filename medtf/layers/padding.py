"""Pad inputs to a size divisor and crop outputs back, so fully convolutional U-Nets take any spatial size.

A U-Net of ``depth`` levels pools ``depth - 1`` times: its skip concatenations need every spatial size divisible by
``2**(depth - 1)``. `pad_to_multiple` pads ``(B, *spatial, C)`` evenly before/after with each image's per-channel
minimum (the window floor for CT, black for RGB), and ``crop(y)`` cuts an output back to the input's grid, so the
padding never reaches a loss or a metric. `PadToMultiple` and `CropToInput` are the same as Keras layers inside a
model's functional graph (no weights; no-ops on divisible sizes). `medtf.export.saved_model` uses the same helper.
"""

from __future__ import annotations

import keras


def pad_to_multiple(x, divisor: int, spatial_dims: int):
    """Pad ``(B, *spatial, C)`` so every spatial size is a multiple of ``divisor`` (evenly before/after) with each
    image's per-channel minimum; returns ``(padded, crop)`` where ``crop(y)`` cuts an output back to ``x``'s size."""
    import tensorflow as tf

    if divisor <= 1:
        return x, lambda y: y
    axes = list(range(1, spatial_dims + 1))
    size = tf.shape(x)[1:spatial_dims + 1]
    total = (-size) % divisor
    before, after = total // 2, total - total // 2
    paddings = tf.concat([[[0, 0]], tf.stack([before, after], axis=1), [[0, 0]]], axis=0)
    inside = tf.pad(tf.ones_like(x, dtype=tf.bool), paddings, constant_values=False)
    lowest = tf.reduce_min(x, axis=axes, keepdims=True)
    padded = tf.where(inside, tf.pad(x, paddings), lowest)

    def crop(y, scale: int = 1):
        begin = tf.concat([[0], before // scale, [0]], axis=0)
        extent = tf.concat([[-1], -(-size // scale), [-1]], axis=0)
        out = tf.slice(y, begin, extent)
        static = [None if s is None else -(-s // scale) for s in x.shape[1:spatial_dims + 1]]
        out.set_shape([y.shape[0], *static, y.shape[-1]])
        return out

    return padded, crop


@keras.saving.register_keras_serializable(package="medtf")
class PadToMultiple(keras.layers.Layer):
    """`pad_to_multiple` as a layer: ``(B, *spatial, C)`` -> spatial sizes rounded up to ``divisor``."""

    def __init__(self, divisor: int, spatial_dims: int, **kwargs):
        super().__init__(**kwargs)
        self.divisor, self.spatial_dims = int(divisor), int(spatial_dims)

    def call(self, x):
        return pad_to_multiple(x, self.divisor, self.spatial_dims)[0]

    def compute_output_shape(self, shape):
        spatial = [None if s is None else -(-s // self.divisor) * self.divisor for s in shape[1:-1]]
        return (shape[0], *spatial, shape[-1])

    def get_config(self):
        return {**super().get_config(), "divisor": self.divisor, "spatial_dims": self.spatial_dims}


@keras.saving.register_keras_serializable(package="medtf")
class CropToInput(keras.layers.Layer):
    """``[y, x]`` -> ``y`` cropped to the grid of ``x`` before `PadToMultiple` (``scale``: ``y`` is ``x``'s grid
    downsampled that many times, e.g. a deep-supervision head; its size is ``ceil(size / scale)``)."""

    def __init__(self, divisor: int, spatial_dims: int, scale: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.divisor, self.spatial_dims, self.scale = int(divisor), int(spatial_dims), int(scale)

    def call(self, inputs):
        y, x = inputs
        return pad_to_multiple(x, self.divisor, self.spatial_dims)[1](y, self.scale)

    def compute_output_shape(self, shapes):
        y, x = shapes
        spatial = [None if s is None else -(-s // self.scale) for s in x[1:-1]]
        return (y[0], *spatial, y[-1])

    def get_config(self):
        return {**super().get_config(), "divisor": self.divisor, "spatial_dims": self.spatial_dims,
                "scale": self.scale}
