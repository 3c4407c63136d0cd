"""The tokenizer task end to end on synthetic nuclei-he tiles (medtf train -> evaluate -> export), its SavedModel's
images -> tokens signatures, and the masked_modeling `targets` hook (tokens on the fly, from an export, cached)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from medtf.tasks import default_monitor, get_task
from medtf.training.config import ConfigError
from tests.conftest import TEST_SALT, run_medtf

REPO = Path(__file__).resolve().parents[2]
CODES = 32


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """4 synthetic 32 px PanNuke-style tiles (train 2 / val 2) converted by `medtf convert`."""
    from medtf.synth.nuclei_he import generate_nuclei_he

    root = tmp_path_factory.mktemp("tok")
    generate_nuclei_he(root / "src", cases=4, seed=3, tile_size=32, consep_images=0)
    assert run_medtf("convert", "nuclei-he", "--input", root / "src" / "pannuke", "--output", root / "shards",
                     "--id-salt", TEST_SALT, "--split", "0.5,0.5,0", "--quiet") == 0
    return root / "shards"


@pytest.fixture(scope="module")
def tok_run(shards) -> Path:
    """The shipped experiment, tiny, trained 1 epoch (1 step) through `medtf train` (whole 32 px tiles, no
    augmentation)."""
    run = shards.parent / "run"
    assert run_medtf("train", REPO / "experiments/nuclei_tokenizer.yaml", "--run-dir", run,
                     "--set", f"data.dir={shards}", "--set", "train.epochs=1", "--set", "train.steps_per_epoch=null",
                     "--set", "data.batch_size=2", "--set", "data.transforms=[]", "--set", "data.patch_size=null",
                     "--set", "data.val_patch_size=null", "--set", f"model.args.num_codes={CODES}", "--set",
                     "model.args.width=8", "--set", "model.args.embedding_dim=4", "--set",
                     "model.args.restart_after=1", "--set", "+train.log_every_n_steps=0", "--set",
                     "+train.hparams=false", "--quiet") == 0
    return run


def _tiles(shards, split="val"):
    from medtf.data import make_dataset

    ds = make_dataset(shards, split, batch_size=1, training=False, repeat=False,
                      model_inputs=lambda ex: {"image": ex["image"], "example_id": ex["example_id"]})
    return [{k: v[0] for k, v in b.items()} for b in ds]


def _encoder(run):
    import keras

    from medtf.models.tokenizer import tokenizer_encoder

    return tokenizer_encoder(keras.saving.load_model(run / "checkpoints" / "best.keras", compile=False))


def test_tokenizer_training_evaluation_and_panels_through_the_cli(tok_run):
    assert default_monitor("tokenizer") == ("val_loss", "min")
    rows = list(csv.DictReader(open(tok_run / "history.csv")))
    assert len(rows) == 1
    assert {"loss", "reconstruction_loss", "commitment_loss", "reconstruction_mse", "reconstruction_psnr",
            "tokens_perplexity", "tokens_usage", "val_loss", "val_tokens_perplexity",
            "val_tokens_usage"} <= set(rows[0]), sorted(rows[0])
    for r in rows:
        perplexity, usage = float(r["tokens_perplexity"]), float(r["tokens_usage"])
        assert 1.0 <= perplexity <= usage * CODES + 1e-3 and 0 < usage <= 1  # exp(entropy) <= codes used
        # the loss is the reconstruction MSE plus the commitment term
        parts = float(r["reconstruction_loss"]) + float(r["commitment_loss"])
        assert float(r["loss"]) == pytest.approx(parts, rel=1e-4)
        assert float(r["reconstruction_loss"]) == pytest.approx(float(r["reconstruction_mse"]), rel=1e-4)
        assert float(r["reconstruction_psnr"]) > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tok_run / "logs" / "images"), size_guidance={"tensors": 0}).Reload()
    assert "validation/reconstructions" in events.Tags()["tensors"]

    # The evaluator recomputes reconstruction MSE and the codebook statistics in NumPy over the same val tiles.
    assert run_medtf("evaluate", tok_run, "--split", "val", "--quiet") == 0
    summary = json.loads((tok_run / "eval-val" / "summary.json").read_text())
    best = min(rows, key=lambda r: float(r["val_loss"]))
    metrics = summary["metrics"]
    assert summary["task"] == "tokenizer" and metrics["n"] == 2 and summary["num_codes"] == CODES
    assert metrics["mse"] == pytest.approx(float(best["val_reconstruction_mse"]), rel=1e-4)
    assert metrics["psnr"] == pytest.approx(float(best["val_reconstruction_psnr"]), rel=1e-4)
    assert metrics["perplexity"] == pytest.approx(float(best["val_tokens_perplexity"]), rel=1e-4)
    assert metrics["usage"] == pytest.approx(float(best["val_tokens_usage"]), rel=1e-5)


@pytest.fixture(scope="module")
def exported(tok_run) -> Path:
    out = tok_run.parent / "export"
    assert run_medtf("export", tok_run, "--output", out, "--quiet") == 0
    return out / "vqvae_tiny" / "1"


def test_export_maps_raw_and_uint8_images_to_token_grids(tok_run, exported):
    meta = json.loads((exported / "medtf.json").read_text())
    assert meta["task"] == "tokenizer" and meta["patch_size"] == 8 and meta["num_codes"] == CODES
    assert set(meta["signatures"]) == {"serving_default", "tokenize_uint8", "tokenize_inputs", "decode", "preprocess"}
    tiles = np.random.default_rng(0).integers(0, 256, size=(2, 32, 48, 3)).astype(np.uint8)
    expected = _encoder(tok_run)(tiles.astype(np.float32) / 255.0).numpy()  # the nuclei-he scaling
    served = tf.saved_model.load(str(exported))
    tokens = served.signatures["serving_default"](images=tf.constant(tiles, tf.float32))["tokens"]
    assert tokens.dtype == tf.int32 and tokens.shape == (2, 4, 6)
    np.testing.assert_array_equal(tokens.numpy(), expected)
    np.testing.assert_array_equal(served.signatures["tokenize_uint8"](images=tf.constant(tiles))["tokens"], expected)
    np.testing.assert_array_equal(served.signatures["tokenize_inputs"](
        images=tf.constant(tiles / 255.0, tf.float32))["tokens"], expected)
    decoded = served.signatures["decode"](tokens=tokens)["images"]
    assert decoded.shape == (2, 32, 48, 3) and np.isfinite(decoded.numpy()).all()
    # medtf predict on PNG tiles: tokens.npy = the served token grids, rows in sorted file order
    from PIL import Image

    (tile_dir := tok_run.parent / "png").mkdir(exist_ok=True)
    for i, tile in enumerate(tiles):
        Image.fromarray(tile).save(tile_dir / f"tile{i}.png")
    assert run_medtf("predict", exported, "--input", tile_dir, "--output", tok_run.parent / "pred", "--quiet") == 0
    np.testing.assert_array_equal(np.load(tok_run.parent / "pred" / "tokens.npy"), expected)


@pytest.mark.slow
def test_exported_tokenizer_reloads_in_a_fresh_process(tok_run, exported, tmp_path):
    tiles = np.random.default_rng(1).integers(0, 256, size=(1, 32, 32, 3)).astype(np.uint8)
    np.save(tmp_path / "tiles.npy", tiles)
    code = f"""
import json, numpy as np, tensorflow as tf
m = tf.saved_model.load({str(exported)!r})
t = m.signatures["tokenize_uint8"](images=tf.constant(np.load({str(tmp_path / 'tiles.npy')!r})))["tokens"]
print(json.dumps({{"sigs": sorted(m.signatures), "tokens": t.numpy().tolist()}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    assert served["sigs"] == ["decode", "preprocess", "serving_default", "tokenize_inputs", "tokenize_uint8"]
    np.testing.assert_array_equal(served["tokens"], _encoder(tok_run)(tiles.astype(np.float32) / 255.0).numpy())


# === The masked_modeling hook: targets: {tokenizer, cache} ===

def _mim(shards, *overrides):
    from medtf.training.experiment import load_experiment

    return load_experiment(REPO / "experiments/nuclei_mim_pretrain.yaml",
                           [f"data.dir={shards}", "data.transforms=[]", "data.patch_size=null",
                            "data.val_patch_size=null", "model.args.target=tokens", f"+model.args.vocab_size={CODES}",
                            "model.args.image_size=32", "model.args.num_layers=1", "model.args.min_mask_patches=4",
                            *overrides])


def _mim_model(patch_size=8, target="tokens"):
    from medtf.models.vit import MaskedImageModel

    return MaskedImageModel(image_size=32, patch_size=patch_size, hidden_dim=16, num_layers=1, num_heads=2, mlp_dim=32,
                            target=target, vocab_size=CODES, min_mask_patches=4)


@pytest.mark.parametrize("source,cache", [("run", False), ("export", False), ("run", True)])
def test_mim_token_targets_come_from_the_tokenizer(shards, tok_run, exported, source, cache):
    path = tok_run if source == "run" else exported
    experiment = _mim(shards, f"+targets={{tokenizer: {path}, cache: {str(cache).lower()}}}")
    assert experiment.targets.tokenizer == str(path) and experiment.targets.cache is cache
    to_model = get_task("masked_modeling").configure(experiment).model_inputs(_mim_model())
    tiles = _tiles(shards, "val") + _tiles(shards, "train")
    encoder = _encoder(tok_run)
    for example in tiles:
        x, y = to_model(example)
        expected = encoder(example["image"][None]).numpy()[0].reshape(-1)
        np.testing.assert_array_equal(y.numpy()[:, 0], expected)
        np.testing.assert_array_equal(y.numpy()[:, 1], x["mask"].numpy())
    (_, y2), = tf.data.Dataset.from_tensors(tiles[0]).map(to_model).as_numpy_iterator()  # inside Dataset.map
    np.testing.assert_array_equal(y2[:, 0], encoder(tiles[0]["image"][None]).numpy()[0].reshape(-1))


def test_mim_token_targets_refuse_what_cannot_match(shards, tok_run):
    task = get_task("masked_modeling")
    with pytest.raises(ValueError, match="one token per 8 px, the ViT's patch_size is 16"):
        task.configure(_mim(shards, f"+targets={{tokenizer: {tok_run}}}")).model_inputs(_mim_model(patch_size=16))
    with pytest.raises(ValueError, match="model.args.target: tokens"):
        task.configure(_mim(shards, f"+targets={{tokenizer: {tok_run}}}")).model_inputs(_mim_model(target="pixels"))
    with pytest.raises(ValueError, match=r"cache: true .* data.transforms \[\]"):
        task.configure(_mim(shards, f"+targets={{tokenizer: {tok_run}, cache: true}}",
                            "data.transforms=[{name: random_flip, prob: 0.5}]")).model_inputs(_mim_model())
    with pytest.raises(ValueError, match=r"no data.mosaic \(got \[\], None, None, \{'min_visible': 0.5\}\)"):
        task.configure(_mim(shards, f"+targets={{tokenizer: {tok_run}, cache: true}}",  # crops: the anchor's id
                            "data.mosaic={min_visible: 0.5}")).model_inputs(_mim_model())
    with pytest.raises(ValueError, match="neither a tokenizer run directory"):
        task.configure(_mim(shards, f"+targets={{tokenizer: {shards}}}")).model_inputs(_mim_model())
    with pytest.raises(ConfigError, match=r"targets.cahce: unknown key \(did you mean cache\?\)"):
        _mim(shards, f"+targets={{tokenizer: {tok_run}, cahce: true}}")
    with pytest.raises(ConfigError, match="targets: token targets are for task masked_modeling"):
        _mim(shards, f"+targets={{tokenizer: {tok_run}}}", "task=tokenizer")
    assert "targets" not in _mim(shards).as_dict()  # experiments without targets resolve as before


@pytest.mark.slow
def test_mim_pretraining_on_tokenizer_targets_through_the_cli(shards, tok_run, tmp_path):
    run = tmp_path / "mim"
    assert run_medtf("train", REPO / "experiments/nuclei_mim_pretrain.yaml", "--run-dir", run,
                     "--set", f"data.dir={shards}", "--set", "train.epochs=1", "--set", "data.batch_size=2",
                     "--set", "data.transforms=[]", "--set", "data.patch_size=null", "--set",
                     "data.val_patch_size=null", "--set", "model.args.image_size=32", "--set",
                     "model.args.num_layers=1", "--set", "model.args.target=tokens", "--set",
                     f"+model.args.vocab_size={CODES}", "--set", "model.args.min_mask_patches=4", "--set",
                     f"+targets={{tokenizer: {tok_run}, cache: true}}", "--set", "+train.log_every_n_steps=0",
                     "--set", "+train.image_panels=false", "--set", "+train.hparams=false", "--quiet") == 0
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert len(rows) == 1 and 0 <= float(rows[0]["masked_accuracy"]) <= 1 and float(rows[0]["val_loss"]) > 0
    assert run_medtf("evaluate", run, "--split", "val", "--quiet") == 0  # evaluation tokenizes on the fly
    summary = json.loads((run / "eval-val" / "summary.json").read_text())
    assert summary["metrics"]["loss"] == pytest.approx(float(rows[0]["val_loss"]), rel=1e-4)
