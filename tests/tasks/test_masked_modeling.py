"""The masked_modeling task: BEiT blockwise masks (ratio, block shapes, seeds), patch targets, masked losses and
metrics against NumPy, and pretraining on synthetic nuclei-he tiles through train, evaluate and export (the
SavedModel reloaded in a fresh process)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from medtf.models.vit import MaskedImageModel
from medtf.models.vit.masking import blockwise_mask, example_seed, normalize_patches, num_masking_patches, patchify
from medtf.tasks import default_monitor, get_task
from medtf.tasks.masked_modeling import (MaskedMSE, MaskedPixelLoss, MaskedPSNR, MaskedTokenAccuracy, MaskedTokenLoss,
                                         masked_scores)
from tests.conftest import run_medtf

REPO = Path(__file__).resolve().parents[2]
TINY = dict(image_size=32, patch_size=8, num_channels=3, hidden_dim=16, num_layers=1, num_heads=2, mlp_dim=32)


# === Masks ===

def _check_blocks(mask, blocks, grid, min_aspect=0.3):
    """Every kept block lies strictly inside the grid with an aspect ratio in range (up to rounding h and w to
    whole patches), and the mask is exactly their union."""
    union = np.zeros(grid, np.int32)
    for top, left, h, w in blocks:
        assert 1 <= h < grid[0] and 1 <= w < grid[1] and 0 <= top <= grid[0] - h and 0 <= left <= grid[1] - w
        assert (h + 0.5) / (w - 0.5) >= min_aspect and (h - 0.5) / (w + 0.5) <= 1 / min_aspect, (h, w)
        union[top:top + h, left:left + w] = 1
    np.testing.assert_array_equal(union, mask)


def test_blockwise_mask_ratio_and_block_shapes_over_seeds():
    grid, count = (14, 14), num_masking_patches(196, 0.4)  # ViT-B/16 on 224 px; BEiT masks 75 of 196
    assert count == 78
    counts, shapes = [], set()
    for s in range(24):
        mask, blocks = (t.numpy() for t in blockwise_mask(tf.constant([s, 11]), grid, count, return_blocks=True))
        assert mask.shape == grid and mask.dtype == np.int32 and set(np.unique(mask)) <= {0, 1}
        _check_blocks(mask, blocks, grid)
        # The first block draws its area in [16, 78]: rounded to whole rows and columns it still covers >= 12
        # patches ((sqrt(16 r) - 1/2)(sqrt(16 / r) - 1/2) >= 11.5 for r in [0.3, 1/0.3]), and at most 78.
        assert 12 <= blocks[0][2] * blocks[0][3] <= count
        shapes.update((int(h), int(w)) for _, _, h, w in blocks)
        counts.append(int(mask.sum()))
    assert max(counts) <= count  # a block is kept only when it adds no more than what is still missing
    assert abs(np.mean(counts) / 196 - 0.4) < 0.03 and min(counts) >= 0.8 * count, counts
    assert any(h > w for h, w in shapes) and any(h < w for h, w in shapes)  # blocks, not only squares


def test_small_grid_mask_and_minimum_block():
    grid, count = (8, 8), num_masking_patches(64, 0.4)  # the experiment's 64 px / patch 8 grid
    counts = []
    for s in range(16):
        mask, blocks = (t.numpy() for t in blockwise_mask(tf.constant([3, s]), grid, count, 16,
                                                          return_blocks=True))
        _check_blocks(mask, blocks, grid)
        counts.append(int(mask.sum()))
    assert max(counts) <= count == 26 and np.mean(counts) >= 0.75 * count, counts


def test_masks_are_reproducible_eagerly_and_in_a_pipeline():
    seeds = tf.constant([[5, 1], [5, 1], [6, 1], [5, 2]], tf.int64)
    eager = [blockwise_mask(s, (8, 8), 26).numpy() for s in seeds]
    np.testing.assert_array_equal(eager[0], eager[1])
    assert not np.array_equal(eager[0], eager[2]) and not np.array_equal(eager[0], eager[3])
    mapped = list(tf.data.Dataset.from_tensor_slices(seeds).map(lambda s: blockwise_mask(s, (8, 8), 26))
                  .as_numpy_iterator())
    for a, b in zip(eager, mapped):
        np.testing.assert_array_equal(a, b)


def test_example_seed_comes_from_the_example():
    image = tf.constant(np.random.default_rng(0).random((8, 8, 3)), tf.float32)
    example = {"image": image, "example_id": tf.constant("case-1")}
    seed = example_seed(example).numpy()
    assert seed.shape == (2,)
    np.testing.assert_array_equal(example_seed(dict(example)).numpy(), seed)
    others = [example_seed({**example, "image": tf.reverse(image, [0])}), example_seed(example, salt=1),
              example_seed({**example, "example_id": tf.constant("case-2")}), example_seed({"image": image})]
    assert all(not np.array_equal(o.numpy(), seed) for o in others)


# === Targets ===

def test_patchify_and_normalised_targets_match_numpy():
    image = np.random.default_rng(1).random((16, 24, 2)).astype(np.float32)
    patches = patchify(tf.constant(image), 8).numpy()
    assert patches.shape == (6, 8 * 8 * 2)
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(patches[i * 3 + j], image[8 * i:8 * i + 8, 8 * j:8 * j + 8].reshape(-1))
    norm = normalize_patches(tf.constant(patches)).numpy()
    expected = (patches - patches.mean(1, keepdims=True)) / np.sqrt(patches.var(1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(norm, expected, rtol=1e-4, atol=1e-5)


def test_model_inputs_build_mask_and_targets_in_graph():
    model = MaskedImageModel(**TINY, mask_ratio=0.5, min_mask_patches=4)
    task = get_task("masked_modeling")
    to_model = task.model_inputs(model)
    image = np.random.default_rng(2).random((32, 32, 3)).astype(np.float32)
    example = {"image": tf.constant(image), "example_id": tf.constant("case-7")}
    x, y = to_model(example)
    mask = x["mask"].numpy()
    assert mask.shape == (16,) and 0 < mask.sum() <= 8 and set(np.unique(mask)) <= {0.0, 1.0}
    np.testing.assert_array_equal(x["images"].numpy(), image)
    assert y.shape == (16, 8 * 8 * 3 + 1)
    np.testing.assert_array_equal(y.numpy()[:, -1], mask)
    np.testing.assert_allclose(y.numpy()[:, :-1], normalize_patches(patchify(tf.constant(image), 8)).numpy(),
                               atol=1e-6)
    (x2, _), = tf.data.Dataset.from_tensors(example).map(to_model).as_numpy_iterator()
    np.testing.assert_array_equal(x2["mask"], mask)  # same example, same mask, also inside Dataset.map

    with pytest.raises(ValueError, match=r"model takes 2D images \[32, 32, 3\].*data.patch_size"):
        to_model({"image": tf.zeros((40, 40, 3))})
    tokens_model = MaskedImageModel(**TINY, target="tokens", vocab_size=20, min_mask_patches=4)
    with pytest.raises(ValueError, match="needs a 'tokens' field"):
        task.model_inputs(tokens_model)(example)
    tokens = np.arange(16).reshape(4, 4) % 20
    _, y = task.model_inputs(tokens_model)({**example, "tokens": tf.constant(tokens)})
    np.testing.assert_array_equal(y.numpy()[:, 0], tokens.reshape(-1))
    from medtf.models.unet import UNetClassifier

    with pytest.raises(ValueError, match="needs a masked image model"):
        task.model_inputs(UNetClassifier(spatial_dims=2, in_channels=3, depth=2, base_filters=4))


# === Losses and metrics vs NumPy ===

def _batch(rng, b=3, n=10, t=12):
    target, pred = rng.normal(size=(b, n, t)), rng.normal(size=(b, n, t))
    mask = rng.random((b, n)) < 0.4
    mask[:, 0] = True  # every example has a masked patch
    return target, pred, mask, np.concatenate([target, mask[..., None]], -1).astype(np.float32)


def test_masked_pixel_loss_and_metrics_match_numpy_and_ignore_unmasked_patches():
    rng = np.random.default_rng(3)
    target, pred, mask, y = _batch(rng)
    mse = ((pred - target) ** 2).mean(-1)
    per_example = (mse * mask).sum(1) / mask.sum(1)
    loss = float(MaskedPixelLoss()(y, pred.astype(np.float32)))
    assert loss == pytest.approx(per_example.mean(), rel=1e-5)
    changed = pred.copy()
    changed[~mask] += 100.0
    assert float(MaskedPixelLoss()(y, changed.astype(np.float32))) == pytest.approx(loss, rel=1e-6)
    changed[mask] += 0.5
    assert float(MaskedPixelLoss()(y, changed.astype(np.float32))) > loss + 0.1
    m, p = MaskedMSE(), MaskedPSNR()
    m.update_state(y, pred.astype(np.float32))
    p.update_state(y, pred.astype(np.float32))
    assert float(m.result()) == pytest.approx((mse * mask).sum() / mask.sum(), rel=1e-5)
    assert float(p.result()) == pytest.approx(np.mean(10 * np.log10(1 / per_example)), rel=1e-5)
    scores = masked_scores(y, pred.astype(np.float32), "pixels")  # the evaluator's NumPy path
    np.testing.assert_allclose(scores["loss"], per_example, rtol=1e-5)
    np.testing.assert_allclose(scores["mask_ratio"], mask.mean(1))


def test_masked_token_loss_and_accuracy_match_numpy_and_ignore_unmasked_patches():
    rng = np.random.default_rng(4)
    b, n, v = 3, 10, 7
    logits = rng.normal(size=(b, n, v)).astype(np.float32)
    tokens = rng.integers(0, v, size=(b, n))
    mask = rng.random((b, n)) < 0.5
    mask[:, 0] = True
    y = np.stack([tokens, mask], -1).astype(np.float32)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_p, tokens[..., None], -1)[..., 0]
    expected = ((ce * mask).sum(1) / mask.sum(1)).mean()
    loss = float(MaskedTokenLoss()(y, logits))
    assert loss == pytest.approx(expected, rel=1e-5)
    changed = logits.copy()
    changed[~mask] = rng.normal(size=changed[~mask].shape) * 10
    assert float(MaskedTokenLoss()(y, changed)) == pytest.approx(loss, rel=1e-6)
    acc = MaskedTokenAccuracy()
    acc.update_state(y, logits)
    hits = logits.argmax(-1) == tokens
    assert float(acc.result()) == pytest.approx((hits * mask).sum() / mask.sum(), rel=1e-6)
    np.testing.assert_allclose(masked_scores(y, logits, "tokens")["loss"], (ce * mask).sum(1) / mask.sum(1),
                               rtol=1e-5)


def test_task_defaults():
    assert default_monitor("masked_modeling") == ("val_loss", "min")
    task = get_task("masked_modeling")
    pixels = MaskedImageModel(**TINY)
    tokens = MaskedImageModel(**TINY, target="tokens", vocab_size=10)
    assert isinstance(task.build_loss("auto", pixels), MaskedPixelLoss)
    assert isinstance(task.build_loss({"name": "auto"}, tokens), MaskedTokenLoss)
    assert [m.name for m in task.default_metrics(pixels)] == ["masked_mse", "masked_psnr"]
    assert [m.name for m in task.default_metrics(tokens)] == ["masked_accuracy"]


# === End to end: synth -> convert -> train -> evaluate (default tier) -> export -> fresh-process reload (slow) ===

@pytest.fixture(scope="module")
def mim_run(tmp_path_factory) -> Path:
    """`medtf synth nuclei-he`'s generator at 64 px (4 PanNuke-style tiles: train 2 / val 2), converted with
    `medtf convert`, and the shipped experiment trained on them through `medtf train` for 2 epochs. The tiles
    already have the model's size and augmentation is off, which keeps the in-graph pipeline small to trace."""
    from tests.nuclei.conftest import tiny_tile_shards

    root = tmp_path_factory.mktemp("mim")
    shards = tiny_tile_shards(root)
    run = root / "run"
    assert run_medtf("train", REPO / "experiments/nuclei_mim_pretrain.yaml", "--run-dir", run,
                     "--set", f"data.dir={shards}", "--set", "train.epochs=2", "--set", "data.batch_size=2",
                     "--set", "data.transforms=[]", "--set", "data.patch_size=null", "--set",
                     "data.val_patch_size=null", "--set", "model.args.num_layers=1", "--set",
                     "+train.log_every_n_steps=0", "--set", "+train.image_panels=false", "--set",
                     "+train.hparams=false", "--quiet") == 0
    return run


def test_nuclei_pretraining_and_evaluation_through_the_cli(mim_run):
    rows = list(csv.DictReader(open(mim_run / "history.csv")))
    assert len(rows) == 2 and {"loss", "masked_mse", "masked_psnr", "val_loss", "val_masked_mse"} <= set(rows[0])
    assert all(np.isfinite(float(r["loss"])) and float(r["val_loss"]) > 0 for r in rows)
    import yaml

    resolved = yaml.safe_load((mim_run / "config.yaml").read_text())
    assert resolved["task"] == "masked_modeling" and resolved["train"]["monitor"] == "val_loss"
    assert resolved["train"]["mode"] == "min"

    # The evaluator recomputes the masked loss in NumPy on the masks validation drew (one batch of 2 examples).
    assert run_medtf("evaluate", mim_run, "--split", "val", "--quiet") == 0
    summary = json.loads((mim_run / "eval-val" / "summary.json").read_text())
    metrics = summary["metrics"]
    best = min(rows, key=lambda r: float(r["val_loss"]))
    assert summary["task"] == "masked_modeling" and summary["target"] == "pixels" and metrics["n"] == 2
    assert metrics["loss"] == pytest.approx(float(best["val_loss"]), rel=1e-4)
    assert metrics["masked_mse_pooled"] == pytest.approx(float(best["val_masked_mse"]), rel=1e-4)
    assert metrics["masked_psnr"] == pytest.approx(float(best["val_masked_psnr"]), rel=1e-4)
    assert 12 / 64 <= metrics["mask_ratio"] <= 26 / 64  # the first block alone covers >= 12 of the 8 x 8 patches


@pytest.mark.slow
def test_export_encode_signature_reloads_in_a_fresh_process(mim_run, tmp_path):
    assert run_medtf("export", mim_run, "--output", tmp_path / "export", "--quiet") == 0
    model_dir = tmp_path / "export" / "mim_vit_tiny" / "1"
    meta = json.loads((model_dir / "medtf.json").read_text())
    assert meta["task"] == "masked_modeling" and set(meta["signatures"]) == {"serving_default", "preprocess", "encode"}
    tiles = np.random.default_rng(0).integers(0, 255, size=(2, 64, 64, 3)).astype(np.float32)
    np.save(tmp_path / "tiles.npy", tiles)
    code = f"""
import json, numpy as np, tensorflow as tf
m = tf.saved_model.load({str(model_dir)!r})
x = tf.constant(np.load({str(tmp_path / 'tiles.npy')!r}))
out, default = m.signatures["encode"](images=x), m.signatures["serving_default"](images=x)
print(json.dumps({{"sigs": sorted(m.signatures), "cls": out["cls_features"].numpy().tolist(),
                  "tokens": out["token_features"].numpy().tolist(),
                  "default_cls": default["cls_features"].numpy().tolist()}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    assert served["sigs"] == ["encode", "preprocess", "serving_default"]
    import keras

    from medtf.models.vit import vit_encoder

    encoder = vit_encoder(keras.saving.load_model(mim_run / "checkpoints" / "best.keras", compile=False))
    expected = np.asarray(encoder(tiles / 255.0))  # nuclei-he images are scaled to [0, 1]
    assert np.asarray(served["tokens"]).shape == (2, 64, 32)
    np.testing.assert_allclose(served["cls"], expected[:, 0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(served["tokens"], expected[:, 1:], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(served["default_cls"], served["cls"], rtol=1e-6)
    # medtf predict on PNG tiles: features.npy = the [CLS] features of the served model
    from PIL import Image

    tile_dir = tmp_path / "tiles"
    tile_dir.mkdir()
    for i, tile in enumerate(tiles.astype(np.uint8)):
        Image.fromarray(tile).save(tile_dir / f"tile{i}.png")
    assert run_medtf("predict", model_dir, "--input", tile_dir, "--output", tmp_path / "pred", "--quiet") == 0
    features = np.load(tmp_path / "pred" / "features.npy")
    np.testing.assert_allclose(features, expected[:, 0], rtol=1e-4, atol=1e-5)
    rows = json.loads((tmp_path / "pred" / "prediction.json").read_text())["predictions"]
    assert [Path(r["input"]).name for r in rows] == ["tile0.png", "tile1.png"]
