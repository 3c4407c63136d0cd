"""Run in a subprocess: one fit step (SGD + decoupled weight decay) with layer-wise lr decay under
MirroredStrategy over 2 logical CPUs (configured before TensorFlow starts) vs one device, and vs no decay.
Both tiles hold 2 nuclei, so NucleusLoss's per-replica pooling equals the global one. Prints RESULT + JSON."""

import json

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

from medtf.tasks.nucleus_classification import NucleusLoss  # noqa: E402
from medtf.training.layer_decay import apply_layer_decay  # noqa: E402
from tests.training.test_layer_decay import LR, batch, tiny  # noqa: E402


def trained(strategy, decay):
    with strategy.scope():
        model = tiny(1)
        optimizer = keras.optimizers.SGD(LR, weight_decay=0.3)
        model.compile(optimizer=apply_layer_decay(optimizer, model, decay) if decay else optimizer,
                      loss=NucleusLoss())
    x, _ = batch()
    x["num_boxes"] = np.array([2, 2], np.int32)
    y = np.array([[0, 2, -1, -1], [1, 0, -1, -1]], np.int32)
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(2), epochs=1, verbose=0)
    return [v.numpy() for v in model.trainable_variables]


mirrored = trained(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), 0.5)
single = trained(tf.distribute.get_strategy(), 0.5)
plain = trained(tf.distribute.get_strategy(), None)
print("RESULT " + json.dumps({"mirrored_vs_single": max(float(np.abs(a - b).max()) for a, b in zip(mirrored, single)),
                              "decay_vs_plain": max(float(np.abs(a - b).max()) for a, b in zip(single, plain))}))
