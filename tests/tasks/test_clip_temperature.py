"""ClipLoss with a learnable temperature and label-aware targets, against NumPy references."""

from __future__ import annotations

import numpy as np
import pytest


def _unit(rng, n, d):
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _log_softmax(m):
    m = m - m.max(axis=1, keepdims=True)
    return m - np.log(np.exp(m).sum(axis=1, keepdims=True))


def _numpy_loss(image, text, scale, targets=None):
    """Per-example 0.5 * (CE image->reports + CE report->images) of logits scale * cos (float64)."""
    sim = image.astype(np.float64) @ text.astype(np.float64).T
    targets = np.eye(len(sim)) if targets is None else targets
    i2t = -(targets * _log_softmax(scale * sim)).sum(1)
    t2i = -(targets * _log_softmax(scale * sim.T)).sum(1)
    return 0.5 * (i2t + t2i)


def test_learned_temperature_loss_and_gradient_match_numpy():
    import tensorflow as tf

    from medtf.models.clip import LogitScale
    from medtf.tasks.contrastive import ClipLoss

    rng = np.random.default_rng(0)
    image, text = _unit(rng, 6, 5), _unit(rng, 6, 5)
    layer = LogitScale(temperature=0.2, max_scale=100.0)
    with tf.GradientTape() as tape:
        y = tf.concat([image, text, layer(tf.constant(image))], axis=1)
        loss = ClipLoss(temperature=0.9)(tf.zeros((6, 1)), y)  # the fixed temperature is ignored: the column wins
    grad = float(tape.gradient(loss, layer.log_scale.value))  # the tf.Variable under the Keras variable
    s = 5.0
    assert float(loss) == pytest.approx(_numpy_loss(image, text, s).mean(), rel=1e-5)
    # d loss / d log s = s * d loss / d s; d CE_i / d s = sum_j p_ij S_ij - S_ii (both directions).
    sim = image.astype(np.float64) @ text.astype(np.float64).T
    p, q = np.exp(_log_softmax(s * sim)), np.exp(_log_softmax(s * sim.T))
    analytic = s * 0.5 * ((p * sim).sum(1) - np.diag(sim) + (q * sim.T).sum(1) - np.diag(sim)).mean()
    eps = 1e-6  # the reference's own check: central difference in log s
    numeric = (_numpy_loss(image, text, np.exp(np.log(s) + eps)).mean()
               - _numpy_loss(image, text, np.exp(np.log(s) - eps)).mean()) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=1e-5)
    assert abs(analytic) > 1e-3 and grad == pytest.approx(analytic, rel=1e-4)


def test_temperature_clamp_stops_at_max_scale():
    import tensorflow as tf

    from medtf.models.clip import LogitScale

    layer = LogitScale(temperature=0.07, max_scale=100.0)
    np.testing.assert_allclose(layer(tf.zeros((2, 3))).numpy(), [[1 / 0.07]] * 2, rtol=1e-5)
    layer.log_scale.assign(np.log(500.0))
    with tf.GradientTape() as tape:
        out = layer(tf.zeros((2, 3)))
        total = tf.reduce_sum(out)
    np.testing.assert_allclose(out.numpy(), [[100.0]] * 2, rtol=1e-5)
    assert float(tape.gradient(total, layer.log_scale.value)) == 0.0
    layer.log_scale.assign(-1.0)  # below 0: the scale stays 1 (temperature at most 1)
    np.testing.assert_allclose(layer(tf.zeros((1, 3))).numpy(), [[1.0]], rtol=1e-6)
    with pytest.raises(ValueError, match="outside the clamp"):
        LogitScale(temperature=0.001)


def test_label_aware_targets_match_numpy():
    from medtf.tasks.contrastive import ClipLoss

    rng = np.random.default_rng(1)
    image, text = _unit(rng, 6, 4), _unit(rng, 6, 4)
    labels = np.array([0, 1, 0, 2, 1, -1], np.float32)  # -1: unknown class, only its own pair is positive
    same = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0)
    positive = (same | np.eye(6, dtype=bool)).astype(np.float64)
    targets = positive / positive.sum(1, keepdims=True)
    assert targets[0, 2] == 0.5 and targets[5, 5] == 1.0
    y = np.concatenate([image, text], axis=1)
    aware = np.asarray(ClipLoss(temperature=0.1, label_aware=True, reduction=None)(labels[:, None], y))
    np.testing.assert_allclose(aware, _numpy_loss(image, text, 10.0, targets), rtol=1e-5)
    plain = np.asarray(ClipLoss(temperature=0.1, reduction=None)(labels[:, None], y))
    np.testing.assert_allclose(plain, _numpy_loss(image, text, 10.0), rtol=1e-5)
    assert np.abs(aware - plain)[[0, 1, 2, 4]].min() > 1e-3  # same-class rows differ ...
    np.testing.assert_allclose(aware[[3, 5]], plain[[3, 5]], rtol=1e-5)  # ... singletons do not
    # All classes distinct: label-aware is the plain loss.
    distinct = np.asarray(ClipLoss(temperature=0.1, label_aware=True, reduction=None)(
        np.arange(6, dtype=np.float32)[:, None], y))
    np.testing.assert_allclose(distinct, plain, rtol=1e-5)
    restored = ClipLoss.from_config(ClipLoss(label_aware=True).get_config())
    assert restored.label_aware
    # label_weight 0.4: 0.4 spread over the class, 0.6 more on the own pair (the rows still sum to 1)
    mixed = 0.4 * targets + 0.6 * np.eye(6)
    np.testing.assert_allclose(mixed.sum(1), 1.0)
    soft = np.asarray(ClipLoss(temperature=0.1, label_aware=True, label_weight=0.4, reduction=None)(labels[:, None], y))
    np.testing.assert_allclose(soft, _numpy_loss(image, text, 10.0, mixed), rtol=1e-5)
    assert ClipLoss.from_config(ClipLoss(label_aware=True, label_weight=0.4).get_config()).label_weight == 0.4
    with pytest.raises(ValueError, match="label_weight"):
        ClipLoss(label_aware=True, label_weight=0.0)


@pytest.mark.parametrize("queue_size", [0, 4])
def test_the_task_loss_takes_the_model_label_weight(queue_size):
    from medtf.models.clip import ImageReportEncoder
    from medtf.tasks import get_task

    model = ImageReportEncoder(spatial_dims=3, in_channels=1, depth=2, base_filters=2, embed_dim=4, text_bins=16,
                               text_dim=4, label_aware=True, label_weight=0.5)
    assert model.get_config()["label_weight"] == 0.5
    loss = get_task("contrastive").default_loss(model, queue_size=queue_size)
    assert (loss.label_aware, loss.label_weight) == (True, 0.5)
    assert type(loss).from_config(loss.get_config()).label_weight == 0.5
