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


def test_jit_compile_fit(lgg_tiny, tmp_path):
    from medtf.training.engine import train

    result = train(tiny_config(lgg_tiny, jit_compile=True, **QUICK), tmp_path / "xla")
    assert result["model"].jit_compile is True and np.isfinite(result["history"]["loss"]).all()
    plain = train(tiny_config(lgg_tiny, **QUICK), tmp_path / "plain")
    assert plain["model"].jit_compile is False  # default: no XLA


def test_remat_builds_inside_remat_scope_with_identical_outputs(lgg_tiny, tmp_path):
    import keras

    from medtf.training.engine import build_model, train

    result = train(tiny_config(lgg_tiny, remat=True, **QUICK), tmp_path / "remat")
    assert np.isfinite(result["history"]["loss"]).all()
    convs = [layer for layer in result["model"]._flatten_layers() if "conv" in type(layer).__name__.lower()]
    assert convs and all(layer._remat_mode is not None and layer._remat_mode.mode == "full" for layer in convs)

    cfg = tiny_config(lgg_tiny)["model"]
    keras.utils.set_random_seed(5)
    remat = build_model(cfg, remat=True)
    keras.utils.set_random_seed(5)
    plain = build_model(cfg, remat=False)
    assert all(getattr(layer, "_remat_mode", None) is None for layer in plain._flatten_layers())
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(remat(x, training=False).numpy(), plain(x, training=False).numpy())
