"""Dimension-agnostic layer lookups: pick the 2D or 3D Keras layer from ``spatial_dims``.

Imitates MONAI ``networks/layers/factories.py``: one small table, no 2D/3D copies of model code.
"""

from __future__ import annotations

import keras

from medtf.layers.norm import GroupNormalization

_CONV = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}
_CONV_TRANSPOSE = {1: keras.layers.Conv1DTranspose, 2: keras.layers.Conv2DTranspose, 3: keras.layers.Conv3DTranspose}
_UPSAMPLING = {1: keras.layers.UpSampling1D, 2: keras.layers.UpSampling2D, 3: keras.layers.UpSampling3D}
_POOLING = {
    "max": {1: keras.layers.MaxPooling1D, 2: keras.layers.MaxPooling2D, 3: keras.layers.MaxPooling3D},
    "avg": {1: keras.layers.AveragePooling1D, 2: keras.layers.AveragePooling2D, 3: keras.layers.AveragePooling3D},
}
_DROPOUT = {1: keras.layers.SpatialDropout1D, 2: keras.layers.SpatialDropout2D, 3: keras.layers.SpatialDropout3D}

NORM_TYPES = ("batch", "group", "instance", "none")
SUPPORTED_SPATIAL_DIMS = (2, 3)


def _check_dims(spatial_dims, table=_CONV):
    if spatial_dims not in table:
        raise ValueError(f"spatial_dims must be one of {sorted(table)}, got {spatial_dims!r}")


def conv_layer(spatial_dims: int):
    """Return the ``ConvND`` class for ``spatial_dims`` (1, 2 or 3)."""
    _check_dims(spatial_dims)
    return _CONV[spatial_dims]


def conv_transpose_layer(spatial_dims: int):
    """Return the ``ConvNDTranspose`` class for ``spatial_dims``."""
    _check_dims(spatial_dims)
    return _CONV_TRANSPOSE[spatial_dims]


def upsampling_layer(spatial_dims: int):
    """Return the ``UpSamplingND`` class for ``spatial_dims``."""
    _check_dims(spatial_dims)
    return _UPSAMPLING[spatial_dims]


def pooling_layer(spatial_dims: int, kind: str = "max"):
    """Return the ``MaxPoolingND`` (``kind="max"``) or ``AveragePoolingND`` (``"avg"``) class."""
    if kind not in _POOLING:
        raise ValueError(f"pooling kind must be one of {sorted(_POOLING)}, got {kind!r}")
    _check_dims(spatial_dims)
    return _POOLING[kind][spatial_dims]


def spatial_dropout_layer(spatial_dims: int):
    """Return the ``SpatialDropoutND`` class (drops whole channels) for ``spatial_dims``."""
    _check_dims(spatial_dims)
    return _DROPOUT[spatial_dims]


def norm_layer(norm: str, groups: int = 8, **kwargs):
    """Build a normalisation layer over the channel axis (channels-last).

    Args:
        norm: ``"batch"``, ``"group"``, ``"instance"`` (``GroupNormalization(groups=-1)``) or ``"none"``; group and
            instance norm are :class:`medtf.layers.GroupNormalization` (Keras' layer, instance norm fused).
        groups: number of groups for ``"group"``; must divide the channel count.
        **kwargs: forwarded to the layer (e.g. ``name=``).

    Returns:
        A Keras layer, or ``None`` for ``"none"``.
    """
    if norm == "batch":
        return keras.layers.BatchNormalization(**kwargs)
    # medtf's GroupNormalization: Keras' layer (same weights, outputs and checkpoint paths) whose instance-norm
    # case runs a fused kernel that keeps no float32 full-size copies for the backward pass under mixed precision.
    if norm == "group":
        return GroupNormalization(groups=groups, **kwargs)
    if norm == "instance":
        return GroupNormalization(groups=-1, **kwargs)
    if norm == "none" or norm is None:
        return None
    raise ValueError(f"norm must be one of {NORM_TYPES}, got {norm!r}")
