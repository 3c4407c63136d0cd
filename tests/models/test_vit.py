"""ViT backbone and masked image model: shapes, config round trips, .keras save/load, the [MASK] replacement,
position codes, named variants and bad arguments."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medtf.models import get_model, list_models
from medtf.models.registry import model_constructor
from medtf.models.vit import MaskedImageModel, ViTBackbone, vit_encoder
from medtf.models.vit.layers import sincos_2d
from tests.models.harness import assert_outputs_close, run_model_tests

TINY = dict(image_size=32, patch_size=8, num_channels=3, hidden_dim=16, num_layers=2, num_heads=2, mlp_dim=32)


@pytest.mark.parametrize("kwargs, shape, tokens", [
    (TINY, (2, 32, 32, 3), 17),                                                       # 4 x 4 patches + [CLS]
    ({**TINY, "image_size": [16, 32], "num_channels": 1, "position_embedding": "sincos"}, (2, 16, 32, 1), 9),
])
def test_backbone_shapes_round_trip_save_load_mixed_precision(kwargs, shape, tokens, tmp_path):
    model = run_model_tests(ViTBackbone, kwargs, shape, tmp_path, expected_output_shape=(shape[0], tokens, 16))
    assert model.get_config()["position_embedding"] == kwargs.get("position_embedding", "learned")


def _masked_backbone():
    return ViTBackbone(**TINY, use_mask_token=True, dropout=0.1)


def test_masked_positions_become_the_mask_token_before_the_blocks():
    vit = _masked_backbone()
    rng = np.random.default_rng(0)
    images = rng.random((2, 32, 32, 3), dtype=np.float32)
    mask = np.zeros((2, 16), bool)
    mask[0, [0, 5, 15]] = True
    mask[1, 3:9] = True
    probe = keras.Model(vit.input, [vit.get_layer("patch_tokens").output, vit.get_layer("mask_tokens").output])
    patches, replaced = (np.asarray(t) for t in probe({"images": images, "mask": mask.astype("float32")}))
    token = np.asarray(vit.get_layer("mask_tokens").mask_token)
    np.testing.assert_array_equal(replaced[mask], np.broadcast_to(token, (mask.sum(), 16)))
    np.testing.assert_array_equal(replaced[~mask], patches[~mask])
    assert not np.allclose(patches[mask], token)  # the replacement changed something
    # A bool mask gives the same tokens as the float one; no mask is the plain (unmasked) encoder.
    out_float = np.asarray(vit({"images": images, "mask": mask.astype("float32")}))
    np.testing.assert_allclose(np.asarray(vit({"images": images, "mask": mask})), out_float, atol=1e-6)
    unmasked = np.asarray(vit({"images": images, "mask": np.zeros((2, 16), "float32")}))
    assert np.abs(unmasked - out_float).max() > 1e-3 and unmasked.shape == (2, 17, 16)


def test_masked_backbone_config_round_trip_and_keras_save_load(tmp_path):
    vit = _masked_backbone()
    x = {"images": np.random.default_rng(1).random((2, 32, 32, 3), dtype=np.float32),
         "mask": (np.arange(32).reshape(2, 16) % 3 == 0).astype("float32")}
    y = vit(x, training=False)
    clone = ViTBackbone.from_config(vit.get_config())
    clone.set_weights(vit.get_weights())
    assert clone.get_config() == vit.get_config()
    assert_outputs_close(clone(x, training=False), y)
    vit.save(tmp_path / "vit.keras")
    loaded = keras.saving.load_model(tmp_path / "vit.keras")
    assert type(loaded) is ViTBackbone and loaded.get_config() == vit.get_config()
    assert_outputs_close(loaded(x, training=False), y)


def test_sincos_position_codes_by_hand():
    codes = sincos_2d((2, 3), 8)
    assert codes.shape == (6, 8)
    row, col = 1, 2  # patch 5 in row-major order
    omega = 1.0 / 10000 ** (np.arange(2) / 2)
    expected = np.concatenate([np.sin(row * omega), np.cos(row * omega), np.sin(col * omega), np.cos(col * omega)])
    np.testing.assert_allclose(codes[5], expected, rtol=1e-6)
    vit = ViTBackbone(**{**TINY, "position_embedding": "sincos"})
    assert not [w for w in vit.weights if "position_embedding" in w.path]  # fixed: nothing to train or save


@pytest.mark.parametrize("target, width", [("pixels", 8 * 8 * 3), ("tokens", 50)])
def test_masked_image_model_shapes_round_trip_and_save_load(target, width, tmp_path):
    model = MaskedImageModel(**TINY, target=target, vocab_size=50, mask_ratio=0.5, min_mask_patches=4)
    x = {"images": np.random.default_rng(2).random((3, 32, 32, 3), dtype=np.float32),
         "mask": (np.arange(48).reshape(3, 16) % 2).astype("float32")}
    y = np.asarray(model(x, training=False))
    assert y.shape == (3, 16, width) and y.dtype == np.float32
    assert model.grid == (4, 4) and model.num_patches == 16
    clone = MaskedImageModel.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    assert clone.get_config() == model.get_config()
    assert_outputs_close(clone(x, training=False), y)
    model.save(tmp_path / "mim.keras")
    loaded = keras.saving.load_model(tmp_path / "mim.keras")
    assert loaded.get_config() == model.get_config() and loaded.target == target and loaded.mask_ratio == 0.5
    assert_outputs_close(loaded(x, training=False), y)
    # The encoder is the backbone with nothing masked, sharing its weights.
    encoder = vit_encoder(loaded)
    tokens = np.asarray(encoder(x["images"]))
    expected = loaded.get_layer("backbone")({"images": x["images"], "mask": np.zeros((3, 16), "float32")})
    np.testing.assert_allclose(tokens, np.asarray(expected), atol=1e-6)
    assert tokens.shape == (3, 17, 16)


def test_named_variants_are_registered_with_the_paper_sizes():
    assert {"vit_tiny", "vit_small", "vit_base", "vit_large", "mim_vit_tiny", "mim_vit_base"} <= set(list_models())
    assert model_constructor("vit_base") is ViTBackbone and model_constructor("mim_vit_base") is MaskedImageModel
    base = get_model("vit_base", image_size=32, patch_size=16, num_layers=1)  # one block keeps the test small
    assert (base.hidden_dim, base.num_heads, base.mlp_dim) == (768, 12, 3072)
    assert base.get_layer("block0_attention").num_heads == 12
    assert base(np.zeros((1, 32, 32, 3), "float32")).shape == (1, 5, 768)
    mim = get_model("mim_vit_tiny", image_size=32, patch_size=8, num_layers=1)
    assert (mim.hidden_dim, mim.num_heads, mim.target, mim.mask_ratio) == (192, 3, "pixels", 0.4)


@pytest.mark.parametrize("kwargs, message", [
    ({"image_size": 30}, "not a multiple of patch_size"),
    ({"hidden_dim": 18, "num_heads": 4}, "not divisible by num_heads"),
    ({"hidden_dim": 18, "num_heads": 2, "position_embedding": "sincos"}, "divisible by 4"),
    ({"position_embedding": "rotary"}, "'learned', 'sincos' or 'xywh'"),
])
def test_bad_backbone_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ViTBackbone(**{**TINY, **kwargs})


@pytest.mark.parametrize("kwargs, message", [
    ({"target": "depth"}, "target must be one of"),
    ({"mask_ratio": 1.0}, r"mask_ratio must be in \(0, 1\)"),
    ({"min_aspect": 2.0}, r"min_aspect must be in \(0, 1\]"),
])
def test_bad_masked_model_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MaskedImageModel(**{**TINY, **kwargs})


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_masked_image_model_under_mixed_precision_gives_float32(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = MaskedImageModel(**TINY, min_mask_patches=4)
        x = {"images": np.random.default_rng(3).random((2, 32, 32, 3), dtype=np.float32),
             "mask": (np.arange(32).reshape(2, 16) % 3 == 0).astype("float32")}
        y = model(x, training=False)
        assert y.dtype == "float32" and np.isfinite(np.asarray(y)).all()
    finally:
        keras.mixed_precision.set_global_policy("float32")
