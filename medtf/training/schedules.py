"""Learning-rate schedules from the ``schedule`` config section.

=====================  ===========================================================================================
``constant`` (default) ``optimizer.learning_rate`` throughout.
``reduce_on_plateau``  `keras.callbacks.ReduceLROnPlateau`: multiply by ``factor`` (0.5) after ``patience`` (5)
                       epochs without improvement of ``monitor`` (``train.monitor``), not below ``min_lr`` (0).
``cosine``             linear warm-up from ``warmup_from`` (0) to ``optimizer.learning_rate`` over ``warmup_steps``
                       (or ``warmup_epochs`` x steps per epoch), then cosine decay to ``min_lr`` (0) at the last
                       step: `warmup_cosine`, a serializable `keras.optimizers.schedules.CosineDecay`.
=====================  ===========================================================================================

The functions take the typed section (`medtf.training.experiment.parse_schedule`: `ConstantSchedule`,
`PlateauSchedule`, `CosineSchedule`); a mapping or None is parsed first.

A warm-up that does not fit the run (``warmup_epochs: 1`` with ``epochs: 1``, a one-step smoke test) is shortened
to leave at least one decay step, with a printed note (`fit_warmup`), rather than refused.

Example:
    >>> lr = build_learning_rate({"name": "cosine", "warmup_epochs": 1}, 1e-3, steps_per_epoch=100, epochs=10)
    >>> float(lr(100))   # end of warm-up: the peak
    0.001
"""

from __future__ import annotations

import sys
from typing import Any, Mapping

import keras

from medtf.training.experiment import SCHEDULES  # noqa: F401  (re-exported: the schedule names)
from medtf.training.experiment import CosineSchedule, PlateauSchedule, Schedule, parse_schedule


def schedule_name(schedule: Schedule | Mapping | None) -> str:
    """The schedule's name (``constant`` for None); raises `ConfigError` for an unknown one."""
    return parse_schedule(schedule).name


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


def fit_warmup(schedule: CosineSchedule, steps_per_epoch: int, epochs: int, note=None) -> tuple[int, int]:
    """``(warm-up steps, total steps)`` of a cosine schedule, the warm-up shortened to ``total - 1`` steps when
    it would not leave one decay step (``note(text)`` is told why; default: printed to stderr)."""
    total = int(epochs) * int(steps_per_epoch)
    if schedule.warmup_steps is not None:
        warmup, given = schedule.warmup_steps, f"schedule.warmup_steps={schedule.warmup_steps}"
    else:
        epochs_ = schedule.warmup_epochs or 0
        warmup, given = round(float(epochs_) * steps_per_epoch), f"schedule.warmup_epochs={epochs_:g}"
    if warmup >= total:
        text = (f"{given} means {warmup} warm-up step(s), but the run has only {total} (train.epochs={epochs} x "
                f"{steps_per_epoch} steps per epoch): warm-up shortened to {total - 1} step(s)")
        (note or (lambda t: print(f"medtf: note: {t}", file=sys.stderr, flush=True)))(text)
        warmup = total - 1
    return warmup, total


def build_learning_rate(schedule: Schedule | Mapping | None, learning_rate: float,
                        steps_per_epoch: int | None = None, epochs: int = 1) -> Any:
    """The optimizer's ``learning_rate``: a float, or a `LearningRateSchedule` for ``cosine``.

    Args:
        schedule: the ``schedule`` section (None: constant).
        learning_rate: ``optimizer.learning_rate`` (the peak for ``cosine``).
        steps_per_epoch: optimizer steps per epoch (needed by ``cosine``).
        epochs: epochs of the run (``train.epochs``).
    """
    schedule = parse_schedule(schedule)
    if not isinstance(schedule, CosineSchedule):
        return float(learning_rate)
    if not steps_per_epoch:
        raise ValueError("schedule cosine needs the number of steps per epoch (train.steps_per_epoch)")
    warmup, total = fit_warmup(schedule, int(steps_per_epoch), int(epochs))
    return warmup_cosine(learning_rate, total, warmup, min_lr=schedule.min_lr, warmup_from=schedule.warmup_from)


def schedule_callbacks(schedule: Schedule | Mapping | None, monitor: str, mode: str) -> list:
    """Callbacks a schedule needs (`ReduceLROnPlateau` for ``reduce_on_plateau``; none otherwise).

    ``monitor`` / ``mode`` are ``train.monitor`` / ``train.mode``, used unless the schedule names its own monitor:
    ReduceLROnPlateau's ``mode="auto"`` would treat ``val_dice`` as a loss to minimise.
    """
    schedule = parse_schedule(schedule)
    if not isinstance(schedule, PlateauSchedule):
        return []
    own = schedule.monitor or monitor
    return [keras.callbacks.ReduceLROnPlateau(
        monitor=own, mode=schedule.mode or (mode if own == monitor else "auto"),
        factor=schedule.factor, patience=schedule.patience, min_lr=schedule.min_lr, min_delta=schedule.min_delta,
        cooldown=schedule.cooldown, verbose=schedule.verbose)]


def current_learning_rate(optimizer) -> float:
    """The learning rate the optimizer uses now (a schedule is evaluated at ``optimizer.iterations``)."""
    return scalar(optimizer.learning_rate)


def scalar(value) -> float:
    """A scalar variable/tensor as a Python float (``.numpy()`` avoids NumPy 2's ``__array__`` copy warning)."""
    return float(value.numpy()) if hasattr(value, "numpy") else float(value)
