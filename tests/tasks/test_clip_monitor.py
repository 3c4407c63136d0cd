"""Whole-split retrieval figures logged each epoch (medtf.tasks.clip_monitor, train.val_retrieval); the end-to-end
check against `medtf evaluate` is in tests/tasks/test_contrastive_task.py."""

import numpy as np
import pytest

from medtf.tasks.clip_monitor import split_retrieval_metrics
from medtf.training.experiment import ConfigError, parse_config


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_split_retrieval_metrics_by_hand():
    # Image 0 finds its report first; image 1's report is second (report 2 is nearer); image 2's is third.
    image = _unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    text = _unit([[0.9, 0, 0.3], [0, 0.5, 0.85], [0.6, 0.7, 0.1]])
    # similarity = image @ text.T; ranks of the own pair, image -> report and report -> image:
    s = image @ text.T
    i2t = [1 + int((s[i] > s[i, i]).sum()) for i in range(3)]
    t2i = [1 + int((s[:, j] > s[j, j]).sum()) for j in range(3)]
    assert i2t == [1, 2, 3]
    out = split_retrieval_metrics(image, text)
    assert out["val_retrieval_recall_at_1"] == pytest.approx(1 / 3)
    assert out["val_retrieval_recall_at_5"] == 1.0
    assert out["val_retrieval_mrr"] == pytest.approx(np.mean([1 / r for r in i2t + t2i]))
    assert "val_zero_shot_accuracy" not in out


def test_split_zero_shot_accuracy_relabels_to_prompt_order():
    image = _unit([[1, 0.1], [0.1, 1], [1, 0.2], [0.9, 0.1]])
    prompts = _unit([[0, 1], [1, 0]])  # prompt 0 is class 3, prompt 1 is class 1
    labels = np.array([1, 3, 1, 3])     # the last image looks like class 1: 3 of 4 right
    out = split_retrieval_metrics(image, image, labels, prompts, [3, 1], scale=10.0)
    assert out["val_zero_shot_accuracy"] == pytest.approx(0.75)
    unlabelled = split_retrieval_metrics(image, image, np.full(4, -1), prompts, [3, 1])
    assert "val_zero_shot_accuracy" not in unlabelled


def test_monitoring_split_figures_needs_the_contrastive_callback():
    raw = {"task": "contrastive", "data": {"dir": "d", "batch_size": 2},
           "model": {"name": "clip_unet3d_small"}, "train": {"monitor": "val_retrieval_mrr"}}
    experiment = parse_config(raw)
    assert experiment.train.mode == "max" and experiment.train.val_retrieval
    with pytest.raises(ConfigError, match="val_retrieval"):
        parse_config({**raw, "train": {"monitor": "val_retrieval_mrr", "val_retrieval": False}})
    with pytest.raises(ConfigError, match="val_split"):
        parse_config({**raw, "data": {"dir": "d", "batch_size": 2, "val_split": None}})
    with pytest.raises(ConfigError, match="task contrastive"):
        parse_config({**raw, "task": "segmentation", "model": {"name": "unet2d"},
                      "train": {"monitor": "val_zero_shot_accuracy"}})


def test_a_cross_validation_fold_is_scored_on_its_selection_fold(tmp_path):
    """With ``data.fold`` the validation split is the fold's selection fold (inner: the next one), not
    ``data.val_split``, and that is the split the per-epoch retrieval embeds."""
    import json

    from medtf.tasks import get_task

    splits = {f"fold-{k}": {"patients": [f"p{k}"], "examples": 1, "shards": []} for k in range(3)}
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "medtf-tfrecords", "kind": "mri-reports",
                                                      "splits": splits}))
    raw = {"task": "contrastive", "data": {"dir": str(tmp_path), "batch_size": 2, "fold": 0},
           "model": {"name": "clip_unet3d_small"}}
    task = get_task("contrastive").configure(parse_config(raw))
    assert task.split_retrieval.split == "fold-1" and task.split_retrieval.data_dir == str(tmp_path)
    off = get_task("contrastive").configure(parse_config({**raw, "train": {"val_retrieval": False}}))
    assert off.split_retrieval is None
