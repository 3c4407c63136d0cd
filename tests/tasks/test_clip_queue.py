"""ClipQueueLoss (medtf.tasks.clip_queue): a MoCo-style memory queue of past embeddings as extra CLIP negatives.

Loss vs a NumPy reference (plain and label-aware, learned scale), FIFO order and wrap-around, validation neither using
nor filling the queue, the queue saved with the run's backup and restored on resume, config plumbing
(loss.args.queue_size), 2 replicas (MirroredStrategy on 2 logical CPUs, a subprocess) equal to one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from medtf.tasks.clip_queue import QUEUE_FILE, ClipQueueLoss, QueueSwitch
from medtf.tasks.contrastive import ClipLoss
from tests.reports.conftest import reports_source  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _batch(rng, b, e, scale=None):
    image, text = _unit(rng.normal(size=(b, e))), _unit(rng.normal(size=(b, e)))
    parts = [image, text] + ([np.full((b, 1), scale)] if scale is not None else [])
    return image, text, np.concatenate(parts, axis=1).astype(np.float32)


def _fill(loss, image, text, labels, pointer=None):
    k = loss.queue_size
    qi, qt, ql = np.zeros((k, loss.embed_dim), "float32"), np.zeros((k, loss.embed_dim), "float32"), \
        np.full((k,), -1.0, "float32")
    n = len(image)
    qi[:n], qt[:n], ql[:n] = image, text, labels
    loss.queue_image.assign(qi), loss.queue_text.assign(qt), loss.queue_label.assign(ql)
    loss.size.assign(n), loss.pointer.assign(n % k if pointer is None else pointer)


def _log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _reference(image, text, labels, q_image, q_text, q_labels, scale, label_aware):
    """Per-example loss: the own pair (or the batch's same-class pairs) as target over batch + queue; queued
    same-class entries dropped from the softmax when label-aware."""
    b = len(image)
    out = np.zeros(b)
    for rows, batch, queued in ((image, text, q_text), (text, image, q_image)):
        for i in range(b):
            keep = [j for j in range(len(queued)) if not (label_aware and labels[i] >= 0 and q_labels[j] == labels[i])]
            logits = scale * np.concatenate([batch @ rows[i], queued[keep] @ rows[i]])[None]
            targets = np.zeros(logits.shape[1])
            same = [j for j in range(b) if j == i or (label_aware and labels[i] >= 0 and labels[j] == labels[i])]
            targets[same] = 1.0 / len(same)
            out[i] += -0.5 * (targets * _log_softmax(logits)[0]).sum()
    return out


@pytest.mark.parametrize("label_aware", [False, True])
def test_queue_loss_equals_numpy_reference(label_aware):
    rng = np.random.default_rng(0)
    image, text, y_pred = _batch(rng, 4, 3, scale=7.5)  # the learned-scale column rides along
    labels = np.array([0.0, 1.0, 0.0, -1.0], "float32")
    q_image, q_text = _unit(rng.normal(size=(3, 3))), _unit(rng.normal(size=(3, 3)))
    q_labels = np.array([1.0, 0.0, 2.0], "float32")
    loss = ClipQueueLoss(queue_size=5, embed_dim=3, label_aware=label_aware, reduction=None)
    _fill(loss, q_image, q_text, q_labels)  # 3 of 5 slots filled: the empty two are not negatives
    loss.active.assign(1.0)
    got = np.asarray(loss(labels[:, None], y_pred))
    want = _reference(image, text, labels, q_image, q_text, q_labels, 7.5, label_aware)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # The queue is a real change: the in-batch loss differs.
    plain = np.asarray(ClipLoss(label_aware=label_aware, reduction=None)(labels[:, None], y_pred))
    assert np.abs(plain - got).max() > 1e-2
    if label_aware:  # image 0 (class 0) vs queue slot 1 (class 0): masked; without masking the value differs
        unmasked = _reference(image, text, labels, q_image, q_text, np.full(3, 9.0), 7.5, True)
        assert abs(unmasked[0] - got[0]) > 1e-3


def test_inactive_queue_is_plain_clip_and_not_filled():
    rng = np.random.default_rng(1)
    _, _, y_pred = _batch(rng, 3, 4)
    loss = ClipQueueLoss(queue_size=4, embed_dim=4, temperature=0.1, reduction=None)
    _fill(loss, _unit(rng.normal(size=(2, 4))), _unit(rng.normal(size=(2, 4))), np.zeros(2))
    before = keras.ops.convert_to_numpy(loss.queue_text).copy()
    y = np.full((3, 1), -1.0, "float32")
    np.testing.assert_allclose(np.asarray(loss(y, y_pred)),
                               np.asarray(ClipLoss(temperature=0.1, reduction=None)(y, y_pred)), rtol=1e-6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loss.queue_text), before)
    assert int(loss.size.numpy()) == 2 and int(loss.pointer.numpy()) == 2


def test_fifo_order_and_wrap_around():
    k, e = 5, 2
    loss = ClipQueueLoss(queue_size=k, embed_dim=e, reduction=None)
    loss.active.assign(1.0)
    rng = np.random.default_rng(2)
    ring_i, ring_t, ring_l, pointer, size = np.zeros((k, e)), np.zeros((k, e)), np.full(k, -1.0), 0, 0
    for step, n in enumerate([2, 2, 2, 1, 7, 3]):  # wraps at the third batch; 7 > K keeps the newest 5
        image, text, y_pred = _batch(rng, n, e)
        labels = np.arange(n, dtype="float32") + 10 * step
        loss(labels[:, None], y_pred)
        for row in range(n):  # the reference ring: one row at a time
            ring_i[pointer], ring_t[pointer], ring_l[pointer] = image[row], text[row], labels[row]
            pointer, size = (pointer + 1) % k, min(size + 1, k)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(loss.queue_image), ring_i, atol=1e-6)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(loss.queue_text), ring_t, atol=1e-6)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(loss.queue_label), ring_l)
        assert (int(loss.pointer.numpy()), int(loss.size.numpy())) == (pointer, size), step
    # After 2+2+2+1 = 7 rows the oldest slot (the pointer) held row 0 of batch 1 before the 7-row batch.
    assert pointer == (2 + 2 + 2 + 1 + 7 + 3) % k


def test_config_round_trip_and_bad_arguments():
    loss = ClipQueueLoss(queue_size=8, embed_dim=4, temperature=0.05, label_aware=True)
    again = ClipQueueLoss.from_config(loss.get_config())
    assert (again.queue_size, again.embed_dim, again.temperature, again.label_aware) == (8, 4, 0.05, True)
    with pytest.raises(ValueError, match="queue_size"):
        ClipQueueLoss(queue_size=0, embed_dim=4)
    with pytest.raises(ValueError, match="4-d"):  # a loss built for another model
        ClipQueueLoss(queue_size=2, embed_dim=3)(np.zeros((2, 1), "float32"), np.zeros((2, 8), "float32"))


def test_loss_args_queue_size_through_the_task():
    from medtf.tasks import get_task
    from medtf.training.config import ConfigError
    from medtf.training.experiment import parse_config

    raw = {"task": "contrastive", "data": {"dir": "/tmp/none", "kind": "mri-reports", "batch_size": 2},
           "model": {"name": "clip_unet3d_small", "args": {"embed_dim": 16}},
           "loss": {"name": "auto", "args": {"queue_size": 16}}}
    experiment = parse_config(raw)
    task = get_task("contrastive")
    model = type("M", (), {"embed_dim": 16, "temperature": 0.1, "label_aware": True})()  # what default_loss reads
    loss = task.build_loss(experiment.loss.as_dict(), model)
    assert isinstance(loss, ClipQueueLoss) and (loss.queue_size, loss.embed_dim, loss.label_aware) == (16, 16, True)
    assert type(task.build_loss({"name": "auto", "args": {}}, model)) is ClipLoss
    with pytest.raises(ConfigError, match="loss.args.queue_sise"):
        parse_config({**raw, "loss": {"name": "auto", "args": {"queue_sise": 16}}})
    with pytest.raises(ConfigError, match="loss.args.queue_size"):  # segmentation's default loss takes none
        parse_config({**raw, "task": "segmentation", "model": {"name": "unet2d_small"}})


def _embedder(e):
    """A tiny real model: (B, 4) -> (B, 2E) normalised halves."""
    x = keras.Input((4,))
    image = keras.layers.UnitNormalization()(keras.layers.Dense(e, name="image")(x))
    text = keras.layers.UnitNormalization()(keras.layers.Dense(e, name="text")(x))
    return keras.Model(x, keras.layers.Concatenate()([image, text]))


def test_fit_fills_the_queue_in_training_only_and_resume_restores_it(tmp_path):
    keras.utils.set_random_seed(0)
    e, k = 3, 6
    model = _embedder(e)
    loss = ClipQueueLoss(queue_size=k, embed_dim=e)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss)  # lr 0: the queued embeddings are predict's
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(8, 4)).astype("float32"), np.arange(8, dtype="float32")[:, None]
    xv = rng.normal(size=(4, 4)).astype("float32")
    switch = QueueSwitch(backup=tmp_path / "backup")
    model.fit(x, y, batch_size=2, epochs=1, shuffle=False, validation_data=(xv, y[:4]), callbacks=[switch],
              verbose=0)
    emb = model.predict(x, verbose=0)
    # 4 batches of 2 = 8 rows into 6 slots: rows 2..7, ring order (rows 6, 7 at slots 0, 1); validation added none.
    order = [6, 7, 2, 3, 4, 5]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss.queue_text), emb[order, e:], atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss.queue_image), emb[order, :e], atol=1e-5)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loss.queue_label), np.array(order, "float32"))
    assert (int(loss.pointer.numpy()), int(loss.size.numpy())) == (2, 6) and float(loss.active.numpy()) == 0.0
    assert (tmp_path / "backup" / QUEUE_FILE).is_file()
    # A resumed run: a fresh loss gets the saved queue back.
    fresh = ClipQueueLoss(queue_size=k, embed_dim=e)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=fresh)
    restore = QueueSwitch(backup=tmp_path / "backup")
    restore.set_model(model)
    restore.on_train_begin()
    for name, variable in loss.state_variables.items():
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(fresh.state_variables[name]),
                                      keras.ops.convert_to_numpy(variable), err_msg=name)
    wrong = ClipQueueLoss(queue_size=k + 1, embed_dim=e)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=wrong)
    restore.set_model(model)
    with pytest.raises(ValueError, match="queue_size or embed_dim changed"):
        restore.on_train_begin()


def test_two_replicas_equal_one_device():
    """MirroredStrategy on 2 logical CPUs (a subprocess: the devices are set before TensorFlow starts)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("_clip_queue_replicas_check.py"))],
                          cwd=REPO, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert result["replicas"] == 2
    assert result["single_pointer_size"] == [(3 + 4 + 4) % 6, 6]  # both steps enqueued their 4 global rows
    for key in ("loss", "queue_text", "queue_image", "queue_label", "pointer_size"):
        np.testing.assert_allclose(result[f"mirrored_{key}"], result[f"single_{key}"], rtol=1e-5, atol=1e-6,
                                   err_msg=key)
    assert abs(result["plain_loss"] - result["single_loss"][0]) > 1e-3  # the queued negatives count
    # fit + QueueSwitch: both steps' 4 global rows queued (8 into 6 slots), validation none, same as one device.
    assert result["fit_single"]["pointer_size"] == [8 % 6, 6]
    assert result["fit_single"]["queue_label"] == [6.0, 7.0, 2.0, 3.0, 4.0, 5.0]
    for key in ("queue_text", "queue_image", "queue_label", "pointer_size"):
        np.testing.assert_allclose(result["fit_mirrored"][key], result["fit_single"][key], rtol=1e-5, atol=1e-6,
                                   err_msg=f"fit {key}")


@pytest.mark.slow  # ~30 s on the shared 2-core box (convert + build + one epoch)
def test_train_with_queue_end_to_end(reports_source, tmp_path):  # noqa: F811
    """The ONE engine run: loss.args.queue_size through `train`; the task's QueueSwitch fills the queue from the
    training batches (3 steps x 2 = 6 pairs into 4 slots: full, pointer at 2), neither validation nor GradientStats'
    fixed-batch gradients (step 0) add any; finite
    losses; the backup (and the queue saved in it) is removed when the run completes."""
    from medtf.training.config import load_config
    from medtf.training.engine import train

    from tests.reports.conftest import convert_reports

    shards = tmp_path / "shards"
    assert convert_reports(reports_source, shards) == 0
    config = load_config(REPO / "experiments/reports_clip3d.yaml",
                         [f"data.dir={shards}", "train.epochs=1", "data.batch_size=2",
                          "+loss.args={queue_size: 4}", "+train.verbose=0"])
    result = train(config, tmp_path / "run")
    (loss,) = [result["model"].loss]
    assert isinstance(loss, ClipQueueLoss) and loss.queue_size == 4
    assert (int(loss.pointer.numpy()), int(loss.size.numpy())) == (6 % 4, 4)
    assert float(loss.active.numpy()) == 0.0
    assert np.isfinite(result["history"]["loss"]).all() and np.isfinite(result["history"]["val_loss"]).all()
    queued = keras.ops.convert_to_numpy(loss.queue_text)
    np.testing.assert_allclose(np.linalg.norm(queued, axis=1), 1.0, rtol=1e-5)  # real (unit) embeddings
    assert not (tmp_path / "run" / "backup").exists()
