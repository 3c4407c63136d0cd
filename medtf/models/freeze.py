"""Freeze / unfreeze layers by block name or up to a layer, for transfer learning on any medtf model.

A layer's *block* is its name up to the first underscore (``block1_conv1`` -> ``block1``, ``fc2_dense`` ->
``fc2``, ``head_logits`` -> ``head``); nested models (a classifier's backbone) are walked into, in network order.

Frozen batch norm: in Keras 3 a ``BatchNormalization`` with ``trainable=False`` normalises with its moving
statistics and does not update them, also inside ``fit`` (inference mode), which is what fine-tuning on a small
data set needs. ``trainable`` is read when a model is compiled: call `freeze` before ``compile`` (or compile
again afterwards).

Example:
    >>> model = get_model("vgg_elu_small", in_channels=3, num_classes=1)
    >>> freeze(model, blocks=["block1", "block2"])          # or freeze(model, up_to="block3_pool")
    >>> trainable_counts(model)["block1"]
    0
"""

from __future__ import annotations

from typing import Iterable

import keras
import numpy as np


def block_of(name: str) -> str:
    """The block a layer named ``name`` belongs to (its name up to the first underscore)."""
    return name.split("_", 1)[0]


def leaf_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every non-input layer of ``model`` in network order, nested models replaced by their own layers."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        out.extend(leaf_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return out


def block_names(model: keras.Model) -> list[str]:
    """The blocks of ``model``'s leaf layers, in network order, each once."""
    return list(dict.fromkeys(block_of(layer.name) for layer in leaf_layers(model)))


def _select(model, blocks, up_to) -> list[keras.layers.Layer]:
    layers = leaf_layers(model)
    if (blocks is None) == (up_to is None):
        raise ValueError("give exactly one of blocks=[...] or up_to='layer or block name'")
    known = block_names(model)
    if blocks is not None:
        blocks = [blocks] if isinstance(blocks, str) else list(blocks)
        unknown = [b for b in blocks if b not in known]
        if unknown:
            raise ValueError(f"unknown block(s) {unknown} in model {model.name!r}; its blocks: {known}")
        return [layer for layer in layers if block_of(layer.name) in blocks]
    hits = [i for i, layer in enumerate(layers) if layer.name == up_to or block_of(layer.name) == up_to]
    if not hits:
        raise ValueError(f"up_to={up_to!r} is neither a layer nor a block of model {model.name!r}; its blocks: "
                         f"{known}")
    return layers[: hits[-1] + 1]  # a block name: through the block's last layer


def freeze(model: keras.Model, blocks: Iterable[str] | str | None = None, up_to: str | None = None,
           trainable: bool = False) -> list[str]:
    """Set ``trainable`` (default False: freeze) on the layers of ``blocks``, or on every layer from the input
    through ``up_to`` (a layer name, or a block name meaning its last layer). Returns the names of the layers set.

    Raises:
        ValueError: neither or both selectors, or a block / layer the model does not have (the message lists
            its blocks).
    """
    chosen = _select(model, blocks, up_to)
    for layer in chosen:
        layer.trainable = trainable
    return [layer.name for layer in chosen]


def unfreeze(model: keras.Model, blocks: Iterable[str] | str | None = None, up_to: str | None = None) -> list[str]:
    """Make layers trainable again: those of ``blocks`` / through ``up_to``, or every layer when neither is given."""
    if blocks is None and up_to is None:
        layers = leaf_layers(model)
        for layer in layers:
            layer.trainable = True
        return [layer.name for layer in layers]
    return freeze(model, blocks, up_to, trainable=True)


def trainable_counts(model: keras.Model) -> dict[str, int]:
    """Trainable parameters per block (0 for a frozen block), in network order."""
    counts = {b: 0 for b in block_names(model)}
    for layer in leaf_layers(model):
        counts[block_of(layer.name)] += int(sum(np.prod(w.shape) for w in layer.trainable_weights))
    return counts


__all__ = ["block_names", "block_of", "freeze", "leaf_layers", "trainable_counts", "unfreeze"]
