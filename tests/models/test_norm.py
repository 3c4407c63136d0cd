"""`medtf.layers.GroupNormalization` (instance norm through a fused kernel) against Keras
`GroupNormalization`: outputs, gradients, mixed precision, config, checkpoint compatibility, fused op used."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from medtf.layers import GroupNormalization, fused_instance_norm, norm_layer


def _pair(shape, seed=0, groups=-1, **kwargs):
    rng = np.random.default_rng(seed)
    ref = keras.layers.GroupNormalization(groups=groups, **kwargs)
    ours = GroupNormalization(groups=groups, **kwargs)
    ref.build(shape), ours.build(shape)
    ref.set_weights([rng.normal(size=w.shape).astype("float32") for w in ref.weights])
    ours.set_weights(ref.get_weights())
    return ref, ours


@pytest.mark.parametrize("shape,groups", [((1, 6, 5, 3), -1), ((3, 4, 6, 2, 5), -1), ((2, 3, 3, 3, 1), -1),
                                          ((2, 4, 4, 4, 4), 4), ((2, 4, 4, 6), 3)])
def test_matches_keras_group_norm_outputs_and_gradients(shape, groups):
    ref, ours = _pair(shape, groups=groups)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=shape).astype("float32") * 4 + 2)
    w = tf.constant(rng.normal(size=shape).astype("float32"))
    results = []
    for layer in (ref, ours):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * w)
        results.append([y, *tape.gradient(loss, [x, *layer.trainable_weights])])
    for a, b in zip(*results):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-5)
    # per (sample, channel): zero mean, unit variance before the affine part
    plain = fused_instance_norm(x, None, None, 1e-3).numpy()
    axes = tuple(range(1, len(shape) - 1))
    np.testing.assert_allclose(plain.mean(axis=axes), 0.0, atol=1e-5)
    if np.prod(shape[1:-1]) > 1:
        np.testing.assert_allclose(plain.var(axis=axes), 1.0, rtol=1e-3)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_output_dtype_and_values(policy):
    shape = (2, 8, 8, 4, 3)
    x = np.random.default_rng(2).normal(size=shape).astype("float32") * 3
    ref, _ = _pair(shape)
    expected = ref(x).numpy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        ours = GroupNormalization(groups=-1)
        ours.build(shape)
        ours.set_weights(ref.get_weights())
        y = ours(x)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert y.dtype == policy.split("_")[1] and ours.gamma.dtype == "float32"
    np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), expected, atol=0.1, rtol=0.02)


def test_config_round_trip_and_factory():
    layer = GroupNormalization(groups=-1, epsilon=1e-5, center=False, name="n")
    clone = GroupNormalization.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config() and clone.groups == -1 and not clone.center
    x = np.random.default_rng(3).normal(size=(2, 4, 4, 2)).astype("float32")
    np.testing.assert_allclose(clone(x).numpy(), layer(x).numpy(), rtol=1e-6)
    for norm, groups in (("instance", -1), ("group", 4)):
        layer = norm_layer(norm, 4)
        assert isinstance(layer, GroupNormalization) and layer.groups == groups


def test_loads_weights_saved_with_keras_group_norm(tmp_path):
    """.keras files address layers by class name: models saved with the Keras layer load unchanged."""
    def model(norm_cls):
        keras.utils.set_random_seed(4)
        return keras.Sequential([keras.Input((6, 6, 6, 1)), keras.layers.Conv3D(4, 3, name="conv"),
                                 norm_cls(groups=-1, name="norm")])

    old, new = model(keras.layers.GroupNormalization), model(GroupNormalization)
    rng = np.random.default_rng(5)
    old.set_weights([rng.normal(size=w.shape).astype("float32") for w in old.weights])
    old.save_weights(tmp_path / "old.weights.h5")
    new.load_weights(tmp_path / "old.weights.h5")
    x = rng.normal(size=(2, 6, 6, 6, 1)).astype("float32")
    np.testing.assert_allclose(new(x).numpy(), old(x).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups,fused", [(-1, True), (2, True), (1, False)])
def test_instance_case_runs_fused_batch_norm_kernel(groups, fused):
    layer = GroupNormalization(groups=groups)  # 2 groups of a 2-channel input: one channel per group
    fn = tf.function(lambda x: layer(x)).get_concrete_function(tf.TensorSpec((None, 4, 4, 4, 2), tf.float32))
    ops = {op.type for op in fn.graph.get_operations()}
    assert ("FusedBatchNormV3" in ops) is fused
