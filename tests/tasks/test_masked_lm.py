"""Masked-LM pretraining of the report text tower: BERT masking, loss on masked tokens only, the vocabulary from the
training split only, `medtf train` / `medtf export` of report_mlm, and a CLIP text tower loading the result."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_medtf
from tests.reports.conftest import convert_reports, reports_source  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]
TAGS = ["alfa", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett"]


def test_mask_tokens_rate_positions_and_replacements():
    import tensorflow as tf

    from medtf.models.text.masking import mask_tokens

    L, vocab = 40, 50
    ids = np.zeros(L, np.int32)
    ids[0], ids[31] = 1, 2                      # [CLS] 30 text tokens [SEP], then [PAD]
    ids[1:31] = np.arange(10, 40)
    mask = np.arange(L) < 32
    draws = tf.data.Dataset.range(200).map(lambda k: mask_tokens(
        tf.constant(ids), tf.constant(mask), tf.stack([k, tf.constant(7, tf.int64)]), rate=0.15, max_masked=6,
        mask_id=4, vocabulary_size=vocab)).batch(200)
    replaced = kept = randomised = 0
    for out, pos, tgt, w in zip(*(t.numpy() for t in next(iter(draws)))):
        chosen = pos[w > 0]
        assert len(w) == 6 and w.sum() == round(0.15 * 30) == 4 and len(set(chosen)) == 4
        assert ((chosen >= 1) & (chosen <= 30)).all()     # never [CLS], [SEP] or padding
        np.testing.assert_array_equal(tgt[w > 0], ids[chosen])
        np.testing.assert_array_equal(np.delete(out, chosen), np.delete(ids, chosen))  # nothing else changes
        replaced += (out[chosen] == 4).sum()
        kept += (out[chosen] == ids[chosen]).sum()
        randomised += ((out[chosen] != 4) & (out[chosen] != ids[chosen])).sum()
        assert (out >= 0).all() and (out < vocab).all()
    total = 200 * 4
    assert replaced / total == pytest.approx(0.8, abs=0.05)
    assert kept / total == pytest.approx(0.1, abs=0.04) and randomised / total == pytest.approx(0.1, abs=0.04)
    # Same seed, same mask (validation is reproducible); a short report still gets one masked token.
    a = mask_tokens(tf.constant(ids), tf.constant(mask), tf.constant([3, 3], tf.int64), rate=0.15, max_masked=6,
                    mask_id=4, vocabulary_size=vocab)
    b = mask_tokens(tf.constant(ids), tf.constant(mask), tf.constant([3, 3], tf.int64), rate=0.15, max_masked=6,
                    mask_id=4, vocabulary_size=vocab)
    np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    short = mask_tokens(tf.constant([1, 12, 2, 0]), tf.constant([True, True, True, False]),
                        tf.constant([0, 0], tf.int64), rate=0.15, max_masked=2, mask_id=4, vocabulary_size=vocab)
    np.testing.assert_array_equal(short[1].numpy(), [1, 0])
    np.testing.assert_array_equal(short[3].numpy(), [1.0, 0.0])


def test_loss_counts_masked_tokens_only():
    """The task's y carries the masked slots' ids and weights; the loss is the NumPy mean cross-entropy over the
    masked slots of each report, and logits of unused slots do not change it."""
    import keras
    import tensorflow as tf

    from medtf.models.text import ReportMaskedLM
    from medtf.tasks import get_task

    tokens = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"] + [f"w{i}" for i in range(20)]
    keras.utils.set_random_seed(0)
    model = ReportMaskedLM(text={"vocabulary": tokens, "sequence_length": 16, "num_layers": 1, "num_heads": 2,
                                 "hidden_dim": 8, "intermediate_dim": 16}, mask_rate=0.3)
    task = get_task("masked_lm")
    reports = ["w1 w2 w3 w4 w5 w6 w7 w8 w9 w10", "w3 w3", "w11 w12 w13 w14 w15 w16 w17 w18 w19 w1 w2 w3 w4 w5 w6"]
    ds = tf.data.Dataset.from_tensor_slices({"report": reports, "example_id": ["a", "b", "c"]})
    x, y = next(iter(ds.map(task.model_inputs(model)).batch(3)))
    y = y.numpy()
    assert model.max_masked == 5 and y.shape == (3, 5, 2)
    np.testing.assert_array_equal(y[..., 1].sum(1), [3, 1, 4])  # round(0.3 * n), at least 1, at most 5 slots
    ids = model.tokenizer(tf.constant(reports))["token_ids"].numpy()
    for row in range(3):
        slots = y[row, :, 1] > 0
        np.testing.assert_array_equal(y[row, slots, 0], ids[row, x["mask_positions"].numpy()[row, slots]])
    logits = model(x).numpy().astype(np.float64)
    assert logits.shape == (3, 5, len(tokens))
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_p, y[..., :1].astype(int), -1)[..., 0]
    expected = ((ce * y[..., 1]).sum(1) / y[..., 1].sum(1)).mean()
    loss = task.default_loss(model)
    assert float(loss(y, logits)) == pytest.approx(expected, rel=1e-5)
    noisy = logits + 50.0 * (y[..., 1:] == 0) * np.random.default_rng(0).normal(size=logits.shape)
    assert float(loss(y, noisy)) == pytest.approx(expected, rel=1e-5)

    # data.transforms [remask_tokens] (training only): the pipeline's per-example seed picks the mask, so each epoch
    # masks anew; without it (validation) the mask is the example's own, every time.
    from medtf.transforms import build_transforms

    remask = build_transforms([{"name": "remask_tokens"}])
    to_model = task.model_inputs(model)
    example = {"report": tf.constant(reports[2]), "example_id": tf.constant("c")}
    fixed = [to_model(example)[0]["mask_positions"].numpy() for _ in range(2)]
    np.testing.assert_array_equal(fixed[0], x["mask_positions"].numpy()[2])
    np.testing.assert_array_equal(fixed[0], fixed[1])
    epochs = [to_model(remask(example, tf.constant([epoch, 11])))[0]["mask_positions"].numpy() for epoch in range(4)]
    assert len({tuple(p) for p in epochs}) > 1
    np.testing.assert_array_equal(epochs[0], to_model(remask(example, tf.constant([0, 11])))[0]["mask_positions"])


def test_untied_head_has_its_own_output_projection():
    """``tie_embeddings: false``: the logits are the head's hidden state times its own kernel (not the token
    embedding transposed), and the setting survives a ``.keras`` round trip; tied (BERT's default) has no kernel."""
    import keras

    from medtf.models.text import ReportMaskedLM

    tokens = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"] + [f"w{i}" for i in range(11)]
    text = {"vocabulary": tokens, "sequence_length": 8, "num_layers": 1, "num_heads": 2, "hidden_dim": 8,
            "intermediate_dim": 16}
    keras.utils.set_random_seed(0)
    tied, untied = ReportMaskedLM(text=text), ReportMaskedLM(text=text, tie_embeddings=False)
    x = {"token_ids": np.array([[1, 5, 6, 4, 7, 2, 0, 0]], np.int32),
         "padding_mask": np.array([[1, 1, 1, 1, 1, 1, 0, 0]], np.int32), "mask_positions": np.array([[3]], np.int32)}
    kernels = [w for w in untied.get_layer("mlm_head").weights if "output_kernel" in w.path]
    assert len(kernels) == 1 and tuple(kernels[0].shape) == (8, len(tokens))
    assert not [w for w in tied.get_layer("mlm_head").weights if "output_kernel" in w.path]
    # With the token embedding zeroed, the tied logits are all zero (the output classes are the embedding; the bias
    # starts at zero); the untied ones are not (their own projection of the position-only hidden states).
    kernel = np.asarray(kernels[0]).copy()
    for model in (tied, untied):
        model.text_backbone.token_embedding.embeddings.assign(np.zeros((len(tokens), 8), np.float32))
    np.testing.assert_array_equal(np.asarray(kernels[0]), kernel)
    assert np.abs(np.asarray(tied(x))).max() == 0 and np.abs(np.asarray(untied(x))).max() > 1e-3
    restored = ReportMaskedLM.from_config(untied.get_config())
    assert restored.tie_embeddings is False and ReportMaskedLM.from_config(tied.get_config()).tie_embeddings


def _tag_reports(source: Path, dest: Path) -> dict[str, str]:
    """A copy of the synthetic studies whose reports each end with one code word, 12 times (tensorflow-text's
    WordPiece learner keeps whole words seen at least 10 times): {case: word}."""
    shutil.copytree(source, dest)
    with open(dest / "reports.csv", encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, list(reader)
    tags = {}
    for row, tag in zip(rows, TAGS):
        row["report"] = row["report"] + " " + " ".join([tag] * 12) + "."
        tags[row["case_id"]] = tag
    with open(dest / "reports.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return tags


@pytest.fixture(scope="module")
def mlm_run(reports_source, tmp_path_factory):  # noqa: F811
    """Tagged studies -> shards -> `medtf train experiments/report_mlm.yaml` (tiny, 1 epoch)."""
    root = tmp_path_factory.mktemp("mlm")
    _tag_reports(reports_source, root / "source")
    shards, run = root / "shards", root / "run"
    assert convert_reports(root / "source", shards) == 0
    assert run_medtf("train", REPO / "experiments/report_mlm.yaml", "--run-dir", run, "--set", f"data.dir={shards}",
                     "--set", "train.epochs=1", "--set", "data.batch_size=2", "--set", "model.args.text.hidden_dim=16",
                     "--set", "model.args.text.intermediate_dim=32", "--set", "model.args.text.num_layers=1",
                     "--set", "+train.log_every_n_steps=0", "--quiet") == 0
    return shards, run


def test_vocabulary_is_learned_from_the_training_split_only(mlm_run):
    from medtf.models.text.vocab import read_reports, read_vocabulary

    shards, run = mlm_run
    vocab = set(read_vocabulary(run / "vocab.txt"))
    split_tags = {}
    for split in ("train", "val", "test"):
        texts = [r.decode("utf-8").lower() for r in read_reports(shards, split)]
        split_tags[split] = {t for t in TAGS if any(f" {t} {t} {t}" in text for text in texts)}
    assert len(split_tags["train"]) == 6 and len(split_tags["val"] | split_tags["test"]) == 4
    assert split_tags["train"] <= vocab                          # the training reports' words are tokens ...
    assert not (split_tags["val"] | split_tags["test"]) & vocab  # ... the held-out reports' own words are not
    config = (run / "config.yaml").read_text()
    assert f"vocabulary: {run / 'vocab.txt'}" in config
    stats = json.loads((run / "text_stats.json").read_text())
    assert stats["reports"] == 6 and stats["vocabulary_size"] == len(read_vocabulary(run / "vocab.txt"))
    assert stats["splits"] == "train" and 10 < stats["tokens_mean"] <= stats["tokens_max"]


def test_report_mlm_trains_logs_no_text_and_exports_a_preset(mlm_run, tmp_path):
    import keras

    from medtf.models.text.tower import resolve_text
    from medtf.models.text.vocab import read_reports

    shards, run = mlm_run
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert len(rows) == 1 and {"loss", "masked_accuracy", "val_loss", "val_masked_accuracy"} <= set(rows[0])
    assert all(np.isfinite(float(r["val_loss"])) for r in rows)
    # PHI: no report sentence in any file of the run (logs, config, history); the vocabulary holds words only.
    sentences = {s.strip() for r in read_reports(shards, "train") for s in r.decode("utf-8").split(".")
                 if len(s.strip()) > 25}
    assert sentences
    for path in run.rglob("*"):
        if path.is_file() and path.suffix != ".keras":
            data = path.read_bytes()
            assert not [s for s in sentences if s.encode("utf-8") in data or s.lower().encode() in data], path

    assert run_medtf("export", run, "--output", tmp_path / "preset", "--quiet") == 0
    trained = keras.saving.load_model(run / "checkpoints" / "best.keras", compile=False)
    for source in (tmp_path / "preset", run):  # the keras-hub preset, or the run directory itself
        backbone, tokenizer, spec = resolve_text({"preset": str(source), "trainable": False})
        assert tokenizer.vocabulary == trained.tokenizer.vocabulary and not backbone.trainable
        for a, b in zip(trained.text_backbone.get_weights(), backbone.get_weights()):
            np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_brain_clip_loads_the_mlm_text_tower_frozen(mlm_run, tmp_path):
    """`medtf evaluate` of the masked_lm run; experiments/brain_clip.yaml (CPU smoke sizes) with text.preset = the masked_lm run, frozen, label-aware:
    the CLIP checkpoint's text backbone is the MLM's, its vocabulary is copied to the run, evaluation reports the
    learned logit scale."""
    import keras

    shards, mlm = mlm_run
    assert run_medtf("evaluate", mlm, "--split", "test", "--output", tmp_path / "mlm-eval", "--quiet") == 0
    metrics = json.loads((tmp_path / "mlm-eval" / "summary.json").read_text())["metrics"]
    assert metrics["n"] == 2 and 0.0 <= metrics["masked_accuracy"] <= 1.0 and metrics["masked_per_report"] >= 1

    run = tmp_path / "clip"
    assert run_medtf("train", REPO / "experiments/brain_clip.yaml", "--run-dir", run, "--set", f"data.dir={shards}",
                     "--set", f"model.args.text.preset={mlm}", "--set", "model.args.text.trainable=false",
                     "--set", "model.args.depth=3", "--set", "model.args.base_filters=4",
                     "--set", "model.args.embed_dim=16", "--set", "model.args.label_aware=true",
                     "--set", "data.transforms=[]", "--set", "data.batch_size=2", "--set", "train.epochs=1",
                     "--set", "optimizer.learning_rate=0.001", "--quiet") == 0
    assert (run / "vocab.txt").read_text() == (mlm / "vocab.txt").read_text()
    clip = keras.saving.load_model(run / "checkpoints" / "last.keras", compile=False)
    trained = keras.saving.load_model(mlm / "checkpoints" / "best.keras", compile=False)
    assert clip.label_aware and clip.learn_temperature and not clip.text_backbone.trainable
    for a, b in zip(trained.text_backbone.get_weights(), clip.text_backbone.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert run_medtf("evaluate", run, "--split", "test", "--quiet") == 0
    metrics = json.loads((run / "eval-test" / "summary.json").read_text())["metrics"]
    assert metrics["n"] == 2 and 1.0 <= metrics["logit_scale"] <= 100.0
    assert metrics["logit_scale"] != pytest.approx(1 / 0.07, rel=1e-6)  # learned
