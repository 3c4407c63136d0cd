"""[CLS] attention panels (issue #15): the probe's weights against a NumPy recomputation (rows sum to 1, no weight
on [PAD] slots), the model untouched by the probe, the panel's layout and values, the event file read back, and
the task hooks (MIM / nucleus diagnostics, the tiles + boxes mapping)."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from medtf.models.vit import MaskedImageModel, NucleusClassifier
from medtf.models.vit.attention_maps import AttentionProbe
from medtf.tasks import get_task
from medtf.tasks.attention_panels import AttentionPanels, attention_panel, attention_diagnostics, heat_colours

SIZE, PATCH, SLOTS = 32, 8, 4
NUM_FIXED = 1 + (SIZE // PATCH) ** 2  # [CLS] + 16 grid tokens
BOXES = np.array([[[0, 0, 8, 8], [4, 4, 20, 30], [16, 16, 30, 31]]] * 2, np.float32)


@pytest.fixture(scope="module")
def model():
    return NucleusClassifier(num_classes=3, max_nuclei=SLOTS, image_size=SIZE, patch_size=PATCH, hidden_dim=16,
                             num_layers=2, num_heads=2, mlp_dim=32)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((2, SIZE, SIZE, 3)).astype(np.float32)


def _softmax_reference(layer, query, key_mask):
    """Multi-head attention weights from the layer's own kernels, in NumPy: softmax(q k^T / sqrt(d)) over the
    allowed keys only."""
    qk, qb = (np.asarray(w) for w in layer.query_dense.weights)
    kk, kb = (np.asarray(w) for w in layer.key_dense.weights)
    q = np.einsum("bld,dhk->blhk", query, qk) + qb
    k = np.einsum("bld,dhk->blhk", query, kk) + kb
    logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(key_mask[:, None, None, :], logits, -np.inf)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_probe_weights_match_numpy_sum_to_one_and_skip_pad(model, images):
    x = {"images": images, "boxes": np.concatenate([BOXES, np.zeros((2, 1, 4), np.float32)], 1),
         "num_boxes": np.array([3, 0], np.int32)}
    before = np.asarray(model(x))
    config = model.get_config()
    probe = AttentionProbe(model, block=-1)
    assert probe.block == 1 and probe.num_fixed == NUM_FIXED
    inputs = probe.inputs(images, BOXES, [3, 0])
    out = probe(inputs)
    scores = out["scores"]
    assert scores.shape == (2, 2, NUM_FIXED + SLOTS, NUM_FIXED + SLOTS)
    np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-5)
    assert scores[0, :, :, NUM_FIXED + 3:].max() == 0.0  # tile 0: 3 nuclei, slot 3 is [PAD]
    assert scores[1, :, :, NUM_FIXED:].max() == 0.0  # tile 1: no nuclei, every slot is [PAD]
    assert scores[0, :, :, NUM_FIXED:NUM_FIXED + 3].min() > 0.0  # the real nuclei are attended
    keys = np.arange(NUM_FIXED + SLOTS)[None] < (NUM_FIXED + np.array([3, 0]))[:, None]
    query = np.asarray(probe.features(inputs)["query"])
    np.testing.assert_allclose(scores, _softmax_reference(probe.layer, query, keys), atol=1e-5)
    # The probe reads the real forward pass: the layer's output recomputed with the weights is the model's.
    np.testing.assert_allclose(out["attention_output"], out["model_output"], atol=1e-5)
    # ... and changes nothing: same outputs, same config (so the same .keras file), no new weights.
    np.testing.assert_array_equal(np.asarray(model(x)), before)
    assert model.get_config() == config and len(probe.features.weights) <= len(model.weights)
    np.testing.assert_allclose(AttentionProbe(model, block=0)(inputs)["scores"].sum(-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="train.attention_block 2 is out of range for a ViT with 2 blocks"):
        AttentionProbe(model, block=2)


def test_panel_layout_values_and_hot_spots():
    rng = np.random.default_rng(1)
    image = rng.random((SIZE, SIZE, 3)).astype(np.float32) * 200  # any display range: scaled to [0, 1]
    grid = np.full((2, 4, 4), 0.01, np.float32)
    grid[:, 3, 0] = 0.5  # both heads look at the bottom-left patch
    nuclei = np.array([[0.1, 0.4], [0.1, 0.4]], np.float32)
    boxes = np.array([[0, 0, 8, 8], [16, 16, 24, 24]], np.float32)
    panel = attention_panel(image, grid, nuclei, boxes, per_head=True)
    assert panel.shape == (SIZE, SIZE * 5, 3) and panel.dtype == np.float32  # tile | mean | nuclei | 2 heads
    assert panel.min() >= 0.0 and panel.max() <= 1.0
    heat = panel[:, SIZE:2 * SIZE].sum(-1)
    assert np.unravel_index(heat.argmax(), heat.shape)[0] >= 24 and np.unravel_index(heat.argmax(),
                                                                                     heat.shape)[1] < 8
    boxes_column = panel[:, 2 * SIZE:3 * SIZE]
    top = 0.5 * 0.3 * np.asarray(panel[16:24, 16:24]) + 0.7 * heat_colours(1.0)  # the strongest nucleus
    np.testing.assert_allclose(boxes_column[16:24, 16:24], top, atol=1e-5)
    np.testing.assert_allclose(boxes_column[0:8, 0:8], 0.5 * 0.3 * panel[0:8, 0:8] + 0.7 * heat_colours(0.25),
                               atol=1e-5)
    np.testing.assert_allclose(boxes_column[28:, 28:], 0.5 * panel[28:, 28:SIZE], atol=1e-6)  # no box: dimmed tile
    np.testing.assert_allclose(heat_colours(np.array([0.0, 1.0, 2.0])), [[0, 0, 0], [1, 1, 0.7], [1, 1, 0.7]],
                               atol=1e-7)


def test_panels_every_n_epochs_in_the_event_file(model, images, tmp_path):
    examples = [({"image": images[:1], "boxes": BOXES[:1]}, images[:1]),
                ({"image": images[1:], "boxes": np.zeros((1, 0, 4), np.float32)}, images[1:])]
    callback = AttentionPanels(tmp_path, examples, every=2, block=-1)
    callback.set_model(model)
    callback.on_train_begin()
    for epoch in range(4):
        callback.on_epoch_end(epoch)
    assert callback.logged_epochs == [1, 3]
    logged = {}
    for path in sorted(tmp_path.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == "attention/cls":
                    tensor = tf.make_ndarray(value.tensor)  # [width, height, png, png]
                    logged[event.step] = [np.asarray(Image.open(io.BytesIO(png))) for png in tensor[2:]]
    assert sorted(logged) == [1, 3] and len(logged[3]) == 2
    expected = callback.panels()
    for got, want in zip(logged[3], expected):
        assert got.shape == (SIZE, 3 * SIZE, 3)
        np.testing.assert_allclose(got / 255.0, want, atol=1 / 255 + 1e-6)  # PNG is 8 bit
    # A plain masked image model (no nucleus tokens): the boxes column is the dimmed tile.
    mim = MaskedImageModel(image_size=SIZE, patch_size=PATCH, hidden_dim=16, num_layers=1, num_heads=2, mlp_dim=32)
    plain = AttentionPanels(tmp_path / "mim", [(images[:1], images[:1])])
    plain.set_model(mim)
    panel = plain.panels()[0]
    np.testing.assert_allclose(panel[:, 2 * SIZE:], 0.5 * panel[:, :SIZE], atol=1e-6)


def test_vit_tasks_add_the_panels_and_map_tiles_with_boxes(tmp_path):
    example = {"image": tf.zeros((SIZE, SIZE, 3)), "boxes": tf.constant(BOXES[0]), "classes": tf.constant([1, 2, 3])}
    paths = SimpleNamespace(images=tmp_path)
    for name in ("masked_modeling", "nucleus_classification"):
        task = get_task(name)
        x, y = task.model_inputs()(example)
        assert sorted(x) == ["boxes", "image"] and x["boxes"].shape == (3, 4) and y.shape == (SIZE, SIZE, 3)
        on = SimpleNamespace(image_panels=True, attention_every_n_epochs=3, attention_block=0, attention_per_head=True)
        (callback,) = task.diagnostics(None, on, paths, None, [(x, y)])
        assert isinstance(callback, AttentionPanels) and (callback.every, callback.block, callback.per_head) == (
            3, 0, True)
        assert task.diagnostics(None, SimpleNamespace(**{**vars(on), "attention_every_n_epochs": 0}), paths, None,
                                [(x, y)]) == []
        assert task.diagnostics(None, SimpleNamespace(**{**vars(on), "image_panels": False}), paths, None,
                                [(x, y)]) == []
    assert attention_diagnostics(on, paths, []) == []
