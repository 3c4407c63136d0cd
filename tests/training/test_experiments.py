"""Every shipped experiment config loads, names real components, and builds its model."""

from __future__ import annotations

from pathlib import Path

import pytest

EXPERIMENTS = sorted((Path(__file__).resolve().parents[2] / "experiments").glob("*.yaml"))


def test_the_shipped_experiments_are_found():
    assert {p.name for p in EXPERIMENTS} >= {"brachy_unet3d.yaml", "lgg_unet2d.yaml", "lgg_attention_unet2d.yaml",
                                            "lgg_unet2d_tune.yaml"}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_loads_and_builds(path):
    import numpy as np

    import keras

    from medtf.tasks import get_task
    from medtf.training.config import load_config
    from medtf.training.engine import build_model
    from medtf.training.experiment import parse_config
    from medtf.tuning import tune_settings

    from medtf.models.text.vocab import RESERVED_TOKENS
    from medtf.tasks.text_prep import needs_text_tower

    config = load_config(path)
    experiment = parse_config(config)  # every key, type, name and argument checked
    args = config["model"].setdefault("args", {})
    if needs_text_tower(config["model"]["name"], args):  # medtf train learns it from the training reports
        args["text"] = {**(args.get("text") or {}), "vocabulary": [*RESERVED_TOKENS, "left", "right"]}
    model = build_model(config["model"])
    task = get_task(experiment.task)
    loss = task.build_loss(config["loss"], model)  # one per output for multi-output models (None: no loss)
    losses = [v for v in loss.values() if v is not None] if isinstance(loss, dict) else [loss]
    assert losses and all(isinstance(v, keras.losses.Loss) for v in losses), loss
    if experiment.task != "segmentation":  # the task tests (tests/tasks) run these end to end
        return
    args = config["model"]["args"]
    spatial = [16] * (3 if "3d" in config["model"]["name"] else 2)
    x = np.zeros((1, *spatial, args["in_channels"]), "float32")
    assert model(x).shape == (1, *spatial, args["num_classes"])
    if "tune" in config:
        settings = tune_settings(config)  # validates tuner, objective and every space entry
        assert settings.specs and settings.objective == config["train"]["monitor"]
