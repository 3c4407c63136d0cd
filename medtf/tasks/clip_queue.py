"""A MoCo-style memory queue of past embeddings as extra CLIP negatives, for small batches (``loss.args.queue_size``).

    loss: {name: auto, args: {queue_size: 256}}     # task contrastive: ClipQueueLoss instead of ClipLoss

`ClipQueueLoss` keeps the last ``queue_size`` image and report embeddings of the (global) training batches, with
their classes, in non-trainable variables. Each image is contrasted against the batch's reports and the queued
reports, each report against the batch's images and the queued images; the targets stay the own pair (or, with
``label_aware``, the batch's same-class pairs). Queued entries of the example's own class are masked out of the
softmax (not negatives, and not positives either: they come from an older encoder). After each training step the
whole global batch (all replicas' rows, all-gathered as the in-batch negatives are) is enqueued, oldest entries
overwritten first (FIFO ring; ``pointer`` is the next slot to write, ``size`` the filled count).

Staleness: queued embeddings were computed by the encoders of earlier steps. MoCo keeps them consistent with a slowly
moving momentum encoder; medtf adds none. With a frozen text tower (``model.args.text.trainable: false``, the brain
MRI study's setting) the queued report embeddings still move with the trainable text projection, so keep the queue
short (a few batches) or the learning rate small; the queue is most consistent when little but the image tower trains.

The queue is used and filled only by training steps: `QueueSwitch` (the task's callback, `medtf.tasks.Task.callbacks`,
first in the engine's list) turns it on at each step's start and off at its end, so ``val_loss`` is the plain
in-batch loss (comparable across queue sizes), and neither validation embeddings nor a diagnostic's evaluation of the
loss (GradientStats) end up in the queue. Without the callback (a bare
``model.fit`` / ``evaluate``) the loss equals `ClipLoss` and the queue stays empty. The queue is not part of the
``.keras`` checkpoints (the model carries no loss state); `QueueSwitch` saves it with the run's backup at each
epoch's end and a resumed run restores it, so preemption keeps it (a backup saved mid-epoch on SIGUSR1 comes back
with the queue of the last epoch's end: the interrupted epoch's entries are missing); a new run (or ``init_from``)
starts empty.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import ops

from medtf.tasks.contrastive import ClipLoss, _gather, _global_pairs, _own_indices, _soft_ce, label_targets

__all__ = ["ClipQueueLoss", "QueueSwitch", "queue_losses"]

_MASKED = -1e9  # a finite "minus infinity": 0 * log_softmax stays 0 for soft targets (an -inf would give NaN)
QUEUE_FILE = "clip_queue.npz"


@keras.saving.register_keras_serializable(package="medtf")
class ClipQueueLoss(ClipLoss):
    """`ClipLoss` with a FIFO memory queue of ``queue_size`` past embeddings as extra negatives (module docstring).

    Args:
        queue_size: queued pairs (> 0).
        embed_dim: the embedding width ``E`` of the model's ``(B, 2E [+ 1])`` output (the variables exist before
            the first step: created under the distribution strategy's scope by ``compile``).
        temperature, label_aware, label_weight: as `ClipLoss` (queued same-class entries are masked either way).

    State (non-trainable ``keras.Variable``s, written by replica 0 under a strategy: every replica holds the same
    gathered batch): ``queue_image`` / ``queue_text`` ``(K, E)``, ``queue_label`` ``(K,)`` (-1: unknown),
    ``pointer``, ``size``, ``active`` (1.0 while training).
    """

    def __init__(self, queue_size=256, embed_dim=32, temperature=0.07, label_aware=False, name="clip_loss",
                 reduction="sum_over_batch_size", dtype="float32", label_weight=1.0):
        super().__init__(temperature=temperature, label_aware=label_aware, name=name, reduction=reduction,
                         dtype=dtype, label_weight=label_weight)
        self.queue_size, self.embed_dim = int(queue_size), int(embed_dim)
        if self.queue_size < 1 or self.embed_dim < 1:
            raise ValueError(f"ClipQueueLoss: queue_size ({queue_size}) and embed_dim ({embed_dim}) must be >= 1")

        def state(name, shape, value, dtype="float32"):
            return keras.Variable(np.full(shape, value, dtype), trainable=False, dtype=dtype,
                                  aggregation="only_first_replica", name=name)

        k, e = self.queue_size, self.embed_dim
        self.queue_image, self.queue_text = state("queue_image", (k, e), 0.0), state("queue_text", (k, e), 0.0)
        self.queue_label = state("queue_label", (k,), -1.0)
        self.pointer, self.size = state("pointer", (), 0, "int32"), state("size", (), 0, "int32")
        self.active = state("active", (), 0.0)

    @property
    def state_variables(self):
        return {"queue_image": self.queue_image, "queue_text": self.queue_text, "queue_label": self.queue_label,
                "pointer": self.pointer, "size": self.size}

    def call(self, y_true, y_pred):
        import tensorflow as tf

        image, text, all_image, all_text, offset, scale = _global_pairs(y_pred)
        if image.shape[-1] is not None and image.shape[-1] != self.embed_dim:
            raise ValueError(f"ClipQueueLoss: embeddings are {image.shape[-1]}-d, the queue holds "
                             f"{self.embed_dim}-d ones (loss built for another model)")
        own = _own_indices(image, offset)
        scale = 1.0 / self.temperature if scale is None else scale[:, None]
        own_labels, all_labels, _ = _gather(ops.reshape(ops.cast(y_true, "float32"), (-1,)))
        # Read before the enqueue below (TF orders the reads and writes of one variable as written).
        q_image, q_text, q_label = (tf.convert_to_tensor(v) for v in (self.queue_image, self.queue_text,
                                                                      self.queue_label))
        pointer, size, active = (tf.convert_to_tensor(v) for v in (self.pointer, self.size, self.active))
        on = active > 0.5
        valid = tf.logical_and(tf.range(self.queue_size) < size, on)[None, :]  # (1, K)
        if self.label_aware:  # same known class: not a negative
            same = tf.logical_and(own_labels[:, None] == q_label[None, :], own_labels[:, None] >= 0)
            valid = tf.logical_and(valid, tf.logical_not(same))  # (b, K)

        def logits(rows, batch, queued):
            in_batch = ops.matmul(rows, ops.transpose(batch)) * scale
            from_queue = ops.matmul(rows, ops.transpose(queued)) * scale
            from_queue = tf.where(valid, from_queue, tf.constant(_MASKED, from_queue.dtype))
            return ops.concatenate([in_batch, from_queue], axis=1)  # (b, B + K)

        image_logits, text_logits = logits(image, all_text, q_text), logits(text, all_image, q_image)
        if self.label_aware:
            targets = label_targets(own_labels, all_labels, own, self.label_weight)
            targets = ops.pad(targets, [[0, 0], [0, self.queue_size]])
            loss = 0.5 * (_soft_ce(targets, image_logits) + _soft_ce(targets, text_logits))
        else:
            loss = 0.5 * (keras.losses.sparse_categorical_crossentropy(own, image_logits, from_logits=True)
                          + keras.losses.sparse_categorical_crossentropy(own, text_logits, from_logits=True))
        self._enqueue(tf.stop_gradient(all_image), tf.stop_gradient(all_text), tf.stop_gradient(all_labels),
                      q_image, q_text, q_label, pointer, size, on)
        return loss

    def _enqueue(self, image, text, labels, q_image, q_text, q_label, pointer, size, on):
        """Write the global batch's ``n`` rows at ``pointer, pointer + 1, ...`` (mod K); with ``n > K`` only the
        last K rows (the newest), where a ring of K slots would leave them."""
        import tensorflow as tf

        k = self.queue_size
        n = tf.shape(image)[0]
        keep = tf.minimum(n, k)
        slots = ((pointer + n - keep + tf.range(keep)) % k)[:, None]
        updates = [(self.queue_image, q_image, image[n - keep:]), (self.queue_text, q_text, text[n - keep:]),
                   (self.queue_label, q_label, labels[n - keep:])]
        for variable, old, new in updates:
            variable.assign(tf.where(on, tf.tensor_scatter_nd_update(old, slots, tf.cast(new, old.dtype)), old))
        self.pointer.assign(tf.where(on, (pointer + n) % k, pointer))
        self.size.assign(tf.where(on, tf.minimum(size + n, k), size))

    def reset(self):
        """Empty the queue."""
        self.queue_image.assign(np.zeros((self.queue_size, self.embed_dim), "float32"))
        self.queue_text.assign(np.zeros((self.queue_size, self.embed_dim), "float32"))
        self.queue_label.assign(np.full((self.queue_size,), -1.0, "float32"))
        self.pointer.assign(0), self.size.assign(0)

    def get_config(self):
        return {**super().get_config(), "queue_size": self.queue_size, "embed_dim": self.embed_dim}


def queue_losses(loss) -> list:
    """The `ClipQueueLoss` instances in a compiled model's ``loss`` (an instance, a list or a mapping)."""
    if isinstance(loss, ClipQueueLoss):
        return [loss]
    if isinstance(loss, dict):
        loss = list(loss.values())
    if isinstance(loss, (list, tuple)):
        return [x for item in loss for x in queue_losses(item)]
    return []


class QueueSwitch(keras.callbacks.Callback):
    """Turns the model's queue losses on for each training step and off after it (place it first among the
    callbacks: later ones' ``on_train_batch_end`` then see it off); with ``backup``
    (the run's BackupAndRestore folder) saves the queue there at each epoch's end (``write``: the chief only) and
    restores it at the start of a resumed run."""

    def __init__(self, backup=None, write: bool = True):
        super().__init__()
        self.backup, self.write = (Path(backup) if backup is not None else None), bool(write)

    def _losses(self):
        return queue_losses(getattr(self.model, "loss", None))

    def _switch(self, on: bool):
        for loss in self._losses():
            loss.active.assign(1.0 if on else 0.0)

    def on_train_begin(self, logs=None):
        path = self.backup / QUEUE_FILE if self.backup is not None else None
        if path is not None and path.is_file():
            saved = np.load(path)
            for i, loss in enumerate(self._losses()):
                for name, variable in loss.state_variables.items():
                    value = saved[f"{i}/{name}"]
                    if tuple(value.shape) != tuple(variable.shape):
                        raise ValueError(f"{path}: {name} has shape {value.shape}, the queue {variable.shape} "
                                         f"(queue_size or embed_dim changed since the backup)")
                    variable.assign(value)

    # On for the training steps only: not for validation, nor for callbacks that evaluate the loss between steps
    # (GradientStats' gradients of a fixed batch; this callback runs first, so it is off by then).
    def on_train_batch_begin(self, batch, logs=None):
        self._switch(True)

    def on_train_batch_end(self, batch, logs=None):
        self._switch(False)

    def on_epoch_end(self, epoch, logs=None):
        if self.backup is None or not self.write or not self._losses():
            return
        self.backup.mkdir(parents=True, exist_ok=True)
        arrays = {f"{i}/{name}": np.asarray(ops.convert_to_numpy(v)) for i, loss in enumerate(self._losses())
                  for name, v in loss.state_variables.items()}
        tmp = self.backup / (QUEUE_FILE + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(self.backup / QUEUE_FILE)  # complete or absent: a kill while writing keeps the last one

    def on_train_end(self, logs=None):
        self._switch(False)
