"""The contrastive task end to end on mri-reports (image + report text): train, evaluate through fit's
validation, export with image and text signatures reloaded in a fresh process, predict embeddings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_medtf
from tests.reports.conftest import convert_reports, reports_source  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]


def test_clip_loss_and_recall_by_hand():
    from medtf.tasks.contrastive import ClipLoss, RetrievalRecallAt1

    image = np.eye(3, dtype=np.float32)
    text = np.eye(3, dtype=np.float32)[[0, 2, 1]]  # example 0 matches, 1 and 2 are swapped
    y = np.concatenate([image, text], axis=1)
    metric = RetrievalRecallAt1()
    metric.update_state(np.zeros((3, 1)), y)
    assert float(metric.result()) == pytest.approx(1 / 3)
    # Loss by hand: logits = S / T; row i's CE = -log softmax_i(own).
    t = 0.5
    logits = image @ text.T / t
    ce = lambda m: -np.log(np.exp(np.diag(m)) / np.exp(m).sum(1))  # noqa: E731
    expected = 0.5 * (ce(logits) + ce(logits.T)).mean()
    assert float(ClipLoss(temperature=t)(np.zeros((3, 1)), y)) == pytest.approx(expected, rel=1e-5)


def _info_nce_reference(image, text, temperature):
    """NumPy symmetric InfoNCE per example: image i against every report (own: i), report i against every image."""
    logits = image.astype(np.float64) @ text.astype(np.float64).T / temperature
    image_to_report = np.log(np.exp(logits).sum(axis=1)) - np.diag(logits)   # rows: softmax over reports
    report_to_image = np.log(np.exp(logits).sum(axis=0)) - np.diag(logits)   # columns: softmax over images
    return image_to_report, report_to_image


@pytest.mark.parametrize("temperature", [0.07, 1.0])
def test_clip_loss_matches_numpy_in_both_directions(temperature):
    from medtf.tasks.contrastive import ClipLoss

    rng = np.random.default_rng(3)
    image, text = rng.normal(size=(2, 6, 4)).astype(np.float32)
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    i2t, t2i = _info_nce_reference(image, text, temperature)
    assert np.abs(i2t - t2i).max() > 1e-3  # the two directions differ: a swapped axis would show
    y = np.concatenate([image, text], axis=1)
    per_sample = np.asarray(ClipLoss(temperature=temperature, reduction=None)(np.zeros((6, 1)), y))
    np.testing.assert_allclose(per_sample, 0.5 * (i2t + t2i), rtol=1e-5)
    assert float(ClipLoss(temperature=temperature)(np.zeros((6, 1)), y)) == pytest.approx(
        0.5 * (i2t + t2i).mean(), rel=1e-5)
    # Swapping the towers swaps the directions: same per-example values.
    swapped = np.asarray(ClipLoss(temperature=temperature, reduction=None)(
        np.zeros((6, 1)), np.concatenate([text, image], axis=1)))
    np.testing.assert_allclose(swapped, per_sample, rtol=1e-5)
    restored = ClipLoss.from_config(ClipLoss(temperature=temperature).get_config())
    assert restored.temperature == pytest.approx(temperature)


@pytest.fixture(scope="module")
def clip_run(reports_source, tmp_path_factory) -> tuple[Path, Path, Path]:  # noqa: F811
    """convert -> `medtf train` 2 epochs -> `medtf export`, once for this module: (shards, run dir, model version)."""
    root = tmp_path_factory.mktemp("clip")
    shards, run = root / "shards", root / "run"
    assert convert_reports(reports_source, shards) == 0
    assert run_medtf("train", REPO / "experiments/reports_clip3d.yaml", "--run-dir", run, "--set",
                     f"data.dir={shards}", "--set", "train.epochs=2", "--set", "data.batch_size=2", "--quiet") == 0
    assert run_medtf("export", run, "--output", root / "export", "--quiet") == 0
    return shards, run, root / "export" / "clip_unet3d_small" / "1"


def test_reports_contrastive_end_to_end(clip_run):
    _, run, model_dir = clip_run
    import csv

    rows = list(csv.DictReader(open(run / "history.csv")))
    assert len(rows) == 2 and {"loss", "val_loss", "val_recall_at_1"} <= set(rows[0])
    assert all(np.isfinite(float(r["val_loss"])) for r in rows)

    assert run_medtf("evaluate", run, "--split", "test", "--quiet") == 0
    summary = json.loads((run / "eval-test" / "summary.json").read_text())
    metrics = summary["metrics"]
    ranks = list(csv.DictReader(open(run / "eval-test" / "per_example.csv")))
    assert metrics["n"] == len(ranks) == 2  # 10 studies split 0.6 / 0.2 / 0.2
    recall = np.mean([int(r["image_to_report_rank"]) <= 1 for r in ranks])
    assert metrics["image_to_report_recall_at_1"] == pytest.approx(recall)
    assert all(1 <= int(r["report_to_image_rank"]) <= 2 for r in ranks)

    assert json.loads((model_dir / "medtf.json").read_text())["task"] == "contrastive"
    code = f"""
import json, numpy as np, tensorflow as tf
m = tf.saved_model.load({str(model_dir)!r})
img = m.signatures["serving_default"](images=tf.zeros([2, 8, 32, 32, 3]))["image_embeddings"].numpy()
txt = m.signatures["encode_text"](reports=tf.constant(["left frontal lesion", "normal study"]))["text_embeddings"].numpy()
print(json.dumps({{"sigs": sorted(m.signatures), "img": img.tolist(), "txt": txt.tolist()}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    assert served["sigs"] == ["encode_text", "preprocess", "serving_default"]
    import keras

    model = keras.saving.load_model(run / "checkpoints" / "best.keras", compile=False)
    both = np.asarray(model({"image": np.zeros((2, 8, 32, 32, 3), np.float32),
                             "report": np.array(["left frontal lesion", "normal study"])}))
    np.testing.assert_allclose(served["img"], both[:, :16], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(served["txt"], both[:, 16:], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(served["img"], axis=1), 1.0, rtol=1e-5)


def _write_vector_image(path: Path, array: np.ndarray) -> None:
    """``(D, H, W, C)`` float32 -> a multi-component MetaImage (what `medtf predict` reads as ``(D, H, W, C)``)."""
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=True), str(path))


def test_contrastive_predict_writes_unit_embeddings_equal_to_serving(clip_run, tmp_path):
    """`medtf predict` of the exported model on two stored test studies: embeddings.npy equals the SavedModel's
    serving_default in a fresh process and the Keras image tower, rows have unit norm; encode_text matches the
    Keras report tower on the studies' own reports."""
    from medtf.data import make_dataset

    shards, run, model_dir = clip_run
    batch = next(iter(make_dataset(shards, "test", batch_size=2, training=False, repeat=False, output="dict")))
    images = batch["image"].numpy()
    reports = [r.decode() for r in batch["report"].numpy()]
    assert images.shape == (2, 8, 32, 32, 3)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name, image in zip(("a.mha", "b.mha"), images):
        _write_vector_image(inputs / name, image)
    out = tmp_path / "pred"
    assert run_medtf("predict", model_dir, "--input", inputs, "--output", out, "--quiet") == 0
    embeddings = np.load(out / "embeddings.npy")
    assert embeddings.shape == (2, 16) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    prediction = json.loads((out / "prediction.json").read_text())
    assert prediction["task"] == "contrastive" and prediction["embeddings"] == "embeddings.npy"
    assert [(Path(p["input"]).name, p["row"]) for p in prediction["predictions"]] == [("a.mha", 0), ("b.mha", 1)]

    np.save(tmp_path / "images.npy", images)
    code = f"""
import json, numpy as np, tensorflow as tf
m = tf.saved_model.load({str(model_dir)!r})
img = m.signatures["serving_default"](images=tf.constant(np.load({str(tmp_path / "images.npy")!r})))
txt = m.signatures["encode_text"](reports=tf.constant({reports!r}))
print(json.dumps({{"img": img["image_embeddings"].numpy().tolist(), "txt": txt["text_embeddings"].numpy().tolist()}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(embeddings, served["img"], rtol=1e-5, atol=1e-6)
    text = np.asarray(served["txt"])
    assert text.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, rtol=1e-5)
    import keras

    model = keras.saving.load_model(run / "checkpoints" / "best.keras", compile=False)
    both = np.asarray(model({"image": images, "report": np.array(reports)}))
    np.testing.assert_allclose(embeddings, both[:, :16], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(text, both[:, 16:], rtol=1e-4, atol=1e-5)
