"""Segmentation losses on channels-last probability maps.

Layouts: ``y_true`` and ``y_pred`` are ``(B, H, W, C)`` (2D) or ``(B, D, H, W, C)`` (3D) with identical
shapes; ``y_pred`` holds probabilities (sigmoid or softmax outputs), ``y_true`` binary / one-hot masks.
Every loss casts both inputs to float32 (safe under ``mixed_float16``) and returns one value per sample,
shape ``(B,)``, so Keras' reduction and ``sample_weight`` behave as usual. With ``batch_dice=True`` the
batch-level value is broadcast to every sample (its mean is the batch value).
"""

from __future__ import annotations

import keras
from keras import ops

_EPS = 1e-7
_REGISTRY: dict[str, type] = {}


def _register(*names):
    def deco(cls):
        cls = keras.saving.register_keras_serializable(package="medtf")(cls)
        for n in (cls.__name__, *names):
            _REGISTRY[n.lower()] = cls
        return cls

    return deco


def _keras_losses() -> dict[str, type]:
    """Keras' own loss classes by lower-case class name and snake_case name (``binary_crossentropy``)."""
    import re

    out = {}
    for attr in dir(keras.losses):
        cls = getattr(keras.losses, attr)
        if isinstance(cls, type) and issubclass(cls, keras.losses.Loss) and cls is not keras.losses.Loss:
            snake = re.sub(r"(?<!^)(?=[A-Z])", "_", attr).lower()
            out[attr.lower()] = out[snake] = out[snake.replace("cross_entropy", "crossentropy")] = cls
    return out


def _all_losses() -> dict[str, type]:
    return {**_keras_losses(), **_REGISTRY}


def get_loss(name: str, **kwargs) -> keras.losses.Loss:
    """Create a loss by name: medtf's (``"soft_dice"``, ``"dice_ce"``, ``"SoftDiceLoss"``) or Keras' own
    (``"binary_crossentropy"``, ``"SparseCategoricalCrossentropy"``, ...); case-insensitive.

    Example:
        >>> loss = get_loss("dice_focal", gamma=2.0)
        >>> loss = get_loss("binary_crossentropy", label_smoothing=0.1)
    """
    return loss_class(name)(**kwargs)


def list_losses() -> list[str]:
    """Sorted loss names `get_loss` knows (lower case; `get_loss` ignores case), Keras' own included."""
    return sorted(_all_losses())


def loss_class(name: str) -> type:
    """The loss class ``name`` (case-insensitive; medtf's registry first, then Keras' losses)."""
    losses = _all_losses()
    if name.lower() not in losses:
        raise ValueError(f"Unknown loss {name!r}; available: {sorted(losses)}")
    return losses[name.lower()]


def _prepare(y_true, y_pred):
    """Cast to float32 and check shapes: equal, rank 4 (2D) or 5 (3D)."""
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    st, sp = tuple(y_true.shape), tuple(y_pred.shape)
    if len(sp) not in (4, 5):
        raise ValueError(f"Expected y_pred of rank 4 (B,H,W,C) or 5 (B,D,H,W,C), got shape {sp}")
    if len(st) != len(sp) or any(a is not None and b is not None and a != b for a, b in zip(st, sp)):
        raise ValueError(f"y_true shape {st} does not match y_pred shape {sp}")
    return y_true, y_pred


def _drop_background(y_true, y_pred, include_background):
    if include_background:
        return y_true, y_pred
    if y_pred.shape[-1] is not None and y_pred.shape[-1] < 2:
        raise ValueError("include_background=False needs at least 2 channels (channel 0 is background)")
    return y_true[..., 1:], y_pred[..., 1:]


def _overlap_sums(y_true, y_pred, batch_dice, per_class, squared=False):
    """Sums of TP, sum(y_true), sum(y_pred) over spatial (+batch, +channel) axes.

    Returns tensors of shape (B|1, C|1).
    """
    rank = len(y_pred.shape)
    spatial = tuple(range(1, rank - 1))
    axes = spatial if not batch_dice else (0, *spatial)
    tp = ops.sum(y_true * y_pred, axis=axes, keepdims=True)
    t = ops.sum(ops.square(y_true) if squared else y_true, axis=axes, keepdims=True)
    p = ops.sum(ops.square(y_pred) if squared else y_pred, axis=axes, keepdims=True)
    if not per_class:
        tp, t, p = (ops.sum(x, axis=-1, keepdims=True) for x in (tp, t, p))
    shape = (-1, tp.shape[-1])
    return ops.reshape(tp, shape), ops.reshape(t, shape), ops.reshape(p, shape)


def _to_batch(values_bc, y_pred):
    """(B|1, C) -> (B,): mean over classes, broadcast over the batch when it was reduced."""
    per = ops.mean(values_bc, axis=-1)
    return per * ops.ones((ops.shape(y_pred)[0],), dtype="float32")


def soft_dice_loss(y_true, y_pred, smooth=1e-5, per_class=True, batch_dice=False,
                   include_background=True, squared=False):
    """Per-sample soft Dice loss ``1 - (2*sum(t*p) + s) / (sum(t) + sum(p) + s)``, shape (B,)."""
    y_true, y_pred = _prepare(y_true, y_pred)
    y_true, y_pred = _drop_background(y_true, y_pred, include_background)
    tp, t, p = _overlap_sums(y_true, y_pred, batch_dice, per_class, squared)
    dice = (2.0 * tp + smooth) / (t + p + smooth)
    return _to_batch(1.0 - dice, y_pred)


class _Base(keras.losses.Loss):
    def __init__(self, name=None, reduction="sum_over_batch_size", dtype="float32"):
        super().__init__(name=name, reduction=reduction, dtype=dtype)


@_register("soft_dice", "dice")
class SoftDiceLoss(_Base):
    """Soft Dice loss for binary / multi-class segmentation.

    Args:
        smooth: added to numerator and denominator.
        per_class: True: Dice per channel then mean over channels; False: one Dice over all channels.
        batch_dice: True: sums over the whole batch (nnU-Net "batch dice"); False: Dice per sample, then mean.
        include_background: False drops channel 0 (needs C >= 2).
        squared: denominator ``sum(t^2) + sum(p^2)`` (V-Net) instead of ``sum(t) + sum(p)``.

    Example:
        >>> SoftDiceLoss()(y_true, y_pred)  # y_* (B, D, H, W, C)

    Reference: Milletari et al., V-Net (2016); Isensee et al., nnU-Net (2021).
    """

    def __init__(self, smooth=1e-5, per_class=True, batch_dice=False, include_background=True,
                 squared=False, name="soft_dice_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}")
        self.smooth = float(smooth)
        self.per_class = bool(per_class)
        self.batch_dice = bool(batch_dice)
        self.include_background = bool(include_background)
        self.squared = bool(squared)

    def call(self, y_true, y_pred):
        return soft_dice_loss(y_true, y_pred, self.smooth, self.per_class, self.batch_dice,
                              self.include_background, self.squared)

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth, "per_class": self.per_class,
                "batch_dice": self.batch_dice, "include_background": self.include_background,
                "squared": self.squared}


@_register("weighted_bce")
class WeightedBCE(_Base):
    """Binary cross-entropy with a weight on the positive term, mean over voxels and channels.

    ``-(pos_weight * t * log(p) + (1 - t) * log(1 - p))``, p clipped to ``[1e-7, 1 - 1e-7]``.

    Args:
        pos_weight: weight (> 0) of foreground voxels; > 1 counteracts small structures.
    """

    def __init__(self, pos_weight=1.0, name="weighted_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        if pos_weight <= 0:
            raise ValueError(f"pos_weight must be > 0, got {pos_weight}")
        self.pos_weight = float(pos_weight)

    def call(self, y_true, y_pred):
        y_true, y_pred = _prepare(y_true, y_pred)
        p = ops.clip(y_pred, _EPS, 1.0 - _EPS)
        ce = -(self.pos_weight * y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))
        return ops.mean(ops.reshape(ce, (ops.shape(ce)[0], -1)), axis=-1)

    def get_config(self):
        return {**super().get_config(), "pos_weight": self.pos_weight}


def _cross_entropy(y_true, y_pred, mode):
    """Per-sample CE, shape (B,). mode: 'binary' (per channel, sigmoid) or 'categorical' (softmax)."""
    p = ops.clip(y_pred, _EPS, 1.0 - _EPS)
    if mode == "binary":
        ce = -(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))
    else:
        ce = -ops.sum(y_true * ops.log(p), axis=-1)
    return ops.mean(ops.reshape(ce, (ops.shape(ce)[0], -1)), axis=-1)


@_register("dice_ce")
class DiceCELoss(_Base):
    """``dice_weight * SoftDice + ce_weight * CE``.

    CE is binary CE (sigmoid outputs) for 1 channel, categorical CE (softmax outputs) for C > 1;
    ``ce="binary"`` forces per-channel binary CE (multi-label). CE always uses all channels.

    Args:
        dice_weight, ce_weight: non-negative weights.
        smooth, batch_dice, include_background: passed to the Dice term.
        ce: "auto" | "binary" | "categorical".
    """

    def __init__(self, dice_weight=1.0, ce_weight=1.0, smooth=1e-5, batch_dice=False,
                 include_background=True, ce="auto", name="dice_ce_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if dice_weight < 0 or ce_weight < 0:
            raise ValueError("dice_weight and ce_weight must be >= 0")
        if ce not in ("auto", "binary", "categorical"):
            raise ValueError(f"ce must be 'auto', 'binary' or 'categorical', got {ce!r}")
        self.dice_weight, self.ce_weight = float(dice_weight), float(ce_weight)
        self.smooth, self.batch_dice = float(smooth), bool(batch_dice)
        self.include_background, self.ce = bool(include_background), ce

    def call(self, y_true, y_pred):
        y_true, y_pred = _prepare(y_true, y_pred)
        mode = self.ce
        if mode == "auto":
            mode = "binary" if y_pred.shape[-1] == 1 else "categorical"
        if mode == "categorical" and y_pred.shape[-1] == 1:
            raise ValueError("categorical CE needs C >= 2 (softmax outputs)")
        dice = soft_dice_loss(y_true, y_pred, self.smooth, True, self.batch_dice, self.include_background)
        return self.dice_weight * dice + self.ce_weight * _cross_entropy(y_true, y_pred, mode)

    def get_config(self):
        return {**super().get_config(), "dice_weight": self.dice_weight, "ce_weight": self.ce_weight,
                "smooth": self.smooth, "batch_dice": self.batch_dice,
                "include_background": self.include_background, "ce": self.ce}


@_register("dice_focal")
class DiceFocalLoss(_Base):
    """``dice_weight * SoftDice + focal_weight * BinaryFocalCrossentropy`` (per channel, sigmoid outputs).

    The focal term is ``keras.losses.binary_focal_crossentropy`` averaged over voxels and channels:
    ``w * (1 - p_t)^gamma * BCE`` with ``w = alpha`` on positives and ``1 - alpha`` on negatives
    (``alpha=None``: no class balancing).

    Reference: Lin et al., Focal Loss for Dense Object Detection (2017).
    """

    def __init__(self, dice_weight=1.0, focal_weight=1.0, gamma=2.0, alpha=0.25, smooth=1e-5,
                 batch_dice=False, include_background=True, name="dice_focal_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if dice_weight < 0 or focal_weight < 0 or gamma < 0:
            raise ValueError("dice_weight, focal_weight and gamma must be >= 0")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] or None, got {alpha}")
        self.dice_weight, self.focal_weight = float(dice_weight), float(focal_weight)
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)
        self.smooth, self.batch_dice = float(smooth), bool(batch_dice)
        self.include_background = bool(include_background)

    def call(self, y_true, y_pred):
        y_true, y_pred = _prepare(y_true, y_pred)
        dice = soft_dice_loss(y_true, y_pred, self.smooth, True, self.batch_dice, self.include_background)
        focal = keras.losses.binary_focal_crossentropy(
            ops.expand_dims(y_true, -1), ops.expand_dims(y_pred, -1),
            apply_class_balancing=self.alpha is not None,
            alpha=0.25 if self.alpha is None else self.alpha, gamma=self.gamma)
        focal = ops.mean(ops.reshape(focal, (ops.shape(focal)[0], -1)), axis=-1)
        return self.dice_weight * dice + self.focal_weight * focal

    def get_config(self):
        return {**super().get_config(), "dice_weight": self.dice_weight,
                "focal_weight": self.focal_weight, "gamma": self.gamma, "alpha": self.alpha,
                "smooth": self.smooth, "batch_dice": self.batch_dice,
                "include_background": self.include_background}


@_register("tversky")
class TverskyLoss(_Base):
    """``1 - (TP + s) / (TP + alpha*FP + beta*FN + s)`` per sample and channel, mean over channels.

    alpha = beta = 0.5 gives the soft Dice loss; beta > alpha penalises false negatives more.

    Reference: Salehi et al., Tversky loss function for image segmentation (2017).
    """

    def __init__(self, alpha=0.3, beta=0.7, smooth=1e-5, include_background=True,
                 name="tversky_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if alpha < 0 or beta < 0 or smooth < 0:
            raise ValueError("alpha, beta and smooth must be >= 0")
        self.alpha, self.beta, self.smooth = float(alpha), float(beta), float(smooth)
        self.include_background = bool(include_background)

    def call(self, y_true, y_pred):
        y_true, y_pred = _prepare(y_true, y_pred)
        y_true, y_pred = _drop_background(y_true, y_pred, self.include_background)
        tp, t, p = _overlap_sums(y_true, y_pred, False, True)
        fp, fn = p - tp, t - tp
        ti = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)
        return _to_batch(1.0 - ti, y_pred)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta,
                "smooth": self.smooth, "include_background": self.include_background}
