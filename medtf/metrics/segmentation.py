"""Streaming segmentation metrics (Keras) from a global confusion matrix.

``y_true`` / ``y_pred``: ``(B, H, W, C)`` or ``(B, D, H, W, C)``, same shape; ``y_pred`` probabilities are
binarised with ``y_pred >= threshold`` (default 0.5), ``y_true`` with ``y_true >= 0.5``.

Accumulation is *global* (micro): TP/FP/FN/TN are summed over every voxel, channel and batch of the epoch
(or only channel ``class_id`` when given), and the score is computed once from the totals in ``result()``.
This is not the mean of per-case Dice; use :mod:`medtf.metrics.surface` for per-case evaluation.

Empty denominators: Dice/IoU/F1 return 1.0 when prediction and truth are both empty (perfect agreement);
precision, recall and specificity return 0.0 (Keras convention).
"""

from __future__ import annotations

import keras
from keras import ops


class _ConfusionMetric(keras.metrics.Metric):
    _empty_value = 0.0

    def __init__(self, threshold=0.5, class_id=None, name=None, dtype="float32"):
        super().__init__(name=name, dtype=dtype)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if class_id is not None and int(class_id) < 0:
            raise ValueError(f"class_id must be >= 0, got {class_id}")
        self.threshold = float(threshold)
        self.class_id = None if class_id is None else int(class_id)
        self.tp = self.add_weight(shape=(), initializer="zeros", name="tp", dtype="float32")
        self.fp = self.add_weight(shape=(), initializer="zeros", name="fp", dtype="float32")
        self.fn = self.add_weight(shape=(), initializer="zeros", name="fn", dtype="float32")
        self.tn = self.add_weight(shape=(), initializer="zeros", name="tn", dtype="float32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("sample_weight is not supported by segmentation confusion metrics")
        y_true = ops.convert_to_tensor(y_true)
        y_pred = ops.convert_to_tensor(y_pred)
        st, sp = tuple(y_true.shape), tuple(y_pred.shape)
        # Unknown (None) sizes are compatible with any: a replica's batch is static on one side only, and a
        # U-Net that pads to its size divisor in-graph has dynamic spatial sizes.
        compatible = len(st) == len(sp) and all(a is None or b is None or a == b for a, b in zip(st, sp))
        if len(sp) not in (4, 5) or not compatible:
            raise ValueError(f"Expected equal shapes of rank 4 or 5, got y_true {st}, y_pred {sp}")
        if self.class_id is not None:
            if self.class_id >= sp[-1]:
                raise ValueError(f"class_id {self.class_id} out of range for {sp[-1]} channels")
            y_true, y_pred = y_true[..., self.class_id], y_pred[..., self.class_id]
        t = ops.cast(ops.cast(y_true, "float32") >= 0.5, "float32")
        p = ops.cast(ops.cast(y_pred, "float32") >= self.threshold, "float32")
        self.tp.assign_add(ops.sum(t * p))
        self.fp.assign_add(ops.sum((1.0 - t) * p))
        self.fn.assign_add(ops.sum(t * (1.0 - p)))
        self.tn.assign_add(ops.sum((1.0 - t) * (1.0 - p)))

    def _ratio(self, num, den):
        return ops.where(den > 0, num / ops.maximum(den, 1e-12), self._empty_value)

    def reset_state(self):
        for v in (self.tp, self.fp, self.fn, self.tn):
            v.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold, "class_id": self.class_id}


@keras.saving.register_keras_serializable(package="medtf")
class DiceScore(_ConfusionMetric):
    """Global Dice ``2TP / (2TP + FP + FN)`` (1.0 when both masks are empty)."""

    _empty_value = 1.0

    def __init__(self, threshold=0.5, class_id=None, name="dice_score", dtype="float32"):
        super().__init__(threshold, class_id, name, dtype)

    def result(self):
        return self._ratio(2.0 * self.tp, 2.0 * self.tp + self.fp + self.fn)


@keras.saving.register_keras_serializable(package="medtf")
class SegF1(DiceScore):
    """Global F1 = 2PR/(P+R), identical to voxel Dice; provided under its classification name."""

    def __init__(self, threshold=0.5, class_id=None, name="seg_f1", dtype="float32"):
        super().__init__(threshold, class_id, name, dtype)


@keras.saving.register_keras_serializable(package="medtf")
class IoUScore(_ConfusionMetric):
    """Global Jaccard ``TP / (TP + FP + FN)`` (1.0 when both masks are empty)."""

    _empty_value = 1.0

    def __init__(self, threshold=0.5, class_id=None, name="iou_score", dtype="float32"):
        super().__init__(threshold, class_id, name, dtype)

    def result(self):
        return self._ratio(self.tp, self.tp + self.fp + self.fn)


@keras.saving.register_keras_serializable(package="medtf")
class SegPrecision(_ConfusionMetric):
    """Global precision ``TP / (TP + FP)``."""

    def __init__(self, threshold=0.5, class_id=None, name="seg_precision", dtype="float32"):
        super().__init__(threshold, class_id, name, dtype)

    def result(self):
        return self._ratio(self.tp, self.tp + self.fp)


@keras.saving.register_keras_serializable(package="medtf")
class SegRecall(_ConfusionMetric):
    """Global recall / sensitivity ``TP / (TP + FN)``."""

    def __init__(self, threshold=0.5, class_id=None, name="seg_recall", dtype="float32"):
        super().__init__(threshold, class_id, name, dtype)

    def result(self):
        return self._ratio(self.tp, self.tp + self.fn)


@keras.saving.register_keras_serializable(package="medtf")
class SegSpecificity(_ConfusionMetric):
    """Global specificity ``TN / (TN + FP)``."""

    def __init__(self, threshold=0.5, class_id=None, name="seg_specificity", dtype="float32"):
        super().__init__(threshold, class_id, name, dtype)

    def result(self):
        return self._ratio(self.tn, self.tn + self.fp)


_SCORES = ("dice", "iou", "precision", "recall", "specificity")


@keras.saving.register_keras_serializable(package="medtf")
class PerClassScore(keras.metrics.Metric):
    """Mean over classes of a per-class confusion score for softmax outputs, background (channel 0) excluded.

    Each voxel's prediction is its argmax class; TP/FP/FN/TN are accumulated per class over the epoch (global, as
    `DiceScore`) and ``result()`` averages the per-class score over channels ``1..C-1`` (all channels with
    ``include_background=True``). An all-background prediction therefore scores 0 Dice on any image with
    foreground, where pooling every channel (`DiceScore` on softmax outputs) would score about the background
    fraction. A class absent from both truth and prediction counts as 1 for Dice/IoU (0 otherwise), as `DiceScore`.

    Args:
        num_classes: channels ``C`` of ``y_true`` / ``y_pred`` ``(B, *spatial, C)`` (one-hot / probabilities).
        score: ``"dice"``, ``"iou"``, ``"precision"``, ``"recall"`` or ``"specificity"``.
        include_background: also average channel 0.

    Example:
        >>> PerClassScore(2, name="dice")(one_hot_mask, softmax_probabilities)
    """

    def __init__(self, num_classes, score="dice", include_background=False, name=None, dtype="float32"):
        super().__init__(name=name or f"class_{score}", dtype=dtype)
        if score not in _SCORES:
            raise ValueError(f"score must be one of {_SCORES}, got {score!r}")
        if int(num_classes) < (1 if include_background else 2):
            raise ValueError(f"num_classes={num_classes}: excluding the background needs at least 2 classes")
        self.num_classes, self.score = int(num_classes), score
        self.include_background = bool(include_background)
        shape = (self.num_classes,)
        self.tp, self.fp, self.fn, self.tn = (self.add_weight(shape=shape, initializer="zeros", name=n,
                                                              dtype="float32") for n in ("tp", "fp", "fn", "tn"))

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("sample_weight is not supported by segmentation confusion metrics")
        y_true, y_pred = ops.convert_to_tensor(y_true), ops.convert_to_tensor(y_pred)
        st, sp = tuple(y_true.shape), tuple(y_pred.shape)
        compatible = len(st) == len(sp) and all(a is None or b is None or a == b for a, b in zip(st, sp))
        if len(sp) not in (4, 5) or not compatible or sp[-1] != self.num_classes:
            raise ValueError(f"Expected equal shapes of rank 4 or 5 with {self.num_classes} channels, "
                             f"got y_true {st}, y_pred {sp}")
        t = ops.one_hot(ops.argmax(y_true, axis=-1), self.num_classes)
        p = ops.one_hot(ops.argmax(y_pred, axis=-1), self.num_classes)
        axes = tuple(range(len(sp) - 1))
        self.tp.assign_add(ops.sum(t * p, axis=axes))
        self.fp.assign_add(ops.sum((1.0 - t) * p, axis=axes))
        self.fn.assign_add(ops.sum(t * (1.0 - p), axis=axes))
        self.tn.assign_add(ops.sum((1.0 - t) * (1.0 - p), axis=axes))

    def result(self):
        tp, fp, fn, tn = self.tp, self.fp, self.fn, self.tn
        num, den, empty = {"dice": (2 * tp, 2 * tp + fp + fn, 1.0), "iou": (tp, tp + fp + fn, 1.0),
                           "precision": (tp, tp + fp, 0.0), "recall": (tp, tp + fn, 0.0),
                           "specificity": (tn, tn + fp, 0.0)}[self.score]
        per_class = ops.where(den > 0, num / ops.maximum(den, 1e-12), empty)
        return ops.mean(per_class if self.include_background else per_class[1:])

    def reset_state(self):
        for v in (self.tp, self.fp, self.fn, self.tn):
            v.assign(ops.zeros_like(v))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "score": self.score,
                "include_background": self.include_background}
