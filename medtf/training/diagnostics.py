"""TensorBoard diagnostics: validation image panels, weight/gradient histograms and a gradient-flow chart.

Pictures are drawn with NumPy alone (no matplotlib): a panel is ``[input | ground truth | prediction]``
concatenated side by side, the gradient flow a bar chart rasterised into an RGB array.

Example:
    >>> callbacks = [ValidationPanels("runs/a/logs/images", val_examples, monitor="val_dice", mode="max"),
    ...              GradientStats("runs/a/logs/gradients", train_batch, every_n_steps=100)]
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict

import keras
import numpy as np

from medtf.tasks.base import main_output
from medtf.training.schedules import scalar


def _unit(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    lo, hi = float(np.min(a)), float(np.max(a))
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` -> ``(H, W, 3)``: three channels as RGB, otherwise the first channel in grey."""
    return image[..., :3] if image.shape[-1] == 3 else np.repeat(image[..., :1], 3, axis=-1)


def _labels(volume: np.ndarray) -> np.ndarray:
    """A mask or prediction ``(.., C)`` -> label image ``(..)``: probabilities for one channel, argmax else."""
    return volume[..., 0] if volume.shape[-1] == 1 else np.argmax(volume, axis=-1).astype(np.float32)


def make_panel(image: np.ndarray, mask: np.ndarray, prediction: np.ndarray, num_classes: int | None = None
               ) -> np.ndarray:
    """``[input | ground truth | prediction]`` of one example as float32 RGB ``(H, 3 W, 3)`` in ``[0, 1]``.

    Args:
        image: ``(H, W, C)`` or ``(D, H, W, C)`` model input; normalised to ``[0, 1]`` for display.
        mask: ground truth, same spatial shape, ``(.., 1)`` labels or one-hot ``(.., K)``.
        prediction: model output, same spatial shape, ``(.., 1)`` probabilities or ``(.., K)`` scores.
        num_classes: label values are divided by ``num_classes - 1`` (default: from the prediction's channels).

    For 3D inputs the slice (axis 0) with the most ground-truth foreground is shown.
    """
    image, mask, prediction = (np.asarray(a, np.float32) for a in (image, mask, prediction))
    labels, predicted = _labels(mask) if mask.shape[-1] > 1 else mask[..., 0], _labels(prediction)
    if image.ndim == 4:
        z = int(np.argmax((labels > 0).reshape(labels.shape[0], -1).sum(axis=1)))
        image, labels, predicted = image[z], labels[z], predicted[z]
    classes = num_classes or max(2, prediction.shape[-1])
    scale = 1.0 / max(1, classes - 1)
    grey = [np.repeat(np.clip(a * scale, 0, 1)[..., None], 3, axis=-1) for a in (labels, predicted)]
    return np.concatenate([_rgb(_unit(image))] + grey, axis=1).astype(np.float32)


class ValidationPanels(keras.callbacks.Callback):
    """Log ``[input | ground truth | prediction]`` panels of fixed validation examples when ``monitor`` improves.

    Args:
        log_dir: TensorBoard folder (e.g. ``run_dir/logs/images``); tag ``validation/panels``, step = epoch.
        examples: ``[(x (1, ...), y (1, ...)), ...]`` numpy batches of one validation example each.
        monitor, mode: the metric and direction that decides "improved" (``train.monitor`` / ``train.mode``).
        best: the best value so far (after a resume), None for a fresh run.
    """

    tag, caption = "validation/panels", "input | ground truth | prediction"  # subclasses draw other panels

    def __init__(self, log_dir, examples, monitor: str = "val_loss", mode: str = "min", best: float | None = None):
        super().__init__()
        self.log_dir, self.examples, self.monitor, self.mode = str(log_dir), list(examples), monitor, mode
        self.best = best
        self.logged_epochs: list[int] = []
        self._writer = None

    def _improved(self, value) -> bool:
        if value is None or not math.isfinite(float(value)):
            return False
        return self.best is None or (value > self.best if self.mode == "max" else value < self.best)

    def panels(self) -> np.ndarray:
        """``(N, H, 3 W, 3)`` panels of the examples with the current model (smaller ones zero-padded)."""
        out = []
        for x, y in self.examples:
            prediction = main_output(self.model(x, training=False))
            prediction = keras.ops.cast(prediction, "float32").numpy()
            out.append(make_panel(x[0], y[0], prediction[0]))
        # whole-volume validation: cases differ in size, tf.summary.image needs one shape
        height, width = max(p.shape[0] for p in out), max(p.shape[1] for p in out)
        return np.stack([np.pad(p, ((0, height - p.shape[0]), (0, width - p.shape[1]), (0, 0))) for p in out])

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if not self.examples or not self._improved(value):
            return
        self.best = float(value)
        write_panels(self, self.panels(), epoch, f"{self.caption} when {self.monitor} improved ({float(value):.4f})")


def write_panels(callback, panels: np.ndarray, epoch: int, description: str) -> None:
    """``tf.summary.image`` of ``panels`` under ``callback.tag`` at step ``epoch`` in ``callback.log_dir`` (the
    writer made once and kept on ``callback._writer``); the epoch is appended to ``callback.logged_epochs``."""
    import tensorflow as tf

    if callback._writer is None:
        callback._writer = tf.summary.create_file_writer(callback.log_dir)
    with callback._writer.as_default():
        tf.summary.image(callback.tag, panels, step=epoch, max_outputs=len(panels), description=description)
    callback._writer.flush()
    callback.logged_epochs.append(epoch)


# ---------------------------------------------------------------------------------------------- gradients
def _bar_chart(means: np.ndarray, maxima: np.ndarray, height: int = 96, bar: int = 4) -> np.ndarray:
    """Two bars per layer (mean |g| blue, max |g| orange) on a log10 scale, as uint8 RGB ``(height, W, 3)``."""
    values = np.concatenate([means, maxima])
    logs = np.log10(np.maximum(values, 1e-12))
    lo, hi = float(logs.min()), float(logs.max())
    frac = (logs - lo) / (hi - lo) if hi > lo else np.ones_like(logs)
    n = len(means)
    chart = np.full((height, n * (2 * bar + 2), 3), 255, np.uint8)
    for i in range(n):
        for j, color in ((0, (31, 119, 180)), (1, (255, 127, 14))):
            h = max(1, int(round(frac[i + j * n] * (height - 1))))
            x0 = i * (2 * bar + 2) + j * bar
            chart[height - h:, x0:x0 + bar] = color
    return chart


class GradientStats(keras.callbacks.Callback):
    """Every ``every_n_steps`` optimizer steps: weight and gradient histograms, gradient norms, gradient flow.

    Gradients come from a fixed training batch through `tf.GradientTape` (outside the training step, so they
    do not change the weights). Tags: ``weights/<var>``, ``gradients/<var>`` (histograms),
    ``gradients/global_norm`` (scalar), ``gradient_flow`` (image: per trainable layer, mean and max |grad|,
    log scale), ``gradient_flow/min_mean_abs`` (scalar: the weakest layer's mean |grad|).

    Args:
        log_dir: TensorBoard folder (e.g. ``run_dir/logs/gradients``).
        batch: ``(x, y)`` numpy training batch.
        every_n_steps: log when ``optimizer.iterations`` is a multiple of this (and after the first step).
    """

    def __init__(self, log_dir, batch, every_n_steps: int = 100):
        super().__init__()
        self.log_dir, self.batch, self.every_n_steps = str(log_dir), batch, max(1, int(every_n_steps))
        self.logged_steps: list[int] = []
        self._writer = None

    def gradients(self):
        """``[(variable, gradient)]`` of the compiled loss on the fixed batch."""
        import tensorflow as tf

        x, y = self.batch
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            y_pred = self.model(x, training=False)
            loss = self.model.compute_loss(x=x, y=y, y_pred=y_pred, training=False)
        return list(zip(variables, tape.gradient(loss, variables)))

    def on_train_batch_end(self, batch, logs=None):
        step = int(scalar(self.model.optimizer.iterations))
        if step % self.every_n_steps and step != 1:
            return
        self.log(step)

    def log(self, step: int) -> None:
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        layers: OrderedDict[str, list] = OrderedDict()
        squares = 0.0
        with self._writer.as_default():
            for var, grad in self.gradients():
                tf.summary.histogram(f"weights/{var.path}", tf.cast(var.value, tf.float32), step=step)
                if grad is None:
                    continue
                grad = tf.convert_to_tensor(grad)  # IndexedSlices (embedding lookups) -> dense
                g = np.abs(tf.cast(grad, tf.float32).numpy())
                tf.summary.histogram(f"gradients/{var.path}", tf.cast(grad, tf.float32), step=step)
                squares += float(np.sum(g.astype(np.float64) ** 2))
                layers.setdefault(os.path.dirname(var.path) or var.path, []).append(g.ravel())
            tf.summary.scalar("gradients/global_norm", math.sqrt(squares), step=step)
            if layers:
                flat = [np.concatenate(v) for v in layers.values()]
                means = np.array([f.mean() for f in flat])
                maxima = np.array([f.max() for f in flat])
                tf.summary.image("gradient_flow", _bar_chart(means, maxima)[None], step=step,
                                 description="per trainable layer (input -> output): mean |grad| (blue), "
                                             "max |grad| (orange), log10 scale")
                tf.summary.scalar("gradient_flow/min_mean_abs", float(means.min()), step=step)
        self._writer.flush()
        self.logged_steps.append(step)
