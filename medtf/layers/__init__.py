"""Reusable, dimension-agnostic building blocks (``spatial_dims`` lookups, normalisation factory, conv blocks)."""

from medtf.layers.blocks import ConvBlock
from medtf.layers.factories import (
    NORM_TYPES,
    conv_layer,
    conv_transpose_layer,
    norm_layer,
    pooling_layer,
    spatial_dropout_layer,
    upsampling_layer,
)
from medtf.layers.norm import GroupNormalization, fused_instance_norm
from medtf.layers.padding import CropToInput, PadToMultiple, pad_to_multiple

__all__ = [
    "ConvBlock",
    "CropToInput",
    "PadToMultiple",
    "pad_to_multiple",
    "GroupNormalization",
    "NORM_TYPES",
    "conv_layer",
    "conv_transpose_layer",
    "fused_instance_norm",
    "norm_layer",
    "pooling_layer",
    "spatial_dropout_layer",
    "upsampling_layer",
]
