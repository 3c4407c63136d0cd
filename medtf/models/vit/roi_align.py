"""RoIAlign as plain TensorFlow gathers: ``k x k`` bilinear samples per box from a patch feature map.

Static shapes, no Python loops over boxes and no ``tf.image.crop_and_resize`` (whose gradient w.r.t. boxes and
XLA support vary by version): one ``tf.gather(..., batch_dims=1)`` per bilinear corner, so the op runs eagerly,
inside ``tf.function``, under XLA (``jit_compile``) and per replica under MirroredStrategy alike.

Geometry ("aligned" RoIAlign, He et al. 2017 / Detectron2 ``aligned=True``): a box ``[ymin, xmin, ymax, xmax]``
is in image pixels with pixel ``i`` covering ``[i, i + 1)`` (so integer boxes with max exclusive are exact).
Feature cell ``j`` of a map with stride ``P`` covers pixels ``[j P, (j + 1) P)`` and its value sits at the cell
centre. The box is split into ``k x k`` equal bins and each bin is sampled once, at its centre (sampling ratio 1),
by bilinear interpolation between the 4 nearest cell centres. Sample points beyond the outermost cell centres
take the border cells' values (clamped coordinates), so boxes on the tile border and sub-patch boxes are defined.

Reference: He et al., "Mask R-CNN", ICCV 2017; Wu et al., Detectron2 ``ROIAlign(aligned=True)``.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def sample_points(boxes, output_size: int, spatial_scale: float):
    """``boxes (..., 4)`` pixels -> bin-centre coordinates ``(ys (..., k), xs (..., k))`` in cell-centre units
    (cell ``j``'s centre is ``j``), before clamping."""
    boxes = tf.cast(boxes, tf.float32) * spatial_scale
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    frac = (tf.range(output_size, dtype=tf.float32) + 0.5) / output_size
    ys = ymin[..., None] + frac * (ymax - ymin)[..., None] - 0.5
    xs = xmin[..., None] + frac * (xmax - xmin)[..., None] - 0.5
    return ys, xs


def roi_align(features, boxes, output_size: int = 3, spatial_scale: float = 1.0):
    """Bilinear RoIAlign: ``features (B, H, W, C)``, ``boxes (B, M, 4)`` ``[ymin, xmin, ymax, xmax]`` in image
    pixels -> ``(B, M, k, k, C)`` in the features' dtype (``k = output_size``).

    Args:
        features: the patch feature map (e.g. the ViT's patch embeddings laid out on the patch grid).
        boxes: per image ``M`` boxes (padding rows are sampled too; callers mask them).
        output_size: ``k``, samples per side.
        spatial_scale: feature cells per image pixel, ``1 / patch_size``.

    Example:
        >>> roi_align(tf.zeros((2, 16, 16, 768)), tf.zeros((2, 64, 4)), 3, 1 / 28).shape
        TensorShape([2, 64, 3, 3, 768])
    """
    features = tf.convert_to_tensor(features)
    k = int(output_size)
    shape = tf.shape(features)
    batch, height, width = shape[0], shape[1], shape[2]
    channels = features.shape[-1]
    ys, xs = sample_points(boxes, k, spatial_scale)  # (B, M, k) each
    num_boxes = tf.shape(ys)[1]
    hi_y, hi_x = tf.cast(height - 1, tf.float32), tf.cast(width - 1, tf.float32)
    ys, xs = tf.clip_by_value(ys, 0.0, hi_y), tf.clip_by_value(xs, 0.0, hi_x)
    y0, x0 = tf.floor(ys), tf.floor(xs)
    wy, wx = ys - y0, xs - x0  # weight of the lower-right neighbour
    y0, x0 = tf.cast(y0, tf.int32), tf.cast(x0, tf.int32)
    y1, x1 = tf.minimum(y0 + 1, height - 1), tf.minimum(x0 + 1, width - 1)
    flat = tf.reshape(features, [batch, -1, channels])

    def corner(yi, xi):  # (B, M, k) rows x (B, M, k) columns -> (B, M, k, k, C)
        index = yi[..., :, None] * width + xi[..., None, :]
        values = tf.gather(flat, tf.reshape(index, [batch, -1]), batch_dims=1)
        return tf.reshape(values, [batch, num_boxes, k, k, channels])

    wy, wx = tf.cast(wy, features.dtype)[..., :, None, None], tf.cast(wx, features.dtype)[..., None, :, None]
    top = corner(y0, x0) * (1 - wx) + corner(y0, x1) * wx
    bottom = corner(y1, x0) * (1 - wx) + corner(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


@keras.saving.register_keras_serializable(package="medtf")
class RoIAlign(keras.layers.Layer):
    """``[features (B, gh, gw, D), boxes (B, M, 4)]`` -> ``(B, M, k, k, D)``: `roi_align` with
    ``spatial_scale = 1 / patch_size``; boxes in image pixels."""

    def __init__(self, output_size: int = 3, patch_size: int = 16, **kwargs):
        kwargs.setdefault("autocast", False)  # boxes stay float32 under mixed precision; features keep their dtype
        super().__init__(**kwargs)
        self.output_size, self.patch_size = int(output_size), int(patch_size)

    def call(self, inputs):
        features, boxes = inputs
        return roi_align(features, boxes, self.output_size, 1.0 / self.patch_size)

    def compute_output_shape(self, input_shape):
        (b, _, _, d), (_, m, _) = input_shape
        return (b, m, self.output_size, self.output_size, d)

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size, "patch_size": self.patch_size}
