"""Image-only warm-up of a CLIP model: the first ``train.warmup_image_epochs`` epochs train the image tower alone.

    train: {warmup_image_epochs: 5}     # task contrastive; 0 (default): no warm-up

During the warm-up the whole report tower is frozen (a keras-hub backbone or `HashedText`, and the text projection):
the image tower (and the logit scale) learn to meet fixed report embeddings first, so a randomly initialised image
tower does not drag a (pre)trained text tower around in the first epochs. From epoch K on, every report-tower layer
that was trainable before is trainable again: the projection always, the backbone when ``model.args.text.trainable``
is true (a frozen backbone stays frozen).

One run, one optimizer: `ImageWarmup` builds the optimizer with every trainable variable before the first step
(the text tower still trainable then; Keras builds it lazily from the first step's variables), freezes the report tower at the start of ``fit`` and unfreezes it at
epoch K, retracing the train step each time (the step's variable list is fixed when traced). The report tower's
Adam moments start at zero at epoch K while the step count goes on: its first updates are about
``sqrt(1 - beta_2) / (1 - beta_1)`` times a fresh start's (3x with the defaults). A run resumed after epoch K starts
unfrozen (the callback decides per epoch). Weight decay applies to trainable variables only, so the frozen tower's
weights stay bitwise unchanged (tests/tasks/test_clip_warmup.py).
"""

from __future__ import annotations

import keras

__all__ = ["ImageWarmup", "text_tower_layers"]


def text_tower_layers(model) -> list:
    """The report tower's layers with weights: the keras-hub backbone or `HashedText`, and the text projection."""
    names = ("text", "text_projection")
    layers = [layer for layer in model.layers if layer.name in names]
    backbone = getattr(model, "text_backbone", None)
    if backbone is not None:
        layers.append(backbone)
    if not layers:
        raise ValueError(f"train.warmup_image_epochs: model {model.name!r} has no report tower (layers {names} or "
                         f"a keras-hub text backbone); the warm-up is for image-report models")
    return layers


class ImageWarmup(keras.callbacks.Callback):
    """Freezes the report tower for epochs ``< epochs`` (module docstring)."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = int(epochs)
        self._trainable = None  # layer -> trainable as configured

    def _set(self, frozen: bool):
        if self._trainable is None:
            self._trainable = {layer: layer.trainable for layer in text_tower_layers(self.model)}
        changed = False
        for layer, configured in self._trainable.items():
            want = False if frozen else configured
            if layer.trainable != want:
                layer.trainable, changed = want, True
        if changed:  # the traced step holds the old list of trainable variables
            self.model.make_train_function(force=True)

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        optimizer = self.model.optimizer
        if not optimizer.built:  # its slots for every variable, text tower included, before anything is frozen
            strategy = getattr(self.model, "distribute_strategy", None) or tf.distribute.get_strategy()
            with strategy.scope():
                optimizer.build(self.model.trainable_variables)

    def on_epoch_begin(self, epoch, logs=None):
        self._set(frozen=epoch < self.epochs)

    def on_train_end(self, logs=None):
        self._set(frozen=False)  # the saved model and later use see the configured tower
