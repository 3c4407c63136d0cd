"""The nucleus_classification task: scores, loss and streaming metrics against scikit-learn / NumPy on hand-made
predictions, the example -> (inputs, labels) mapping (padding, class ids, bad ids), and one `medtf train` +
`medtf evaluate` on tiny synthetic nuclei-he shards."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from medtf.models.vit import NucleusClassifier
from medtf.tasks import default_monitor, get_task
from medtf.tasks.nucleus_classification import NucleusAccuracy, NucleusF1, NucleusLoss, nucleus_scores
from tests.conftest import run_medtf

REPO = Path(__file__).resolve().parents[2]
LABELS = np.array([0, 0, 1, 2, 2, 2, 3, 1, 0, 3, 2])
PREDICTED = np.array([0, 1, 1, 2, 0, 2, 1, 1, 0, 3, 4])  # class 4 predicted once, never true


def test_nucleus_scores_match_scikit_learn():
    scores = nucleus_scores(LABELS, PREDICTED, 5, ["a", "b", "c", "d", "e"])
    assert scores["n"] == 11 and scores["accuracy"] == pytest.approx(accuracy_score(LABELS, PREDICTED))
    assert scores["f1"] == pytest.approx(f1_score(LABELS, PREDICTED, average="macro"), rel=1e-12)
    precision, recall, f1, support = precision_recall_fscore_support(LABELS, PREDICTED, labels=range(5),
                                                                     zero_division=0)
    for k, name in enumerate("abcde"):
        row = scores["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (precision[k], recall[k], f1[k], support[k]))
    np.testing.assert_array_equal(scores["confusion_matrix"], confusion_matrix(LABELS, PREDICTED, labels=range(5)))
    # A class absent from truth and prediction is left out of the macro average (as scikit-learn's default).
    absent = nucleus_scores(LABELS[:9], PREDICTED[:9], 6)
    assert absent["f1"] == pytest.approx(f1_score(LABELS[:9], PREDICTED[:9], average="macro"))


def test_loss_and_streaming_metrics_ignore_padding_and_match_scikit_learn():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=(2, 8)).astype(np.float32)  # 2 tiles x 8 slots
    labels = np.full((2, 8), -1)
    labels[0, :6], labels[1, :5] = LABELS[:6], LABELS[6:]
    for b, k in zip(*np.nonzero(labels >= 0)):  # hand-made predictions: argmax = PREDICTED in slot order
        probs[b, k] = 0.05
        probs[b, k, PREDICTED[b * 6 + k]] = 0.8
    real = labels >= 0
    ce = -np.log(np.take_along_axis(probs, np.maximum(labels, 0)[..., None], -1)[..., 0])
    assert float(NucleusLoss()(labels, probs)) == pytest.approx(ce[real].mean(), rel=1e-5)
    changed = probs.copy()
    changed[~real] = rng.dirichlet(np.ones(5), size=(~real).sum())
    assert float(NucleusLoss()(labels, changed)) == pytest.approx(ce[real].mean(), rel=1e-6)
    acc, f1 = NucleusAccuracy(), NucleusF1(5)
    for b in range(2):  # two batches: the confusion matrix accumulates
        acc.update_state(labels[b:b + 1], probs[b:b + 1])
        f1.update_state(labels[b:b + 1], probs[b:b + 1])
    assert float(acc.result()) == pytest.approx(accuracy_score(LABELS, PREDICTED), rel=1e-6)
    assert float(f1.result()) == pytest.approx(f1_score(LABELS, PREDICTED, average="macro"), rel=1e-6)
    f1.reset_state()
    assert float(f1.result()) == 0.0


def test_model_inputs_pad_boxes_shift_class_ids_and_name_bad_ids():
    model = NucleusClassifier(num_classes=5, max_nuclei=4, image_size=32, patch_size=8, hidden_dim=16, num_layers=1,
                              num_heads=2, mlp_dim=32)
    task = get_task("nucleus_classification")
    assert default_monitor("nucleus_classification") == ("val_f1", "max")
    to_model = task.model_inputs(model)
    boxes = np.array([[0, 0, 4, 4], [8, 8, 12, 20], [30, 30, 32, 32]], np.float32)
    example = {"image": tf.zeros((32, 32, 3)), "boxes": tf.constant(boxes), "classes": tf.constant([1, 5, 2])}
    x, labels = to_model(example)
    np.testing.assert_array_equal(labels.numpy(), [0, 4, 1, -1])
    np.testing.assert_array_equal(x["boxes"].numpy(), np.concatenate([boxes, np.zeros((1, 4))]))
    assert int(x["num_boxes"]) == 3 and x["images"].shape == (32, 32, 3)
    empty = {**example, "boxes": tf.zeros((0, 4)), "classes": tf.zeros((0,), tf.int32)}
    (x0, y0), = tf.data.Dataset.from_tensors(empty).map(to_model).as_numpy_iterator()  # 0 nuclei, in a pipeline
    assert int(x0["num_boxes"]) == 0 and (y0 == -1).all()
    many = {**example, "boxes": tf.zeros((6, 4)), "classes": tf.constant([1, 2, 3, 4, 5, 5])}
    _, labels = to_model(many)  # more nuclei than slots: the first max_nuclei stay
    np.testing.assert_array_equal(labels.numpy(), [0, 1, 2, 3])
    with pytest.raises(tf.errors.InvalidArgumentError, match="exceeds the model's num_classes 5"):
        to_model({**example, "classes": tf.constant([1, 6, 2])})
    with pytest.raises(ValueError, match=r"model takes 2D images \[32, 32, 3\]"):
        to_model({**example, "image": tf.zeros((40, 40, 3))})
    with pytest.raises(ValueError, match="needs the fields"):
        to_model({"image": tf.zeros((32, 32, 3))})


# === End to end: synth -> convert -> medtf train -> medtf evaluate ===

def test_nucleus_classification_through_the_cli(tmp_path):
    """4 synthetic 64 px PanNuke-style tiles (train 2 / val 2), the shipped fine-tuning experiment for one epoch
    with one block; evaluate recomputes the validation F1 and accuracy from per-nucleus predictions (about 7 s of
    CPU: synth 1, convert 1, train 4, evaluate 1)."""
    from tests.nuclei.conftest import decoded, tiny_tile_shards

    shards = tiny_tile_shards(tmp_path)
    run = tmp_path / "run"
    assert run_medtf("train", REPO / "experiments/nuclei_finetune.yaml", "--run-dir", run,
                     "--set", f"data.dir={shards}", "--set", "train.epochs=1", "--set", "data.batch_size=2",
                     "--set", "data.transforms=[]", "--set", "data.patch_size=null", "--set",
                     "data.val_patch_size=null", "--set", "model.args.num_layers=1", "--set",
                     "+train.log_every_n_steps=0", "--set", "+train.image_panels=false", "--set",
                     "+train.hparams=false", "--set", "optimizer.name=sgd", "--set", "optimizer.weight_decay=null",
                     "--quiet") == 0  # SGD: tracing AdamW's update was 2/3 of this test's CPU time
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert len(rows) == 1 and {"loss", "accuracy", "f1", "val_loss", "val_accuracy", "val_f1"} <= set(rows[0])
    assert run_medtf("evaluate", run, "--split", "val", "--quiet") == 0
    summary = json.loads((run / "eval-val" / "summary.json").read_text())
    metrics = summary["metrics"]
    counts = [len(e["classes"]) for e in decoded(shards, "val")]
    assert metrics["n"] == sum(min(c, 48) for c in counts) > 0
    assert summary["nuclei_dropped"] == sum(max(c - 48, 0) for c in counts)
    assert metrics["class_names"] == ["neoplastic", "inflammatory", "connective", "dead", "epithelial"]
    assert metrics["f1"] == pytest.approx(float(rows[0]["val_f1"]), rel=1e-4)
    assert metrics["accuracy"] == pytest.approx(float(rows[0]["val_accuracy"]), rel=1e-4)
    nuclei = list(csv.DictReader(open(run / "eval-val" / "per_nucleus.csv")))
    assert len(nuclei) == metrics["n"]
    labels, predicted = np.array([int(r["label"]) for r in nuclei]), np.array([int(r["prediction"]) for r in nuclei])
    assert metrics["f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert np.sum(metrics["confusion_matrix"]) == metrics["n"]


@pytest.mark.slow
def test_linear_probe_from_a_nucleus_token_mim_run_through_the_cli(tmp_path):
    """MIM with nucleus tokens (pixel targets: nuclei-he shards hold no token grid) -> the shipped linear-probe
    experiment with ``model.init_from`` that run: every backbone weight is carried and stays frozen, the head
    trains."""
    import keras

    from tests.nuclei.conftest import tiny_tile_shards

    shards = tiny_tile_shards(tmp_path)
    common = ["--set", f"data.dir={shards}", "--set", "train.epochs=1", "--set", "data.batch_size=2", "--set",
              "data.transforms=[]", "--set", "data.patch_size=null", "--set", "data.val_patch_size=null", "--set",
              "model.args.num_layers=1", "--set", "+train.log_every_n_steps=0", "--set",
              "+train.image_panels=false", "--set", "+train.hparams=false", "--quiet"]
    mim = tmp_path / "mim"
    assert run_medtf("train", REPO / "experiments/nuclei_mim_pretrain.yaml", "--run-dir", mim, *common, "--set",
                     "+model.args.max_nuclei=48", "--set", "model.args.position_embedding=xywh") == 0
    probe = tmp_path / "probe"
    assert run_medtf("train", REPO / "experiments/nuclei_linear_probe.yaml", "--run-dir", probe, *common,
                     "--set", f"model.init_from={mim}") == 0
    pretrained = keras.saving.load_model(mim / "checkpoints" / "best.keras", compile=False).get_layer("backbone")
    probed = keras.saving.load_model(probe / "checkpoints" / "last.keras", compile=False)
    for a, b in zip(pretrained.get_weights(), probed.get_layer("backbone").get_weights()):
        np.testing.assert_array_equal(a, b)  # carried and frozen through the epoch
    carried = json.loads((probe / "init_from.json").read_text())  # the run keeps the report (strict: all carried)
    assert carried["skipped"] == ["nucleus_head"] and not carried["missing"] and carried["unused"] == ["mim_head"]
    assert run_medtf("evaluate", probe, "--split", "val", "--quiet") == 0
    assert json.loads((probe / "eval-val" / "summary.json").read_text())["metrics"]["n"] > 0
