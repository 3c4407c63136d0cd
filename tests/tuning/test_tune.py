"""A real local search (`medtf tune`) on tiny lgg shards: trials, results.csv, best.yaml, HParams, continuation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_medtf
from tests.tuning.conftest import tune_config


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def _hparams_sessions(folder: Path) -> dict[str, dict]:
    """trial id -> {hyperparameter: value} read back from the TensorBoard event files."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import plugin_data_pb2

    sessions = {}
    for run in sorted(p for p in folder.iterdir() if p.is_dir()):
        for event_file in run.glob("events.out.tfevents.*"):
            for event in tf.compat.v1.train.summary_iterator(str(event_file)):
                for value in event.summary.value:
                    if value.tag == "_hparams_/session_start_info":
                        data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                        info = data.session_start_info
                        sessions[run.name] = {k: (v.number_value if v.HasField("number_value") else v.string_value)
                                              for k, v in info.hparams.items()}
    return sessions


def test_random_search_results_best_yaml_and_continue(lgg_tiny, tmp_path):
    from medtf.training.config import load_config

    config = tune_config(lgg_tiny, objective={"name": "val_loss", "direction": "min"})
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    tune_dir = tmp_path / "tune"
    assert run_medtf("tune", path, "--tune-dir", tune_dir, "--quiet") == 0

    rows = _rows(tune_dir / "results.csv")
    assert [r["trial_id"] for r in rows] == ["0", "1", "2"]
    assert [r["status"] for r in rows] == ["COMPLETED"] * 3
    combos = {(r["model.args.base_filters"], r["optimizer.learning_rate"]) for r in rows}
    assert len(combos) == 3
    for row in rows:
        lr = float(row["optimizer.learning_rate"])
        assert 1e-4 <= lr <= 1e-1 and row["model.args.base_filters"] in ("2", "4", "8")
        run_dir = tune_dir / row["run_dir"]
        # the trial is a normal run of the base config with the trial's values
        ran = load_config(run_dir / "config.yaml")
        assert "tune" not in ran
        assert ran["optimizer"]["learning_rate"] == pytest.approx(lr, rel=1e-9)
        assert ran["model"]["args"]["base_filters"] == int(row["model.args.base_filters"])
        history = _history(run_dir)
        assert len(history) == 1
        assert float(row["val_loss"]) == pytest.approx(min(float(h["val_loss"]) for h in history), rel=1e-6)
        assert row["tuner_id"] == "tuner0" and row["executions"] == "1" and float(row["seconds"]) > 0
        assert (run_dir / "checkpoints" / "best.keras").is_file()

    best = min(rows, key=lambda r: (float(r["val_loss"]), r["trial_id"]))
    best_config = load_config(tune_dir / "best.yaml")
    assert "tune" not in best_config
    assert best_config["optimizer"]["learning_rate"] == pytest.approx(float(best["optimizer.learning_rate"]))
    assert best_config["model"]["args"]["base_filters"] == int(best["model.args.base_filters"])
    # resolved: what the experiment gave, plus every default
    for name in ("data", "loss"):
        assert best_config[name] == {**best_config[name], **config[name]}

    sessions = _hparams_sessions(tune_dir / "hparams")
    assert sorted(sessions) == ["0", "1", "2"]
    for row in rows:
        assert sessions[row["trial_id"]]["optimizer.learning_rate"] == pytest.approx(
            float(row["optimizer.learning_rate"]))
        assert sessions[row["trial_id"]]["model.args.base_filters"] == float(row["model.args.base_filters"])

    # best.yaml is a ready-to-run experiment
    assert run_medtf("train", tune_dir / "best.yaml", "--run-dir", tmp_path / "best_run") == 0
    assert len(_history(tmp_path / "best_run")) == 1

    # re-running continues: nothing is trained again, the same table comes out
    stamps = {r["trial_id"]: (tune_dir / r["run_dir"] / "history.csv").stat().st_mtime_ns for r in rows}
    assert run_medtf("tune", path, "--tune-dir", tune_dir, "--quiet") == 0
    assert _rows(tune_dir / "results.csv") == rows
    assert {r["trial_id"]: (tune_dir / r["run_dir"] / "history.csv").stat().st_mtime_ns for r in rows} == stamps

    # a larger budget adds trials on top of the finished ones
    assert run_medtf("tune", path, "--tune-dir", tune_dir, "--quiet", "--set", "tune.max_trials=4") == 0
    more = _rows(tune_dir / "results.csv")
    assert [r["trial_id"] for r in more] == ["0", "1", "2", "3"] and more[:3] == rows
    assert more[3]["status"] == "COMPLETED"
    assert len({(r["model.args.base_filters"], r["optimizer.learning_rate"]) for r in more}) == 4
    for row in more:
        lines = (tune_dir / row["run_dir"] / "tuner_runs.jsonl").read_text().splitlines()
        assert [json.loads(line)["trial_id"] for line in lines] == [row["trial_id"]]  # each trial ran once


def test_changed_space_in_the_same_tune_dir_is_refused(lgg_tiny, tmp_path):
    from medtf.tuning.tuner import _check_same_search

    config = tune_config(lgg_tiny)
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(config))
    _check_same_search(config, tmp_path)  # the same search: fine
    changed = tune_config(lgg_tiny, space={"model.args.base_filters": [2, 4]})
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(changed))
    assert run_medtf("tune", path, "--tune-dir", tmp_path) == 2


def test_hyperband_trials_get_the_round_epochs():
    import keras_tuner

    from medtf.tuning import build_oracle, tune_settings
    from medtf.tuning.tuner import trial_config

    base = {"data": {"dir": "shards", "batch_size": 2}, "loss": {"name": "dice_focal"},
            "train": {"epochs": 9, "monitor": "val_dice", "mode": "max"},
            "model": {"name": "unet2d_small", "args": {"base_filters": 4}}}
    settings = tune_settings({**base, "tune": {"tuner": "hyperband", "factor": 3, "seed": 1,
                                               "space": {"model.args.base_filters": [2, 4, 8, 16]}}})
    oracle = build_oracle(settings)
    assert isinstance(oracle, keras_tuner.oracles.HyperbandOracle) and oracle.max_epochs == 9
    epochs = []
    for i in range(4):
        response = oracle.populate_space(f"{i:04d}")
        hp = oracle.hyperparameters.copy()
        hp.values = response["values"]
        config = trial_config(base, hp)
        assert config["train"]["epochs"] == hp.values["tuner/epochs"]
        assert config["model"]["args"]["base_filters"] in (2, 4, 8, 16)
        assert not any(k.startswith("tuner/") for k in config["train"])
        epochs.append(config["train"]["epochs"])
    assert epochs == [1, 1, 1, 1]  # the most aggressive bracket starts with 9 trials of 9 / 3**2 epochs


def test_best_epoch_picks_the_best_finite_value():
    from medtf.tuning.tuner import best_epoch

    assert best_epoch([0.2, 0.5, 0.5, float("nan")], "max") == 1
    assert best_epoch([0.2, 0.1, float("nan"), 0.1], "min") == 1
    assert best_epoch([float("nan")], "max") is None


# Slow tier: the oracle's rounds are checked in test_hyperband_trials_get_the_round_epochs; this search trains
# every trial of two rounds.
@pytest.mark.slow
def test_hyperband_search_continues_the_best_trials_with_more_epochs(lgg_tiny, tmp_path):
    config = tune_config(lgg_tiny, tuner="hyperband", max_epochs=2, factor=2,
                         objective={"name": "val_loss", "direction": "min"})
    del config["tune"]["max_trials"]
    path = tmp_path / "hyperband.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert run_medtf("tune", path, "--tune-dir", tmp_path / "tune", "--quiet") == 0
    rows = _rows(tmp_path / "tune" / "results.csv")
    assert len(rows) >= 3 and all(r["status"] == "COMPLETED" for r in rows)
    by_id = {r["trial_id"]: r for r in rows}
    continued = [r for r in rows if r["continues"]]
    assert continued  # successive halving promoted at least one configuration
    for row in rows:
        epochs = 2 if row["continues"] or row["epochs"] == "2" else 1
        assert int(row["epochs"]) == epochs == len(_history(tmp_path / "tune" / row["run_dir"]))
        assert load_cfg(tmp_path / "tune" / row["run_dir"])["train"]["epochs"] == epochs
    for row in continued:
        parent = by_id[row["continues"]]
        assert int(row["epochs"]) == 2 and int(parent["epochs"]) == 1
        assert (row["model.args.base_filters"], row["optimizer.learning_rate"]) == \
            (parent["model.args.base_filters"], parent["optimizer.learning_rate"])
    best = min(rows, key=lambda r: (float(r["val_loss"]), r["trial_id"]))
    assert yaml.safe_load((tmp_path / "tune" / "best.yaml").read_text())["train"]["epochs"] == int(best["epochs"])


def load_cfg(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def test_bayesian_oracle_is_built_from_the_settings():
    from medtf.tuning import build_oracle, tune_settings

    config = {"data": {"dir": "shards", "batch_size": 2}, "model": {"name": "unet2d_small"},
              "loss": {"name": "dice_focal"},
              "train": {"monitor": "val_dice", "mode": "max"}, "optimizer": {"learning_rate": 1e-3},
              "tune": {"tuner": "bayesian", "max_trials": 6, "num_initial_points": 2, "beta": 3.0,
                       "space": {"optimizer.learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2,
                                                             "sampling": "log"}}}}
    oracle = build_oracle(tune_settings(config))
    assert type(oracle).__name__ == "BayesianOptimizationOracle"
    assert (oracle.max_trials, oracle.num_initial_points, oracle.beta) == (6, 2, 3.0)


# Slow tier: four more trials; the search loop runs in make test with the random tuner and the Bayesian oracle's
# settings are checked without training.
@pytest.mark.slow
def test_bayesian_search_runs_past_its_random_start(lgg_tiny, tmp_path):
    """2 random initial points, then a trial proposed by the Gaussian process (scikit-learn, pinned)."""
    config = tune_config(lgg_tiny, tuner="bayesian", num_initial_points=2)
    del config["tune"]["max_trials"]
    config["tune"]["max_trials"] = 3
    path = tmp_path / "bayes.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert run_medtf("tune", path, "--tune-dir", tmp_path / "tune", "--quiet") == 0
    rows = _rows(tmp_path / "tune" / "results.csv")
    assert [r["status"] for r in rows] == ["COMPLETED"] * 3
    assert len({(r["model.args.base_filters"], r["optimizer.learning_rate"]) for r in rows}) == 3


def test_failed_trials_are_reported_and_stop_the_search(lgg_tiny, tmp_path, capsys):
    # An unknown name is refused before the search starts (every value of the space is checked) ...
    config = tune_config(lgg_tiny, space={"loss.name": ["dice_focal", "no_such_loss"]})
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    capsys.readouterr()
    assert run_medtf("tune", path, "--tune-dir", tmp_path / "typo", "--quiet") == 2
    assert "tune.space.loss.name = 'no_such_loss': loss.name: unknown loss" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()
    # ... values only the model's constructor rejects fail their trials, which the search records.
    config = tune_config(lgg_tiny, max_consecutive_failed_trials=2,
                         space={"+model.args.norm": ["no_such_norm", "nor_this_one"],
                                "model.args.base_filters": [2, 4]})
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert run_medtf("tune", path, "--tune-dir", tmp_path / "tune", "--quiet") == 1
    rows = _rows(tmp_path / "tune" / "results.csv")
    assert [r["status"] for r in rows] == ["FAILED", "FAILED"]
    assert [r["val_dice"] for r in rows] == ["", ""]
    assert all(r["error"].startswith("ValueError: norm must be one of") for r in rows)
    assert all(r["model.args.norm"] in ("no_such_norm", "nor_this_one") for r in rows)
    assert not (tmp_path / "tune" / "best.yaml").exists()
    oracle = json.loads((tmp_path / "tune" / "oracle" / "oracle.json").read_text())
    assert oracle["ongoing_trials"] == {} and oracle["end_order"] == ["0", "1"]


def test_an_objective_that_is_not_a_metric_stops_with_the_metric_names(lgg_tiny, tmp_path, capsys):
    config = tune_config(lgg_tiny, objective={"name": "val_dise", "direction": "max"})
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    capsys.readouterr()
    assert run_medtf("tune", path, "--tune-dir", tmp_path / "tune", "--quiet") == 1
    err = capsys.readouterr().err
    assert "tune.objective 'val_dise' is not a metric of the run" in err and "val_dice" in err
    assert len(list((tmp_path / "tune" / "trials").iterdir())) == 1  # stopped after the first trial


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_chief_stops_every_worker_after_too_many_failures(lgg_tiny, tmp_path):
    """keras-tuner's KERASTUNER_* mechanism without SLURM: a chief and two workers on this machine."""
    import os
    import subprocess
    import sys

    config = tune_config(lgg_tiny, max_trials=6, max_consecutive_failed_trials=2,
                         space={"+model.args.norm": ["no_such_norm", "nor_this_one", "nor_that_one"],
                                "model.args.base_filters": [2, 4]})
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    medtf = str(Path(sys.executable).parent / "medtf")
    env = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(_free_port()),
           "MEDTF_TUNE_WORKERS": "2", "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2",
           "MEDTF_ORACLE_TOKEN": "t" * 64}
    command = [medtf, "tune", str(path), "--tune-dir", str(tmp_path / "tune"), "--quiet"]
    procs = {tid: subprocess.Popen(command, env={**env, "KERASTUNER_TUNER_ID": tid}, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
             for tid in ("chief", "tuner0", "tuner1")}
    try:
        out = {tid: p.communicate(timeout=90)[0] for tid, p in procs.items()}
    finally:
        for p in procs.values():  # a hung process must not outlive the test
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = {tid: p.returncode for tid, p in procs.items()}
    assert codes == {"chief": 1, "tuner0": 0, "tuner1": 0}, out
    assert "search stopped" in out["chief"] and "consecutive failures" in out["chief"]
    assert "worker tuner0 done" in out["tuner0"] and "worker tuner1 done" in out["tuner1"]
    rows = _rows(tmp_path / "tune" / "results.csv")
    assert 2 <= len(rows) <= 3 and all(r["status"] == "FAILED" for r in rows)  # 2, plus one a worker had started
    assert {r["tuner_id"] for r in rows} <= {"tuner0", "tuner1", ""}
    assert not (tmp_path / "tune" / "best.yaml").exists()
    oracle = json.loads((tmp_path / "tune" / "oracle" / "oracle.json").read_text())
    assert oracle["ongoing_trials"] == {} and sorted(oracle["end_order"]) == [r["trial_id"] for r in rows]
