"""CLIP with a keras-hub text tower (experiments/brain_clip.yaml at CPU smoke sizes) through evaluate, export and
predict: the SavedModel's embed_text tokenises raw strings inside (WordPiece, tensorflow-text ops) and, reloaded in a
fresh process, equals the Keras towers; zero-shot and query retrieval run on it."""

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
SMOKE = ["model.args.depth=3", "model.args.base_filters=4", "model.args.embed_dim=16",
         "model.args.text.num_layers=1", "model.args.text.num_heads=2", "model.args.text.hidden_dim=16",
         "model.args.text.intermediate_dim=32", "model.args.text.sequence_length=32",
         "model.args.text.vocabulary_size=300", "data.transforms=[]", "data.batch_size=2", "train.epochs=1",
         "optimizer.learning_rate=0.001"]


@pytest.mark.slow
def test_brain_clip_evaluate_export_predict(reports_source, tmp_path, capsys):  # noqa: F811
    import keras

    shards, run = tmp_path / "shards", tmp_path / "run"
    assert convert_reports(reports_source, shards) == 0
    prompts = {"normal": "no acute intracranial abnormality", "infarct": "acute infarct"}
    overrides = [a for s in SMOKE for a in ("--set", s)]
    assert run_medtf("train", REPO / "experiments/brain_clip.yaml", "--run-dir", run, "--set", f"data.dir={shards}",
                     *overrides, "--set", f"+evaluate={json.dumps({'zero_shot': {'prompts': prompts}})}",
                     "--quiet") == 0
    assert run_medtf("evaluate", run, "--split", "test", "--quiet") == 0
    summary = json.loads((run / "eval-test" / "summary.json").read_text())
    assert summary["zero_shot"]["classes"] == ["normal", "infarct"]
    assert summary["zero_shot"]["n"] + summary["zero_shot"]["excluded"] == summary["metrics"]["n"] == 2
    assert run_medtf("export", run, "--output", tmp_path / "export", "--quiet") == 0
    model_dir = tmp_path / "export" / "clip_unet3d_bert" / "1"
    reports = ["acute infarct in the left frontal lobe", "no acute intracranial abnormality", ""]
    code = f"""
import json, numpy as np, tensorflow as tf, tensorflow_text
s = tf.saved_model.load({str(model_dir)!r}).signatures
x = tf.constant(np.random.default_rng(0).normal(size=(2, 8, 32, 32, 3)), tf.float32)
r = tf.constant({reports!r})
sim = s["similarity"](images=x, reports=r)
print(json.dumps({{"txt": s["embed_text"](reports=r)["text_embeddings"].numpy().tolist(),
                   "img": s["embed_image"](images=x)["image_embeddings"].numpy().tolist(),
                   "cos": sim["similarity"].numpy().tolist(), "logits": sim["logits"].numpy().tolist()}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    model = keras.saving.load_model(run / "checkpoints" / "best.keras", compile=False)
    x = np.random.default_rng(0).normal(size=(2, 8, 32, 32, 3)).astype(np.float32)
    img, txt = np.asarray(model.image_tower(x)), np.asarray(model.text_tower(np.array(reports)))
    np.testing.assert_allclose(served["txt"], txt, atol=1e-5)
    np.testing.assert_allclose(served["img"], img, atol=1e-5)
    np.testing.assert_allclose(served["cos"], img @ txt.T, atol=1e-5)
    scale = summary["metrics"]["logit_scale"]
    np.testing.assert_allclose(served["logits"], scale * (img @ txt.T), atol=1e-5 * scale)
    capsys.readouterr()
    assert run_medtf("predict", model_dir, "--query-text", reports[0], "--top-k", "3") == 0
    lines = capsys.readouterr().out.strip().splitlines()[-3:]
    index = np.load(model_dir / "report_index.npz")
    scores = index["embeddings"] @ txt[0]
    # the printed ids are the 3 best by cosine, in order (compared by score: two training reports can embed alike
    # at this size, and their tie may break either way)
    by_id = dict(zip(index["example_id"].astype(str), scores))
    np.testing.assert_allclose([by_id[line.split()[1]] for line in lines], np.sort(scores)[::-1][:3], atol=1e-5)
