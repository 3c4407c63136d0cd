"""Segmentation: image -> mask, today's medtf behaviour (Dice metrics, image panels, per-case evaluation)."""

from __future__ import annotations

from typing import Any

import keras

from medtf.tasks.base import Task, main_output


def deep_supervision_weights(num_outputs: int) -> list[float]:
    """nnU-Net's weights for ``[main, aux_1, ...]``: ``1, 1/2, 1/4, ...``, the lowest resolution dropped (weight 0)
    when there are more than two heads, normalised to sum to 1.

    Example:
        >>> deep_supervision_weights(3)      # [1, 0.5, 0] / 1.5
        [0.6666666666666666, 0.3333333333333333, 0.0]
    """
    weights = [0.5 ** k for k in range(num_outputs)]
    if num_outputs > 2:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def _outputs(model) -> list:
    return list(model.outputs) if isinstance(model.outputs, (list, tuple)) else [model.outputs]


def output_scales(model) -> list[int]:
    """Downsampling factor of each head of ``model`` (1 for the main head; ``2**k`` for a U-Net's ``output_aux{k}``)."""
    scales = []
    for tensor in _outputs(model):
        name = getattr(tensor, "name", "") or ""
        layer = tensor._keras_history[0].name if hasattr(tensor, "_keras_history") else name
        scales.append(2 ** int(layer.split("output_aux")[1]) if "output_aux" in layer else 1)
    return scales


def is_softmax(model) -> bool:
    """Mutually exclusive classes: a multi-channel head with a softmax (channel 0 is the background)."""
    channels = main_output(model.outputs).shape[-1]
    return bool(channels and channels > 1 and getattr(model, "final_activation", None) == "softmax")


class SegmentationTask(Task):
    """``image (*spatial, C)`` -> ``mask (*spatial, 1)`` labels; softmax models get one-hot targets.

    Metrics: sigmoid heads get voxel Dice/IoU/precision/recall/specificity pooled over the epoch (`DiceScore`...);
    softmax heads the same per class with the background excluded (`PerClassScore`), so an all-background
    prediction scores Dice 0, not the background fraction. Deep-supervision models (several heads) get one loss per
    head on targets downsampled to each head (nearest, every ``2**k``-th voxel) with `deep_supervision_weights`;
    metrics on the main head (logged as ``output_dice`` ...).
    """

    name = "segmentation"
    fields = ("image", "mask")
    image_panels = True

    # === Data ===
    def model_inputs(self, model=None):
        import tensorflow as tf

        classes = int(main_output(model.outputs).shape[-1]) if model is not None and is_softmax(model) else None
        scales = output_scales(model) if model is not None else [1]

        def to_model(example):
            self.check_fields(example)
            mask = example["mask"]
            if classes is not None:
                mask = tf.one_hot(tf.cast(mask[..., 0], tf.int32), classes)
            mask = tf.cast(mask, tf.float32)
            if len(scales) == 1:
                return example["image"], mask
            rank = len(mask.shape) - 1
            return example["image"], tuple(mask[(slice(None, None, s),) * rank] for s in scales)

        return to_model

    # === Compile ===
    def default_loss(self, model):
        from medtf.losses import get_loss

        return get_loss("dice_ce", include_background=not is_softmax(model))

    def default_metrics(self, model):
        from medtf.metrics import DiceScore, IoUScore, PerClassScore, SegPrecision, SegRecall, SegSpecificity

        if is_softmax(model):
            classes = int(main_output(model.outputs).shape[-1])
            metrics = [PerClassScore(classes, score, name=score)
                       for score in ("dice", "iou", "precision", "recall", "specificity")]
        else:
            # F1 is Dice for binary masks (medtf.metrics.SegF1): not logged twice.
            metrics = [DiceScore(name="dice"), IoUScore(name="iou"), SegPrecision(name="precision"),
                       SegRecall(name="recall"), SegSpecificity(name="specificity")]
        outputs = _outputs(model)
        if len(outputs) == 1:
            return metrics
        return [metrics] + [[] for _ in outputs[1:]]

    def compile(self, model, optimizer, loss: Any = "auto", metrics: Any = "auto", **kwargs) -> None:
        outputs = _outputs(model)
        if len(outputs) == 1:
            return super().compile(model, optimizer, loss, metrics, **kwargs)
        metrics = self.default_metrics(model) if isinstance(metrics, str) and metrics == "auto" else metrics
        losses = [self.build_loss(loss, model) for _ in outputs]
        model.compile(optimizer=optimizer, loss=losses, loss_weights=deep_supervision_weights(len(outputs)),
                      metrics=metrics, **kwargs)

    # === Diagnostics, evaluation, export, predict ===
    def diagnostics(self, data, train_cfg, paths, best, val_examples) -> list:
        from medtf.training.diagnostics import ValidationPanels

        if train_cfg.image_panels and val_examples:
            return [ValidationPanels(paths.images, val_examples, train_cfg.monitor, train_cfg.mode, best=best)]
        return []

    def evaluate(self, run_dir, **kwargs) -> dict:
        from medtf.evaluation import evaluate_run

        return evaluate_run(run_dir, **kwargs)

    def export(self, run_dir, **kwargs):
        from medtf.export import export_run

        return export_run(run_dir, **kwargs)

    def predict(self, model_dir, input_path, output, **kwargs) -> dict:
        from medtf.export.predict import predict_path

        return predict_path(model_dir, input_path, output, **kwargs)
