"""HED stain jitter vs a NumPy colour-deconvolution reference (Ruifrok-Johnston matrix), identity at zero jitter,
stateless seeds (eager == Dataset.map), boxes untouched, bad inputs refused."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from medtf.transforms import build_transforms, get_transform, registered_transforms
from medtf.transforms.stain import HEDJitter, hed_to_rgb, rgb_to_hed

# Ruifrok & Johnston's stain vectors (rows H, E, DAB), written out again rather than imported.
M = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])


def reference(rgb, alpha, beta):
    """NumPy HED jitter: scikit-image's rgb2hed scaling without its clipping, then hed2rgb."""
    log_eps = np.log(1e-6)
    hed = (np.log(np.maximum(rgb, 1e-6)) / log_eps) @ np.linalg.inv(M)
    return np.clip(np.exp(((hed * alpha + beta) @ M) * log_eps), 0, 1)


def tile(shape=(12, 10, 3), seed=0):
    rng = np.random.default_rng(seed)  # pink/purple-ish: H&E pixels are rarely saturated
    return rng.uniform(0.15, 1.0, shape).astype(np.float32)


def test_deconvolution_matches_the_matrix_and_round_trips():
    assert "hed_jitter" in registered_transforms()
    pure_h = np.exp(np.log(1e-6) * 0.3 * M[0])  # RGB of haematoxylin at concentration 0.3
    pure_e = np.exp(np.log(1e-6) * 0.2 * M[1])
    hed = rgb_to_hed(tf.constant(np.stack([pure_h, pure_e]), tf.float32)).numpy()
    np.testing.assert_allclose(hed, [[0.3, 0, 0], [0, 0.2, 0]], atol=1e-5)
    np.testing.assert_allclose(rgb_to_hed(tf.ones((1, 3))).numpy(), 0, atol=1e-7)  # white: no stain
    image = tile()
    np.testing.assert_allclose(hed_to_rgb(rgb_to_hed(image)).numpy(), image, atol=2e-5)


def test_jitter_matches_numpy_reference():
    image = tile()
    for alpha, beta in (([1.1, 0.9, 1.0], [0.02, -0.03, 0.01]), ([0.8, 1.2, 1.05], [-0.05, 0.05, 0.0])):
        got = HEDJitter().jitter(tf.constant(image), tf.constant(alpha), tf.constant(beta)).numpy()
        np.testing.assert_allclose(got, reference(image, np.array(alpha), np.array(beta)), atol=2e-5)
        assert np.abs(got - image).max() > 0.01  # the jitter does move colours
    # Degenerate ranges fix alpha / beta: the registered transform itself vs the reference, on 0-255 values.
    fixed = get_transform("hed_jitter", sigma=[1.2, 1.2], bias=[-0.04, -0.04], max_value=255.0)
    out = fixed({"image": tf.constant(image * 255)}, tf.constant([3, 4]))["image"].numpy()
    np.testing.assert_allclose(out / 255, reference(image, 1.2, -0.04), atol=2e-5)


def test_zero_jitter_is_identity_and_seeds_are_stateless():
    image = tile((16, 16, 3), seed=1)
    boxes = tf.constant([[1.0, 2.0, 5.0, 7.0]])
    identity = get_transform("hed_jitter", sigma=0.0, bias=0.0)
    out = identity({"image": tf.constant(image), "boxes": boxes}, tf.constant([1, 2]))
    np.testing.assert_allclose(out["image"].numpy(), image, atol=2e-5)
    aug = build_transforms([{"name": "hed_jitter", "sigma": 0.1, "bias": 0.05}])
    example = {"image": tf.constant(image), "boxes": boxes, "classes": tf.constant([2])}
    eager = [aug(example, tf.constant([s, 7], tf.int64))["image"].numpy() for s in (0, 1)]
    assert np.abs(eager[0] - eager[1]).max() > 1e-3  # different seeds, different stains
    assert 0.0 <= eager[0].min() and eager[0].max() <= 1.0
    mapped = tf.data.Dataset.from_tensors(example).repeat(2).enumerate().map(
        lambda i, e: aug(e, tf.stack([i, tf.constant(7, tf.int64)])))
    for want, got in zip(eager, mapped.as_numpy_iterator()):
        np.testing.assert_allclose(got["image"], want, atol=1e-6)
        np.testing.assert_array_equal(got["boxes"], boxes.numpy())  # no pixel moves: boxes stay
        np.testing.assert_array_equal(got["classes"], [2])
    never = get_transform("hed_jitter", sigma=0.3, prob=0.0)({"image": tf.constant(image)}, tf.constant([0, 1]))
    np.testing.assert_array_equal(never["image"].numpy(), image)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match=r"needs 2D RGB images \(H, W, 3\)"):
        HEDJitter()({"image": tf.zeros((4, 4, 1))}, tf.constant([0, 1]))
    with pytest.raises(ValueError, match="negative stain scales"):
        HEDJitter(sigma=1.5)
    with pytest.raises(ValueError, match="prob must be in"):
        HEDJitter(prob=2.0)
