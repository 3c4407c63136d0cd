"""The U-Net encoder as a reusable backbone: a classifier head or a contrastive image tower on the same conv code.

`unet_encoder` cuts a `UNet`'s contracting path at the bottleneck (the layers, names and padding of the U-Net
itself, so a segmentation checkpoint's encoder weights load by name); `UNetClassifier` puts global pooling
(`global_pool`: average, max or both) and a dense head on it; the CLIP image tower uses the same pooling.

Why not only the average: with ``norm="instance"`` the encoder's last layer is normalised per image and channel
(zero mean, unit variance) before its ReLU, so the global average of a feature map is nearly the same number for
every image: a focal finding of a few bottleneck voxels moves it ~6x less than the global max (measured in
``tests/models/test_unet_classifier_pooling.py``; on 236 synthetic brain studies the pooled features' coefficient
of variation across studies is 0.015 vs 0.094 without normalisation, benchmarks/RESULTS.md issue #16).
"""

from __future__ import annotations

import keras
from keras import ops

from medtf.models.registry import register_model
from medtf.models.unet.unet import UNet


def unet_encoder(spatial_dims=2, in_channels=1, depth=4, base_filters=32, filters_multiplier=2, conv_per_block=2,
                 norm="batch", groups=8, activation="relu", dropout=0.0, remat=False, name="unet_encoder"):
    """``(B, *spatial, in_channels)`` -> bottleneck features ``(B, *ceil(spatial / 2**(depth-1)), filters)``.

    Example:
        >>> encoder = unet_encoder(spatial_dims=2, in_channels=3, depth=3, base_filters=8)
        >>> encoder(np.zeros((2, 32, 32, 3))).shape
        TensorShape([2, 8, 8, 32])
    """
    unet = UNet(spatial_dims=spatial_dims, in_channels=in_channels, num_classes=1, depth=depth,
                base_filters=base_filters, filters_multiplier=filters_multiplier, conv_per_block=conv_per_block,
                norm=norm, groups=groups, activation=activation, dropout=dropout, remat=remat)
    bottleneck = [layer for layer in unet.layers if layer.name.split("_")[0] == f"enc{depth - 1}"][-1]
    return keras.Model(unet.inputs, bottleneck.output, name=name)


POOLING = ("avg", "max", "avg_max")
REGIONS = (1, 2)


@keras.saving.register_keras_serializable(package="medtf")
class HalvesPooling(keras.layers.Layer):
    """``(B, *spatial, F)`` -> ``(B, 2**spatial_dims * F)``: ``mode`` (``avg`` / ``max``) pooling over each of the
    ``2**spatial_dims`` blocks made by halving every spatial axis (the second level of a spatial pyramid; an odd
    axis shares its middle slice between both halves, so left and right stay mirror images). Blocks are ordered
    first axis slowest: for ``(D, H, W)`` inferior/superior, then anterior/posterior, then right/left halves.
    Works on any input size (the halves are cut from the runtime shape).

    Reference: He et al., "Spatial Pyramid Pooling in Deep Convolutional Networks for Visual Recognition",
    ECCV 2014."""

    def __init__(self, mode: str = "max", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("avg", "max"):
            raise ValueError(f"mode {mode!r}: expected 'avg' or 'max'")
        self.mode = mode

    def call(self, x):
        dims = len(x.shape) - 2
        blocks = [x]
        for axis in range(1, dims + 1):
            n = ops.shape(x)[axis]
            first, second = slice(0, (n + 1) // 2), slice(n // 2, None)
            blocks = [b[tuple([slice(None)] * axis + [half])] for b in blocks for half in (first, second)]
        reduce = ops.max if self.mode == "max" else ops.mean
        return ops.concatenate([reduce(b, axis=tuple(range(1, dims + 1))) for b in blocks], axis=-1)

    def compute_output_shape(self, shape):
        return (shape[0], None if shape[-1] is None else shape[-1] * 2 ** (len(shape) - 2))

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def global_pool(features, spatial_dims: int, pooling: str = "avg", name: str = "pool", regions: int = 1):
    """Global pooling of encoder features ``(B, *spatial, F)`` -> ``(B, F)`` (``avg``, ``max``) or ``(B, 2F)``
    (``avg_max``: both concatenated, average first). The layer is called ``name`` (``avg_max``: a concatenation
    of ``{name}_avg`` and ``{name}_max``).

    ``regions=2`` adds the same pooling over each half-by-half block (`HalvesPooling`, ``{name}_halves_*``):
    ``(B, (1 + 2**spatial_dims) * F)`` per pooling kind. A global pool is translation-invariant, so it cannot
    say on which side a finding is; the blocks keep that (left / right, front / back, up / down).

    Example:
        >>> x = keras.Input((4, 8, 8, 16))
        >>> global_pool(x, 3, "avg_max").shape
        (None, 32)
        >>> global_pool(x, 3, "max", regions=2).shape
        (None, 144)
    """
    if pooling not in POOLING:
        raise ValueError(f"pooling {pooling!r}: expected one of {POOLING}")
    if regions not in REGIONS:
        raise ValueError(f"regions {regions!r}: expected one of {REGIONS} (1: global only; 2: also the halves)")
    avg = keras.layers.GlobalAveragePooling2D if spatial_dims == 2 else keras.layers.GlobalAveragePooling3D
    peak = keras.layers.GlobalMaxPooling2D if spatial_dims == 2 else keras.layers.GlobalMaxPooling3D
    kinds = {"avg": ("avg",), "max": ("max",), "avg_max": ("avg", "max")}[pooling]
    single = len(kinds) == 1 and regions == 1
    parts = [(avg if kind == "avg" else peak)(name=name if single else f"{name}_{kind}")(features) for kind in kinds]
    if regions == 2:
        parts += [HalvesPooling(kind, name=f"{name}_halves_{kind}")(features) for kind in kinds]
    return parts[0] if single else keras.layers.Concatenate(name=name)(parts)


@keras.saving.register_keras_serializable(package="medtf")
class UNetClassifier(keras.Model):
    """Image classifier: the U-Net encoder (`unet_encoder`), global pooling (`global_pool`), dropout and a dense head.

    Input ``(B, H, W, C)`` or ``(B, D, H, W, C)`` of any size; output ``(B, num_classes)`` probabilities in
    float32 (sigmoid for one class: binary; softmax otherwise).

    Args:
        spatial_dims, in_channels, depth, base_filters, filters_multiplier, conv_per_block, norm, groups,
            activation, remat: the encoder's (as `medtf.models.UNet`).
        num_classes: 1 (binary, sigmoid) or the number of classes (softmax).
        head_dropout: dropout before the dense head.
        pooling: ``"avg"`` (default), ``"max"`` or ``"avg_max"`` (`global_pool`); with instance norm the average
            alone hardly varies between images (see the module docstring).
        pool_regions: 1 (global pooling) or 2 (also each half-by-half block, `HalvesPooling`: where a finding is).

    Example:
        >>> model = UNetClassifier(spatial_dims=2, in_channels=3, num_classes=1, depth=3, base_filters=8)
        >>> model(np.zeros((2, 32, 32, 3))).shape
        TensorShape([2, 1])
    """

    def __init__(self, spatial_dims=2, in_channels=1, num_classes=1, depth=4, base_filters=32, filters_multiplier=2,
                 conv_per_block=2, norm="batch", groups=8, activation="relu", head_dropout=0.0, remat=False,
                 pooling="avg", pool_regions=1, **kwargs):
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        if pooling not in POOLING:
            raise ValueError(f"pooling {pooling!r}: expected one of {POOLING}")
        # === Layers ===
        encoder = unet_encoder(spatial_dims, in_channels, depth, base_filters, filters_multiplier, conv_per_block,
                               norm, groups, activation, remat=remat)
        # === Functional Model ===
        inputs = keras.Input(shape=(None,) * spatial_dims + (in_channels,), name="image")
        x = global_pool(encoder(inputs), spatial_dims, pooling, regions=pool_regions)
        if head_dropout > 0:
            x = keras.layers.Dropout(head_dropout, name="head_dropout")(x)
        x = keras.layers.Dense(num_classes, name="logits")(x)
        outputs = keras.layers.Activation("sigmoid" if num_classes == 1 else "softmax", dtype="float32",
                                          name="output")(x)
        super().__init__(inputs=inputs, outputs=outputs, name=kwargs.pop("name", "unet_classifier"), **kwargs)
        # === Config ===
        self.spatial_dims, self.in_channels, self.num_classes = spatial_dims, in_channels, num_classes
        self.depth, self.base_filters, self.filters_multiplier = depth, base_filters, filters_multiplier
        self.conv_per_block, self.norm, self.groups, self.activation = conv_per_block, norm, groups, activation
        self.head_dropout, self.remat, self.pooling, self.pool_regions = head_dropout, bool(remat), pooling, pool_regions
        self.final_activation = "sigmoid" if num_classes == 1 else "softmax"

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "spatial_dims": self.spatial_dims,
                "in_channels": self.in_channels, "num_classes": self.num_classes, "depth": self.depth,
                "base_filters": self.base_filters, "filters_multiplier": self.filters_multiplier,
                "conv_per_block": self.conv_per_block, "norm": self.norm, "groups": self.groups,
                "activation": self.activation, "head_dropout": self.head_dropout, "remat": self.remat,
                "pooling": self.pooling, "pool_regions": self.pool_regions}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@register_model(model_class=UNetClassifier)
def unet_classifier2d_small(**kwargs):
    """Tiny 2D U-Net-encoder classifier (depth 3, 8 base filters) — CPU-friendly for tests and demos."""
    return UNetClassifier(**{**dict(spatial_dims=2, depth=3, base_filters=8, norm="batch"), **kwargs})


@register_model(model_class=UNetClassifier)
def unet_classifier3d(**kwargs):
    """3D U-Net-encoder classifier (depth 4, 32 base filters, instance norm, average and max pooling)."""
    return UNetClassifier(**{**dict(spatial_dims=3, depth=4, base_filters=32, norm="instance", pooling="avg_max"),
                             **kwargs})
