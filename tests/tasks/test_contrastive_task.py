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


def test_reports_contrastive_end_to_end(reports_source, tmp_path):  # noqa: F811
    shards = tmp_path / "shards"
    assert convert_reports(reports_source, shards) == 0
    run = tmp_path / "run"
    assert run_medtf("train", REPO / "experiments/reports_clip3d.yaml", "--run-dir", run, "--set",
                     f"data.dir={shards}", "--set", "train.epochs=2", "--set", "data.batch_size=2", "--quiet") == 0
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

    assert run_medtf("export", run, "--output", tmp_path / "export", "--quiet") == 0
    model_dir = tmp_path / "export" / "clip_unet3d_small" / "1"
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
