"""Run in a subprocess: ClipLoss and recall@1 on 2 replicas against one device on the same global batch.

``python _clip_replicas_check.py mirrored``: MirroredStrategy over 2 logical CPUs (configured before TensorFlow
starts). ``... multiworker`` (one process per worker, TF_CONFIG set): MultiWorkerMirroredStrategy, 1 CPU each.
Both from medtf's `make_strategy`, created before any other TensorFlow work. Prints RESULT + JSON:

1. per-sample loss and recall on fixed embeddings split unevenly (3 + 2 rows): global targets and offsets;
2. one train step of a tiny ImageReportEncoder as Keras' train_step computes it (ClipLoss with Keras' reduction,
   i.e. the per-replica 1/N scaling, gradients summed over replicas) vs the single-device loss and gradients;
3. one real ``fit`` step (SGD) on both: logged loss, recall@1 and the updated weights.
"""

import contextlib
import json
import sys

import numpy as np
import tensorflow as tf

MODE = sys.argv[1] if len(sys.argv) > 1 else "mirrored"
if MODE == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

from medtf.models.clip import ImageReportEncoder  # noqa: E402
from medtf.tasks.contrastive import ClipLoss, RetrievalRecallAt1  # noqa: E402
from medtf.training.strategy import make_strategy  # noqa: E402

strategy = make_strategy(MODE)
result = {"replicas": strategy.num_replicas_in_sync, "strategy": type(strategy).__name__}
rng = np.random.default_rng(0)


def dense(g):
    return tf.convert_to_tensor(g)  # the report tower's embedding lookup gives IndexedSlices


# === 1. Fixed embeddings, uneven split ===
# Pairs i = (e_i, e_i) but pair 3: image close to e_0, report nearer e_3: image 3 retrieves report 0, which lives on
# the other replica (a miss only the global batch shows); every other direction hits. No ties.
eye = np.eye(5, dtype=np.float32)
image, text = eye.copy(), eye.copy()
image[3], text[3] = eye[0] + 0.05 * eye[3], eye[0] + 0.3 * eye[3]
image[3] /= np.linalg.norm(image[3])
text[3] /= np.linalg.norm(text[3])
emb = np.concatenate([image, text], axis=1)
rows = {0: emb[:3], 1: emb[3:]}


with strategy.scope():
    recall = RetrievalRecallAt1()  # metric variables live in the strategy, as Keras compiles them
uneven_loss = ClipLoss(temperature=0.1, reduction=None)


@tf.function
def per_sample(values):
    def fn(v):
        recall.update_state(None, v)
        return uneven_loss(tf.zeros_like(v[:, :1]), v)
    return strategy.run(fn, args=(values,))


values = strategy.experimental_distribute_values_from_function(
    lambda ctx: tf.constant(rows[ctx.replica_id_in_sync_group]))
loss = per_sample(values)
result["uneven_loss"] = np.concatenate([t.numpy() for t in strategy.experimental_local_results(loss)]).tolist()
# This process's replicas (a worker of MultiWorkerMirroredStrategy holds one): which rows it computed.
local = [int(i) for i in strategy.experimental_local_results(
    strategy.run(lambda: tf.constant(tf.distribute.get_replica_context().replica_id_in_sync_group)))]
own_rows = np.concatenate([np.arange(3) if i == 0 else np.arange(3, 5) for i in local])
result["local_replicas"] = local
result["uneven_single"] = uneven_loss(np.zeros((5, 1), np.float32), emb).numpy()[own_rows].tolist()
result["recall_mirrored"] = float(recall.result())
# Label-aware targets: the classes are gathered with the embeddings (row 0's classmates 2 and 4 live on both
# replicas), so each replica's soft targets equal the single-device ones.
labels = np.array([[0.0], [1.0], [0.0], [1.0], [0.0]], np.float32)
aware_loss = ClipLoss(temperature=0.1, label_aware=True, reduction=None)
label_rows = {0: labels[:3], 1: labels[3:]}
label_values = strategy.experimental_distribute_values_from_function(
    lambda ctx: tf.constant(label_rows[ctx.replica_id_in_sync_group]))


@tf.function
def per_sample_aware(values, labels):
    return strategy.run(lambda v, y: aware_loss(y, v), args=(values, labels))


aware = per_sample_aware(values, label_values)
result["aware_loss"] = np.concatenate([t.numpy() for t in strategy.experimental_local_results(aware)]).tolist()
result["aware_single"] = aware_loss(labels, emb).numpy()[own_rows].tolist()
single_metric = RetrievalRecallAt1()
single_metric.update_state(None, emb)
result["recall_single"] = float(single_metric.result())

# === 2. One train step: loss and gradients ===
B = 8
images = rng.normal(size=(B, 16, 16, 1)).astype("float32")
words = np.array(["left", "right", "frontal", "parietal", "lesion", "normal", "oedema", "mass", "infarct"])
reports = np.array([" ".join(rng.choice(words, 4)) for _ in range(B)])
targets = np.zeros((B, 1), np.float32)


def build():
    keras.utils.set_random_seed(1)  # instance norm: per example, so the split over replicas changes nothing
    return ImageReportEncoder(spatial_dims=2, in_channels=1, depth=2, base_filters=4, embed_dim=8, text_bins=64,
                              text_dim=8)


single = build()
start = single.get_weights()
with tf.GradientTape() as tape:
    embeddings = single({"image": images, "report": reports}, training=True)
    loss = ClipLoss()(targets, embeddings)
grads = [dense(g).numpy() for g in tape.gradient(loss, single.trainable_weights)]
result["single_loss"] = float(loss)
# What each replica would compute with in-batch negatives only (the behaviour this replaces), for contrast.
e = embeddings.numpy().astype(np.float64)
in_batch = []
for part in (e[:4], e[4:]):
    logits = part[:, :8] @ part[:, 8:].T / 0.07
    ce = lambda m: np.log(np.exp(m).sum(1)) - np.diag(m)  # noqa: E731
    in_batch.append(0.5 * (ce(logits) + ce(logits.T)).mean())
result["in_batch_only_loss"] = float(np.mean(in_batch))

with strategy.scope():
    mirrored = build()
    mirrored.set_weights(start)
loss_fn = ClipLoss()
batch = next(iter(strategy.experimental_distribute_dataset(
    tf.data.Dataset.from_tensor_slices(({"image": images, "report": reports}, targets)).batch(B))))


@tf.function
def step(x, y):
    def fn(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, mirrored(x, training=True))  # Keras reduction: local mean / num_replicas
        return loss, [dense(g) for g in tape.gradient(loss, mirrored.trainable_weights)], tf.shape(y)[0]
    loss, grads, size = strategy.run(fn, args=(x, y))
    # Keras' optimizer sums the replicas' gradients (all-reduce); the losses add up to the global mean.
    return (strategy.reduce("SUM", loss, axis=None), [strategy.reduce("SUM", g, axis=None) for g in grads],
            strategy.experimental_local_results(size))


loss2, grads2, sizes = step(*batch)
result["local_batch_sizes"] = [int(s) for s in sizes]  # this worker's replicas
result["mirrored_loss"] = float(loss2)
result["grad_max_abs_diff"] = [float(np.abs(a - b.numpy()).max()) for a, b in zip(grads, grads2)]
result["grad_max_abs"] = [float(np.abs(a).max()) for a in grads]
result["grad_rel_err"] = float(max(np.abs(a - b.numpy()).max() / max(np.abs(a).max(), 1e-12)
                                   for a, b in zip(grads, grads2)))

# === 3. One real fit step (SGD) on both ===
data = tf.data.Dataset.from_tensor_slices(({"image": images, "report": reports}, targets)).batch(B)
fitted = {}
for name, scope in (("single", None), ("mirrored", strategy)):
    with scope.scope() if scope is not None else contextlib.nullcontext():
        model = build()
        model.set_weights(start)
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=ClipLoss(), metrics=[RetrievalRecallAt1()],
                      jit_compile=False)
    history = model.fit(data, epochs=1, verbose=0, shuffle=False).history
    fitted[name] = (history, model.get_weights())
result["fit_loss"] = {k: v[0]["loss"][0] for k, v in fitted.items()}
result["fit_recall"] = {k: v[0]["recall_at_1"][0] for k, v in fitted.items()}
w1, w2 = fitted["single"][1], fitted["mirrored"][1]
result["fit_weight_max_abs_diff"] = float(max(np.abs(a - b).max() for a, b in zip(w1, w2)))
result["fit_weight_max_step"] = float(max(np.abs(a - b).max() for a, b in zip(w1, start)))
print("RESULT " + json.dumps(result))
