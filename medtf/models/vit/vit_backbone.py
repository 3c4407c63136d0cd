"""Vision Transformer backbone: patch tokens -> pre-norm Transformer encoder -> ``(B, 1 + N, D)`` token sequence.

Reference: Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
ICLR 2021; the [MASK] token: Bao et al., "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022; nucleus
tokens: "Learning Nuclei Representations with Masked Image Modelling" (issue #15).
"""

from __future__ import annotations

import keras

from medtf.models.registry import register_model
from medtf.models.vit.layers import ClassToken, MaskTokens, PositionEmbedding
from medtf.models.vit.nucleus_layers import BoxPositionEncoding, PadAttentionMask, PadTokens
from medtf.models.vit.roi_align import RoIAlign


def image_hw(image_size) -> tuple[int, int]:
    """``224`` or ``[224, 192]`` -> ``(height, width)``."""
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = (int(v) for v in image_size)
    return h, w


def patch_grid(image_size, patch_size: int) -> tuple[int, int]:
    """The ``(rows, columns)`` of patches; the image must tile exactly (a ViT has one position code per patch)."""
    h, w = image_hw(image_size)
    if h % patch_size or w % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    return h // patch_size, w // patch_size


@keras.saving.register_keras_serializable(package="medtf")
class ViTBackbone(keras.Model):
    """ViT encoder: images ``(B, H, W, C)`` -> tokens ``(B, 1 + N, hidden_dim)`` float32, [CLS] first, then the
    ``N = (H / P) * (W / P)`` patch tokens in row-major order, after a final layer norm.

    Patches are embedded by a ``P x P`` convolution with stride ``P``; blocks are pre-norm (LayerNorm ->
    multi-head self-attention -> residual, LayerNorm -> GELU MLP -> residual). With ``use_mask_token`` the inputs
    are ``{"images", "mask" (B, N)}`` and masked patch embeddings (1 / True) are replaced by a learned [MASK]
    embedding before the position codes are added (BEiT).

    Nucleus tokens (``max_nuclei > 0``): the inputs add ``boxes (B, M, 4)`` ``[ymin, xmin, ymax, xmax]`` in image
    pixels and ``num_boxes (B,)`` int32 (the first ``num_boxes`` rows are real, ``M = max_nuclei``), and the output
    becomes ``(B, 1 + N + M, hidden_dim)``. Each box is RoIAligned (``roi_size x roi_size`` bilinear samples,
    `medtf.models.vit.roi_align`) from the patch-embedding map *after* the [MASK] replacement (a masked patch's
    pixels must not reach the nucleus tokens either, or masked modelling could read them back), reduced to one
    vector by a ``roi_size x roi_size`` VALID convolution, given the box's (x, y, w, h) sinusoidal code; slots past
    ``num_boxes`` hold a learned [PAD] embedding that no token attends to (the blocks get an attention mask), so
    the real tokens' outputs do not depend on the padding. Use ``position_embedding="xywh"`` for the paper's codes
    on the grid tokens too (fixed (x, y, w, h) of each patch, learned [CLS] position).

    Args:
        image_size: int or ``[H, W]``, a multiple of ``patch_size``.
        patch_size: patch side in pixels.
        num_channels: image channels ``C``.
        hidden_dim, num_layers, num_heads, mlp_dim: width, depth, attention heads, MLP width.
        dropout: after the embeddings, the attention output and the MLP layers.
        attention_dropout: on the attention weights.
        position_embedding: ``"learned"``, ``"sincos"`` (fixed 2D sin-cos codes) or ``"xywh"`` (fixed sinusoidal
            (x, y, w, h) codes, learned [CLS] position; ``hidden_dim`` divisible by 8).
        use_mask_token: add the ``mask`` input and the [MASK] embedding.
        layer_norm_epsilon: of every LayerNorm.
        max_nuclei: nucleus-token slots ``M`` (0: none, the plain ViT).
        roi_size: RoIAlign samples per side ``k`` (paper: 3).

    Example:
        >>> vit = ViTBackbone(image_size=32, patch_size=8, num_channels=3, hidden_dim=16, num_layers=2,
        ...                   num_heads=2, mlp_dim=32)
        >>> vit(np.zeros((2, 32, 32, 3))).shape
        TensorShape([2, 17, 16])
    """

    def __init__(self, image_size=224, patch_size=16, num_channels=3, hidden_dim=768, num_layers=12, num_heads=12,
                 mlp_dim=3072, dropout=0.0, attention_dropout=0.0, position_embedding="learned",
                 use_mask_token=False, layer_norm_epsilon=1e-6, max_nuclei=0, roi_size=3, **kwargs):
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} is not divisible by num_heads {num_heads}")
        if int(max_nuclei) < 0 or int(roi_size) < 1:
            raise ValueError(f"max_nuclei must be >= 0 and roi_size >= 1, got {max_nuclei} and {roi_size}")
        max_nuclei, roi_size = int(max_nuclei), int(roi_size)
        grid = patch_grid(image_size, patch_size)
        num_patches = grid[0] * grid[1]
        # === Layers ===
        norm = lambda name, **kw: keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name=name, **kw)
        # === Functional Model ===
        images = keras.Input(shape=(*image_hw(image_size), num_channels), name="images")
        x = keras.layers.Conv2D(hidden_dim, patch_size, strides=patch_size, name="patch_embedding")(images)
        x = keras.layers.Reshape((num_patches, hidden_dim), name="patch_tokens")(x)
        inputs = images
        if use_mask_token:
            mask = keras.Input(shape=(num_patches,), name="mask")
            x = MaskTokens(name="mask_tokens")([x, mask])
            inputs = {"images": images, "mask": mask}
        attention_mask = None
        if max_nuclei:
            boxes = keras.Input(shape=(max_nuclei, 4), name="boxes")
            num_boxes = keras.Input(shape=(), dtype="int32", name="num_boxes")
            inputs = {**(inputs if isinstance(inputs, dict) else {"images": images}), "boxes": boxes,
                      "num_boxes": num_boxes}
            nuclei = _nucleus_tokens(x, boxes, num_boxes, grid, patch_size, hidden_dim, roi_size, max_nuclei)
        x = ClassToken(name="class_token")(x)
        x = PositionEmbedding(grid, position_embedding, name="position_embedding")(x)
        if max_nuclei:
            x = keras.layers.Concatenate(axis=1, name="nucleus_concat")([x, nuclei])
            attention_mask = PadAttentionMask(1 + num_patches, max_nuclei, name="nucleus_attention_mask")(num_boxes)
        x = keras.layers.Dropout(dropout, name="embedding_dropout")(x)
        for i in range(num_layers):
            h = norm(f"block{i}_norm1")(x)
            h = keras.layers.MultiHeadAttention(num_heads, hidden_dim // num_heads, dropout=attention_dropout,
                                                name=f"block{i}_attention")(h, h, attention_mask=attention_mask)
            x = keras.layers.Add(name=f"block{i}_add1")([x, keras.layers.Dropout(dropout)(h)])
            h = norm(f"block{i}_norm2")(x)
            h = keras.layers.Dense(mlp_dim, activation="gelu", name=f"block{i}_mlp1")(h)
            h = keras.layers.Dense(hidden_dim, name=f"block{i}_mlp2")(keras.layers.Dropout(dropout)(h))
            x = keras.layers.Add(name=f"block{i}_add2")([x, keras.layers.Dropout(dropout)(h)])
        outputs = norm("encoder_norm", dtype="float32")(x)  # float32 tokens under mixed precision too
        super().__init__(inputs=inputs, outputs=outputs, name=kwargs.pop("name", "vit_backbone"), **kwargs)
        # === Config ===
        self.image_size = image_size if isinstance(image_size, int) else [int(v) for v in image_size]
        self.patch_size, self.num_channels, self.hidden_dim = patch_size, num_channels, hidden_dim
        self.num_layers, self.num_heads, self.mlp_dim = num_layers, num_heads, mlp_dim
        self.dropout, self.attention_dropout = dropout, attention_dropout
        self.position_embedding, self.use_mask_token = position_embedding, bool(use_mask_token)
        self.layer_norm_epsilon = layer_norm_epsilon
        self.max_nuclei, self.roi_size = max_nuclei, roi_size
        self.grid, self.num_patches = grid, num_patches

    def get_config(self):
        image_size = self.image_size if isinstance(self.image_size, int) else list(self.image_size)
        return {"name": self.name, "trainable": self.trainable, "image_size": image_size,
                "patch_size": self.patch_size, "num_channels": self.num_channels, "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers, "num_heads": self.num_heads, "mlp_dim": self.mlp_dim,
                "dropout": self.dropout, "attention_dropout": self.attention_dropout,
                "position_embedding": self.position_embedding, "use_mask_token": self.use_mask_token,
                "layer_norm_epsilon": self.layer_norm_epsilon, "max_nuclei": self.max_nuclei,
                "roi_size": self.roi_size}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _nucleus_tokens(patch_tokens, boxes, num_boxes, grid, patch_size, dim, k, max_nuclei):
    """Patch tokens ``(B, N, D)`` + boxes -> nucleus tokens ``(B, M, D)``: RoIAlign k x k from the patch map, a
    k x k VALID convolution (a Conv3D with a 1 x k x k kernel runs it on all M boxes at once), the box's
    (x, y, w, h) code, then [PAD] in the unused slots (last, so padded rows leave no trace)."""
    fmap = keras.layers.Reshape((*grid, dim), name="nucleus_patch_map")(patch_tokens)
    rois = RoIAlign(k, patch_size, name="nucleus_roi_align")([fmap, boxes])  # (B, M, k, k, D)
    tokens = keras.layers.Conv3D(dim, (1, k, k), padding="valid", name="nucleus_embedding")(rois)
    tokens = keras.layers.Reshape((max_nuclei, dim), name="nucleus_tokens")(tokens)
    tokens = BoxPositionEncoding(patch_size, name="nucleus_position")([tokens, boxes])
    return PadTokens(name="nucleus_pad")([tokens, num_boxes])


# Named sizes (ViT paper table 1; "tiny" and "small" from DeiT). hidden_dim / num_layers / num_heads / mlp_dim.
VIT_SIZES = {
    "tiny": dict(hidden_dim=192, num_layers=12, num_heads=3, mlp_dim=768),
    "small": dict(hidden_dim=384, num_layers=12, num_heads=6, mlp_dim=1536),
    "base": dict(hidden_dim=768, num_layers=12, num_heads=12, mlp_dim=3072),
    "large": dict(hidden_dim=1024, num_layers=24, num_heads=16, mlp_dim=4096),
}


@register_model(model_class=ViTBackbone)
def vit_tiny(**kwargs):
    """ViT-Ti/16 (192 wide, 12 layers, 3 heads), 224 px."""
    return ViTBackbone(**{**VIT_SIZES["tiny"], **kwargs})


@register_model(model_class=ViTBackbone)
def vit_small(**kwargs):
    """ViT-S/16 (384 wide, 12 layers, 6 heads), 224 px."""
    return ViTBackbone(**{**VIT_SIZES["small"], **kwargs})


@register_model(model_class=ViTBackbone)
def vit_base(**kwargs):
    """ViT-B/16 (768 wide, 12 layers, 12 heads), 224 px."""
    return ViTBackbone(**{**VIT_SIZES["base"], **kwargs})


@register_model(model_class=ViTBackbone)
def vit_large(**kwargs):
    """ViT-L/16 (1024 wide, 24 layers, 16 heads), 224 px."""
    return ViTBackbone(**{**VIT_SIZES["large"], **kwargs})
