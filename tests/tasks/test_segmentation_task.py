"""The segmentation task: per-class Dice without background, deep supervision, any volume size, config by name."""

from __future__ import annotations

import numpy as np
import pytest

from tests.training.conftest import tiny_config


def _softmax_one_percent():
    """2-class one-hot truth with 1% foreground (40 of 4000 voxels) and an all-background prediction."""
    truth = np.zeros((1, 10, 20, 20), np.int64)
    truth[0, 0, 0, :] = 1
    truth[0, 0, 1, :] = 1
    one_hot = np.eye(2, dtype=np.float32)[truth]
    background = np.zeros_like(one_hot)
    background[..., 0] = 0.9
    background[..., 1] = 0.1
    return one_hot, background


def test_per_class_dice_excludes_background_on_softmax():
    from medtf.metrics import DiceScore, PerClassScore

    truth, all_background = _softmax_one_percent()
    assert truth[..., 1].mean() == pytest.approx(0.01)
    pooled = DiceScore()
    pooled.update_state(truth, all_background)
    assert float(pooled.result()) == pytest.approx(0.99 / 1.0, abs=0.006)  # the defect: background pooled in
    per_class = PerClassScore(2, name="dice")
    per_class.update_state(truth, all_background)
    assert float(per_class.result()) == pytest.approx(0.0, abs=1e-7)
    # A perfect prediction scores 1; half the foreground found: Dice 2*20/(40+20) = 2/3.
    per_class.reset_state()
    per_class.update_state(truth, truth)
    assert float(per_class.result()) == pytest.approx(1.0)
    half = truth.copy()
    half[0, 0, 1, :] = [1.0, 0.0]
    per_class.reset_state()
    per_class.update_state(truth, half)
    assert float(per_class.result()) == pytest.approx(2 / 3, rel=1e-6)
    with pytest.raises(ValueError):
        PerClassScore(1)


def test_segmentation_task_metrics_follow_the_head():
    from medtf.metrics import DiceScore, PerClassScore
    from medtf.models import UNet
    from medtf.tasks import get_task

    task = get_task("segmentation")
    sigmoid = UNet(spatial_dims=2, in_channels=1, num_classes=1, depth=2, base_filters=2)
    softmax = UNet(spatial_dims=2, in_channels=1, num_classes=3, depth=2, base_filters=2, final_activation="softmax")
    assert isinstance(task.default_metrics(sigmoid)[0], DiceScore)
    dice = task.default_metrics(softmax)[0]
    assert isinstance(dice, PerClassScore) and dice.name == "dice" and not dice.include_background
    assert task.default_loss(softmax).include_background is False
    # Softmax targets are one-hot labels.
    x, y = task.model_inputs(softmax)({"image": np.zeros((4, 4, 1), np.float32),
                                       "mask": np.array([0, 1, 2, 1] * 4, np.uint8).reshape(4, 4, 1)})
    assert y.shape == (4, 4, 3) and np.asarray(y)[0, :, 1].tolist() == [0, 1, 0, 1]


def test_deep_supervision_weights_and_targets():
    from medtf.models import UNet
    from medtf.tasks import get_task
    from medtf.tasks.segmentation import deep_supervision_weights, output_scales

    np.testing.assert_allclose(deep_supervision_weights(2), [2 / 3, 1 / 3])
    np.testing.assert_allclose(deep_supervision_weights(4), [1 / 1.75, 0.5 / 1.75, 0.25 / 1.75, 0.0])
    model = UNet(spatial_dims=3, in_channels=1, num_classes=1, depth=4, base_filters=2, deep_supervision=True)
    assert output_scales(model) == [1, 2, 4]
    mask = (np.arange(9 * 10 * 11).reshape(9, 10, 11, 1) % 3 == 0).astype(np.uint8)
    _, targets = get_task("segmentation").model_inputs(model)({"image": np.zeros((9, 10, 11, 1), np.float32),
                                                                 "mask": mask})
    assert [t.shape for t in targets] == [(9, 10, 11, 1), (5, 5, 6, 1), (3, 3, 3, 1)]
    np.testing.assert_array_equal(np.asarray(targets[2]), mask[::4, ::4, ::4])
    heads = model(np.zeros((1, 9, 10, 11, 1), np.float32))
    assert [tuple(h.shape[1:4]) for h in heads] == [t.shape[:3] for t in targets]


def test_whole_volume_validation_of_odd_sizes():
    """Defect 2: a depth-4 U-Net validates whole 37x61x83 volumes during fit (it crashed in the concatenation);
    the padding is cropped away, so val_dice is the Dice of the prediction on the volume's own voxels."""
    import keras

    from medtf.models import UNet
    from medtf.tasks import get_task

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = UNet(spatial_dims=3, in_channels=1, num_classes=1, depth=4, base_filters=2, norm="instance")
    task = get_task("segmentation")
    task.compile(model, keras.optimizers.Adam(1e-3), loss="dice_ce")
    x = rng.normal(size=(2, 16, 16, 16, 1)).astype(np.float32)
    vx = rng.normal(size=(1, 37, 61, 83, 1)).astype(np.float32)
    vy = (vx > 0.5).astype(np.float32)
    history = model.fit(x, (x > 0.5).astype(np.float32), validation_data=(vx, vy), epochs=1, verbose=0)
    prediction = model.predict(vx, verbose=0)
    assert prediction.shape == vx.shape
    p, t = prediction >= 0.5, vy >= 0.5
    expected = 2 * (p & t).sum() / (p.sum() + t.sum())
    assert history.history["val_dice"][0] == pytest.approx(expected, rel=1e-5)


def test_engine_trains_softmax_and_deep_supervision(lgg_tiny, tmp_path):
    """Through `train`: a 2-class softmax logs per-class Dice; a deep-supervision U-Net trains one weighted loss
    per head on downsampled masks and checkpoints on val_output_dice (the task's monitor for several heads)."""
    from medtf.training.engine import train
    from medtf.training.experiment import parse_config

    softmax = tiny_config(lgg_tiny, epochs=1, log_every_n_steps=1)
    softmax["model"]["args"].update(num_classes=2, final_activation="softmax")
    softmax["loss"] = {"name": "auto"}
    result = train(softmax, tmp_path / "softmax")
    assert 0.0 <= result["history"]["val_dice"][0] <= 1.0
    assert result["model"].metrics[-1].name == "compile_metrics"

    ds = tiny_config(lgg_tiny, epochs=1, image_panels=True)
    ds["model"]["args"].update(depth=3, deep_supervision=True)
    del ds["train"]["monitor"], ds["train"]["mode"]
    experiment = parse_config(ds)
    assert (experiment.train.monitor, experiment.train.mode) == ("val_output_dice", "max")
    result = train(experiment, tmp_path / "ds")
    h = result["history"]
    assert {"output_loss", "output_aux1_loss", "val_output_dice"} <= set(h)
    # loss = 2/3 main + 1/3 aux (nnU-Net weights for two heads), up to the running-mean bookkeeping.
    assert h["val_loss"][0] == pytest.approx(2 / 3 * h["val_output_loss"][0] + 1 / 3 * h["val_output_aux1_loss"][0],
                                             rel=1e-4)
    assert (tmp_path / "ds" / "checkpoints" / "best.keras").is_file()


def test_config_task_optimizer_and_keras_loss_by_name(lgg_tiny):
    from medtf.training.config import ConfigError
    from medtf.training.engine import build_optimizer
    from medtf.training.experiment import parse_config

    raw = tiny_config(lgg_tiny)
    with pytest.raises(ConfigError, match=r"task: unknown task 'segmentaton' \(did you mean segmentation\?\)"):
        parse_config({**raw, "task": "segmentaton"})
    parsed = parse_config({**raw, "task": "classification", "train": {"epochs": 1},
                           "loss": {"name": "binary_crossentropy", "args": {"label_smoothing": 0.1}},
                           "optimizer": {"name": "sgd", "learning_rate": 0.01, "weight_decay": None,
                                         "args": {"momentum": 0.9}}})
    assert (parsed.train.monitor, parsed.train.mode) == ("val_auc", "max")
    assert parse_config(raw).task == "segmentation" and parse_config(raw).train.monitor == "val_dice"
    sgd = build_optimizer(parsed.optimizer)
    assert type(sgd).__name__ == "SGD" and sgd.momentum == 0.9
    with pytest.raises(ConfigError, match="optimizer.args.momentun: not an argument"):
        parse_config({**raw, "optimizer": {"name": "sgd", "args": {"momentun": 0.9}}})
    with pytest.raises(ConfigError, match="optimizer.name: unknown optimizer 'adamx'"):
        parse_config({**raw, "optimizer": {"name": "adamx"}})
