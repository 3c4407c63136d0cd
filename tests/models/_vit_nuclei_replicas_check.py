"""Run in a subprocess (two logical CPUs must exist before TensorFlow starts): RoIAlign and the nucleus-token ViT
per replica under MirroredStrategy and XLA-compiled, against one device. Prints RESULT + JSON:

1. `roi_align` run by ``strategy.run`` on each replica's half of a batch == the one-device op on the whole batch;
2. one SGD ``fit`` step of a tiny NucleusClassifier (the task's loss and metrics) on 2 replicas vs one device,
   and with ``jit_compile=True``: the logged loss and the updated weights.
"""

import json

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

from medtf.models.vit import NucleusClassifier  # noqa: E402
from medtf.models.vit.roi_align import roi_align  # noqa: E402
from medtf.tasks import get_task  # noqa: E402

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
rng = np.random.default_rng(0)
result = {"replicas": strategy.num_replicas_in_sync}

# === 1. the op per replica ===
features = rng.normal(size=(4, 4, 4, 8)).astype(np.float32)
boxes = np.sort(rng.uniform(0, 32, size=(4, 5, 2, 2)), axis=2).transpose(0, 1, 3, 2).reshape(4, 5, 4)
boxes = boxes[..., [0, 2, 1, 3]].astype(np.float32)
ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((features, boxes)).batch(4))
per_replica = strategy.run(tf.function(lambda f, b: roi_align(f, b, 3, 1 / 8)), args=next(iter(ds)))
distributed = np.concatenate([r.numpy() for r in strategy.experimental_local_results(per_replica)])
result["roi_max_diff"] = float(np.abs(distributed - roi_align(features, boxes, 3, 1 / 8).numpy()).max())

# === 2. one fit step ===
kwargs = dict(num_classes=3, max_nuclei=5, image_size=32, patch_size=8, hidden_dim=16, num_layers=1, num_heads=2,
              mlp_dim=32)
images = rng.random((4, 32, 32, 3), dtype=np.float32)
num_boxes = np.array([5, 0, 2, 3], np.int32)  # 5 nuclei per replica: per-replica pooling = global
labels = np.where(np.arange(5)[None] < num_boxes[:, None], rng.integers(0, 3, size=(4, 5)), -1).astype(np.int32)
data = tf.data.Dataset.from_tensors(({"images": images, "boxes": boxes, "num_boxes": num_boxes}, labels))
task = get_task("nucleus_classification")
keras.utils.set_random_seed(0)
initial = NucleusClassifier(**kwargs).get_weights()


def one_step(scope, jit):
    with scope:
        model = NucleusClassifier(**kwargs)
        model.set_weights(initial)
        task.compile(model, keras.optimizers.SGD(0.5), jit_compile=jit)
    logs = model.fit(data, epochs=1, verbose=0).history
    return float(logs["loss"][0]), model.get_weights()


loss1, w1 = one_step(tf.distribute.get_strategy().scope(), False)
loss2, w2 = one_step(strategy.scope(), False)
loss3, w3 = one_step(tf.distribute.get_strategy().scope(), True)
result.update({"loss_one": loss1, "loss_mirrored": loss2, "loss_xla": loss3,
               "weights_mirrored": max(float(np.abs(a - b).max()) for a, b in zip(w1, w2)),
               "weights_xla": max(float(np.abs(a - b).max()) for a, b in zip(w1, w3)),
               "moved": max(float(np.abs(a - b).max()) for a, b in zip(w1, initial))})
print("RESULT" + json.dumps(result))
