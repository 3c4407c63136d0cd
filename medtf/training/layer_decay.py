"""Layer-wise learning-rate decay for fine-tuning ViTs (``train.layer_decay``), as BEiT fine-tunes.

With ``L`` Transformer blocks (layers named ``block{i}_...``, ``i = 0 .. L-1``) every trainable variable gets a
layer id: the embeddings (variables before the first block: patch embedding, [CLS], positions, [MASK], nucleus
RoI convolution, [PAD]) id 0, block ``i`` id ``i + 1``, everything after the last block (final norm, heads) id
``L + 1``. The variable's learning rate is ``lr * decay ** (L + 1 - id)``: the head trains at ``lr``, block ``i`` at
``lr * decay ** (L - i)``, the embeddings at ``lr * decay ** (L + 1)``. Decoupled weight decay (AdamW) is scaled
alike, as in BEiT's per-group learning rates.

Keras 3 optimizers have no per-variable learning rate, and scaling gradients instead is not the same for Adam
(its update ignores the gradient's scale). `apply_layer_decay` therefore overrides the optimizer instance's
``update_step`` (which every backend calls once per variable with the current learning rate, also per replica
under a distribution strategy) and ``_apply_weight_decay``. The optimizer's class and config are unchanged, so
checkpoints load as before; the decay is re-applied by ``medtf train`` from the config (resumption too).

Reference:
    Bao et al., "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022 (layer-wise lr decay 0.65-0.75).
"""

from __future__ import annotations

import re
import types

BLOCK = re.compile(r"(?:^|/)block(\d+)_")


def layer_scales(model, decay: float) -> dict[str, float]:
    """Learning-rate multiplier per variable path of ``model`` (see the module docstring). Raises ValueError when the
    model has no ``block{i}_`` layers."""
    decay = float(decay)
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"train.layer_decay must be in (0, 1], got {decay}")
    paths = [v.path for v in model.variables]
    blocks = [int(m.group(1)) if (m := BLOCK.search(p)) else None for p in paths]
    found = [b for b in blocks if b is not None]
    if not found:
        raise ValueError(f"train.layer_decay needs a ViT-style model with Transformer blocks named block{{i}}_...; "
                         f"{model.name!r} has none")
    depth, first = max(found) + 1, blocks.index(min(found))
    ids = [b + 1 if b is not None else (0 if i < first else depth + 1) for i, b in enumerate(blocks)]
    return {p: decay ** (depth + 1 - k) for p, k in zip(paths, ids)}


def apply_layer_decay(optimizer, model, decay: float):
    """Make ``optimizer`` (not yet built, or built on ``model``'s variables) update each variable of ``model`` with
    its layer's learning rate; returns the optimizer. A LossScaleOptimizer's inner optimizer is patched."""
    import keras

    scales = layer_scales(model, decay)
    inner = getattr(optimizer, "inner_optimizer", optimizer)

    def scale_of(opt, variable) -> float:
        # The index is resolved at trace time (a Python int), for a Keras variable or a replica's tf.Variable.
        path = opt._trainable_variables[opt._get_variable_index(variable)].path
        if path not in scales:
            raise ValueError(f"train.layer_decay: the optimizer updates {path!r}, which is not a variable of "
                             f"{model.name!r}")
        return scales[path]

    base_update = inner.update_step

    def update_step(opt, gradient, variable, learning_rate):
        return base_update(gradient, variable, learning_rate * scale_of(opt, variable))

    def _apply_weight_decay(opt, variables):
        if opt.weight_decay is None:
            return
        if keras.backend.backend() != "tensorflow":
            for variable in variables:
                if opt._use_weight_decay(variable):
                    lr = keras.ops.cast(opt.learning_rate, variable.dtype) * scale_of(opt, variable)
                    variable.assign(variable - variable * keras.ops.cast(opt.weight_decay, variable.dtype) * lr)
            return
        import tensorflow as tf

        def distributed(distribution, variables):
            for variable in variables:
                scale = scale_of(opt, variable)

                def decay_fn(var, scale=scale):
                    if opt._use_weight_decay(var):
                        lr = tf.cast(opt.learning_rate, var.dtype) * scale
                        var.assign_sub(var * tf.cast(opt.weight_decay, var.dtype) * lr)

                value = variable.value if isinstance(variable, keras.Variable) else variable
                distribution.extended.update(value, decay_fn, group=False)

        tf.__internal__.distribute.interim.maybe_merge_call(distributed, opt._distribution_strategy, variables)

    inner.update_step = types.MethodType(update_step, inner)
    inner._apply_weight_decay = types.MethodType(_apply_weight_decay, inner)
    inner.layer_decay = float(decay)
    return optimizer
