"""Run in a subprocess (two logical CPUs must exist before TensorFlow starts): NucleusLoss with deliberately
uneven nucleus counts on the two replicas of a MirroredStrategy, against one device on the same global batch.
Prints RESULT + JSON:

- the loss of `model.evaluate` and of one SGD `fit` step (logged) on 2 replicas vs one device, and the weights
  after that step;
- the same with the per-replica pooling of before (``LocalNucleusLoss``, the control: it must differ, or the
  counts would not be uneven enough for the check to mean anything).

Not checked: ``jit_compile=True`` under the strategy (XLA refuses the replica variables of logical CPU devices,
"Trying to access resource ... located in device CPU:1 from device CPU:0", before the loss matters).
"""

import json

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
from keras import ops  # noqa: E402

from medtf.models.vit import NucleusClassifier  # noqa: E402
from medtf.tasks.nucleus_classification import NucleusLoss, _valid  # noqa: E402


class LocalNucleusLoss(NucleusLoss):
    """The pooling of before: over each replica's own nuclei."""

    def call(self, y_true, y_pred):
        shape = ops.shape(y_pred)
        labels, valid = _valid(y_true)
        ce = keras.losses.sparse_categorical_crossentropy(labels, ops.reshape(y_pred, (-1, shape[-1]))) * valid
        per_example = ops.sum(ops.reshape(ce, (shape[0], -1)), axis=-1)
        return per_example * ops.cast(shape[0], "float32") / ops.maximum(ops.sum(valid), 1.0)


strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
rng = np.random.default_rng(0)
kwargs = dict(num_classes=3, max_nuclei=6, image_size=32, patch_size=8, hidden_dim=16, num_layers=1, num_heads=2,
              mlp_dim=32)
images = rng.random((4, 32, 32, 3), dtype=np.float32)
corners = rng.uniform(0, 24, size=(4, 6, 2)).astype(np.float32)
boxes = np.concatenate([corners, corners + rng.uniform(2, 8, size=(4, 6, 2)).astype(np.float32)], -1)
num_boxes = np.array([6, 5, 1, 0], np.int32)  # replica 0 gets 11 nuclei, replica 1 gets 1
labels = np.where(np.arange(6)[None] < num_boxes[:, None], rng.integers(0, 3, size=(4, 6)), -1).astype(np.int32)
data = tf.data.Dataset.from_tensors(({"images": images, "boxes": boxes, "num_boxes": num_boxes}, labels))
keras.utils.set_random_seed(0)
initial = NucleusClassifier(**kwargs).get_weights()


def one_step(scope, loss_class):
    with scope:
        model = NucleusClassifier(**kwargs)
        model.set_weights(initial)
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss_class())
    before = float(model.evaluate(data, verbose=0))
    logs = model.fit(data, epochs=1, verbose=0).history
    return {"eval": before, "fit": float(logs["loss"][0]), "weights": model.get_weights()}


def diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a["weights"], b["weights"]))


one = one_step(tf.distribute.get_strategy().scope(), NucleusLoss)
two = one_step(strategy.scope(), NucleusLoss)
local = one_step(strategy.scope(), LocalNucleusLoss)
result = {"replicas": strategy.num_replicas_in_sync, "eval_one": one["eval"], "fit_one": one["fit"],
          "eval_mirrored": two["eval"], "fit_mirrored": two["fit"], "weights_mirrored": diff(one, two),
          "eval_local": local["eval"], "weights_local": diff(one, local),
          "moved": max(float(np.abs(a - b).max()) for a, b in zip(one["weights"], initial))}
print("RESULT" + json.dumps(result))
