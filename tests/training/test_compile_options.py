"""Precision policies, XLA and rematerialisation through the real engine on tiny lgg shards."""

from __future__ import annotations

import numpy as np
import pytest

from tests.training.conftest import tiny_config

QUICK = dict(epochs=1, steps_per_epoch=1, image_panels=False, log_every_n_steps=0, hparams=False)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_fit(lgg_tiny, tmp_path, policy):
    import keras

    from medtf.training.engine import train

    result = train(tiny_config(lgg_tiny, precision=policy, **QUICK), tmp_path / policy)
    assert np.isfinite(result["history"]["loss"]).all()
    model = result["model"]
    assert model.dtype_policy.name == policy and model.layers[1].compute_dtype == policy.split("_")[1]
    out = model.predict(np.zeros((1, 32, 32, 3), np.float32), verbose=0)
    assert out.dtype == np.float32  # the head casts back so losses/metrics see float32
    assert keras.mixed_precision.global_policy().name == "float32"
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


@pytest.mark.slow  # XLA compiles the whole train step (~17 s on 2 cores)
def test_jit_compile_fit(lgg_tiny, tmp_path):
    from medtf.training.engine import train

    result = train(tiny_config(lgg_tiny, jit_compile=True, **QUICK), tmp_path / "xla")
    assert result["model"].jit_compile is True and np.isfinite(result["history"]["loss"]).all()
    plain = train(tiny_config(lgg_tiny, **QUICK), tmp_path / "plain")
    assert plain["model"].jit_compile is False  # default: no XLA


def test_remat_builds_block_remat_model_with_identical_outputs(lgg_tiny, tmp_path):
    from medtf.layers import ConvBlock
    from medtf.training.engine import build_model, train

    result = train(tiny_config(lgg_tiny, remat=True, **QUICK), tmp_path / "remat")
    assert np.isfinite(result["history"]["loss"]).all()
    blocks = [layer for layer in result["model"].layers if isinstance(layer, ConvBlock)]
    assert blocks and all(block.remat for block in blocks) and result["model"].get_config()["remat"] is True

    cfg = tiny_config(lgg_tiny)["model"]
    remat, plain = build_model(cfg, remat=True), build_model(cfg, remat=False)
    assert not any(isinstance(layer, ConvBlock) for layer in plain.layers)
    remat.set_weights(plain.get_weights())  # same weights in the same order
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(remat(x, training=False).numpy(), plain(x, training=False).numpy(), atol=1e-5)
