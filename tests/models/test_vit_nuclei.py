"""Nucleus tokens of the ViT: RoIAlign against SciPy's bilinear resampler (eager and XLA), the (x, y, w, h)
sinusoidal codes by hand, 0 / max nuclei, [PAD] attention masking (real tokens independent of padding), config /
.keras / mixed-precision round trips of the nucleus models, and MIM -> classifier weight transfer."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from medtf.models.vit import MaskedImageModel, NucleusClassifier, ViTBackbone, vit_encoder
from medtf.models.vit.layers import PositionEmbedding, sincos_xywh
from medtf.models.vit.nucleus_layers import BoxPositionEncoding
from medtf.models.vit.roi_align import roi_align
from tests.models.harness import assert_outputs_close

TINY = dict(image_size=32, patch_size=8, num_channels=3, hidden_dim=16, num_layers=2, num_heads=2, mlp_dim=32,
            position_embedding="xywh")
RNG = np.random.default_rng(0)


# === RoIAlign ===

def roi_align_reference(features, boxes, k, patch):
    """SciPy: bin centres in pixels -> cell-centre coordinates (pixel / P - 1/2), linear interpolation with the
    border cells repeated outside (map_coordinates order 1, mode nearest), channel by channel."""
    b, h, w, c = features.shape
    out = np.zeros((b, boxes.shape[1], k, k, c))
    for i in range(b):
        for m, (y0, x0, y1, x1) in enumerate(boxes[i]):
            ys = y0 + (np.arange(k) + 0.5) * (y1 - y0) / k
            xs = x0 + (np.arange(k) + 0.5) * (x1 - x0) / k
            yy, xx = np.meshgrid(ys / patch - 0.5, xs / patch - 0.5, indexing="ij")
            for ch in range(c):
                out[i, m, ..., ch] = ndimage.map_coordinates(features[i, ..., ch].astype(np.float64), [yy, xx],
                                                             order=1, mode="nearest")
    return out


BOXES = np.array([[[10, 12, 13, 14],     # sub-patch nucleus (3 x 2 px inside one 8 px patch)
                   [0, 0, 5, 6],         # top-left border
                   [28, 35, 32, 40],     # bottom-right corner
                   [0, 0, 32, 40],       # the whole tile
                   [5, 9, 27, 30]],      # across patches
                  [[3.5, 17.25, 9.5, 30], [30, 0, 32, 40], [0, 38, 32, 40], [12, 12, 12, 12], [16, 20, 24, 28]]],
                 np.float32)


def test_roi_align_matches_scipy_bilinear_eagerly_and_under_xla():
    features = RNG.normal(size=(2, 4, 5, 3)).astype(np.float32)  # a 32 x 40 px tile in 8 px patches
    expected = roi_align_reference(features, BOXES, 3, 8)
    got = roi_align(features, BOXES, 3, 1 / 8).numpy()
    assert got.shape == (2, 5, 3, 3, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    xla = tf.function(lambda f, b: roi_align(f, b, 3, 1 / 8), jit_compile=True)(features, BOXES).numpy()
    np.testing.assert_allclose(xla, expected, rtol=1e-5, atol=1e-5)
    # A map linear in the cell centres is reproduced exactly inside the centres' hull (bilinear is exact there).
    rows, cols = np.meshgrid(np.arange(4), np.arange(5), indexing="ij")
    linear = (2.0 * rows - 3.0 * cols)[None, ..., None].astype(np.float32)
    box = np.array([[[10, 12, 13, 14]]], np.float32)
    ys, xs = 10 + (np.arange(3) + 0.5), 12 + (np.arange(3) + 0.5) * 2 / 3
    hand = 2.0 * (ys[:, None] / 8 - 0.5) - 3.0 * (xs[None, :] / 8 - 0.5)
    np.testing.assert_allclose(roi_align(linear, box, 3, 1 / 8).numpy()[0, 0, ..., 0], hand, rtol=1e-5)
    # Gradients reach the features (the nucleus tokens train the patch embedding).
    f = tf.Variable(features)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(roi_align(f, BOXES, 3, 1 / 8))
    grad = tape.gradient(loss, f).numpy()
    assert np.isfinite(grad).all() and np.abs(grad).sum() > 0


# === Position codes ===

def test_xywh_codes_by_hand_for_grid_and_nucleus_tokens():
    omega = np.array([1.0, 1e-2])  # dim 16: 2 frequencies 10000 ** -(k / 2) per coordinate
    code = sincos_xywh(np.array([1.5, 0.5, 1.0, 2.0]), 16)
    expected = np.concatenate([np.r_[np.sin(v * omega), np.cos(v * omega)] for v in (1.5, 0.5, 1.0, 2.0)])
    np.testing.assert_allclose(code, expected, rtol=1e-6)
    np.testing.assert_allclose(sincos_xywh(tf.constant([1.5, 0.5, 1.0, 2.0]), 16).numpy(), expected, rtol=1e-6)
    # Grid tokens: patch (i, j) of a 2 x 3 grid is (j + 0.5, i + 0.5, 1, 1); [CLS] gets a learned position.
    layer = PositionEmbedding((2, 3), "xywh")
    out = layer(np.zeros((1, 7, 16), np.float32)).numpy()[0]
    np.testing.assert_allclose(out[0], layer.cls_position.numpy()[0])
    np.testing.assert_allclose(out[1 + 1 * 3 + 2], sincos_xywh(np.array([2.5, 1.5, 1.0, 1.0]), 16), rtol=1e-6)
    # Nucleus box [ymin 8, xmin 16, ymax 24, xmax 20] px, patch 8: centre (2.25, 2), size (0.5, 2) patches.
    tokens = BoxPositionEncoding(8)([np.zeros((1, 1, 16), np.float32), np.array([[[8, 16, 24, 20]]], np.float32)])
    np.testing.assert_allclose(tokens.numpy()[0, 0], sincos_xywh(np.array([2.25, 2.0, 0.5, 2.0]), 16), rtol=1e-6)
    with pytest.raises(ValueError, match="divisible by 8"):
        ViTBackbone(**{**TINY, "hidden_dim": 12, "num_heads": 2})


# === [PAD] masking, 0 and max nuclei ===

def _inputs(boxes, num_boxes, images):
    return {"images": images, "boxes": np.asarray(boxes, np.float32), "num_boxes": np.asarray(num_boxes, np.int32)}


def test_real_token_outputs_do_not_depend_on_padding_and_zero_nuclei_is_the_plain_vit():
    wide = ViTBackbone(**TINY, max_nuclei=6)
    narrow = ViTBackbone(**TINY, max_nuclei=3)
    narrow.set_weights(wide.get_weights())  # no weight depends on the number of slots
    images = RNG.random((2, 32, 32, 3), dtype=np.float32)
    real = np.array([[[2, 3, 9, 7], [10, 12, 13, 14], [20, 0, 32, 11]], [[4, 4, 12, 12], [0, 0, 0, 0], [0] * 4]])
    garbage = RNG.uniform(-50, 80, size=(2, 3, 4))
    wide_boxes = np.concatenate([real, garbage], 1)
    wide_boxes[1, 1:] = RNG.uniform(0, 32, size=(5, 4))  # example 1 has one nucleus: everything after is padding
    out_wide = wide(_inputs(wide_boxes, [3, 1], images)).numpy()
    out_narrow = narrow(_inputs(real, [3, 1], images)).numpy()  # example 0: max nuclei (3 of 3 slots)
    assert out_wide.shape == (2, 1 + 16 + 6, 16) and out_narrow.shape == (2, 1 + 16 + 3, 16)
    np.testing.assert_allclose(out_wide[0, :20], out_narrow[0], atol=1e-5)  # [CLS], grid and the 3 nuclei
    np.testing.assert_allclose(out_wide[1, :18], out_narrow[1, :18], atol=1e-5)  # [CLS], grid and nucleus 0
    # The test can fail: a real box does move every output (nuclei attend and are attended).
    moved = real.copy()
    moved[0, 0] = [16, 16, 30, 30]
    out_moved = narrow(_inputs(moved, [3, 1], images)).numpy()
    assert np.abs(out_moved[0, 0] - out_narrow[0, 0]).max() > 1e-4
    # 0 nuclei: [CLS] + grid are exactly the ViT without nucleus tokens (same weights, by layer name).
    plain = ViTBackbone(**TINY)
    for layer in plain.layers:
        if layer.weights:
            layer.set_weights(narrow.get_layer(layer.name).get_weights())
    out_zero = narrow(_inputs(RNG.uniform(0, 32, size=(2, 3, 4)), [0, 0], images)).numpy()
    np.testing.assert_allclose(out_zero[:, :17], plain(images).numpy(), atol=1e-5)
    assert np.isfinite(out_zero).all()


# === Round trips ===

def _nucleus_batch(b=2, m=4, size=32):
    boxes = np.sort(RNG.uniform(0, size, size=(b, m, 2, 2)), axis=2).transpose(0, 1, 3, 2).reshape(b, m, 4)
    boxes = boxes[..., [0, 2, 1, 3]].astype(np.float32)  # [ymin, xmin, ymax, xmax]
    return _inputs(boxes, [m, m // 2], RNG.random((b, size, size, 3), dtype=np.float32))


def test_nucleus_classifier_round_trip_save_load_predict_and_mixed_precision(tmp_path):
    kwargs = dict(TINY, num_classes=4, max_nuclei=4, num_layers=1)
    model = NucleusClassifier(**kwargs)
    x = _nucleus_batch()
    y = model(x, training=False).numpy()
    assert y.shape == (2, 4, 4) and y.dtype == np.float32
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-5)
    clone = NucleusClassifier.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    assert clone.get_config() == model.get_config()
    assert_outputs_close(clone(x, training=False), y)
    model.save(tmp_path / "nuclei.keras")
    loaded = keras.saving.load_model(tmp_path / "nuclei.keras")
    assert type(loaded) is NucleusClassifier and loaded.get_config() == model.get_config()
    assert_outputs_close(loaded(x, training=False), y)
    pred = model.predict(tf.data.Dataset.from_tensors(x), verbose=0)
    assert_outputs_close(pred, y, atol=1e-4)
    for policy in ("mixed_float16", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(policy)
        try:
            out = NucleusClassifier(**kwargs)(x, training=False)
            assert out.dtype == tf.float32 and np.isfinite(out.numpy()).all(), policy
        finally:
            keras.mixed_precision.set_global_policy("float32")


def test_mim_with_nucleus_tokens_heads_encoder_and_transfer_to_the_classifier(tmp_path):
    from medtf.models.freeze import leaf_layers
    from medtf.training.transfer import load_initial_weights

    mim = MaskedImageModel(**TINY, target="tokens", vocab_size=11, max_nuclei=4, min_mask_patches=4)
    x = {**_nucleus_batch(), "mask": (np.arange(32).reshape(2, 16) % 3 == 0).astype("float32")}
    out = mim(x, training=False)
    assert set(out) == {"patches", "nuclei"}
    assert out["patches"].shape == (2, 16, 11) and out["nuclei"].shape == (2, 4, 4, 11)
    mim.save(tmp_path / "mim.keras")
    loaded = keras.saving.load_model(tmp_path / "mim.keras")
    assert loaded.get_config() == mim.get_config()
    assert_outputs_close(loaded(x, training=False), out)
    assert MaskedImageModel(**TINY, target="tokens", max_nuclei=4, inst_loss=False).output.shape == (None, 16, 8192)
    encoder = vit_encoder(loaded)  # [CLS] + grid of the unmasked backbone with 0 nuclei
    assert encoder(x["images"]).shape == (2, 17, 16)
    # init_from: the classifier's backbone lines up layer for layer with the pretrained one (head left out).
    classifier = NucleusClassifier(**TINY, num_classes=3, max_nuclei=6)
    report = load_initial_weights(classifier, tmp_path / "mim.keras", carry="backbone")
    backbone_layers = [layer.name for layer in leaf_layers(classifier.get_layer("backbone")) if layer.weights]
    assert report["copied"] == backbone_layers and report["skipped"] == ["nucleus_head"]
    mask0 = {**x, "mask": np.zeros((2, 16), "float32")}
    boxes6 = np.concatenate([x["boxes"], np.zeros((2, 2, 4), np.float32)], 1)
    np.testing.assert_allclose(
        classifier.get_layer("backbone")({**mask0, "boxes": boxes6}).numpy()[:, :21],
        loaded.get_layer("backbone")(mask0).numpy(), atol=1e-5)


@pytest.mark.slow
def test_nucleus_tokens_under_mirrored_strategy_and_xla_match_one_device():
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("_vit_nuclei_replicas_check.py")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert result["replicas"] == 2 and result["roi_max_diff"] < 1e-5
    assert result["moved"] > 1e-3  # the step changed the weights, so equal weights mean equal updates
    # NucleusLoss pools over the global batch (uneven counts: tests/tasks/test_nucleus_loss_replicas.py); here
    # 5 nuclei on each replica (tiles of 5 + 0 and 2 + 3), so the step is the one-device step either way.
    assert result["loss_mirrored"] == pytest.approx(result["loss_one"], rel=1e-5)
    assert result["weights_mirrored"] < 1e-5
    assert result["loss_xla"] == pytest.approx(result["loss_one"], rel=1e-4) and result["weights_xla"] < 1e-4
