"""Block-level rematerialisation (issue #5): `ConvBlock(remat=True)` and `UNet(remat=True)` compute the same
outputs, gradients and training steps as the unrolled model, recompute each block once in the backward pass, and
serialise (config, .keras)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from medtf.layers import ConvBlock
from medtf.models import AttentionUNet, UNet
from tests.models.harness import run_model_tests

TINY = dict(in_channels=1, num_classes=2, base_filters=4)


def _pair(cls, **kwargs):
    """(unrolled, remat) models with identical weights."""
    plain = cls(**kwargs)
    remat = cls(**kwargs, remat=True)
    assert len(remat.weights) == len(plain.weights)
    remat.set_weights(plain.get_weights())
    return plain, remat


def _loss_and_grads(model, x, training, compiled):
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x, training=training)
            loss = sum(tf.reduce_sum(tf.square(o - 0.3)) for o in keras.tree.flatten(y))
        return loss, tape.gradient(loss, [x, *model.trainable_weights])

    return (tf.function(step) if compiled else step)(tf.constant(x))


def _assert_close(a, b, rtol=1e-5, atol=1e-6):
    for u, v in zip(keras.tree.flatten(a), keras.tree.flatten(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


# === ConvBlock ===

@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_conv_block_recomputes_once_with_same_gradients(norm):
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 8, 6, 3)).astype("float32"))
    plain = ConvBlock(4, spatial_dims=2, norm=norm, groups=2, name="enc0")
    remat = ConvBlock(4, spatial_dims=2, norm=norm, groups=2, remat=True, name="enc0")
    plain.build(x.shape), remat.build(x.shape)
    remat.set_weights(plain.get_weights())
    runs = {}
    for block in (plain, remat):  # count executions of the conv-norm-act chain
        chain = block._chain

        def counted(x, training, chain=chain, block=block):
            runs[block.remat] = runs.get(block.remat, 0) + 1
            return chain(x, training)

        block._chain = counted
    (l0, g0), (l1, g1) = (_loss_and_grads(b, x, True, compiled=False) for b in (plain, remat))
    assert runs == {False: 1, True: 2}  # remat: forward + one recomputation in the backward pass
    assert len(g1) == 1 + len(remat.trainable_weights) and all(float(tf.reduce_max(tf.abs(g))) > 0 for g in g1)
    _assert_close(l1, l0)
    _assert_close(g1, g0)
    # BatchNorm moving statistics: updated once per step, not again by the recomputation.
    _assert_close(remat.non_trainable_weights, plain.non_trainable_weights, rtol=0, atol=0)
    if norm == "batch":
        assert not np.allclose(remat.non_trainable_weights[0].numpy(), 0.0)


def test_conv_block_config_shapes_and_names():
    block = ConvBlock(6, spatial_dims=3, conv_per_block=3, norm="group", groups=3, activation="elu", remat=True,
                      name="dec1")
    assert block.compute_output_shape((None, 4, 4, 4, 5)) == (None, 4, 4, 4, 6)
    assert block(np.zeros((1, 4, 4, 4, 5), "float32")).shape == (1, 4, 4, 4, 6)
    assert [w.path for w in block.trainable_weights][:3] == ["dec1/dec1_conv0/kernel", "dec1/dec1_norm0/gamma",
                                                             "dec1/dec1_norm0/beta"]
    clone = ConvBlock.from_config(block.get_config())
    assert clone.get_config() == block.get_config() and clone.remat and clone.conv_per_block == 3
    with pytest.raises(ValueError):
        ConvBlock(4, conv_per_block=0)


# === U-Net family ===

MODEL_CASES = [  # (cls, spatial_dims, size, norm, extra)
    (UNet, 2, (16, 8), "batch", {}),
    (UNet, 3, (8, 8, 4), "instance", {"upsample": "upsampling"}),
    (AttentionUNet, 2, (8, 16), "group", {"groups": 2, "deep_supervision": True}),
    (AttentionUNet, 3, (4, 8, 8), "none", {}),
]


@pytest.mark.parametrize("cls,spatial_dims,size,norm,extra", MODEL_CASES)
def test_remat_model_matches_unrolled_outputs_and_gradients(cls, spatial_dims, size, norm, extra):
    plain, remat = _pair(cls, spatial_dims=spatial_dims, depth=3, norm=norm, **TINY, **extra)
    assert any(isinstance(layer, ConvBlock) for layer in remat.layers)
    assert not any(isinstance(layer, ConvBlock) for layer in plain.layers)
    x = np.random.default_rng(1).normal(size=(2, *size, 1)).astype("float32")
    _assert_close(remat(x, training=False), plain(x, training=False))
    # Eager and inside tf.function (graph-mode tf.recompute_grad), gradients wrt input and every weight.
    for compiled in (False, True):
        (l0, g0), (l1, g1) = (_loss_and_grads(m, x, True, compiled) for m in (plain, remat))
        _assert_close(l1, l0)
        _assert_close(g1, g0)
        assert float(tf.reduce_max(tf.abs(g1[0]))) > 0


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_remat_fit_step_matches_unrolled(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        plain, remat = _pair(UNet, spatial_dims=3, depth=2, norm="instance", **TINY)
        assert remat.get_layer("enc0").compute_dtype == ("bfloat16" if policy != "float32" else "float32")
        rng = np.random.default_rng(2)
        x = rng.normal(size=(2, 8, 8, 8, 1)).astype("float32")
        y = (rng.random((2, 8, 8, 8, 2)) < 0.3).astype("float32")
        before = [w.copy() for w in plain.get_weights()]
        losses = []
        for model in (plain, remat):
            model.compile(optimizer=keras.optimizers.SGD(0.5), loss="binary_crossentropy")
            losses.append(model.fit(x, y, batch_size=2, epochs=1, verbose=0).history["loss"][0])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.isfinite(losses).all()
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    changed = [not np.allclose(a, b) for a, b in zip(before, plain.get_weights())]
    assert sum(changed) >= len(before) // 2  # the step did update the weights
    tol = 1e-5 if policy == "float32" else 1e-2  # bf16 gradients: rounding may differ between graphs
    for a, b in zip(plain.get_weights(), remat.get_weights()):
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol * 1e-1)


def test_remat_batchnorm_fit_updates_moving_stats_once():
    plain, remat = _pair(UNet, spatial_dims=2, depth=2, norm="batch", dropout=0.2, **TINY)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 8, 8, 1)).astype("float32") + 2.0
    y = (rng.random((4, 8, 8, 2)) < 0.5).astype("float32")
    for model in (plain, remat):
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")  # lr 0: only the BN statistics move
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    mean_plain = plain.get_layer("enc0_norm0").moving_mean.numpy()
    mean_remat = remat.get_layer("enc0").norms[0].moving_mean.numpy()
    assert np.abs(mean_plain).max() > 1e-3  # moved away from 0
    np.testing.assert_allclose(mean_remat, mean_plain, rtol=1e-5, atol=1e-7)


def test_remat_harness_config_and_keras_round_trip(tmp_path):
    kwargs = dict(spatial_dims=3, depth=2, norm="instance", remat=True, **TINY)
    model = run_model_tests(UNet, kwargs, (1, 8, 8, 8, 1), tmp_path, expected_output_shape=(1, 8, 8, 8, 2),
                            run_predict=False)
    assert model.get_config()["remat"] is True
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.remat and isinstance(loaded.get_layer("enc0"), ConvBlock) and loaded.get_layer("enc0").remat


def test_config_without_remat_key_loads_unrolled():
    """Configs and saved models from before the option default to the unrolled layout."""
    config = UNet(spatial_dims=2, depth=2, **TINY).get_config()
    assert config.pop("remat") is False
    model = UNet.from_config(config)
    assert not model.remat and model.get_layer("enc0_conv0") is not None
