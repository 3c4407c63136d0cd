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
# "infarct": a prompt ensemble (its class embedding is the mean of the two prompts' embeddings)
PROMPTS = {"normal": "no acute intracranial abnormality", "infarct": ["acute infarct", "restricted diffusion"],
           "tumor": "enhancing mass",
           "hemorrhage": "intraparenchymal hemorrhage", "others": "chronic small vessel disease"}


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
    """convert -> `medtf train` 2 epochs (with zero-shot prompts) -> `medtf export`, once for this module:
    (shards, run dir, model version)."""
    root = tmp_path_factory.mktemp("clip")
    shards, run = root / "shards", root / "run"
    assert convert_reports(reports_source, shards) == 0
    assert run_medtf("train", REPO / "experiments/reports_clip3d.yaml", "--run-dir", run, "--set",
                     f"data.dir={shards}", "--set", "train.epochs=2", "--set", "data.batch_size=2", "--set",
                     f"+evaluate={json.dumps({'zero_shot': {'prompts': PROMPTS}})}", "--quiet") == 0
    assert run_medtf("export", run, "--output", root / "export", "--quiet") == 0
    return shards, run, root / "export" / "clip_unet3d_small" / "1"


def test_reports_contrastive_end_to_end(clip_run):
    _, run, model_dir = clip_run
    import csv

    rows = list(csv.DictReader(open(run / "history.csv")))
    assert len(rows) == 2 and {"loss", "val_loss", "val_recall_at_1"} <= set(rows[0])
    assert all(np.isfinite(float(r["val_loss"])) for r in rows)
    # train.val_retrieval (default): the whole val split's figures each epoch, equal to `medtf evaluate` of the
    # same weights (the last epoch's checkpoint) on the same split.
    assert run_medtf("evaluate", run, "--split", "val", "--checkpoint", "last", "--output", run / "eval-val-last",
                     "--quiet") == 0
    val = json.loads((run / "eval-val-last" / "summary.json").read_text())["metrics"]
    val_ranks = list(csv.DictReader(open(run / "eval-val-last" / "per_example.csv")))
    mrr = np.mean([1 / int(r[k]) for r in val_ranks for k in ("image_to_report_rank", "report_to_image_rank")])
    last = {k: float(v) for k, v in rows[-1].items()}
    assert last["val_retrieval_recall_at_1"] == pytest.approx(val["image_to_report_recall_at_1"], abs=1e-6)
    assert last["val_retrieval_recall_at_5"] == pytest.approx(val["image_to_report_recall_at_5"], abs=1e-6)
    assert last["val_retrieval_mrr"] == pytest.approx(mrr, abs=1e-6)
    assert last["val_zero_shot_accuracy"] == pytest.approx(val["zero_shot_accuracy"], abs=1e-6)

    assert run_medtf("evaluate", run, "--split", "test", "--quiet") == 0
    summary = json.loads((run / "eval-test" / "summary.json").read_text())
    metrics = summary["metrics"]
    ranks = list(csv.DictReader(open(run / "eval-test" / "per_example.csv")))
    assert metrics["n"] == len(ranks) == 2  # 10 studies split 0.6 / 0.2 / 0.2
    recall = np.mean([int(r["image_to_report_rank"]) <= 1 for r in ranks])
    assert metrics["image_to_report_recall_at_1"] == pytest.approx(recall)
    assert all(1 <= int(r["report_to_image_rank"]) <= 2 for r in ranks)
    assert metrics["image_to_report_recall_at_10"] == 1.0 and 1 <= metrics["report_to_image_mean_rank"] <= 2
    assert {r["nearest_report_id"] for r in ranks} <= {r["example_id"] for r in ranks}
    # Zero-shot over the 5 prompted classes and the linear probe on the 6 training embeddings.
    zero_shot = summary["zero_shot"]
    assert zero_shot["classes"] == list(PROMPTS) and zero_shot["n"] == 2 and zero_shot["excluded"] == 0
    assert np.sum(zero_shot["confusion_matrix"]) == 2 and metrics["zero_shot_accuracy"] in (0.0, 0.5, 1.0)
    rows = list(csv.DictReader(open(run / "eval-test" / "zero_shot.csv")))
    assert [r["example_id"] for r in rows] == [r["example_id"] for r in ranks]
    assert all(abs(sum(float(r[f"p_{c}"]) for c in PROMPTS) - 1) < 1e-5 for r in rows)
    assert summary["linear_probe"]["n"] == 2 and 0 <= metrics["linear_probe_accuracy"] <= 1
    assert (run / "eval-test" / "similarity.png").is_file() and list((run / "eval-test" / "logs").iterdir())
    index = np.load(run / "report_index" / "report_index.npz")
    assert index["embeddings"].shape == (6, 16) and len(set(index["example_id"])) == 6
    # PHI: no report text in the evaluation's tables.
    reports = json.loads((run / "report_index" / "report_index_text.json").read_text())
    tables = (run / "eval-test" / "per_example.csv").read_text() + (run / "eval-test" / "zero_shot.csv").read_text()
    assert all(text not in tables for text in reports.values())

    assert json.loads((model_dir / "medtf.json").read_text())["task"] == "contrastive"
    code = f"""
import json, numpy as np, tensorflow as tf
m = tf.saved_model.load({str(model_dir)!r})
s = m.signatures
x = tf.constant(np.random.default_rng(0).normal(size=(2, 8, 32, 32, 3)), tf.float32)
r = tf.constant(["left frontal lesion", "normal study", "acute infarct"])
img = s["serving_default"](images=x)["image_embeddings"].numpy()
txt = s["encode_text"](reports=r)["text_embeddings"].numpy()
sim = s["similarity"](images=x, reports=r)
out = {{"sigs": sorted(s), "img": img.tolist(), "txt": txt.tolist(), "cos": sim["similarity"].numpy().tolist(),
       "logits": sim["logits"].numpy().tolist(),
       "img2": s["embed_image"](images=x)["image_embeddings"].numpy().tolist(),
       "txt2": s["embed_text"](reports=r)["text_embeddings"].numpy().tolist()}}
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    assert served["sigs"] == ["embed_image", "embed_text", "encode_text", "preprocess", "serving_default",
                              "similarity"]
    import keras

    model = keras.saving.load_model(run / "checkpoints" / "best.keras", compile=False)
    x = np.random.default_rng(0).normal(size=(2, 8, 32, 32, 3)).astype(np.float32)
    img = np.asarray(model.image_tower(x))
    txt = np.asarray(model.text_tower(np.array(["left frontal lesion", "normal study", "acute infarct"])))
    for key, expected in (("img", img), ("img2", img), ("txt", txt), ("txt2", txt), ("cos", img @ txt.T),
                          ("logits", img @ txt.T / 0.07)):
        np.testing.assert_allclose(served[key], expected, rtol=1e-5, atol=1e-5 * (1 if key != "logits" else 15))
    np.testing.assert_allclose(np.linalg.norm(served["img"], axis=1), 1.0, rtol=1e-5)
    meta = json.loads((model_dir / "medtf.json").read_text())
    assert meta["logit_scale"] == pytest.approx(1 / 0.07) and set(meta["signatures"]) >= {"embed_text", "similarity"}
    exported = np.load(model_dir / "report_index.npz")  # the training reports' index, as medtf evaluate wrote it
    np.testing.assert_allclose(exported["embeddings"], index["embeddings"], atol=1e-6)
    assert json.loads((model_dir / "zero_shot.json").read_text()) == {"classes": list(PROMPTS),
                                                                      "prompts": list(PROMPTS.values())}


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


def test_contrastive_predict_case_folder_top_k_and_zero_shot(clip_run, reports_source, tmp_path):  # noqa: F811
    """`medtf predict` on raw mri-reports case folders: each is stacked exactly as the converter stored it (one of
    the shards' images), and gets the top-k training reports (ids + cosine, = Keras' embeddings against the
    stored index) and zero-shot probabilities over the prompted classes; no report text without --show-text."""
    import keras

    from medtf.data import make_dataset

    shards, run, model_dir = clip_run
    cases = sorted(p for p in reports_source.iterdir() if p.is_dir())[:2]
    inputs = tmp_path / "cases"
    inputs.mkdir()
    for case in cases:
        (inputs / case.name).symlink_to(case, target_is_directory=True)
    out = tmp_path / "pred"
    assert run_medtf("predict", model_dir, "--input", inputs, "--output", out, "--top-k", "3", "--quiet") == 0
    prediction = json.loads((out / "prediction.json").read_text())
    rows = prediction["predictions"]
    assert [Path(r["input"]).name for r in rows] == [c.name for c in cases]
    stored = np.concatenate([b["image"].numpy() for split in ("train", "val", "test") for b in
                             make_dataset(shards, split, batch_size=2, training=False, repeat=False, output="dict")])
    from medtf.tasks.contrastive_serving import case_image

    meta = json.loads((model_dir / "medtf.json").read_text())
    model = keras.saving.load_model(run / "checkpoints" / "best.keras", compile=False)
    index = np.load(model_dir / "report_index.npz")
    embeddings = np.load(out / "embeddings.npy")
    for row, case, embedding in zip(rows, cases, embeddings):
        image = case_image(case, meta["conversion"])
        assert np.abs(stored - image[None]).reshape(len(stored), -1).max(axis=1).min() < 1e-5  # the converter's
        np.testing.assert_allclose(embedding, np.asarray(model.image_tower(image[None]))[0], atol=1e-5)
        scores = index["embeddings"] @ embedding
        assert [h["example_id"] for h in row["top_k"]] == [str(index["example_id"][j]) for j in
                                                           np.argsort(-scores)[:3]]
        assert [h["score"] for h in row["top_k"]] == pytest.approx(np.sort(scores)[::-1][:3], abs=1e-5)
        assert "text" not in row["top_k"][0]
        assert set(row["zero_shot"]) == set(PROMPTS) and sum(row["zero_shot"].values()) == pytest.approx(1, abs=1e-5)
        # the class probabilities by hand: softmax(scale * cos(image, class embedding)), the ensemble's averaged
        classes = []
        for prompt in PROMPTS.values():
            t = np.asarray(model.text_tower(np.array([prompt] if isinstance(prompt, str) else prompt))).mean(axis=0)
            classes.append(t / np.linalg.norm(t))
        logits = meta["logit_scale"] * np.stack(classes) @ embedding
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert [row["zero_shot"][c] for c in PROMPTS] == pytest.approx(expected, abs=1e-5)
    # The run directory predicts the same through its Keras checkpoint and the index medtf evaluate wrote.
    if not (run / "report_index" / "report_index.npz").is_file():  # this test ran apart from the evaluate one
        assert run_medtf("evaluate", run, "--split", "test", "--quiet") == 0
    assert run_medtf("predict", run, "--input", inputs / cases[0].name, "--output", tmp_path / "run-pred",
                     "--top-k", "3", "--quiet") == 0
    from_run = json.loads((tmp_path / "run-pred" / "prediction.json").read_text())["predictions"]
    np.testing.assert_allclose(np.load(tmp_path / "run-pred" / "embeddings.npy")[0], embeddings[0], atol=1e-5)
    assert [h["example_id"] for h in from_run[0]["top_k"]] == [h["example_id"] for h in rows[0]["top_k"]]
    assert from_run[0]["zero_shot"] == pytest.approx(rows[0]["zero_shot"], abs=1e-5)


def test_contrastive_predict_query_text(clip_run, capsys):
    """`medtf predict RUN --query-text`: the nearest training reports of the run's index (ids + scores printed);
    the text only with --show-text and only from the run directory; neither --input nor --query-text is refused."""
    import keras

    _, run, model_dir = clip_run
    if not (run / "report_index" / "report_index.npz").is_file():  # written by medtf evaluate
        assert run_medtf("evaluate", run, "--split", "test", "--quiet") == 0
    capsys.readouterr()
    query = "acute infarct in the left frontal lobe"
    assert run_medtf("predict", run, "--query-text", query, "--top-k", "2") == 0
    lines = capsys.readouterr().out.strip().splitlines()[-2:]
    model = keras.saving.load_model(run / "checkpoints" / "best.keras", compile=False)
    index = np.load(run / "report_index" / "report_index.npz")
    scores = index["embeddings"] @ np.asarray(model.text_tower(np.array([query])))[0]
    best = np.argsort(-scores)[:2]
    assert [line.split()[1] for line in lines] == [str(index["example_id"][j]) for j in best]
    assert [float(line.split()[2]) for line in lines] == pytest.approx(scores[best], abs=1e-4)
    texts = json.loads((run / "report_index" / "report_index_text.json").read_text())
    assert all(len(line.split()) == 3 for line in lines)  # rank, id, score: no text
    assert run_medtf("predict", model_dir, "--query-text", query, "--top-k", "1", "--show-text") == 2
    assert "holds no report text" in capsys.readouterr().err  # an exported model ships no report text (PHI)
    assert not (model_dir / "report_index_text.json").exists()
    assert run_medtf("predict", run, "--query-text", query, "--top-k", "1", "--show-text") == 0
    shown = capsys.readouterr().out
    assert repr(texts[str(index["example_id"][best[0]])]) in shown  # printed as a Python literal
    assert run_medtf("predict", model_dir, "--top-k", "1") == 2  # neither --input nor --query-text
    assert "give --input and --output, or --query-text" in capsys.readouterr().err
