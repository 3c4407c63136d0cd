"""Run in a subprocess (two logical CPUs must exist before TensorFlow starts): the EMA quantiser and one `fit` step of
a tiny VQ-VAE under MirroredStrategy against one device on the same global batch. Prints RESULT + JSON."""

import json

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

from medtf.models.tokenizer import VQVAE, VectorQuantizerEMA  # noqa: E402
from medtf.tasks import get_task  # noqa: E402

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
rng = np.random.default_rng(0)
embed = rng.normal(size=(8, 3)).astype("float32")
z = rng.normal(size=(12, 3)).astype("float32")  # replica 0: rows 0-5, replica 1: rows 6-11
result = {"replicas": strategy.num_replicas_in_sync}


def quantizer(restart_after):
    vq = VectorQuantizerEMA(8, 3, decay=0.8, restart_after=restart_after)
    vq.build((None, 3))
    vq.embed_sum.assign(embed)
    return vq


def replicated(vq):
    halves = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(z[6 * ctx.replica_id_in_sync_group: 6 * ctx.replica_id_in_sync_group + 6]))
    strategy.run(tf.function(lambda x: vq(x, training=True)[1]), args=(halves,))
    state = {}
    for name in ("cluster_size", "embed_sum", "unused"):
        local = [np.asarray(v) for v in strategy.experimental_local_results(getattr(vq, name).value)]
        state[name] = local[0].tolist()
        state[f"{name}_replicas_agree"] = bool(all(np.array_equal(local[0], v) for v in local[1:]))
    return state


for restart_after in (0, 1):  # 0: EMA only, exact against one device; 1: the codes unused in this step restart
    single = quantizer(restart_after)
    codes = np.asarray(single(z, training=True)[1])
    with strategy.scope():
        mirrored = quantizer(restart_after)
    result[f"restart{restart_after}"] = {"single": {n: np.asarray(getattr(single, n)).tolist() for n in
                                                    ("cluster_size", "embed_sum", "unused")},
                                         "mirrored": replicated(mirrored), "codes": codes.tolist()}
result["z"] = z.tolist()

# One SGD step of medtf's compiled tokenizer task on 4 tiles, 2 per replica vs 4 on one device.
x = rng.random((4, 8, 8, 3)).astype("float32")
y = {"reconstruction": x, "tokens": np.zeros((4, 2, 2), "int32"), "commitment": np.zeros(4, "float32")}
args = dict(patch_size=4, num_codes=8, embedding_dim=3, width=4, num_res_blocks=1, restart_after=0)
keras.utils.set_random_seed(1)
one = VQVAE(**args)
weights = one.get_weights()
with strategy.scope():
    two = VQVAE(**args)
    two.set_weights(weights)
for model, key in ((one, "fit_single"), (two, "fit_mirrored")):
    task = get_task("tokenizer")
    with (strategy.scope() if model is two else tf.distribute.get_strategy().scope()):
        task.compile(model, keras.optimizers.SGD(0.5))
    logs = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0).history
    result[key] = {"logs": {k: float(v[0]) for k, v in logs.items()},
                   "weights": [np.asarray(w).ravel().tolist() for w in model.get_weights()]}
print("RESULT " + json.dumps(result))
