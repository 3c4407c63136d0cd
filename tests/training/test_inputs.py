"""``data.preprocess`` (train and validation, before augmentation), ``data.val_patch_size``, shared helpers."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tests.training.conftest import tiny_config


def _raw(lgg_tiny, split):
    from medtf.data import make_dataset

    return np.concatenate([x.numpy() for x, _ in make_dataset(lgg_tiny, split, batch_size=2, training=False)])


def test_validation_gets_preprocess_only(lgg_tiny):
    from medtf.training.engine import build_datasets

    raw = _raw(lgg_tiny, "val")
    lo, hi = (float(v) for v in np.percentile(raw, [30, 90]))  # a window that clips at both ends
    config = tiny_config(lgg_tiny)
    config["data"]["preprocess"] = [{"name": "window", "center": (lo + hi) / 2, "width": hi - lo}]
    config["data"]["transforms"] = [{"name": "random_flip", "prob": 1.0, "axes": [0, 1]}]
    _, val = build_datasets(config["data"])
    got = np.concatenate([x.numpy() for x, _ in val])
    assert got.shape == raw.shape == (4, 32, 32, 3)
    np.testing.assert_allclose(got, np.clip((raw - lo) / (hi - lo), 0, 1), atol=1e-5)  # windowed, never flipped
    # Clipped at both ends (a saturated top can sit exactly on the window's edge: compare with round-off).
    assert 0 < (got >= 1 - 1e-5).mean() < 0.5 and (got <= 1e-5).mean() > 0.2


def test_training_examples_are_preprocessed_before_augmentation(lgg_tiny):
    from medtf.training.engine import build_datasets

    config = tiny_config(lgg_tiny)
    config["data"]["preprocess"] = {"name": "zscore"}  # a single spec works too
    config["data"]["transforms"] = [{"name": "random_flip", "prob": 1.0, "axes": [0, 1]}]
    train, _ = build_datasets(config["data"])
    for x, _ in train.take(3):
        x = x.numpy()
        np.testing.assert_allclose(x.mean(axis=(1, 2)), 0, atol=1e-4)  # per example and channel
        np.testing.assert_allclose(x.std(axis=(1, 2)), 1, atol=1e-3)


def test_build_preprocess_and_training_transforms(lgg_tiny):
    from medtf.transforms import Compose
    from medtf.training.engine import build_preprocess, training_transforms

    config = tiny_config(lgg_tiny)
    assert build_preprocess(config["data"]) is None
    augment = training_transforms(config["data"])
    assert isinstance(augment, Compose) and len(augment) == 1
    config["data"]["transforms"] = []
    assert training_transforms(config["data"]) is None
    config["data"]["preprocess"] = [{"name": "window", "center": 0.5, "width": 0.5}]
    pre = build_preprocess(config["data"])
    example = {"image": tf.constant([[[0.0], [0.5]], [[0.6], [1.0]]]), "mask": tf.zeros((2, 2, 1), tf.uint8)}
    out = pre(example, tf.constant([0, 0]))
    np.testing.assert_allclose(out["image"].numpy()[..., 0], [[0.0, 0.5], [0.7, 1.0]], atol=1e-6)
    config["data"]["transforms"] = [{"name": "random_flip", "prob": 1.0, "axes": [1]}]
    both = training_transforms(config["data"])(example, tf.constant([1, 2]))
    np.testing.assert_allclose(both["image"].numpy()[..., 0], [[0.5, 0.0], [1.0, 0.7]], atol=1e-6)
    # evaluation reuses the same function
    from medtf.evaluation.run import build_preprocess as eval_preprocess

    np.testing.assert_array_equal(eval_preprocess(config)(example, tf.constant([0, 0]))["image"], out["image"])


@pytest.mark.parametrize("val_patch, expected", [(None, 32), (16, 16)])
def test_validation_patch_size(lgg_tiny, val_patch, expected):
    from medtf.training.engine import build_datasets

    config = tiny_config(lgg_tiny)
    config["data"]["patch_size"] = 16
    config["data"]["val_patch_size"] = val_patch
    train, val = build_datasets(config["data"])
    assert next(iter(train))[0].shape == (2, 16, 16, 3)
    x, y = next(iter(val))
    assert x.shape == (2, expected, expected, 3) and y.shape == (2, expected, expected, 1)
