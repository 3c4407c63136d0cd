"""Nucleus classification on the nucleus-token ViT: one softmax over the classes per nucleus box.

Reference: "Learning Nuclei Representations with Masked Image Modelling" (issue #15): fine-tuning drops the
pretraining heads and puts a softmax classifier on the nucleus tokens; linear probing trains that layer alone.
"""

from __future__ import annotations

import keras

from medtf.models.registry import register_model
from medtf.models.vit.layers import NoMask
from medtf.models.vit.nucleus_layers import TokenSlice
from medtf.models.vit.vit_backbone import VIT_SIZES, ViTBackbone, image_hw


@keras.saving.register_keras_serializable(package="medtf")
class NucleusClassifier(keras.Model):
    """``{"images" (B, H, W, C), "boxes" (B, M, 4), "num_boxes" (B,)}`` -> class probabilities ``(B, M, K)``
    float32 of every nucleus slot (rows past ``num_boxes`` are padding: ignore them).

    The backbone (layer ``"backbone"``) is a `ViTBackbone` with nucleus tokens, built with the [MASK] input (fed
    an all-zero mask) so its layers line up one to one with a `MaskedImageModel`'s backbone: ``model.init_from``
    of a masked-modelling run carries every backbone weight (`medtf.training.init_weights` pairs layers by name).
    The head ``"nucleus_head"`` is one Dense + softmax on each nucleus token; freezing the backbone
    (``model.freeze_up_to: encoder_norm``) makes it a linear probe.

    Args:
        num_classes: nucleus classes ``K`` (PanNuke 5, CoNSeP merged 4: the shards' ``class_names`` minus
            background).
        max_nuclei: nucleus slots ``M`` per image (boxes beyond it are dropped by the task).
        head_dropout: dropout on the nucleus tokens before the head.
        other arguments: the backbone's (`ViTBackbone`); ``position_embedding`` defaults to ``"xywh"``.

    Example:
        >>> model = NucleusClassifier(num_classes=5, max_nuclei=8, image_size=32, patch_size=8, hidden_dim=16,
        ...                           num_layers=1, num_heads=2, mlp_dim=32)
        >>> model({"images": np.zeros((2, 32, 32, 3)), "boxes": np.zeros((2, 8, 4)),
        ...        "num_boxes": np.array([3, 0])}).shape
        TensorShape([2, 8, 5])
    """

    def __init__(self, num_classes=5, max_nuclei=64, image_size=224, patch_size=16, num_channels=3, hidden_dim=768,
                 num_layers=12, num_heads=12, mlp_dim=3072, dropout=0.0, attention_dropout=0.0,
                 position_embedding="xywh", roi_size=3, head_dropout=0.0, **kwargs):
        if int(num_classes) < 2 or int(max_nuclei) < 1:
            raise ValueError(f"num_classes must be >= 2 and max_nuclei >= 1, got {num_classes} and {max_nuclei}")
        # === Layers ===
        backbone = ViTBackbone(image_size, patch_size, num_channels, hidden_dim, num_layers, num_heads, mlp_dim,
                               dropout, attention_dropout, position_embedding, use_mask_token=True,
                               max_nuclei=max_nuclei, roi_size=roi_size, name="backbone")
        # === Functional Model ===
        images = keras.Input(shape=(*image_hw(image_size), num_channels), name="images")
        boxes = keras.Input(shape=(backbone.max_nuclei, 4), name="boxes")
        num_boxes = keras.Input(shape=(), dtype="int32", name="num_boxes")
        mask = NoMask(backbone.num_patches, name="no_mask")(images)
        tokens = backbone({"images": images, "mask": mask, "boxes": boxes, "num_boxes": num_boxes})
        nuclei = TokenSlice(1 + backbone.num_patches, name="nucleus_features")(tokens)
        nuclei = keras.layers.Dropout(head_dropout, name="head_dropout")(nuclei)
        outputs = keras.layers.Dense(int(num_classes), activation="softmax", dtype="float32",
                                     name="nucleus_head")(nuclei)
        super().__init__(inputs={"images": images, "boxes": boxes, "num_boxes": num_boxes}, outputs=outputs,
                         name=kwargs.pop("name", "nucleus_classifier"), **kwargs)
        # === Config ===
        self.num_classes, self.max_nuclei, self.head_dropout = int(num_classes), backbone.max_nuclei, head_dropout
        self.image_size, self.patch_size, self.num_channels = backbone.image_size, patch_size, num_channels
        self.hidden_dim, self.num_layers, self.num_heads, self.mlp_dim = hidden_dim, num_layers, num_heads, mlp_dim
        self.dropout, self.attention_dropout, self.position_embedding = dropout, attention_dropout, position_embedding
        self.roi_size = backbone.roi_size
        self.grid, self.num_patches = backbone.grid, backbone.num_patches

    def get_config(self):
        image_size = self.image_size if isinstance(self.image_size, int) else list(self.image_size)
        return {"name": self.name, "trainable": self.trainable, "num_classes": self.num_classes,
                "max_nuclei": self.max_nuclei, "image_size": image_size, "patch_size": self.patch_size,
                "num_channels": self.num_channels, "hidden_dim": self.hidden_dim, "num_layers": self.num_layers,
                "num_heads": self.num_heads, "mlp_dim": self.mlp_dim, "dropout": self.dropout,
                "attention_dropout": self.attention_dropout, "position_embedding": self.position_embedding,
                "roi_size": self.roi_size, "head_dropout": self.head_dropout}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@register_model(model_class=NucleusClassifier)
def nucleus_vit_tiny(**kwargs):
    """Nucleus classifier on ViT-Ti (192 wide, 12 layers, 3 heads)."""
    return NucleusClassifier(**{**VIT_SIZES["tiny"], **kwargs})


@register_model(model_class=NucleusClassifier)
def nucleus_vit_small(**kwargs):
    """Nucleus classifier on ViT-S (384 wide, 12 layers, 6 heads)."""
    return NucleusClassifier(**{**VIT_SIZES["small"], **kwargs})


@register_model(model_class=NucleusClassifier)
def nucleus_vit_base(**kwargs):
    """Nucleus classifier on ViT-B (768 wide, 12 layers, 12 heads): the paper's size."""
    return NucleusClassifier(**{**VIT_SIZES["base"], **kwargs})
