"""TensorBoard output of a run, read back from the event files: panels, histograms, gradient flow, HParams, LR."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from tests.training.conftest import tiny_config


def read_events(folder: Path) -> dict:
    """``{tag: [(step, plugin, value)]}`` of every event file directly in ``folder``."""
    import tensorflow as tf
    from tensorflow.python.summary.summary_iterator import summary_iterator

    tags = defaultdict(list)
    for path in sorted(folder.glob("events.out.tfevents*")):
        for event in summary_iterator(str(path)):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                if plugin == "images":
                    data = [tf.image.decode_png(png).numpy() for png in value.tensor.string_val[2:]]
                elif plugin == "scalars":
                    data = float(tf.make_ndarray(value.tensor))
                elif plugin == "histograms":
                    data = tf.make_ndarray(value.tensor)
                else:
                    data = value.metadata.plugin_data.content
                tags[value.tag].append((event.step, plugin, data))
    return tags


@pytest.fixture(scope="module")
def logged_run(lgg_tiny, tmp_path_factory):
    from medtf.training.engine import train

    run_dir = tmp_path_factory.mktemp("tb") / "run"
    result = train(tiny_config(lgg_tiny, epochs=2, steps_per_epoch=2, log_every_n_steps=2), run_dir)
    return run_dir, result


def test_validation_panels_are_logged_when_the_metric_improves(logged_run):
    run_dir, result = logged_run
    events = read_events(run_dir / "logs" / "images")["validation/panels"]
    dice = result["history"]["val_dice"]
    improved = [e for e in range(len(dice)) if dice[e] > max([-np.inf] + dice[:e])]
    assert [step for step, _, _ in events] == improved and improved[0] == 0
    for _, plugin, images in events:
        assert plugin == "images" and len(images) == 2  # two fixed validation examples
        assert all(img.shape == (32, 96, 3) and img.dtype == np.uint8 for img in images)
        mask_pane = images[0][:, 32:64]
        assert set(np.unique(mask_pane)) <= {0, 255}  # ground truth is binary


def test_histograms_and_gradient_flow(logged_run):
    run_dir, result = logged_run
    events = read_events(run_dir / "logs" / "gradients")
    variables = result["model"].trainable_variables
    for var in variables:
        assert [s for s, _, _ in events[f"weights/{var.path}"]] == [1, 2, 4], var.path
        assert events[f"gradients/{var.path}"][0][1] == "histograms"
    flow = events["gradient_flow"]
    assert [s for s, _, _ in flow] == [1, 2, 4]
    layers = {v.path.rsplit("/", 1)[0] for v in variables}
    image = flow[0][2][0]
    assert image.shape == (96, len(layers) * 10, 3)  # two 4-pixel bars + 2 pixels gap per layer
    norms = [v for _, _, v in events["gradients/global_norm"]]
    assert len(norms) == 3 and all(np.isfinite(norms)) and min(norms) > 0


def test_hparams_and_learning_rate_scalars(logged_run):
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir, result = logged_run
    events = read_events(run_dir / "logs")
    for tag in ("_hparams_/session_start_info", "_hparams_/experiment", "_hparams_/session_end_info"):
        assert events[tag] and events[tag][0][1] == "hparams", tag
    start = plugin_data_pb2.HParamsPluginData.FromString(events["_hparams_/session_start_info"][0][2])
    hparams = start.session_start_info.hparams
    assert hparams["train.epochs"].number_value == 2 and hparams["model.name"].string_value == "unet2d_small"
    assert hparams["train.log_every_n_steps"].number_value == 2 and "data.transforms" not in hparams
    experiment = plugin_data_pb2.HParamsPluginData.FromString(events["_hparams_/experiment"][0][2]).experiment
    assert "hparams/val_dice" in {m.name.tag for m in experiment.metric_infos}
    assert events["hparams/val_dice"][0][2] == pytest.approx(result["history"]["val_dice"][-1], rel=1e-6)
    lr = read_events(run_dir / "logs" / "train")["epoch_learning_rate"]
    assert [s for s, _, _ in lr] == [0, 1] and lr[0][2] == pytest.approx(1e-3)


def test_make_panel_picks_the_slice_with_most_foreground():
    from medtf.training.diagnostics import make_panel

    image = np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8, 1)
    mask = np.zeros((4, 8, 8, 1), np.float32)
    mask[1, :2, :2] = 1
    mask[2, :4, :4] = 1  # slice 2 has the most foreground
    prediction = np.full((4, 8, 8, 1), 0.25, np.float32)
    panel = make_panel(image, mask, prediction)
    assert panel.shape == (8, 24, 3) and panel.min() >= 0 and panel.max() <= 1
    np.testing.assert_allclose(panel[:, :8, 0], (image[2, ..., 0] - image[2].min()) / np.ptp(image[2]))
    np.testing.assert_array_equal(panel[:, 8:16, 1], mask[2, ..., 0])
    np.testing.assert_allclose(panel[:, 16:, 2], 0.25)
    # three classes: labels 0..2 shown as 0, 0.5, 1; prediction is the argmax
    labels = np.array([[[0], [1], [2]]], np.float32)
    scores = np.eye(3, dtype=np.float32)[[[2, 1, 0]]]
    panel = make_panel(np.zeros((1, 3, 1), np.float32), labels, scores)
    np.testing.assert_allclose(panel[0, 3:6, 0], [0, 0.5, 1])
    np.testing.assert_allclose(panel[0, 6:9, 0], [1, 0.5, 0])


def test_panels_of_different_sizes_are_padded_to_one_shape(tmp_path):
    import keras

    from medtf.models import get_model
    from medtf.training.diagnostics import ValidationPanels

    keras.utils.set_random_seed(0)
    model = get_model("unet2d_small", in_channels=3, base_filters=4, depth=2)
    rng = np.random.default_rng(0)
    examples = [(rng.uniform(size=(1, h, w, 3)).astype(np.float32), np.ones((1, h, w, 1), np.float32))
                for h, w in ((32, 32), (16, 24))]
    callback = ValidationPanels(tmp_path, examples, monitor="val_dice", mode="max", best=0.5)
    callback.set_model(model)
    callback.on_epoch_end(0, {"val_dice": 0.4})  # not better than the best after a resume: nothing logged
    callback.on_epoch_end(1, {"val_dice": 0.6})
    assert callback.logged_epochs == [1] and callback.best == 0.6
    _, _, images = read_events(tmp_path)["validation/panels"][0]
    assert [img.shape for img in images] == [(32, 96, 3), (32, 96, 3)]
    assert images[1][16:].max() == 0 and images[1][:16, 72:].max() == 0 and images[1][:16, 24:48].min() == 255
