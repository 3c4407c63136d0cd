"""Model roulette: the argmax of the recorded validation scores is kept, the test split is refused, work is split
across tasks and continues after a kill, and `medtf train --init-from` starts from the winner's weights."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.conftest import run_medtf

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = REPO / "experiments/lgg_classifier2d.yaml"


def _tiny(lgg_tiny):
    return ["--set", f"data.dir={lgg_tiny}", "--set", "data.batch_size=4", "--set", "model.args.depth=2",
            "--set", "model.args.base_filters=4"]


def test_roulette_keeps_the_argmax_of_its_scores_and_train_starts_from_it(lgg_tiny, tmp_path):
    out = tmp_path / "roulette"
    # Two tasks (as a SLURM array would run them), then the merge.
    for index in (1, 0):
        assert run_medtf("roulette", EXPERIMENT, *_tiny(lgg_tiny), "--candidates", 4, "--out", out,
                         "--metric", "val_loss", "--num-tasks", 2, "--task-index", index, "--quiet") == 0
    assert sorted(p.name for p in (out / "candidates").glob("*.json")) == [f"seed-{s}.json" for s in range(4)]
    assert run_medtf("roulette", EXPERIMENT, *_tiny(lgg_tiny), "--candidates", 4, "--out", out, "--merge",
                     "--quiet") == 0
    summary = json.loads((out / "roulette.json").read_text())
    scores = [s["score"] for s in summary["scores"]]
    assert summary["metric"] == "loss" and summary["mode"] == "min" and summary["split"] == "val"
    assert len(set(scores)) == 4                       # the seeds give different initialisations
    assert summary["best"]["seed"] == int(np.argmin(scores))
    assert sorted(p.name for p in (out / "candidates").glob("*.keras")) == [f"seed-{summary['best']['seed']}.keras"]

    # The kept weights reproduce the recorded score on the validation split.
    from medtf.tasks import get_task
    from medtf.training.experiment import load_experiment
    from medtf.training.inputs import build_datasets

    experiment = load_experiment(EXPERIMENT, [a for a in _tiny(lgg_tiny) if a != "--set"])
    best = keras.saving.load_model(out / "best.keras", compile=False)
    task = get_task("classification")
    task.compile(best, keras.optimizers.Adam())
    _, val = build_datasets(experiment.data, None, seed=0, model_inputs=task.model_inputs(best))
    assert best.evaluate(val, return_dict=True, verbose=0)["loss"] == pytest.approx(summary["best"]["score"],
                                                                                      rel=1e-5)

    # `medtf train --init-from` starts there: an epoch of zero learning rate keeps the winner's weights.
    run = tmp_path / "run"
    assert run_medtf("train", EXPERIMENT, *_tiny(lgg_tiny), "--set", "train.epochs=1",
                     "--set", "+train.steps_per_epoch=1", "--set", "optimizer.learning_rate=1e-12",
                     "--set", "data.transforms=[]", "--init-from", out / "best.keras", "--run-dir", run,
                     "--quiet") == 0
    trained = keras.saving.load_model(run / "checkpoints" / "last.keras", compile=False)
    conv = [w for w in trained.weights if "conv" in w.path and "kernel" in w.path][0]
    start = [w for w in best.weights if w.path == conv.path][0]
    np.testing.assert_allclose(np.asarray(conv), np.asarray(start), atol=1e-6)


def test_roulette_refuses_a_test_split_and_reports_missing_candidates(lgg_tiny, tmp_path, capsys):
    assert run_medtf("roulette", EXPERIMENT, *_tiny(lgg_tiny), "--set", "+data.val_split=test", "--candidates", 2,
                     "--out", tmp_path / "r") == 2
    assert "refuses to score on 'test'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert run_medtf("roulette", EXPERIMENT, *_tiny(lgg_tiny), "--candidates", 2, "--out", tmp_path / "r2",
                     "--merge") == 2
    assert "2 of 2 candidates are not scored yet" in capsys.readouterr().err
