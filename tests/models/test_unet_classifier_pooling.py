"""UNetClassifier's global pooling (issue #16): with instance norm the global average of the encoder's last layer
hardly moves when a small focal finding appears; the global max does. The classifier and the CLIP image tower
share `global_pool`."""

import keras
import numpy as np
import pytest

from medtf.models.registry import get_model
from medtf.models.unet.encoder import HalvesPooling, UNetClassifier, global_pool


def _head_with_and_without_finding():
    """A smooth 'head' (8 x 24 x 24) and the same volume with one bright 1 x 2 x 2 focus."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(np.linspace(-1, 1, 8), np.linspace(-1, 1, 24), np.linspace(-1, 1, 24), indexing="ij")
    head = (np.sqrt(x**2 + y**2 + z**2) < 0.8).astype(np.float32)
    base = head * (1 + 0.1 * rng.standard_normal(head.shape)).astype(np.float32)
    lesion = base.copy()
    lesion[4, 10:12, 14:16] = 4.0
    return np.stack([base, lesion])[..., None]


def _pooled(model, images):
    return np.asarray(keras.Model(model.inputs, model.get_layer("pool").output)(images))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_instance_norm_average_hides_a_focal_finding_the_max_shows(seed):
    images = _head_with_and_without_finding()
    keras.utils.set_random_seed(seed)
    model = UNetClassifier(spatial_dims=3, in_channels=1, num_classes=5, depth=3, base_filters=8, norm="instance",
                           pooling="avg_max")
    pooled = _pooled(model, images)
    assert pooled.shape == (2, 64)  # 32 bottleneck channels, average then max
    avg, peak = pooled[:, :32], pooled[:, 32:]

    def change(f):
        return np.linalg.norm(f[1] - f[0]) / np.linalg.norm(f[0])

    # measured 0.028-0.035 (average) vs 0.17-0.20 (max) for these seeds
    assert change(avg) < 0.06
    assert change(peak) > 3 * change(avg)


@pytest.mark.parametrize("pooling,width", [("avg", 16), ("max", 16), ("avg_max", 32)])
def test_pooling_round_trip(pooling, width, tmp_path):
    model = UNetClassifier(spatial_dims=3, in_channels=2, num_classes=3, depth=2, base_filters=8, norm="instance",
                           pooling=pooling)
    x = np.random.default_rng(1).random((2, 4, 8, 8, 2), dtype=np.float32)
    y = np.asarray(model(x))
    assert y.shape == (2, 3)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
    assert _pooled(model, x).shape == (2, width)
    assert model.get_config()["pooling"] == pooling
    model.save(tmp_path / "m.keras")
    np.testing.assert_allclose(np.asarray(keras.saving.load_model(tmp_path / "m.keras")(x)), y, atol=1e-5)


def test_defaults_and_bad_pooling():
    assert UNetClassifier(spatial_dims=2, in_channels=1, depth=2, base_filters=4).pooling == "avg"
    assert get_model("unet_classifier3d", in_channels=1, depth=2, base_filters=8).pooling == "avg_max"
    with pytest.raises(ValueError, match="pooling 'flatten'"):
        UNetClassifier(spatial_dims=2, in_channels=1, depth=2, base_filters=4, pooling="flatten")
    with pytest.raises(ValueError, match="pooling 'sum'"):
        global_pool(keras.Input((4, 4, 8)), 2, "sum")


def _halves_reference(x, reduce):
    """NumPy: ``reduce`` over each block made by halving every spatial axis (odd axes share the middle)."""
    blocks = [x]
    for axis in range(1, x.ndim - 1):
        n = x.shape[axis]
        cut = [slice(0, (n + 1) // 2), slice(n // 2, n)]
        blocks = [b[(slice(None),) * axis + (half,)] for b in blocks for half in cut]
    return np.concatenate([reduce(b, axis=tuple(range(1, x.ndim - 1))) for b in blocks], axis=-1)


@pytest.mark.parametrize("shape", [(2, 3, 5, 4, 6), (2, 4, 4, 2, 3), (1, 7, 6, 5)])
@pytest.mark.parametrize("mode,reduce", [("max", np.max), ("avg", np.mean)])
def test_halves_pooling_equals_numpy_on_any_size(shape, mode, reduce):
    x = np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32)
    dims = x.ndim - 2
    inputs = keras.Input((None,) * dims + (shape[-1],))  # sizes known only at run time
    model = keras.Model(inputs, HalvesPooling(mode)(inputs))
    got = np.asarray(model(x))
    assert got.shape == (shape[0], 2 ** dims * shape[-1])
    np.testing.assert_allclose(got, _halves_reference(x, reduce), rtol=1e-6, atol=1e-6)


def test_halves_pooling_tells_the_side_a_global_pool_cannot():
    """The same focus on the left or on the right: identical global max, different half-block maxima."""
    left, right = np.zeros((1, 4, 8, 8, 1), np.float32), np.zeros((1, 4, 8, 8, 1), np.float32)
    left[0, 1, 3, 1], right[0, 1, 3, 6] = 1.0, 1.0
    inputs = keras.Input((None, None, None, 1))
    pooled = keras.Model(inputs, global_pool(inputs, 3, "max", regions=2))
    a, b = np.asarray(pooled(left))[0], np.asarray(pooled(right))[0]
    assert a.shape == (9,) and a[0] == b[0] == 1.0       # global max first: the same
    # blocks ordered (D, H, W) halves, W fastest: the focus is in block (0, 0, 0) or (0, 0, 1)
    np.testing.assert_array_equal(a[1:], [1, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(b[1:], [0, 1, 0, 0, 0, 0, 0, 0])


@pytest.mark.parametrize("pooling,width", [("max", 16 * 9), ("avg_max", 32 * 9)])
def test_pool_regions_round_trip(pooling, width, tmp_path):
    model = UNetClassifier(spatial_dims=3, in_channels=1, num_classes=2, depth=2, base_filters=8, norm="instance",
                           pooling=pooling, pool_regions=2)
    x = np.random.default_rng(2).random((2, 5, 8, 10, 1), dtype=np.float32)
    y = np.asarray(model(x))
    assert _pooled(model, x).shape == (2, width)
    assert model.get_config()["pool_regions"] == 2
    model.save(tmp_path / "m.keras")
    np.testing.assert_allclose(np.asarray(keras.saving.load_model(tmp_path / "m.keras")(x)), y, atol=1e-5)
    with pytest.raises(ValueError, match="regions 3"):
        global_pool(keras.Input((4, 4, 8)), 2, "max", regions=3)
