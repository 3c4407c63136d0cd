"""L_inst of masked image modelling with nucleus tokens: 4 visual tokens per nucleus on a masked patch.

The ``masked_modeling`` task packs the targets of the model's ``"nuclei"`` output as ``y (B, M, 5)``: the 4 token
ids of each nucleus box (`medtf.models.vit.masking.instance_targets`: the box resampled to 2 x 2 token cells,
quadrant centres, nearest cell) followed by ``counted`` (1 when the nucleus is real and overlaps a masked patch).
The model predicts ``(B, M, 4, V)`` logits. As the grid-token loss, the loss is per example the mean over its
counted nuclei (and their 4 tokens), 0 where none counts, averaged over the batch; the metric pools every counted
token.
"""

from __future__ import annotations

import keras
from keras import ops


def _split(y_true, y_pred):
    y_true = ops.cast(y_true, "float32")
    return ops.cast(y_true[..., :4], "int32"), y_true[..., 4], ops.cast(y_pred, "float32")


@keras.saving.register_keras_serializable(package="medtf")
class InstanceTokenLoss(keras.losses.Loss):
    """Sparse cross-entropy of the 4 tokens of every counted nucleus: ``y_true (B, M, 5)`` (4 ids, counted),
    ``y_pred (B, M, 4, V)`` logits. Per-example values ``(B,)``."""

    def __init__(self, name="instance_token_loss", reduction="sum_over_batch_size", dtype="float32"):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        ids, counted, logits = _split(y_true, y_pred)
        ce = ops.mean(keras.losses.sparse_categorical_crossentropy(ids, logits, from_logits=True), axis=-1)
        return ops.sum(ce * counted, axis=-1) / ops.maximum(ops.sum(counted, axis=-1), 1.0)


@keras.saving.register_keras_serializable(package="medtf")
class InstanceTokenAccuracy(keras.metrics.Mean):
    """Top-1 accuracy over the 4 tokens of every counted nucleus seen."""

    def __init__(self, name="inst_accuracy", dtype="float32"):
        super().__init__(name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        ids, counted, logits = _split(y_true, y_pred)
        hit = ops.cast(ops.cast(ops.argmax(logits, axis=-1), "int32") == ids, "float32")  # (B, M, 4)
        return super().update_state(hit, sample_weight=ops.broadcast_to(counted[..., None], ops.shape(hit)))


def instance_scores(y, pred) -> dict:
    """NumPy per-example ``inst_loss``, ``inst_counted`` (nuclei) and ``inst_correct`` (tokens) of the evaluator."""
    import numpy as np

    ids, counted = y[..., :4].astype(int), y[..., 4].astype(np.float64)
    logits = pred.astype(np.float64) - pred.max(-1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_p, ids[..., None], -1)[..., 0].mean(-1)
    n = counted.sum(-1)
    return {"inst_loss": (ce * counted).sum(-1) / np.maximum(n, 1), "inst_counted": n,
            "inst_correct": ((pred.argmax(-1) == ids) * counted[..., None]).sum((-1, -2))}


def has_inst_head(model) -> bool:
    """Whether ``model`` (a `MaskedImageModel`) predicts L_inst tokens: nucleus tokens, token targets, inst_loss."""
    return bool(getattr(model, "max_nuclei", 0)) and model.target == "tokens" and getattr(model, "inst_loss", True)


def instance_inputs(model, image, values, mask, example):
    """The nucleus part of one example for a masked image model with nucleus tokens: ``(x extra, y nuclei)``.

    ``x extra``: ``boxes (M, 4)`` and ``num_boxes`` (the example's boxes padded / truncated to ``max_nuclei``);
    ``y nuclei`` ``(M, 5)`` when the model has the L_inst head (token targets), else None. ``values (N, 1)``
    are the grid-token ids the task already drew (any target provider: one id per grid patch), ``mask (N,)``.
    """
    import tensorflow as tf

    from medtf.data.parsers import pad_boxes
    from medtf.models.vit.masking import instance_targets

    if "boxes" not in example:
        raise ValueError(f"task 'masked_modeling': the model has nucleus tokens (max_nuclei {model.max_nuclei}) "
                         f"and needs a 'boxes' field (data kind nuclei-he); the data provides {sorted(example)}")
    classes = example.get("classes", tf.zeros(tf.shape(example["boxes"])[:1], tf.int32))
    boxes, _, num_boxes = pad_boxes(example["boxes"], classes, model.max_nuclei)
    extra = {"boxes": boxes, "num_boxes": num_boxes}
    if not has_inst_head(model):
        return extra, None
    gh, gw = model.grid
    grid = tf.reshape(tf.cast(values[:, 0], tf.int32), [1, gh, gw])
    ids, counted = instance_targets(grid, boxes[None], num_boxes[None], tf.reshape(mask, [1, gh, gw]),
                                    image.shape[:2])
    return extra, tf.concat([tf.cast(ids[0], tf.float32), counted[0][:, None]], axis=-1)
