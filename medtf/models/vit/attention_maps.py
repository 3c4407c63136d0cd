"""Attention weights of one ViT block, read without touching the model: a second functional model over the same
layers gives the block's attention input (and the [PAD] attention mask), then the block's own
``MultiHeadAttention`` layer is called once more with ``return_attention_scores=True``.

The trained model, its outputs and its saved ``.keras`` format stay exactly as they are (no layer option, no
extra output); the probe shares the weights, so it always shows the current state of training. The second call
is eager, not a new node in a functional graph: Keras 3.15's connectivity check counts a layer's outputs from its
first call only, so a symbolic second call that returns two tensors cannot be a model output.

Example:
    >>> probe = AttentionProbe(model, block=-1)            # a ViTBackbone, MaskedImageModel or NucleusClassifier
    >>> maps = probe(probe.inputs(images, boxes, num_boxes))
    >>> maps["scores"].shape                               # (B, heads, L, L), rows sum to 1
"""

from __future__ import annotations

import keras
import numpy as np


def find_backbone(model: keras.Model):
    """The `ViTBackbone` of ``model`` (the model itself, or its layer ``"backbone"``); ValueError otherwise."""
    from medtf.models.vit.vit_backbone import ViTBackbone

    if isinstance(model, ViTBackbone):
        return model
    try:
        backbone = model.get_layer("backbone")
    except ValueError:
        backbone = None
    if not isinstance(backbone, ViTBackbone):
        raise ValueError(f"attention maps need a ViT (ViTBackbone, or a model with a 'backbone' ViTBackbone "
                         f"layer such as mim_vit_* / nucleus_vit_*); {model.name!r} is not one")
    return backbone


class AttentionProbe:
    """Attention weights of block ``block`` of a ViT (``-1``: the last) for given backbone inputs.

    Args:
        model: a `ViTBackbone` or a model whose layer ``"backbone"`` is one.
        block: block index, negative from the end (``-1``: the last block).

    Attributes:
        backbone, block (the non-negative index), num_fixed (``1 + N``: [CLS] + grid tokens), grid, patch_size.
    """

    def __init__(self, model: keras.Model, block: int = -1):
        backbone = find_backbone(model)
        depth = backbone.num_layers
        if not -depth <= int(block) < depth:
            raise ValueError(f"train.attention_block {block} is out of range for a ViT with {depth} blocks "
                             f"(0..{depth - 1}, or -1 for the last)")
        self.backbone, self.block = backbone, int(block) % depth
        self.layer = backbone.get_layer(f"block{self.block}_attention")
        self.num_fixed, self.grid, self.patch_size = 1 + backbone.num_patches, backbone.grid, backbone.patch_size
        outputs = {"query": backbone.get_layer(f"block{self.block}_norm1").output,
                   "attention_output": self.layer.output}  # what the model itself computes, for checks
        if backbone.max_nuclei:
            outputs["attention_mask"] = backbone.get_layer("nucleus_attention_mask").output
        self.features = keras.Model(backbone.input, outputs, name=f"attention_probe_block{self.block}")

    def inputs(self, images, boxes=None, num_boxes=None) -> dict | np.ndarray:
        """The backbone's inputs for ``images (B, H, W, C)``: an all-zero [MASK] mask when the backbone has one,
        ``boxes (B, n, 4)`` padded / cut to ``max_nuclei`` rows and ``num_boxes`` (default: all ``n`` rows)."""
        images = np.asarray(images, np.float32)
        b = images.shape[0]
        if not self.backbone.use_mask_token and not self.backbone.max_nuclei:
            return images
        x = {"images": images}
        if self.backbone.use_mask_token:
            x["mask"] = np.zeros((b, self.backbone.num_patches), np.float32)
        m = self.backbone.max_nuclei
        if m:
            boxes = np.zeros((b, 0, 4), np.float32) if boxes is None else np.asarray(boxes, np.float32)
            n = np.full(b, boxes.shape[1]) if num_boxes is None else np.asarray(num_boxes).reshape(b)
            padded = np.zeros((b, m, 4), np.float32)
            padded[:, :min(m, boxes.shape[1])] = boxes[:, :m]
            x["boxes"], x["num_boxes"] = padded, np.minimum(n, m).astype(np.int32)
        return x

    def __call__(self, inputs) -> dict:
        """``{"scores" (B, heads, L, L), "attention_output" (B, L, D), "model_output" (B, L, D)}`` as float32
        NumPy: softmax weights (query rows, key columns; [PAD] keys get 0), the layer's output recomputed from
        them and the output the model's own forward pass gave (equal: the probe reads the real computation)."""
        f = self.features(inputs, training=False)
        out, scores = self.layer(f["query"], f["query"], attention_mask=f.get("attention_mask"),
                                 return_attention_scores=True, training=False)
        as_np = lambda t: keras.ops.convert_to_numpy(keras.ops.cast(t, "float32"))
        return {"scores": as_np(scores), "attention_output": as_np(out), "model_output": as_np(f["attention_output"])}

    def cls_rows(self, inputs) -> dict:
        """[CLS]'s attention (query 0) split by key: ``{"grid": (B, heads, gh, gw), "nuclei": (B, heads, M)}``
        (``nuclei`` empty without nucleus tokens)."""
        row = self(inputs)["scores"][:, :, 0]
        b, heads = row.shape[:2]
        return {"grid": row[:, :, 1:self.num_fixed].reshape(b, heads, *self.grid), "nuclei": row[:, :, self.num_fixed:]}
