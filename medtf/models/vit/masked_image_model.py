"""Masked image modeling on the ViT backbone: predict the masked patches' pixels (SimMIM / MAE target) or their
discrete tokens (BEiT).

Layout of the heads: the backbone's patch tokens (``PatchTokens``: ``(B, N, D)``, row-major on the ``grid``)
feed the per-patch head ``mim_head``; with nucleus tokens (``max_nuclei > 0``) and token targets a second head
``inst_head`` predicts 4 token ids per nucleus token (L_inst: the nucleus box resampled to 2 x 2 token cells,
`medtf.models.vit.masking.instance_targets`), and the model returns ``{"patches", "nuclei"}``.
"""

from __future__ import annotations

import keras

from medtf.models.registry import register_model
from medtf.models.vit.layers import NoMask, PatchTokens
from medtf.models.vit.nucleus_layers import TokenSlice, Zeros
from medtf.models.vit.vit_backbone import VIT_SIZES, ViTBackbone, image_hw

TARGETS = ("pixels", "tokens")


@keras.saving.register_keras_serializable(package="medtf")
class MaskedImageModel(keras.Model):
    """``{"images" (B, H, W, C), "mask" (B, N)}`` -> per-patch predictions ``(B, N, T)`` float32; with nucleus
    tokens the inputs add ``boxes (B, M, 4)`` and ``num_boxes (B,)``, and token targets give
    ``{"patches": (B, N, V), "nuclei": (B, M, 4, V)}`` (the 4 L_inst token logits per nucleus, ``inst_head``).

    The ``ViTBackbone`` (``use_mask_token=True``, layer ``"backbone"``) replaces masked patches by the [MASK]
    embedding; a linear head ``"mim_head"`` on each patch token predicts ``T = P * P * C`` pixel values
    (``target="pixels"``, the patch normalised to zero mean / unit variance when ``norm_pixel_target``) or
    ``T = vocab_size`` token logits (``target="tokens"``; the tokens come from a tokenizer as the example's
    ``tokens`` field). The masking settings (``mask_ratio`` ... ``mask_seed``) are read by the
    ``masked_modeling`` task, which draws the masks and targets in the input pipeline; they live here so a
    checkpoint says how it was trained and evaluation masks the same way.

    Args:
        image_size, patch_size, num_channels, hidden_dim, num_layers, num_heads, mlp_dim, dropout,
            attention_dropout, position_embedding: the backbone's (`ViTBackbone`).
        target: ``"pixels"`` or ``"tokens"``.
        vocab_size: token vocabulary (``target="tokens"``).
        norm_pixel_target: pixel targets per-patch normalised (MAE) instead of raw.
        mask_ratio: fraction of patches masked (BEiT: 0.4); min_mask_patches: smallest block (16);
            max_mask_patches: largest block (None: no limit); min_aspect: block aspect ratio range
            ``[min_aspect, 1 / min_aspect]``; mask_seed: salt of the per-example mask seeds.
        max_nuclei, roi_size: the backbone's nucleus tokens (0: none).
        inst_loss: with nucleus tokens and token targets, add the ``inst_head`` and train L_inst (False: the
            grid-token loss alone, the paper's ablation; the nucleus tokens stay in the sequence).

    Example:
        >>> model = MaskedImageModel(image_size=32, patch_size=8, hidden_dim=16, num_layers=1, num_heads=2,
        ...                          mlp_dim=32)
        >>> model({"images": np.zeros((2, 32, 32, 3)), "mask": np.zeros((2, 16))}).shape
        TensorShape([2, 16, 192])

    Reference: Bao et al., "BEiT", ICLR 2022; Xie et al., "SimMIM", CVPR 2022; He et al., "MAE", CVPR 2022.
    """

    def __init__(self, image_size=224, patch_size=16, num_channels=3, hidden_dim=768, num_layers=12, num_heads=12,
                 mlp_dim=3072, dropout=0.0, attention_dropout=0.0, position_embedding="learned", target="pixels",
                 vocab_size=8192, norm_pixel_target=True, mask_ratio=0.4, min_mask_patches=16,
                 max_mask_patches=None, min_aspect=0.3, mask_seed=0, max_nuclei=0, roi_size=3, inst_loss=True,
                 **kwargs):
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        if not 0.0 < float(mask_ratio) < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if not 0.0 < float(min_aspect) <= 1.0:
            raise ValueError(f"min_aspect must be in (0, 1], got {min_aspect}")
        # === Layers ===
        backbone = ViTBackbone(image_size, patch_size, num_channels, hidden_dim, num_layers, num_heads, mlp_dim,
                               dropout, attention_dropout, position_embedding, use_mask_token=True,
                               max_nuclei=max_nuclei, roi_size=roi_size, name="backbone")
        out_dim = patch_size * patch_size * num_channels if target == "pixels" else int(vocab_size)
        # === Functional Model ===
        images = keras.Input(shape=(*image_hw(image_size), num_channels), name="images")
        mask = keras.Input(shape=(backbone.num_patches,), name="mask")
        inputs = {"images": images, "mask": mask}
        if backbone.max_nuclei:
            inputs["boxes"] = keras.Input(shape=(backbone.max_nuclei, 4), name="boxes")
            inputs["num_boxes"] = keras.Input(shape=(), dtype="int32", name="num_boxes")
        sequence = backbone(inputs)
        num_patches = backbone.num_patches if backbone.max_nuclei else None  # None: the config of before
        tokens = PatchTokens(num_patches, name="patch_features")(sequence)
        outputs = keras.layers.Dense(out_dim, dtype="float32", name="mim_head")(tokens)
        if backbone.max_nuclei and target == "tokens" and inst_loss:
            nuclei = TokenSlice(1 + backbone.num_patches, name="nucleus_features")(sequence)
            nuclei = keras.layers.Dense(4 * int(vocab_size), dtype="float32", name="inst_head")(nuclei)
            nuclei = keras.layers.Reshape((backbone.max_nuclei, 4, int(vocab_size)), dtype="float32",
                                          name="inst_logits")(nuclei)
            outputs = {"patches": outputs, "nuclei": nuclei}
        super().__init__(inputs=inputs, outputs=outputs,
                         name=kwargs.pop("name", "masked_image_model"), **kwargs)
        # === Config ===
        self.image_size = backbone.image_size
        self.patch_size, self.num_channels, self.hidden_dim = patch_size, num_channels, hidden_dim
        self.num_layers, self.num_heads, self.mlp_dim = num_layers, num_heads, mlp_dim
        self.dropout, self.attention_dropout, self.position_embedding = dropout, attention_dropout, position_embedding
        self.target, self.vocab_size, self.norm_pixel_target = target, int(vocab_size), bool(norm_pixel_target)
        self.mask_ratio, self.min_mask_patches, self.max_mask_patches = float(mask_ratio), int(min_mask_patches), \
            (None if max_mask_patches is None else int(max_mask_patches))
        self.min_aspect, self.mask_seed = float(min_aspect), int(mask_seed)
        self.max_nuclei, self.roi_size, self.inst_loss = backbone.max_nuclei, backbone.roi_size, bool(inst_loss)
        self.grid, self.num_patches = backbone.grid, backbone.num_patches

    def get_config(self):
        image_size = self.image_size if isinstance(self.image_size, int) else list(self.image_size)
        return {"name": self.name, "trainable": self.trainable, "image_size": image_size,
                "patch_size": self.patch_size, "num_channels": self.num_channels, "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers, "num_heads": self.num_heads, "mlp_dim": self.mlp_dim,
                "dropout": self.dropout, "attention_dropout": self.attention_dropout,
                "position_embedding": self.position_embedding, "target": self.target,
                "vocab_size": self.vocab_size, "norm_pixel_target": self.norm_pixel_target,
                "mask_ratio": self.mask_ratio, "min_mask_patches": self.min_mask_patches,
                "max_mask_patches": self.max_mask_patches, "min_aspect": self.min_aspect,
                "mask_seed": self.mask_seed, "max_nuclei": self.max_nuclei, "roi_size": self.roi_size,
                "inst_loss": self.inst_loss}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def vit_encoder(model: keras.Model) -> keras.Model:
    """``images (B, H, W, C)`` -> tokens ``(B, 1 + N, D)`` of a `MaskedImageModel`'s backbone, nothing masked
    (what a downstream task or the exported ``encode`` signature uses; weights shared with ``model``). A nucleus
    backbone runs with 0 nuclei (every slot [PAD], attended by nobody) and only [CLS] + grid tokens are returned."""
    backbone = model.get_layer("backbone")
    images = keras.Input(shape=(*image_hw(backbone.image_size), backbone.num_channels), name="images")
    inputs = {"images": images, "mask": NoMask(backbone.num_patches, name="no_mask")(images)}
    if getattr(backbone, "max_nuclei", 0):
        inputs["boxes"] = Zeros((backbone.max_nuclei, 4), name="no_boxes")(images)
        inputs["num_boxes"] = Zeros((), "int32", name="no_nuclei")(images)
        tokens = TokenSlice(0, 1 + backbone.num_patches, name="grid_tokens")(backbone(inputs))
        return keras.Model(images, tokens, name="vit_encoder")
    return keras.Model(images, backbone(inputs), name="vit_encoder")


def _mim(size: str, kwargs: dict) -> MaskedImageModel:
    return MaskedImageModel(**{**VIT_SIZES[size], **kwargs})


@register_model(model_class=MaskedImageModel)
def mim_vit_tiny(**kwargs):
    """Masked image modeling on ViT-Ti (192 wide, 12 layers, 3 heads)."""
    return _mim("tiny", kwargs)


@register_model(model_class=MaskedImageModel)
def mim_vit_small(**kwargs):
    """Masked image modeling on ViT-S (384 wide, 12 layers, 6 heads)."""
    return _mim("small", kwargs)


@register_model(model_class=MaskedImageModel)
def mim_vit_base(**kwargs):
    """Masked image modeling on ViT-B (768 wide, 12 layers, 12 heads): the BEiT / paper size."""
    return _mim("base", kwargs)
