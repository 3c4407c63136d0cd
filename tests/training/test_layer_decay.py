"""Layer-wise learning-rate decay: per-variable layer ids of a ViT, one SGD / AdamW step per variable vs the
hand-computed update (block k moves by lr * decay^(L - k)), the same inside model.fit, config checks."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from medtf.models.vit import NucleusClassifier
from medtf.tasks.nucleus_classification import NucleusLoss
from medtf.training.layer_decay import apply_layer_decay, layer_scales

DECAY, LR, L = 0.5, 0.1, 2


def tiny(layers=L):
    keras.utils.set_random_seed(3)
    return NucleusClassifier(num_classes=3, max_nuclei=4, image_size=16, patch_size=8, hidden_dim=8,
                             num_layers=layers, num_heads=2, mlp_dim=16)


def batch():
    rng = np.random.default_rng(0)
    x = {"images": rng.uniform(0, 1, (2, 16, 16, 3)).astype(np.float32),
         "boxes": np.array([[[1, 1, 6, 7], [8, 2, 15, 9], [0, 0, 0, 0], [0, 0, 0, 0]]] * 2, np.float32),
         "num_boxes": np.array([2, 1], np.int32)}
    return x, np.array([[0, 2, -1, -1], [1, -1, -1, -1]], np.int32)


def expected_scale(path: str, depth: int = L) -> float:
    """BEiT's ids written out for this model: embeddings 0, block k k+1, final norm and head L+1."""
    for k in range(depth):
        if path.startswith(f"block{k}_"):
            return DECAY ** (depth - k)
    if path.startswith(("encoder_norm", "nucleus_head")):
        return 1.0
    return DECAY ** (depth + 1)


def gradients(model):
    x, y = batch()
    with tf.GradientTape() as tape:
        loss = NucleusLoss()(y, model(x, training=True))
    return [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]


def test_layer_ids_follow_beit():
    model = tiny()
    scales = layer_scales(model, DECAY)
    assert scales == {v.path: expected_scale(v.path) for v in model.variables}
    assert scales["block0_mlp1/kernel"] == 0.25 and scales["block1_mlp1/kernel"] == 0.5
    assert scales["patch_embedding/kernel"] == scales["nucleus_pad/pad_token"] == 0.125
    assert scales["nucleus_head/kernel"] == 1.0
    with pytest.raises(ValueError, match="needs a ViT-style model"):
        layer_scales(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), 0.5)
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
        layer_scales(model, 1.5)


def test_sgd_and_adamw_steps_scale_per_block():
    model = tiny()
    before = [v.numpy() for v in model.trainable_variables]
    grads = gradients(model)
    optimizer = apply_layer_decay(keras.optimizers.SGD(LR), model, DECAY)
    optimizer.apply([tf.constant(g) for g in grads], model.trainable_variables)
    for v, w0, g in zip(model.trainable_variables, before, grads):
        # float32 weights: compare the new weights (a wrong scale moves them by ~1e-3 relative, far above 3e-7)
        np.testing.assert_allclose(v.numpy(), w0 - LR * expected_scale(v.path) * g, rtol=3e-7, atol=1e-9,
                                   err_msg=v.path)
    assert any(np.abs(g).max() > 0 for g in grads[:4])  # the embeddings do get a gradient (the test can fail)

    model = tiny()  # AdamW's first step: decoupled decay, then lr_t * m / (sqrt(v) + eps), both scaled
    before = [v.numpy().astype(np.float64) for v in model.trainable_variables]
    optimizer = apply_layer_decay(keras.optimizers.AdamW(LR, weight_decay=0.3), model, DECAY)
    optimizer.apply([tf.constant(g) for g in grads], model.trainable_variables)
    b1, b2, eps = 0.9, 0.999, 1e-7
    for v, w0, g in zip(model.trainable_variables, before, grads):
        lr = LR * expected_scale(v.path)
        g = g.astype(np.float64)
        w1 = w0 - w0 * 0.3 * lr
        m, s = (1 - b1) * g, (1 - b2) * g * g
        want = w1 - lr * np.sqrt(1 - b2) / (1 - b1) * m / (np.sqrt(s) + eps)
        np.testing.assert_allclose(v.numpy(), want, rtol=1e-5, atol=5e-7, err_msg=v.path)  # steps ~1e-2


def test_fit_uses_the_block_learning_rates():
    """model.fit's compiled train step (one SGD step) moves every variable by -lr * scale * gradient (one block:
    embeddings 1/4, block 1/2, head 1; tracing a second block would double the test's time)."""
    model = tiny(1)
    before = [v.numpy() for v in model.trainable_variables]
    grads = gradients(model)
    model.compile(optimizer=apply_layer_decay(keras.optimizers.SGD(LR), model, DECAY), loss=NucleusLoss())
    x, y = batch()
    model.fit(tf.data.Dataset.from_tensors((x, y)), epochs=1, verbose=0)
    for v, w0, g in zip(model.trainable_variables, before, grads):
        np.testing.assert_allclose(v.numpy(), w0 - LR * expected_scale(v.path, 1) * g, rtol=1e-6, atol=1e-8,
                                   err_msg=v.path)


def test_config_key_is_checked():
    from medtf.training.config import ConfigError
    from medtf.training.experiment import TrainConfig

    assert TrainConfig.from_dict({"layer_decay": 0.75}, "train").layer_decay == 0.75
    with pytest.raises(ConfigError, match=r"train.layer_decay must be in \(0, 1\]"):
        TrainConfig.from_dict({"layer_decay": 0.0}, "train")


@pytest.mark.slow
def test_mirrored_strategy_fit_step_equals_one_device():
    """tests/training/_layer_decay_replicas_check.py: 2 replicas apply the same per-block rates as one device."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("_layer_decay_replicas_check.py"))],
                          cwd=repo, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(repo), "TF_CPP_MIN_LOG_LEVEL": "2",
                               "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert result["mirrored_vs_single"] < 1e-6 and result["decay_vs_plain"] > 1e-2
