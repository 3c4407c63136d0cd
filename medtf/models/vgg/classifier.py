"""VGG-ELU classifier: `VGGBackbone` -> flatten (or global pooling) -> fully connected ELU blocks -> head.

The prostate thesis's lesion classifier on 65x65 T2 / DWI / ADC crops; the named variants below are what
experiments ask for (``model.name: vgg_elu``).
"""

from __future__ import annotations

import keras

from medtf.models.registry import register_model
from medtf.models.vgg.backbone import VGGBackbone

POOLS = ("flatten", "avg", "max")


@keras.saving.register_keras_serializable(package="medtf")
class VGGClassifier(keras.Model):
    """Image classifier: `VGGBackbone`, then ``len(dense_units)`` blocks (dense -> ELU -> dropout) and a head.

    Input ``(B, *spatial, in_channels)``; output ``(B, num_classes)`` float32 probabilities: sigmoid for one
    class (binary), softmax otherwise. Layer names: the backbone's ``block{b}_*`` (nested model
    ``vgg_backbone``), then ``flatten`` / ``pool``, ``fc{k}_dense``, ``fc{k}_act``, ``fc{k}_dropout``,
    ``head_logits`` and ``output``, so `medtf.models.freeze` addresses ``block1`` ... ``fc1`` ... ``head``.

    Args:
        spatial_dims, in_channels, num_blocks, base_filters, filters_multiplier, conv_per_block, conv1x1, norm,
            activation, dropout, input_shape: the backbone's (`VGGBackbone`).
        num_classes: 1 (binary, sigmoid) or the number of classes (softmax).
        dense_units: units of each fully connected block (the thesis: three blocks).
        dense_dropout: dropout after each fully connected block.
        pool: ``"flatten"`` (VGG; needs a static ``input_shape``), ``"avg"`` or ``"max"`` (global pooling: any
            input size).

    Example:
        >>> model = VGGClassifier(spatial_dims=2, in_channels=3, num_classes=1, base_filters=8,
        ...                       dense_units=(32, 16, 8), input_shape=(65, 65))
        >>> model(np.zeros((2, 65, 65, 3))).shape
        TensorShape([2, 1])

    Reference:
        Simonyan & Zisserman, ICLR 2015; Clevert et al., ICLR 2016 (ELU).
    """

    def __init__(self, spatial_dims=2, in_channels=1, num_classes=1, num_blocks=3, base_filters=32,
                 filters_multiplier=2, conv_per_block=1, conv1x1=False, norm="batch", activation="elu", dropout=0.25,
                 dense_units=(512, 256, 128), dense_dropout=0.5, pool="flatten", input_shape=None, **kwargs):
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        dense_units = [int(u) for u in dense_units]
        if any(u < 1 for u in dense_units):
            raise ValueError(f"dense_units must all be >= 1, got {dense_units!r}")
        if not 0.0 <= dense_dropout < 1.0:
            raise ValueError(f"dense_dropout must be in [0, 1), got {dense_dropout!r}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if pool == "flatten" and (input_shape is None or None in tuple(input_shape)):
            raise ValueError(f"pool='flatten' needs a static input_shape (e.g. [65, 65]), got {input_shape!r}; "
                             "give input_shape or use pool='avg' for any input size")
        # === Layers ===
        backbone = VGGBackbone(spatial_dims, in_channels, num_blocks, base_filters, filters_multiplier,
                               conv_per_block, conv1x1, norm, activation, dropout, input_shape)
        if pool == "flatten":
            pooling = keras.layers.Flatten(name="flatten")
        else:
            pooling = {("avg", 2): keras.layers.GlobalAveragePooling2D, ("avg", 3): keras.layers.GlobalAveragePooling3D,
                       ("max", 2): keras.layers.GlobalMaxPooling2D,
                       ("max", 3): keras.layers.GlobalMaxPooling3D}[(pool, spatial_dims)](name="pool")
        # === Functional Model ===
        spatial = tuple(backbone.spatial_input_shape or (None,) * spatial_dims)
        inputs = keras.Input(shape=(*spatial, in_channels), name="image")
        x = pooling(backbone(inputs))
        for k, units in enumerate(dense_units, start=1):
            x = keras.layers.Dense(units, name=f"fc{k}_dense")(x)
            x = keras.layers.Activation(activation, name=f"fc{k}_act")(x)
            if dense_dropout > 0:
                x = keras.layers.Dropout(dense_dropout, name=f"fc{k}_dropout")(x)
        x = keras.layers.Dense(num_classes, name="head_logits")(x)
        outputs = keras.layers.Activation("sigmoid" if num_classes == 1 else "softmax", dtype="float32",
                                          name="output")(x)
        super().__init__(inputs=inputs, outputs=outputs, name=kwargs.pop("name", "vgg_classifier"), **kwargs)
        # === Config ===
        self.backbone = backbone
        self.spatial_dims, self.in_channels, self.num_classes = spatial_dims, in_channels, num_classes
        self.num_blocks, self.base_filters, self.filters_multiplier = num_blocks, base_filters, filters_multiplier
        self.conv_per_block, self.conv1x1, self.norm = conv_per_block, bool(conv1x1), norm
        self.activation, self.dropout, self.dense_units = activation, dropout, dense_units
        self.dense_dropout, self.pool = dense_dropout, pool
        self.spatial_input_shape = backbone.spatial_input_shape
        self.final_activation = "sigmoid" if num_classes == 1 else "softmax"

    @property
    def block_names(self) -> list[str]:
        """Blocks in network order: ``block1..`` (backbone), ``fc1..``, ``head``."""
        return [*self.backbone.block_names, *[f"fc{k}" for k in range(1, len(self.dense_units) + 1)], "head"]

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "spatial_dims": self.spatial_dims,
                "in_channels": self.in_channels, "num_classes": self.num_classes, "num_blocks": self.num_blocks,
                "base_filters": self.base_filters, "filters_multiplier": self.filters_multiplier,
                "conv_per_block": self.conv_per_block, "conv1x1": self.conv1x1, "norm": self.norm,
                "activation": self.activation, "dropout": self.dropout, "dense_units": list(self.dense_units),
                "dense_dropout": self.dense_dropout, "pool": self.pool,
                "input_shape": None if self.spatial_input_shape is None else list(self.spatial_input_shape)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _variant(defaults, kwargs):
    return VGGClassifier(**{**defaults, **kwargs})


@register_model(model_class=VGGClassifier)
def vgg_elu(**kwargs):
    """The thesis's VGG-ELU for 65x65 crops: 3 blocks from 32 filters, dense 512 / 256 / 128, flatten."""
    return _variant(dict(spatial_dims=2, num_blocks=3, base_filters=32, dense_units=(512, 256, 128),
                         input_shape=(65, 65)), kwargs)


@register_model(model_class=VGGClassifier)
def vgg_elu_small(**kwargs):
    """Tiny 2D VGG-ELU (8 filters, dense 32 / 16 / 8) for 65x65 crops: CPU tests and smoke runs."""
    return _variant(dict(spatial_dims=2, num_blocks=3, base_filters=8, dense_units=(32, 16, 8),
                         input_shape=(65, 65)), kwargs)


@register_model(model_class=VGGClassifier)
def vgg_elu3d_small(**kwargs):
    """Tiny 3D VGG-ELU (4 filters, dense 16 / 8 / 8, global average pooling: any volume size)."""
    return _variant(dict(spatial_dims=3, num_blocks=3, base_filters=4, dense_units=(16, 8, 8), pool="avg"),
                    kwargs)
