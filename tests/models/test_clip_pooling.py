"""The CLIP image tower's pooling options and coordinate channels (issue #16: where a finding is matters for
retrieval, and a small focal finding is diluted by the average)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from medtf.models.clip import CoordinateChannels, ImageReportEncoder


def test_coordinate_channels_match_numpy_grid():
    x = np.arange(2 * 2 * 3 * 4 * 1, dtype=np.float32).reshape(2, 2, 3, 4, 1)
    out = np.asarray(CoordinateChannels()(x))
    assert out.shape == (2, 2, 3, 4, 4)
    np.testing.assert_array_equal(out[..., 0], x[..., 0])
    grid = np.stack(np.meshgrid(np.linspace(-1, 1, 2), np.linspace(-1, 1, 3), np.linspace(-1, 1, 4), indexing="ij"), -1)
    for b in range(2):
        np.testing.assert_allclose(out[b, ..., 1:], grid, atol=1e-6)
    assert CoordinateChannels().compute_output_shape((None, 5, 6, 7, 3)) == (None, 5, 6, 7, 6)
    # inside tf.function with unknown sizes (how Keras fit traces it): the same grid
    layer = CoordinateChannels()
    traced = tf.function(layer, input_signature=[tf.TensorSpec((None, None, None, None, 1))])
    np.testing.assert_allclose(np.asarray(traced(tf.constant(x))), out, atol=1e-6)


def _inputs(rng):
    return {"image": rng.random((2, 4, 8, 8, 3), dtype=np.float32), "report": np.array(["left frontal", "normal"])}


@pytest.mark.parametrize("pooling,coords,regions", [("max", True, 1), ("avg_max", False, 1), ("avg_max", True, 2)])
def test_pooling_and_coords_round_trip(pooling, coords, regions, tmp_path):
    rng = np.random.default_rng(0)
    kwargs = dict(spatial_dims=3, in_channels=3, depth=2, base_filters=2, embed_dim=4, text_bins=16, text_dim=4,
                  pooling=pooling, coords=coords, pool_regions=regions)
    model = ImageReportEncoder(**kwargs)
    x = _inputs(rng)
    y = np.asarray(model(x))
    assert y.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(y[:, :4], axis=1), 1.0, rtol=1e-5)
    assert model.get_config()["pooling"] == pooling and model.get_config()["coords"] is coords
    assert model.get_config()["pool_regions"] == regions
    # the projection reads the global pool and, with regions=2, the 8 half-blocks too (4 bottleneck channels)
    width = 4 * (2 if pooling == "avg_max" else 1) * (1 + 8 * (regions == 2))
    assert model.get_layer("image_projection").kernel.shape == (width, 4)
    # the encoder sees the position channels: its first convolution takes 3 + 3 inputs
    first = next(w for w in model.get_layer("unet_encoder").weights if len(w.shape) == 5)
    assert first.shape[-2] == (6 if coords else 3)
    model.save(tmp_path / "m.keras")
    np.testing.assert_allclose(np.asarray(keras.saving.load_model(tmp_path / "m.keras")(x)), y, atol=1e-5)


@pytest.mark.parametrize("coords", [False, True])
@pytest.mark.parametrize("regions", [1, 2])
def test_only_coords_or_regions_make_the_embedding_position_aware(coords, regions):
    """The same finding 6 voxels further right, across the midline (clear of the borders' receptive fields, on the
    pooling grid): a globally pooled convolutional embedding cannot tell the two apart; with position channels or
    half-block pooling it can."""
    image = np.zeros((2, 4, 8, 32, 1), np.float32)
    image[0, 2, 4, 12, 0] = image[1, 2, 4, 18, 0] = 5.0
    model = ImageReportEncoder(spatial_dims=3, in_channels=1, depth=2, base_filters=2, embed_dim=4, text_bins=16,
                               text_dim=4, pooling="max", coords=coords, pool_regions=regions)
    emb = np.asarray(model.image_tower(image))
    if coords or regions == 2:
        assert np.abs(emb[0] - emb[1]).max() > 1e-3
    else:
        np.testing.assert_allclose(emb[0], emb[1], atol=1e-5)


def test_unknown_pooling_is_rejected():
    with pytest.raises(ValueError, match="pooling 'flatten'"):
        ImageReportEncoder(spatial_dims=3, in_channels=1, depth=2, base_filters=2, pooling="flatten")
