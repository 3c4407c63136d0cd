"""VGG-ELU feature extractor: conv blocks (3x3 conv -> batch norm -> ELU, optional 1x1) -> dropout -> max-pool.

The network of the PROSTATEx thesis behind medtf's prostate study, 2D or 3D through ``spatial_dims``. Every layer
name starts with its block (``block1_conv1``, ``block1_bn1``, ``block1_act1``, ``block1_conv1x1``,
``block1_dropout``, ``block1_pool``, ``block2_...``), so transfer learning can freeze by block
(`medtf.models.freeze`).
"""

from __future__ import annotations

import keras

from medtf.layers import conv_layer, norm_layer, pooling_layer

NORMS = ("batch", "none")


def validate_vgg_args(spatial_dims, in_channels, num_blocks, base_filters, filters_multiplier, conv_per_block,
                      norm, dropout, input_shape):
    """Raise ``ValueError`` naming the first inconsistent argument (shared by backbone and classifier)."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    for name, value in (("in_channels", in_channels), ("num_blocks", num_blocks), ("base_filters", base_filters),
                        ("conv_per_block", conv_per_block)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if filters_multiplier <= 0:
        raise ValueError(f"filters_multiplier must be > 0, got {filters_multiplier!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if input_shape is not None:
        if len(input_shape) != spatial_dims:
            raise ValueError(f"input_shape must have {spatial_dims} spatial axes (no channel axis), got "
                             f"{list(input_shape)!r}")
        small = [s for s in input_shape if s is not None and s < 2 ** num_blocks]
        if small:
            raise ValueError(f"input_shape {list(input_shape)} is too small for {num_blocks} max-pools "
                             f"(each axis needs >= {2 ** num_blocks})")


def block_filters(base_filters, filters_multiplier, num_blocks):
    """Filters of each conv block: ``base_filters`` doubling (``filters_multiplier``) per block."""
    return [int(round(base_filters * filters_multiplier**i)) for i in range(num_blocks)]


@keras.saving.register_keras_serializable(package="medtf")
class VGGBackbone(keras.Model):
    """VGG-ELU conv blocks: ``(B, *spatial, in_channels)`` -> ``(B, *floor(spatial / 2**num_blocks), filters)``.

    Block ``b`` (1-based) is ``conv_per_block`` x (3x3 conv, stride 1, "same" -> batch norm -> ELU), then with
    ``conv1x1`` one 1x1 conv -> batch norm -> ELU, then dropout and a 2x max-pool. Filters double per block.
    Under mixed precision 3D pooling runs in float32 (TF has no float16 MaxPool3D kernel on CPU).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (3 for stacked T2 / DWI / ADC).
        num_blocks: conv blocks (the thesis: 3).
        base_filters: filters of block 1; ``filters_multiplier`` per further block.
        conv_per_block: 3x3 convolutions per block.
        conv1x1: add a 1x1 conv -> norm -> ELU at the end of every block.
        norm: ``"batch"`` or ``"none"`` (the convolutions then use a bias).
        activation: hidden activation (``"elu"``).
        dropout: rate of the dropout before each max-pool (0 disables it).
        input_shape: static spatial size, ``None`` per axis allowed; default all ``None``.

    Example:
        >>> backbone = VGGBackbone(spatial_dims=2, in_channels=3, base_filters=8, input_shape=(65, 65))
        >>> backbone(np.zeros((2, 65, 65, 3))).shape
        TensorShape([2, 8, 8, 32])

    Reference:
        Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015;
        Clevert et al., "Fast and Accurate Deep Network Learning by Exponential Linear Units (ELUs)", ICLR 2016.
    """

    def __init__(self, spatial_dims=2, in_channels=1, num_blocks=3, base_filters=32, filters_multiplier=2,
                 conv_per_block=1, conv1x1=False, norm="batch", activation="elu", dropout=0.25, input_shape=None,
                 **kwargs):
        if input_shape is not None:
            input_shape = tuple(None if s is None else int(s) for s in input_shape)
        validate_vgg_args(spatial_dims, in_channels, num_blocks, base_filters, filters_multiplier, conv_per_block,
                          norm, dropout, input_shape)
        conv, pool = conv_layer(spatial_dims), pooling_layer(spatial_dims, "max")
        float16 = keras.mixed_precision.dtype_policy().compute_dtype == "float16"
        pool_dtype = "float32" if (spatial_dims == 3 and float16) else None

        # === Layers ===
        def unit(x, filters, kernel, suffix, prefix):
            x = conv(filters, kernel, padding="same", use_bias=norm == "none", name=f"{prefix}_conv{suffix}")(x)
            if norm == "batch":
                x = norm_layer("batch", name=f"{prefix}_bn{suffix}")(x)
            return keras.layers.Activation(activation, name=f"{prefix}_act{suffix}")(x)

        # === Functional Model ===
        spatial = input_shape if input_shape is not None else (None,) * spatial_dims
        inputs = keras.Input(shape=(*spatial, in_channels), name="image")
        x = inputs
        for b, filters in enumerate(block_filters(base_filters, filters_multiplier, num_blocks), start=1):
            prefix = f"block{b}"
            for j in range(1, conv_per_block + 1):
                x = unit(x, filters, 3, j, prefix)
            if conv1x1:
                x = unit(x, filters, 1, "1x1", prefix)
            if dropout > 0:
                x = keras.layers.Dropout(dropout, name=f"{prefix}_dropout")(x)
            x = pool(2, name=f"{prefix}_pool", dtype=pool_dtype)(x)
        super().__init__(inputs=inputs, outputs=x, name=kwargs.pop("name", "vgg_backbone"), **kwargs)

        # === Config ===
        self.spatial_dims, self.in_channels, self.num_blocks = spatial_dims, in_channels, num_blocks
        self.base_filters, self.filters_multiplier = base_filters, filters_multiplier
        self.conv_per_block, self.conv1x1, self.norm = conv_per_block, bool(conv1x1), norm
        self.activation, self.dropout, self.spatial_input_shape = activation, dropout, input_shape

    @property
    def block_names(self) -> list[str]:
        """``["block1", ..., "block{num_blocks}"]``: the prefixes `medtf.models.freeze` takes."""
        return [f"block{b}" for b in range(1, self.num_blocks + 1)]

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "spatial_dims": self.spatial_dims,
                "in_channels": self.in_channels, "num_blocks": self.num_blocks, "base_filters": self.base_filters,
                "filters_multiplier": self.filters_multiplier, "conv_per_block": self.conv_per_block,
                "conv1x1": self.conv1x1, "norm": self.norm, "activation": self.activation, "dropout": self.dropout,
                "input_shape": None if self.spatial_input_shape is None else list(self.spatial_input_shape)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
