"""Run in a subprocess: ClipQueueLoss on 2 replicas (MirroredStrategy, 2 logical CPUs) vs one device, same global
batches. Two steps of 4 pairs (2 per replica), label-aware, the queue pre-filled with 3 entries of 6: per-example
losses of both steps (the second uses the first's enqueued rows) and the final queue. Prints RESULT + JSON."""

import json

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from medtf.tasks.clip_queue import ClipQueueLoss  # noqa: E402
from medtf.tasks.contrastive import ClipLoss  # noqa: E402
from medtf.training.strategy import make_strategy  # noqa: E402

strategy = make_strategy("mirrored")
rng = np.random.default_rng(0)
E, K = 3, 6


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype("float32")


steps = [(np.concatenate([unit(rng.normal(size=(4, E))), unit(rng.normal(size=(4, E)))], 1),
          np.array([[0.0], [1.0], [0.0], [2.0]], "float32")[::s]) for s in (1, -1)]
prefill = (unit(rng.normal(size=(3, E))), unit(rng.normal(size=(3, E))), np.array([1.0, 0.0, 2.0], "float32"))


def make_loss():
    loss = ClipQueueLoss(queue_size=K, embed_dim=E, temperature=0.2, label_aware=True, reduction=None)
    qi, qt, ql = np.zeros((K, E), "float32"), np.zeros((K, E), "float32"), np.full(K, -1.0, "float32")
    qi[:3], qt[:3], ql[:3] = prefill
    loss.queue_image.assign(qi), loss.queue_text.assign(qt), loss.queue_label.assign(ql)
    loss.pointer.assign(3), loss.size.assign(3), loss.active.assign(1.0)
    return loss


def state(loss):
    return {"queue_text": loss.queue_text.numpy().tolist(), "queue_image": loss.queue_image.numpy().tolist(),
            "queue_label": loss.queue_label.numpy().tolist(),
            "pointer_size": [int(loss.pointer.numpy()), int(loss.size.numpy())]}


result = {"replicas": strategy.num_replicas_in_sync}
with strategy.scope():
    mirrored = make_loss()


@tf.function
def replica_step(emb, labels):
    return strategy.run(lambda e, y: mirrored(y, e), args=(emb, labels))


losses = []
for emb, labels in steps:
    e = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(emb[2 * ctx.replica_id_in_sync_group:2 * ctx.replica_id_in_sync_group + 2]))
    y = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(labels[2 * ctx.replica_id_in_sync_group:2 * ctx.replica_id_in_sync_group + 2]))
    out = replica_step(e, y)
    losses += np.concatenate([t.numpy() for t in strategy.experimental_local_results(out)]).tolist()
result["mirrored_loss"] = losses
result.update({f"mirrored_{k}": v for k, v in state(mirrored).items()})

single = make_loss()
losses = []
for emb, labels in steps:
    losses += np.asarray(single(labels, emb)).tolist()
result["single_loss"] = losses
result.update({f"single_{k}": v for k, v in state(single).items()})
# A real fit (SGD at lr 0: the queued embeddings are the model's) with the task's QueueSwitch toggling the queue from
# a callback (cross-replica context): 8 pairs, global batch 4, into a 6-slot queue; validation adds nothing.
import keras  # noqa: E402

from medtf.tasks.clip_queue import QueueSwitch  # noqa: E402


def fit_queue(scope):
    with scope:
        keras.utils.set_random_seed(1)
        x = keras.Input((5,))
        model = keras.Model(x, keras.layers.Concatenate()([
            keras.layers.UnitNormalization()(keras.layers.Dense(E)(x)),
            keras.layers.UnitNormalization()(keras.layers.Dense(E)(x))]))
        loss = ClipQueueLoss(queue_size=K, embed_dim=E)
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss)
    data = np.random.default_rng(5).normal(size=(8, 5)).astype("float32")
    labels = np.arange(8, dtype="float32")[:, None]
    ds = tf.data.Dataset.from_tensor_slices((data, labels)).batch(4)
    model.fit(ds, epochs=1, validation_data=ds.take(1), callbacks=[QueueSwitch()], verbose=0)
    return state(loss)


result["fit_mirrored"] = fit_queue(strategy.scope())
result["fit_single"] = fit_queue(tf.distribute.get_strategy().scope())
result["plain_loss"] = float(np.asarray(ClipLoss(0.2, True, reduction=None)(steps[0][1], steps[0][0]))[0])
print("RESULT " + json.dumps(result))
