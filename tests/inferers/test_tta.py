"""Flip test-time augmentation: equivariant predictors unchanged, others averaged exactly as defined."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from medtf.inferers import flip_tta, sliding_window_inference


def _rand(shape, seed=0):
    return np.random.default_rng(seed).uniform(-1.0, 1.0, shape).astype(np.float32)


@pytest.mark.parametrize("shape,axes", [((2, 7, 9, 1), None), ((1, 5, 6, 7, 2), (0, 2)), ((1, 5, 6, 7, 1), None)])
def test_equivariant_predictor_unchanged(shape, axes):
    x = _rand(shape)
    square = flip_tta(lambda b: tf.square(b), axes=axes)
    np.testing.assert_allclose(square(x).numpy(), x ** 2, rtol=1e-6)
    np.testing.assert_allclose(flip_tta(lambda b: b, axes=axes)(x).numpy(), x, rtol=1e-6)


def test_number_of_flips():
    calls = []

    def record(batch):
        calls.append(batch)
        return batch

    flip_tta(record)(_rand((1, 4, 5, 6, 1)))
    assert len(calls) == 8  # all subsets of 3 axes
    calls.clear()
    flip_tta(record, axes=[1])(_rand((1, 4, 5, 6, 1)))
    assert len(calls) == 2


def test_non_equivariant_predictor_is_averaged():
    """cumsum along H is not flip-equivariant: TTA gives (cumsum + flipped-back cumsum of the flip) / 2."""
    x = np.array([1.0, 2.0, 3.0], np.float32).reshape(1, 3, 1, 1)
    cumsum = lambda b: tf.cumsum(b, axis=1)  # noqa: E731
    plain = cumsum(x).numpy().ravel()
    tta = flip_tta(cumsum, axes=[0])(x).numpy().ravel()
    np.testing.assert_allclose(plain, [1, 3, 6])
    np.testing.assert_allclose(tta, [3.5, 4.0, 4.5])


def test_composes_with_sliding_window():
    x = _rand((1, 11, 13, 9, 1), seed=3)
    out = sliding_window_inference(x, flip_tta(lambda b: tf.square(b)), (6, 6, 6), overlap=0.5, batch_size=2)
    np.testing.assert_allclose(out.numpy(), x ** 2, rtol=1e-5, atol=1e-6)
    cumsum = flip_tta(lambda b: tf.cumsum(b, axis=2), axes=[1])
    plain = sliding_window_inference(x, lambda b: tf.cumsum(b, axis=2), (6, 6, 6), overlap=0.5).numpy()
    assert np.abs(sliding_window_inference(x, cumsum, (6, 6, 6), overlap=0.5).numpy() - plain).max() > 0.1


def test_bad_axes_raise():
    with pytest.raises(ValueError, match="out of range"):
        flip_tta(lambda b: b, axes=[2])(np.zeros((1, 4, 4, 1), np.float32))


# === Classifier (invariant) TTA ===

def _dihedral_numpy(x, axes):
    """The 8 symmetries of the square in the plane ``axes`` of ``x``, by NumPy."""
    return [np.rot90(v, k, axes=axes) for v in (x, np.flip(x, axes[1])) for k in range(4)]


@pytest.mark.parametrize("shape", [(2, 5, 5, 3), (1, 4, 6, 6, 2)])
def test_square_views_are_the_eight_symmetries(shape):
    from medtf.inferers import classification_views

    x = _rand(shape, seed=3)
    plane = (len(shape) - 3, len(shape) - 2)
    views = classification_views(len(shape) - 2)
    got = [fn(tf.constant(x)).numpy() for _, fn in views]
    expected = _dihedral_numpy(x, plane)
    assert len(got) == 8 and views[0][0] == "rot0"
    np.testing.assert_array_equal(got[0], x)
    # the same set of transforms (order aside), all distinct
    keys = lambda arrays: sorted(a.tobytes() for a in arrays)  # noqa: E731
    assert keys(got) == keys(expected) and len(set(keys(got))) == 8


def test_non_square_views_keep_the_shape_and_shifts_mirror_the_border():
    from medtf.inferers import classification_views

    x = _rand((1, 4, 7, 1), seed=4)
    views = dict(classification_views(2, square=False, shift=1))
    assert sorted(views) == ["flip_ud", "rot0", "rot0_flip", "rot180", "rot180_flip", "shift_down1", "shift_left1",
                             "shift_right1", "shift_up1"]
    for fn in views.values():
        assert fn(tf.constant(x)).shape == x.shape
    down = views["shift_down1"](tf.constant(x)).numpy()
    np.testing.assert_array_equal(down[:, 1:], x[:, :-1])     # content moved down by one row
    np.testing.assert_array_equal(down[:, 0], x[:, 0])        # the new top row mirrors the old one
    right = views["shift_right1"](tf.constant(x)).numpy()
    np.testing.assert_array_equal(right[:, :, 1:], x[:, :, :-1])


def test_invariant_tta_is_the_mean_over_views_and_works_in_a_tf_function():
    from medtf.inferers import classification_views, invariant_tta

    x = _rand((3, 6, 6, 2), seed=5)
    w = _rand((6 * 6 * 2, 4), seed=6)

    def classifier(batch):  # not rotation invariant: a fixed linear map of the flattened image
        return tf.nn.softmax(tf.reshape(batch, (tf.shape(batch)[0], -1)) @ w)

    views = classification_views(2, shift=2)
    expected = np.mean([classifier(fn(tf.constant(x))).numpy() for _, fn in views], axis=0)
    tta = invariant_tta(classifier, views)
    np.testing.assert_allclose(tta(x).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(tf.function(tta)(tf.constant(x)).numpy(), expected, rtol=1e-6)
    assert not np.allclose(expected, classifier(x).numpy())  # the views do change the prediction
    with pytest.raises(ValueError):
        invariant_tta(classifier, [])
