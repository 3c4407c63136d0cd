"""L_inst: the 4 tokens of a nucleus box (quadrant centres -> token cells), counted only for real nuclei that
intersect a masked patch (hand-made case), the loss / accuracy against NumPy, and the masked_modeling task's
inputs, losses and metrics for a model with nucleus tokens."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from medtf.models.vit import MaskedImageModel
from medtf.models.vit.masking import instance_targets
from medtf.tasks import get_task
from medtf.tasks.instance_tokens import InstanceTokenAccuracy, InstanceTokenLoss, instance_scores
from medtf.tasks.masked_modeling import MaskedTokenAccuracy, MaskedTokenLoss

TINY = dict(image_size=32, patch_size=8, num_channels=3, hidden_dim=16, num_layers=1, num_heads=2, mlp_dim=32,
            position_embedding="xywh")
TOKENS = (np.arange(16).reshape(4, 4) + 100).astype(np.int32)  # 32 px tile, 8 px token cells: ids 100..115
BOXES = np.array([[9, 17, 12, 20],    # inside the masked patch (row 1, col 2): 4 x its token 106
                  [0, 0, 16, 16],     # touches the masked patch's edge only: not counted
                  [4, 12, 28, 20],    # overlaps it: quadrant centres (10 | 22, 14 | 18) -> rows 1, 2 x cols 1, 2
                  [8, 16, 16, 24]],   # exactly the masked patch, but a padding row (num_boxes 3)
                 np.float32)


def test_instance_targets_by_hand():
    mask = np.zeros((4, 4), np.int32)
    mask[1, 2] = 1
    ids, counted = instance_targets(TOKENS[None], BOXES[None], [3], mask[None], (32, 32))
    np.testing.assert_array_equal(ids.numpy()[0, :3], [[106] * 4, [100, 101, 104, 105], [105, 106, 109, 110]])
    np.testing.assert_array_equal(counted.numpy(), [[1, 0, 1, 0]])
    # Masking the top-left patch instead counts box 1 only (box 2's x range 12..20 misses column 0); a 2 x 2 token
    # grid (16 px cells) is sampled at the same quadrant centres: box 2 -> its 4 cells.
    mask2 = np.zeros((4, 4), np.int32)
    mask2[0, 0] = 1
    coarse = np.array([[7, 8], [9, 10]], np.int32)
    ids, counted = instance_targets(coarse[None], BOXES[None], [4], mask2[None], (32, 32))
    np.testing.assert_array_equal(counted.numpy(), [[0, 1, 0, 0]])
    np.testing.assert_array_equal(ids.numpy()[0, 2], [7, 8, 9, 10])


def test_instance_loss_and_accuracy_match_numpy_and_ignore_uncounted_nuclei():
    rng = np.random.default_rng(0)
    b, m, v = 2, 3, 5
    logits = rng.normal(size=(b, m, 4, v)).astype(np.float32)
    ids = rng.integers(0, v, size=(b, m, 4))
    counted = np.array([[1, 0, 1], [0, 0, 0]], np.float32)
    y = np.concatenate([ids, counted[..., None]], -1).astype(np.float32)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_p, ids[..., None], -1)[..., 0].mean(-1)
    expected = np.array([(ce[0] * counted[0]).sum() / 2, 0.0]).mean()
    loss = float(InstanceTokenLoss()(y, logits))
    assert loss == pytest.approx(expected, rel=1e-5)
    changed = logits.copy()
    changed[counted == 0] = rng.normal(size=changed[counted == 0].shape) * 10
    assert float(InstanceTokenLoss()(y, changed)) == pytest.approx(loss, rel=1e-6)
    acc = InstanceTokenAccuracy()
    acc.update_state(y, logits)
    hits = logits.argmax(-1) == ids
    assert float(acc.result()) == pytest.approx(hits[counted == 1].mean(), rel=1e-6)
    np.testing.assert_allclose(instance_scores(y, logits)["inst_loss"], [expected * 2, 0.0], rtol=1e-5)


def test_masked_modeling_task_with_nucleus_tokens_builds_boxes_and_instance_targets():
    model = MaskedImageModel(**TINY, target="tokens", vocab_size=120, max_nuclei=5, mask_ratio=0.5,
                             min_mask_patches=4)
    task = get_task("masked_modeling")
    example = {"image": tf.constant(np.random.default_rng(1).random((32, 32, 3)), tf.float32),
               "example_id": tf.constant("tile-3"), "tokens": tf.constant(TOKENS), "boxes": tf.constant(BOXES),
               "classes": tf.constant([1, 2, 3, 4], tf.int32)}
    x, y = task.model_inputs(model)(example)
    assert set(x) == {"images", "mask", "boxes", "num_boxes"} and int(x["num_boxes"]) == 4
    np.testing.assert_array_equal(x["boxes"].numpy()[:4], BOXES)
    np.testing.assert_array_equal(x["boxes"].numpy()[4], 0)
    np.testing.assert_array_equal(y["patches"].numpy()[:, 0], TOKENS.reshape(-1))
    ids, counted = instance_targets(TOKENS[None], x["boxes"][None], [4], tf.reshape(x["mask"], [1, 4, 4]), (32, 32))
    np.testing.assert_array_equal(y["nuclei"].numpy()[:, :4], ids.numpy()[0])
    np.testing.assert_array_equal(y["nuclei"].numpy()[:, 4], counted.numpy()[0])
    assert y["nuclei"].numpy()[4, 4] == 0  # the padding slot never counts
    loss = task.build_loss("auto", model)
    assert isinstance(loss["patches"], MaskedTokenLoss) and isinstance(loss["nuclei"], InstanceTokenLoss)
    metrics = task.default_metrics(model)
    assert isinstance(metrics["patches"][0], MaskedTokenAccuracy)
    assert isinstance(metrics["nuclei"][0], InstanceTokenAccuracy)
    # One fit step on the batch (eager: tracing the step would take most of this test): both losses and both
    # accuracies are logged under the outputs' names.
    model.compile(optimizer="adam", loss=loss, metrics=metrics, run_eagerly=True)
    batch = tf.data.Dataset.from_tensors(example).map(task.model_inputs(model)).batch(1)
    logs = model.fit(batch, epochs=1, verbose=0).history
    assert {"loss", "patches_loss", "nuclei_loss", "patches_masked_accuracy", "nuclei_inst_accuracy"} <= set(logs)
    # Without L_inst (the ablation) the model has one output and the targets are the grid tokens alone.
    plain = MaskedImageModel(**TINY, target="tokens", vocab_size=120, max_nuclei=5, inst_loss=False,
                             min_mask_patches=4)
    x, y = task.model_inputs(plain)(example)
    assert "boxes" in x and y.shape == (16, 2) and isinstance(task.build_loss("auto", plain), MaskedTokenLoss)
    with pytest.raises(ValueError, match="needs a 'boxes' field"):
        task.model_inputs(model)({k: v for k, v in example.items() if k not in ("boxes", "classes")})


@pytest.mark.slow
def test_tokenizer_to_mim_with_l_inst_to_linear_probe_through_the_cli(tmp_path):
    """The paper's path on 4 synthetic 32 px tiles: a tiny tokenizer run (experiments/nuclei_tokenizer.yaml) gives
    the token targets of MIM with nucleus tokens and L_inst; `medtf evaluate` reports both losses and accuracies
    (their sum is the logged val_loss); a linear probe starts from the MIM run."""
    import csv
    import json

    from medtf.synth.nuclei_he import generate_nuclei_he
    from tests.conftest import TEST_SALT, run_medtf
    from tests.tasks.test_nucleus_classification import REPO

    generate_nuclei_he(tmp_path / "src", cases=4, seed=3, tile_size=32, consep_images=0)
    shards = tmp_path / "shards"
    assert run_medtf("convert", "nuclei-he", "--input", tmp_path / "src" / "pannuke", "--output", shards,
                     "--id-salt", TEST_SALT, "--split", "0.5,0.5,0", "--quiet") == 0
    common = ["--set", f"data.dir={shards}", "--set", "train.epochs=1", "--set", "data.batch_size=2", "--set",
              "data.transforms=[]", "--set", "data.patch_size=null", "--set", "data.val_patch_size=null", "--set",
              "+train.log_every_n_steps=0", "--set", "+train.hparams=false", "--quiet"]
    tok = tmp_path / "tok"
    assert run_medtf("train", REPO / "experiments/nuclei_tokenizer.yaml", "--run-dir", tok, *common, "--set",
                     "train.steps_per_epoch=null", "--set", "model.args.num_codes=16", "--set", "model.args.width=8",
                     "--set", "model.args.embedding_dim=4") == 0
    vit = ["--set", "model.args.image_size=32", "--set", "model.args.num_layers=1", "--set",
           "model.args.position_embedding=xywh", "--set", "+train.image_panels=false"]
    mim = tmp_path / "mim"
    assert run_medtf("train", REPO / "experiments/nuclei_mim_pretrain.yaml", "--run-dir", mim, *common, *vit,
                     "--set", "model.args.target=tokens", "--set", "+model.args.vocab_size=16", "--set",
                     "model.args.min_mask_patches=4", "--set", "+model.args.max_nuclei=16", "--set",
                     f"+targets={{tokenizer: {tok}, cache: true}}") == 0
    row = list(csv.DictReader(open(mim / "history.csv")))[0]
    assert {"patches_masked_accuracy", "nuclei_inst_accuracy", "val_nuclei_loss", "val_patches_loss"} <= set(row)
    assert run_medtf("evaluate", mim, "--split", "val", "--quiet") == 0
    metrics = json.loads((mim / "eval-val" / "summary.json").read_text())["metrics"]
    assert metrics["inst_nuclei"] > 0 and 0 <= metrics["inst_accuracy"] <= 1
    assert metrics["loss"] + metrics["inst_loss"] == pytest.approx(float(row["val_loss"]), rel=1e-4)
    assert metrics["inst_loss"] == pytest.approx(float(row["val_nuclei_loss"]), rel=1e-4)
    probe = tmp_path / "probe"
    assert run_medtf("train", REPO / "experiments/nuclei_linear_probe.yaml", "--run-dir", probe, *common, *vit,
                     "--set", "model.args.max_nuclei=16", "--set", f"model.init_from={mim}") == 0
    assert run_medtf("evaluate", probe, "--split", "val", "--quiet") == 0
