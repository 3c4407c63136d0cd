"""The classification task end to end: lgg-mri slices as tumour / no tumour through train, evaluate, export
(reloaded in a fresh process) and predict, with the commands a user runs."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_medtf

REPO = Path(__file__).resolve().parents[2]


def test_classification_scores_by_hand():
    from medtf.tasks.classification import bootstrap_summary, classification_scores

    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    probs = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.1, 0.05])
    s = classification_scores(labels, probs)
    # TP 2, FN 1, FP 1, TN 4; AUC: 14 of 15 pairs ordered (0.3 < 0.7 is the only wrong pair).
    assert s["sensitivity"] == pytest.approx(2 / 3) and s["specificity"] == pytest.approx(4 / 5)
    assert s["balanced_accuracy"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert s["f1"] == pytest.approx(4 / 6) and s["auc"] == pytest.approx(14 / 15)
    multi = classification_scores([0, 1, 2, 2], np.eye(3)[[0, 1, 2, 1]])
    assert multi["accuracy"] == 0.75 and multi["sensitivity"] == pytest.approx((1 + 1 + 0.5) / 3)
    ci = bootstrap_summary(labels, probs, samples=200)
    assert ci["auc"]["ci_low"] <= ci["auc"]["value"] <= ci["auc"]["ci_high"] <= 1.0 and ci["n"] == 8


def test_lgg_tumour_classification_end_to_end(lgg_tiny, tmp_path):
    run = tmp_path / "run"
    assert run_medtf("train", REPO / "experiments/lgg_classifier2d.yaml", "--run-dir", run,
                     "--set", f"data.dir={lgg_tiny}", "--set", "train.epochs=2", "--set", "data.batch_size=4",
                     "--quiet") == 0
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert len(rows) == 2 and {"auc", "val_auc", "val_accuracy", "val_loss"} <= set(rows[0])
    import yaml

    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["task"] == "classification" and resolved["train"]["monitor"] == "val_auc"

    assert run_medtf("evaluate", run, "--split", "test", "--quiet") == 0
    summary = json.loads((run / "eval-test" / "summary.json").read_text())
    per_example = list(csv.DictReader(open(run / "eval-test" / "per_example.csv")))
    assert len(per_example) == summary["metrics"]["n"] == 4
    for name in ("auc", "sensitivity", "specificity", "balanced_accuracy", "f1"):
        assert set(summary["metrics"][name]) == {"value", "ci_low", "ci_high"}
    assert list(per_example[0]) == ["example_id", "label", "p_positive", "prediction"]
    assert list((run / "eval-test" / "logs").glob("events.out.tfevents.*"))

    assert run_medtf("export", run, "--output", tmp_path / "export", "--quiet") == 0
    model_dir = tmp_path / "export" / "unet_classifier2d_small" / "1"
    meta = json.loads((model_dir / "medtf.json").read_text())
    assert meta["task"] == "classification" and meta["num_classes"] == 1
    # A fresh process: the SavedModel's signatures and the Keras checkpoint's probabilities agree.
    from PIL import Image

    slices = np.random.default_rng(0).integers(0, 255, size=(2, 32, 32, 3), dtype=np.uint8)
    for i, s in enumerate(slices):
        Image.fromarray(s).save(tmp_path / f"slice{i}.png")
    code = f"""
import json, numpy as np, tensorflow as tf
m = tf.saved_model.load({str(model_dir)!r})
sig = m.signatures["serving_default"]
x = np.stack([np.asarray(__import__("PIL.Image").Image.open({str(tmp_path)!r} + f"/slice{{i}}.png")) for i in range(2)])
out = sig(images=tf.constant(x, tf.float32))
tta = m.signatures["predict_tta"](images=tf.constant(x, tf.float32))
print(json.dumps({{"sigs": sorted(m.signatures), "outputs": sorted(sig.structured_outputs),
                  "inputs": [s.name for s in sig.structured_input_signature[1].values()],
                  "p": out["probabilities"].numpy().tolist(), "tta": tta["probabilities"].numpy().tolist()}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    assert served["sigs"] == ["predict_tta", "preprocess", "serving_default"]
    assert served["outputs"] == ["probabilities"]
    assert served["inputs"] == ["images"]
    import keras

    model = keras.saving.load_model(run / "checkpoints" / "best.keras", compile=False)
    expected = np.asarray(model(slices.astype(np.float32) / 255.0))
    np.testing.assert_allclose(served["p"], expected, rtol=1e-4, atol=1e-5)
    # Enhanced prediction = the mean over the 8 symmetries of the square, computed here with NumPy.
    x = slices.astype(np.float32) / 255.0
    views = [np.rot90(v, k, axes=(1, 2)) for v in (x, x[:, :, ::-1]) for k in range(4)]
    tta = np.mean([np.asarray(model(np.ascontiguousarray(v))) for v in views], axis=0)
    np.testing.assert_allclose(served["tta"], tta, rtol=1e-4, atol=1e-5)
    assert meta["tta_views"] == ["rot0", "rot0_flip", "rot90", "rot90_flip", "rot180", "rot180_flip", "rot270",
                                 "rot270_flip"]

    assert run_medtf("predict", model_dir, "--input", tmp_path / "slice1.png", "--output", tmp_path / "pred",
                     "--quiet") == 0
    prediction = json.loads((tmp_path / "pred" / "prediction.json").read_text())
    assert prediction["task"] == "classification"
    np.testing.assert_allclose(prediction["predictions"][0]["probabilities"], expected[1], rtol=1e-4, atol=1e-5)
    assert prediction["predictions"][0]["class"] == int(expected[1][0] >= 0.5)
    assert run_medtf("predict", model_dir, "--input", tmp_path / "slice1.png", "--output", tmp_path / "pred-tta",
                     "--tta", "--quiet") == 0
    prediction = json.loads((tmp_path / "pred-tta" / "prediction.json").read_text())
    assert prediction["tta"] == meta["tta_views"]
    np.testing.assert_allclose(prediction["predictions"][0]["probabilities"], tta[1], rtol=1e-4, atol=1e-5)

    # evaluate --tta: the per-example probabilities are the mean over the same 8 views of the parsed slices.
    assert run_medtf("evaluate", run, "--split", "test", "--tta", "--output", tmp_path / "eval-tta", "--quiet") == 0
    plain = {r["example_id"]: float(r["p_positive"]) for r in per_example}
    enhanced = {r["example_id"]: float(r["p_positive"])
                for r in csv.DictReader(open(tmp_path / "eval-tta" / "per_example.csv"))}
    assert plain.keys() == enhanced.keys() and plain != enhanced
    assert json.loads((tmp_path / "eval-tta" / "summary.json").read_text())["tta"] == meta["tta_views"]
