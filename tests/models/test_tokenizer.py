"""The VQ-VAE tokenizer: EMA codebook updates, nearest-code quantisation, straight-through gradients, dead-code
restarts and the codebook metrics against NumPy; config / .keras round trips and token grid shapes."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from medtf.models import get_model
from medtf.models.tokenizer import VQVAE, VectorQuantizerEMA, decode_tokens, stage_factors, tokenizer_encoder
from medtf.tasks.tokenizer import CodebookPerplexity, CodebookUsage, ReconstructionPSNR, code_statistics

TINY = dict(patch_size=8, num_channels=3, num_codes=16, embedding_dim=4, width=8, num_res_blocks=1)


def _quantizer(embed, size, **kwargs):
    vq = VectorQuantizerEMA(num_codes=len(embed), embedding_dim=embed.shape[1], **kwargs)
    vq.build((None, embed.shape[1]))
    vq.embed_sum.assign(embed)
    vq.cluster_size.assign(size)
    return vq


def _np_codebook(embed, size, eps):
    total = size.sum()
    return embed / ((size + eps) / (total + len(size) * eps) * total)[:, None]


def _np_nearest(z, codebook):
    return ((z[:, None, :] - codebook[None]) ** 2).sum(-1).argmin(1)


def test_ema_update_equals_numpy_on_a_hand_made_batch():
    embed = np.array([[0.0, 0.0], [2.0, 2.0], [-3.0, 1.0], [5.0, -5.0]], np.float32)
    size = np.array([2.0, 1.0, 3.0, 1.0], np.float32)
    z = np.array([[0.1, -0.2], [0.3, 0.1], [1.6, 2.2], [2.1, 1.9], [-2.5, 0.8], [0.2, 0.0]], np.float32)
    decay, eps = 0.9, 1e-5
    vq = _quantizer(embed * size[:, None], size, decay=decay, epsilon=eps, restart_after=0, commitment_cost=0.25)
    book0 = _np_codebook(embed * size[:, None], size, eps)
    codes = _np_nearest(z, book0)
    np.testing.assert_array_equal(codes, [0, 0, 1, 1, 2, 0])  # code 3 is not used

    quantised, got_codes, commitment = vq(z, training=True)
    np.testing.assert_array_equal(got_codes.numpy(), codes)
    np.testing.assert_allclose(quantised.numpy(), book0[codes], rtol=1e-5)  # forward value: the code itself
    counts = np.bincount(codes, minlength=4).astype(np.float32)
    sums = np.stack([z[codes == k].sum(0) if (codes == k).any() else np.zeros(2) for k in range(4)])
    new_size = decay * size + (1 - decay) * counts
    new_embed = decay * embed * size[:, None] + (1 - decay) * sums
    np.testing.assert_allclose(vq.cluster_size.numpy(), new_size, rtol=1e-6)
    np.testing.assert_allclose(vq.embed_sum.numpy(), new_embed, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vq.codebook.numpy(), _np_codebook(new_embed, new_size, eps), rtol=1e-5)
    np.testing.assert_array_equal(vq.unused.numpy(), [0, 0, 0, 1])
    # per example (here: per row), 0.25 * the mean squared distance to its code
    np.testing.assert_allclose(commitment.numpy(), 0.25 * ((z - book0[codes]) ** 2).mean(1), rtol=1e-5, atol=1e-8)
    assert not vq.losses  # returned for the compiled loss, not add_loss-ed (see VectorQuantizerEMA)
    vq(z, training=False)  # inference: no update
    np.testing.assert_allclose(vq.cluster_size.numpy(), new_size, rtol=1e-6)


def test_quantisation_picks_the_nearest_code():
    rng = np.random.default_rng(0)
    embed = rng.normal(size=(16, 3)).astype(np.float32)
    vq = _quantizer(embed, np.ones(16, np.float32))
    z = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
    quantised, codes, _ = vq(z)
    book = vq.codebook.numpy()
    expected = _np_nearest(z.reshape(-1, 3), book).reshape(2, 5, 5)
    np.testing.assert_array_equal(codes.numpy(), expected)
    assert codes.dtype == tf.int32 and codes.shape == (2, 5, 5)
    np.testing.assert_allclose(quantised.numpy(), book[expected], rtol=1e-6)


def test_straight_through_gradient_reaches_the_encoder():
    vq = _quantizer(np.random.default_rng(1).normal(size=(8, 3)).astype(np.float32), np.ones(8, np.float32))
    z = tf.Variable(np.random.default_rng(2).normal(size=(4, 3)).astype(np.float32))
    w = tf.constant(np.random.default_rng(3).normal(size=(4, 3)).astype(np.float32))
    with tf.GradientTape() as tape:
        out, _, _ = vq(z)
        loss = tf.reduce_sum(out * w)
    np.testing.assert_allclose(tape.gradient(loss, z).numpy(), w.numpy(), rtol=1e-6)  # identity through argmin

    model = VQVAE(**TINY)
    x = np.random.default_rng(4).random((2, 16, 16, 3)).astype(np.float32)
    encoder_vars = model.get_layer("encoder").trainable_variables
    with tf.GradientTape() as tape:
        recon = model(x, training=True)["reconstruction"]
        loss = tf.reduce_mean((recon - x) ** 2)
    grads = tape.gradient(loss, encoder_vars)
    assert all(g is not None for g in grads)
    assert sum(float(tf.reduce_sum(tf.abs(g))) for g in grads) > 0


def test_dead_codes_restart_from_encoder_outputs():
    embed = np.array([[0, 0], [10, 10], [20, 20], [30, 30]], np.float32)
    z = np.array([[0.1, 0.1], [-0.1, 0.2], [0.3, -0.1]], np.float32)  # all nearest to code 0
    vq = _quantizer(embed, np.ones(4, np.float32), restart_after=2, decay=0.5)
    vq.unused.assign(np.zeros(4, np.float32))
    vq(z, training=True)
    np.testing.assert_array_equal(vq.unused.numpy(), [0, 1, 1, 1])  # one call unused: not yet restarted
    np.testing.assert_allclose(vq.embed_sum.numpy()[1:], 0.5 * embed[1:], rtol=1e-6)
    vq(z, training=True)
    embed_sum, size = vq.embed_sum.numpy(), vq.cluster_size.numpy()
    for k in (1, 2, 3):  # restarted at a vector of the batch, with weight one
        assert any(np.array_equal(embed_sum[k], row) for row in z), embed_sum[k]
        assert size[k] == 1.0
    np.testing.assert_array_equal(vq.unused.numpy(), [0, 0, 0, 0])
    assert size[0] == pytest.approx(2.5)  # code 0 kept its EMA: 0.5 * (0.5 * 1 + 0.5 * 3) + 0.5 * 3

    fresh = _quantizer(embed, np.ones(4, np.float32), restart_after=3)  # `unused` starts at restart_after:
    fresh(z, training=True)  # the first batch seeds every code it did not pick
    assert all(any(np.array_equal(fresh.embed_sum.numpy()[k], row) for row in z) for k in (1, 2, 3))


def test_codebook_metrics_match_numpy():
    rng = np.random.default_rng(5)
    batches = [rng.choice([0, 1, 1, 3, 7], size=(2, 4, 4)) for _ in range(3)]
    perplexity, usage = CodebookPerplexity(10), CodebookUsage(10)
    for b in batches:
        perplexity.update_state(None, b)
        usage.update_state(None, b)
    counts = np.bincount(np.concatenate([b.ravel() for b in batches]), minlength=10)
    p = counts[counts > 0] / counts.sum()
    assert float(perplexity.result()) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-5)
    assert float(usage.result()) == pytest.approx(0.4)  # codes 0, 1, 3, 7 of 10
    assert code_statistics(counts) == pytest.approx({"perplexity": float(perplexity.result()), "usage": 0.4,
                                                     "codes_used": 4}, rel=1e-5)
    uniform = CodebookPerplexity(8)
    uniform.update_state(None, np.arange(4).reshape(1, 2, 2))
    assert float(uniform.result()) == pytest.approx(4.0, rel=1e-6)
    uniform.reset_state()
    assert float(uniform.result()) == pytest.approx(1.0)  # nothing counted: exp(0)

    x = rng.random((3, 8, 8, 3)).astype(np.float32)
    y = x + rng.normal(scale=0.1, size=x.shape).astype(np.float32)
    psnr = ReconstructionPSNR()
    psnr.update_state(x, y)
    mse = ((y - x) ** 2).reshape(3, -1).mean(1)
    assert float(psnr.result()) == pytest.approx(np.mean(10 * np.log10(1 / mse)), rel=1e-5)


@pytest.mark.parametrize("patch_size,image,factors", [(8, (32, 48), [2, 2, 2]), (28, (56, 84), [2, 2, 7])])
def test_token_grid_shape_is_one_token_per_patch(patch_size, image, factors):
    assert stage_factors(patch_size) == factors
    model = VQVAE(**{**TINY, "patch_size": patch_size})
    out = model(np.zeros((2, *image, 3), np.float32))
    assert out["reconstruction"].shape == (2, *image, 3) and out["reconstruction"].dtype == tf.float32
    assert out["tokens"].shape == (2, image[0] // patch_size, image[1] // patch_size)
    assert out["tokens"].dtype == tf.int32 and out["commitment"].shape == (2,)


def test_config_and_keras_round_trip(tmp_path):
    model = get_model("vqvae_tiny", **{**TINY, "restart_after": 5})
    x = np.random.default_rng(6).random((2, 16, 24, 3)).astype(np.float32)
    model(x, training=True)  # move the EMA state away from its initial values: it must be saved too
    ref = model(x)
    config = model.get_config()
    assert config["num_codes"] == 16 and config["restart_after"] == 5 and config["spatial_dims"] == 2
    clone = VQVAE.from_config(config)
    clone.set_weights(model.get_weights())
    assert clone.get_config() == config
    model.save(tmp_path / "vq.keras")
    loaded = keras.saving.load_model(tmp_path / "vq.keras")
    assert type(loaded) is VQVAE
    for other in (clone, loaded):
        out = other(x)
        np.testing.assert_array_equal(out["tokens"].numpy(), ref["tokens"].numpy())
        np.testing.assert_allclose(out["reconstruction"].numpy(), ref["reconstruction"].numpy(), atol=1e-5)
    np.testing.assert_allclose(loaded.get_layer("quantizer").codebook.numpy(),
                               model.get_layer("quantizer").codebook.numpy(), rtol=1e-6)
    tokens = tokenizer_encoder(loaded)(x)
    np.testing.assert_array_equal(tokens.numpy(), ref["tokens"].numpy())
    np.testing.assert_allclose(decode_tokens(loaded, tokens).numpy(), ref["reconstruction"].numpy(), atol=1e-5)


def test_mixed_precision_outputs_and_bad_settings():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        out = VQVAE(**TINY)(np.random.default_rng(7).random((1, 16, 16, 3)).astype(np.float32))
        assert out["reconstruction"].dtype == tf.float32 and np.isfinite(out["reconstruction"].numpy()).all()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    with pytest.raises(ValueError, match="num_codes must be at least 2"):
        VectorQuantizerEMA(num_codes=1)
    with pytest.raises(ValueError, match="patch_size must be a positive integer"):
        VQVAE(**{**TINY, "patch_size": 0})
