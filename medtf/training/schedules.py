"""Learning-rate schedules from the ``schedule`` config section.

=====================  ===========================================================================================
``constant`` (default) ``optimizer.learning_rate`` throughout.
``reduce_on_plateau``  `keras.callbacks.ReduceLROnPlateau`: multiply by ``factor`` (0.5) after ``patience`` (5)
                       epochs without improvement of ``monitor`` (``train.monitor``), not below ``min_lr`` (0).
``cosine``             linear warm-up from ``warmup_from`` (0) to ``optimizer.learning_rate`` over ``warmup_steps``
                       (or ``warmup_epochs`` x steps per epoch), then cosine decay to ``min_lr`` (0) at the last
                       step: `warmup_cosine`, a serializable `keras.optimizers.schedules.CosineDecay`.
=====================  ===========================================================================================

Example:
    >>> lr = build_learning_rate({"name": "cosine", "warmup_epochs": 1}, 1e-3, steps_per_epoch=100, epochs=10)
    >>> float(lr(100))   # end of warm-up: the peak
    0.001
"""

from __future__ import annotations

from typing import Any, Mapping

import keras

SCHEDULES = ("constant", "reduce_on_plateau", "cosine")


def schedule_name(schedule: Mapping | None) -> str:
    name = str((schedule or {}).get("name", "constant")).lower()
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")
    return name


def warmup_cosine(peak_lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0,
                  warmup_from: float = 0.0) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up ``warmup_from -> peak_lr`` over ``warmup_steps``, then cosine ``peak_lr -> min_lr``.

    ``lr(s) = warmup_from + (peak_lr - warmup_from) * s / warmup_steps`` for ``s < warmup_steps``, then
    ``lr(s) = min_lr + (peak_lr - min_lr) * 0.5 * (1 + cos(pi * (s - warmup_steps) / decay_steps))`` with
    ``decay_steps = total_steps - warmup_steps``; constant ``min_lr`` after ``total_steps``.

    Args:
        peak_lr: learning rate at the end of the warm-up.
        total_steps: optimizer steps of the whole run (epochs x steps per epoch).
        warmup_steps: steps of linear warm-up (0: start at ``peak_lr``).
        min_lr: final learning rate.
        warmup_from: learning rate at step 0.

    Example:
        >>> float(warmup_cosine(1e-3, 1000, 100, min_lr=1e-5)(550))   # halfway through the decay
        0.000505
    """
    peak_lr, min_lr = float(peak_lr), float(min_lr)
    warmup_steps, total_steps = int(warmup_steps), int(total_steps)
    if warmup_steps < 0 or total_steps <= warmup_steps:
        raise ValueError(f"need 0 <= warmup_steps ({warmup_steps}) < total_steps ({total_steps})")
    if peak_lr <= 0 or not 0 <= min_lr <= peak_lr:
        raise ValueError(f"need peak_lr > 0 and 0 <= min_lr <= peak_lr, got {peak_lr}, {min_lr}")
    # CosineDecay's alpha is the floor as a fraction of the decay's starting value.
    alpha = min_lr / peak_lr
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(peak_lr, total_steps, alpha=alpha)
    return keras.optimizers.schedules.CosineDecay(float(warmup_from), total_steps - warmup_steps, alpha=alpha,
                                                  warmup_target=peak_lr, warmup_steps=warmup_steps)


def build_learning_rate(schedule: Mapping | None, learning_rate: float, steps_per_epoch: int | None = None,
                        epochs: int = 1) -> Any:
    """The optimizer's ``learning_rate``: a float, or a `LearningRateSchedule` for ``cosine``.

    Args:
        schedule: the ``schedule`` config section (None: constant).
        learning_rate: ``optimizer.learning_rate`` (the peak for ``cosine``).
        steps_per_epoch: optimizer steps per epoch (needed by ``cosine``).
        epochs: epochs of the run (``train.epochs``).
    """
    schedule = dict(schedule or {})
    if schedule_name(schedule) != "cosine":
        return float(learning_rate)
    if not steps_per_epoch:
        raise ValueError("schedule cosine needs the number of steps per epoch (train.steps_per_epoch)")
    steps_per_epoch = int(steps_per_epoch)
    if "warmup_steps" in schedule and "warmup_epochs" in schedule:
        raise ValueError("give schedule.warmup_steps or schedule.warmup_epochs, not both")
    warmup = int(schedule.get("warmup_steps", round(float(schedule.get("warmup_epochs", 0)) * steps_per_epoch)))
    return warmup_cosine(learning_rate, int(epochs) * steps_per_epoch, warmup,
                         min_lr=float(schedule.get("min_lr", 0.0)), warmup_from=float(schedule.get("warmup_from", 0.0)))


def schedule_callbacks(schedule: Mapping | None, monitor: str, mode: str) -> list:
    """Callbacks a schedule needs (`ReduceLROnPlateau` for ``reduce_on_plateau``; none otherwise).

    ``monitor`` / ``mode`` are ``train.monitor`` / ``train.mode``, used unless the schedule names its own monitor:
    ReduceLROnPlateau's ``mode="auto"`` would treat ``val_dice`` as a loss to minimise.
    """
    schedule = dict(schedule or {})
    if schedule_name(schedule) != "reduce_on_plateau":
        return []
    own = schedule.get("monitor", monitor)
    return [keras.callbacks.ReduceLROnPlateau(
        monitor=own, mode=schedule.get("mode", mode if own == monitor else "auto"),
        factor=float(schedule.get("factor", 0.5)), patience=int(schedule.get("patience", 5)),
        min_lr=float(schedule.get("min_lr", 0.0)), min_delta=float(schedule.get("min_delta", 1e-4)),
        cooldown=int(schedule.get("cooldown", 0)), verbose=int(schedule.get("verbose", 0)))]


def current_learning_rate(optimizer) -> float:
    """The learning rate the optimizer uses now (a schedule is evaluated at ``optimizer.iterations``)."""
    return scalar(optimizer.learning_rate)


def scalar(value) -> float:
    """A scalar variable/tensor as a Python float (``.numpy()`` avoids NumPy 2's ``__array__`` copy warning)."""
    return float(value.numpy()) if hasattr(value, "numpy") else float(value)
