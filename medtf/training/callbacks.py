"""Training callbacks of `medtf train`: NaN guard, learning-rate logging, resumable history, TensorBoard HParams.

The TensorBoard diagnostics (validation image panels, weight/gradient histograms, gradient flow) live in
`medtf.training.diagnostics`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import keras

from medtf.training.schedules import current_learning_rate


def nan_message(step: int, epoch: int, loss: float, policy: str, learning_rate: Any = None) -> str:
    """The human-readable explanation for a non-finite loss, tailored to the precision policy."""
    msg = f"non-finite loss ({loss}) at epoch {epoch + 1}, batch {step}; training stopped."
    if policy == "mixed_float16":
        msg += (" The policy is mixed_float16: the likely cause is a float16 overflow (activations or gradients "
                "beyond 65504). Try train.precision=mixed_bfloat16 (same range as float32) or a lower learning rate.")
    else:
        msg += f" Likely causes: the learning rate ({learning_rate}) is too high, or bad input values (NaN/inf)."
    return msg


class NanGuard(keras.callbacks.Callback):
    """Stop training on the first non-finite batch loss and record why (``self.message``).

    Keras' `TerminateOnNaN` stops silently; this one keeps a message naming the likely cause (float16 overflow
    under ``mixed_float16``, otherwise the learning rate) so `train` can raise it.
    """

    def __init__(self, policy: str = "float32"):
        super().__init__()
        self.policy = policy
        self.message: str | None = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(loss)
        if not math.isfinite(loss):
            optimizer = getattr(self.model, "optimizer", None)
            lr = current_learning_rate(optimizer) if optimizer is not None else None
            self.message = nan_message(batch, self._epoch, loss, self.policy, lr)
            self.model.stop_training = True


class LearningRateLogger(keras.callbacks.Callback):
    """Put the epoch's learning rate into the logs as ``learning_rate`` (history.csv, TensorBoard, History).

    Must come before `CSVLogger` and `TensorBoard` in the callback list: they read the same logs dict. The value
    is the rate at the end of the epoch, before `ReduceLROnPlateau` changes it for the next one.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and getattr(self.model, "optimizer", None) is not None:
            logs["learning_rate"] = current_learning_rate(self.model.optimizer)


# ---------------------------------------------------------------------------------------------- resuming
def backup_epoch(backup_dir: str | os.PathLike) -> int:
    """The epoch (0-based) `keras.callbacks.BackupAndRestore` in ``backup_dir`` will resume at (0: no backup)."""
    path = Path(backup_dir) / "training_metadata.json"
    try:
        return int(json.loads(path.read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def read_history(path: str | os.PathLike) -> list[dict]:
    """Rows of a CSVLogger history file (empty when it does not exist)."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def trim_history(path: str | os.PathLike, next_epoch: int) -> list[dict]:
    """Keep the rows of epochs ``< next_epoch`` (the ones the backup covers) and return them.

    A run killed after CSVLogger wrote epoch ``e`` but before the backup saved it re-runs ``e``: without the trim
    history.csv would list ``e`` twice. ``next_epoch == 0`` (a fresh start) empties the file.
    """
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    kept = [r for r in rows if r.get("epoch", "").isdigit() and int(r["epoch"]) < next_epoch]
    if not kept:
        path.unlink()
        return []
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    os.replace(tmp, path)
    return kept


def best_so_far(rows: list[dict], monitor: str, mode: str) -> float | None:
    """Best ``monitor`` value in history rows (None when absent), to seed ModelCheckpoint after a resume."""
    values = []
    for row in rows:
        try:
            value = float(row.get(monitor, "nan"))
        except ValueError:
            continue
        if math.isfinite(value):
            values.append(value)
    if not values:
        return None
    return max(values) if mode == "max" else min(values)


# ---------------------------------------------------------------------------------------------- hparams
def flatten_scalars(config: Mapping, prefix: str = "") -> dict:
    """``{"train.epochs": 50, "model.args.depth": 5, ...}``: the bool/int/float/str leaves of a nested config.

    Example:
        >>> flatten_scalars({"train": {"epochs": 5, "tags": [1]}, "seed": 0})
        {'train.epochs': 5, 'seed': 0}
    """
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_scalars(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
    return out


class HParamsLogger(keras.callbacks.Callback):
    """TensorBoard HParams entry for the run: the scalar config values, and the final metrics.

    Writes into ``log_dir`` (the run's ``logs/``): the session's hyper-parameters at the start, and at the end
    the experiment config (hparams + metrics), the final epoch's metrics as scalars ``hparams/<metric>`` (what
    the HParams table shows) and the session end.

    Args:
        log_dir: TensorBoard folder of the run.
        config: the resolved experiment config (flattened with `flatten_scalars`).
    """

    def __init__(self, log_dir: str | os.PathLike, config: Mapping):
        super().__init__()
        self.log_dir = str(log_dir)
        self.hparams = flatten_scalars(config)
        self._writer = None
        self._last: dict = {}

    def _summary(self):
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        return self._writer.as_default()

    def on_train_begin(self, logs=None):
        from tensorboard.plugins.hparams import api as hp

        with self._summary():
            hp.hparams(self.hparams)

    def on_epoch_end(self, epoch, logs=None):
        self._last = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))}

    def on_train_end(self, logs=None):
        import tensorflow as tf
        from tensorboard.plugins.hparams import api as hp
        from tensorboard.plugins.hparams import api_pb2, summary

        metrics = {f"hparams/{k}": v for k, v in sorted(self._last.items())}
        with self._summary():
            hp.hparams_config(hparams=[hp.HParam(name) for name in sorted(self.hparams)],
                              metrics=[hp.Metric(tag) for tag in metrics])
            for tag, value in metrics.items():
                tf.summary.scalar(tag, value, step=0)
            end = summary.session_end_pb(api_pb2.STATUS_SUCCESS)
            tf.summary.experimental.write_raw_pb(end.SerializeToString(), step=0)
        self._writer.flush()
