"""U-Net for 2D or 3D segmentation, as a serializable functional Keras model."""

from __future__ import annotations

import keras

from medtf.layers import (
    NORM_TYPES,
    ConvBlock,
    CropToInput,
    PadToMultiple,
    conv_layer,
    conv_transpose_layer,
    norm_layer,
    pooling_layer,
    spatial_dropout_layer,
    upsampling_layer,
)
from medtf.models.registry import register_model

UPSAMPLE_MODES = ("transpose", "upsampling")
FINAL_ACTIVATIONS = ("sigmoid", "softmax", None)


def validate_unet_args(spatial_dims, in_channels, num_classes, depth, base_filters, filters_multiplier,
                       conv_per_block, norm, groups, dropout, upsample, final_activation, input_shape,
                       deep_supervision=False):
    """Raise ``ValueError`` for any inconsistent U-Net argument (shared by UNet and AttentionUNet)."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an int >= 1, got {depth!r}")
    for name, value in (("in_channels", in_channels), ("num_classes", num_classes),
                        ("base_filters", base_filters), ("conv_per_block", conv_per_block)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if filters_multiplier <= 0:
        raise ValueError(f"filters_multiplier must be > 0, got {filters_multiplier!r}")
    if norm not in NORM_TYPES:
        raise ValueError(f"norm must be one of {NORM_TYPES}, got {norm!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if upsample not in UPSAMPLE_MODES:
        raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
    if final_activation not in FINAL_ACTIVATIONS:
        raise ValueError(f"final_activation must be one of {FINAL_ACTIVATIONS}, got {final_activation!r}")
    if deep_supervision and depth < 3:
        raise ValueError(f"deep_supervision needs depth >= 3 (at least one lower-resolution head), got depth={depth}")
    filters = level_filters(base_filters, filters_multiplier, depth)
    if norm == "group" and any(f % groups for f in filters):
        raise ValueError(f"norm='group' needs every level's filters {filters} divisible by groups={groups}")
    if input_shape is not None:
        if len(input_shape) != spatial_dims:
            raise ValueError(f"input_shape must have {spatial_dims} spatial axes (no channel axis), got {input_shape!r}")
        factor = 2 ** (depth - 1)
        bad = [s for s in input_shape if s is not None and s % factor]
        if bad:
            raise ValueError(
                f"input spatial sizes {tuple(input_shape)} must be divisible by 2**(depth-1) = {factor} "
                f"for depth={depth}; pad or crop the input (offending sizes: {bad})"
            )


def level_filters(base_filters, filters_multiplier, depth):
    """Channel count of each resolution level, finest first."""
    return [int(round(base_filters * filters_multiplier**i)) for i in range(depth)]


@keras.saving.register_keras_serializable(package="medtf")
class UNet(keras.Model):
    """U-Net encoder/decoder with skip connections, 2D or 3D, channels-last.

    Input ``(B, H, W, in_channels)`` or ``(B, D, H, W, in_channels)``; output ``(B, *spatial, num_classes)`` in
    float32 (the final activation layer is forced to float32, so mixed precision is safe). ``depth`` counts
    resolution levels including the bottleneck, so there are ``depth - 1`` poolings: inputs of any spatial size are
    padded to a multiple of ``2**(depth - 1)`` with each image's per-channel minimum inside the graph and every head
    is cropped back to the input's grid (`medtf.layers.PadToMultiple`; no-op on divisible sizes). A static
    ``input_shape`` must still be divisible (checked at build time, ``ValueError``).

    With ``deep_supervision=True`` (needs ``depth >= 3``) the model returns a list of ``depth - 1`` tensors
    ``[main, aux_1, ..., aux_{depth-2}]`` where ``aux_k`` has shape
    ``(B, *ceil(spatial / 2**k), num_classes)`` — one 1x1 head per decoder level, full resolution first.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: output channels.
        depth: number of resolution levels (>= 1).
        base_filters: filters at the finest level; level ``i`` has ``base_filters * filters_multiplier**i``.
        filters_multiplier: growth of filters per level.
        conv_per_block: convolutions (conv → norm → activation) per block.
        norm: ``"batch"``, ``"group"``, ``"instance"`` or ``"none"``.
        groups: groups for ``norm="group"`` (must divide every level's filters).
        activation: Keras activation name of the hidden layers.
        dropout: spatial (channel) dropout rate at the end of each block; 0 disables it.
        upsample: ``"transpose"`` (learned, stride 2) or ``"upsampling"`` (nearest-neighbour ×2 then a 1x1 conv).
        deep_supervision: return extra lower-resolution heads (see above).
        final_activation: ``"sigmoid"``, ``"softmax"`` or ``None`` (logits).
        input_shape: spatial shape, ``None`` allowed per axis; default all ``None``.
        remat: block-level rematerialisation (gradient checkpointing): each conv block becomes one
            :class:`medtf.layers.ConvBlock` layer named ``enc{i}``/``dec{i}`` whose conv → norm → activation chain
            is recomputed in the backward pass, so training stores only block inputs/outputs. Same outputs and
            gradients and the same weights in the same order (``set_weights`` copies between the two forms), at
            the cost of about one more forward pass per step. See ``benchmarks/RESULTS.md`` "Memory".

    Example:
        >>> model = UNet(spatial_dims=3, in_channels=1, num_classes=2, depth=3, base_filters=4)
        >>> model(np.zeros((1, 16, 16, 16, 1))).shape
        TensorShape([1, 16, 16, 16, 2])

    Reference:
        Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015;
        Çiçek et al., "3D U-Net", MICCAI 2016.
    """

    def __init__(self, spatial_dims=2, in_channels=1, num_classes=1, depth=4, base_filters=32, filters_multiplier=2,
                 conv_per_block=2, norm="batch", groups=8, activation="relu", dropout=0.0, upsample="transpose",
                 deep_supervision=False, final_activation="sigmoid", input_shape=None, remat=False, **kwargs):
        if input_shape is not None:
            input_shape = tuple(None if s is None else int(s) for s in input_shape)
        validate_unet_args(spatial_dims, in_channels, num_classes, depth, base_filters, filters_multiplier,
                           conv_per_block, norm, groups, dropout, upsample, final_activation, input_shape,
                           deep_supervision)
        filters = level_filters(base_filters, filters_multiplier, depth)
        spatial = input_shape if input_shape is not None else (None,) * spatial_dims
        conv = conv_layer(spatial_dims)
        # TF has no float16 MaxPool3D CPU kernel: under mixed_float16, pool 3D volumes in float32 (cheap cast).
        float16 = keras.mixed_precision.dtype_policy().compute_dtype == "float16"
        pool_dtype = "float32" if (spatial_dims == 3 and float16) else None

        # === Layers ===
        def block(x, n_filters, prefix):
            if remat:
                # One layer, so keras.remat can recompute the whole chain; dropout stays outside (random mask).
                x = ConvBlock(n_filters, spatial_dims=spatial_dims, conv_per_block=conv_per_block, norm=norm,
                              groups=groups, activation=activation, remat=True, name=prefix)(x)
            else:
                # Unrolled layers: the layout of models saved before `remat` existed.
                for j in range(conv_per_block):
                    x = conv(n_filters, 3, padding="same", use_bias=norm == "none", name=f"{prefix}_conv{j}")(x)
                    layer = norm_layer(norm, groups, name=f"{prefix}_norm{j}")
                    if layer is not None:
                        x = layer(x)
                    x = keras.layers.Activation(activation, name=f"{prefix}_act{j}")(x)
            if dropout > 0:
                x = spatial_dropout_layer(spatial_dims)(dropout, name=f"{prefix}_dropout")(x)
            return x

        def up(x, n_filters, prefix):
            if upsample == "transpose":
                return conv_transpose_layer(spatial_dims)(n_filters, 2, strides=2, name=f"{prefix}_upconv")(x)
            x = upsampling_layer(spatial_dims)(2, name=f"{prefix}_upsample")(x)
            return conv(n_filters, 1, name=f"{prefix}_upproj")(x)

        factor = 2 ** (depth - 1)

        def head(x, name, scale=1):
            x = conv(num_classes, 1, name=f"{name}_logits")(x)
            if factor > 1:  # back to the input's grid (a no-op on divisible sizes)
                x = CropToInput(factor, spatial_dims, scale, name=f"{name}_crop")([x, inputs])
            return keras.layers.Activation(final_activation or "linear", dtype="float32", name=name)(x)

        # === Functional Model ===
        inputs = keras.Input(shape=(*spatial, in_channels), name="image")
        # Any spatial size: pad to 2**(depth-1) with each image's per-channel minimum, crop the heads back, so
        # whole-volume validation of e.g. 37x61x83 runs and the padding never reaches the loss or the metrics.
        x = PadToMultiple(factor, spatial_dims, name="pad_to_divisor")(inputs) if factor > 1 else inputs
        skips = []
        for i in range(depth):
            x = block(x, filters[i], f"enc{i}")
            if i < depth - 1:
                skips.append(x)
                x = pooling_layer(spatial_dims)(2, name=f"enc{i}_pool", dtype=pool_dtype)(x)
        decoder_outputs = []
        for i in reversed(range(depth - 1)):
            gating = x
            x = up(x, filters[i], f"dec{i}")
            skip = self._gate_skip(skips[i], gating, i, spatial_dims)
            x = keras.layers.Concatenate(axis=-1, name=f"dec{i}_concat")([x, skip])
            x = block(x, filters[i], f"dec{i}")
            decoder_outputs.append(x)
        main = head(x, "output")
        if deep_supervision:
            # decoder_outputs runs coarse → fine; aux heads for levels 1..depth-2, full resolution first.
            aux = [head(decoder_outputs[-1 - k], f"output_aux{k}", 2 ** k) for k in range(1, depth - 1)]
            outputs = [main, *aux]
        else:
            outputs = main
        super().__init__(inputs=inputs, outputs=outputs, name=kwargs.pop("name", self._default_name()), **kwargs)

        # === Config ===
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.depth = depth
        self.base_filters = base_filters
        self.filters_multiplier = filters_multiplier
        self.conv_per_block = conv_per_block
        self.norm = norm
        self.groups = groups
        self.activation = activation
        self.dropout = dropout
        self.upsample = upsample
        self.deep_supervision = deep_supervision
        self.final_activation = final_activation
        self.spatial_input_shape = input_shape
        self.remat = bool(remat)

    @classmethod
    def _default_name(cls):
        return "unet"

    def _gate_skip(self, skip, gating, level, spatial_dims):
        """Hook for subclasses: transform the skip tensor before concatenation (identity for U-Net)."""
        return skip

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "depth": self.depth,
            "base_filters": self.base_filters,
            "filters_multiplier": self.filters_multiplier,
            "conv_per_block": self.conv_per_block,
            "norm": self.norm,
            "groups": self.groups,
            "activation": self.activation,
            "dropout": self.dropout,
            "upsample": self.upsample,
            "deep_supervision": self.deep_supervision,
            "final_activation": self.final_activation,
            "input_shape": list(self.spatial_input_shape) if self.spatial_input_shape is not None else None,
            "remat": self.remat,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _variant(cls, defaults, kwargs):
    return cls(**{**defaults, **kwargs})


@register_model(model_class=UNet)
def unet2d_small(**kwargs):
    """Tiny 2D U-Net (depth 3, 8 base filters) — CPU-friendly for tests and demos."""
    return _variant(UNet, dict(spatial_dims=2, depth=3, base_filters=8, norm="batch"), kwargs)


@register_model(model_class=UNet)
def unet3d_small(**kwargs):
    """Tiny 3D U-Net (depth 3, 4 base filters, instance norm) — CPU-friendly."""
    return _variant(UNet, dict(spatial_dims=3, depth=3, base_filters=4, norm="instance"), kwargs)


@register_model(model_class=UNet)
def unet2d(**kwargs):
    """Standard 2D U-Net (depth 5, 32 base filters, batch norm)."""
    return _variant(UNet, dict(spatial_dims=2, depth=5, base_filters=32, norm="batch"), kwargs)


@register_model(model_class=UNet)
def unet3d(**kwargs):
    """Standard 3D U-Net (depth 4, 32 base filters, instance norm)."""
    return _variant(UNet, dict(spatial_dims=3, depth=4, base_filters=32, norm="instance"), kwargs)
