"""A run directory works from anywhere: config.yaml stores data.dir absolute; when the shards moved, `medtf
evaluate` names the path it looked at and suggests --data-dir, which then works."""

from __future__ import annotations

import json
import shutil

import yaml

from tests.conftest import run_medtf
from tests.training.conftest import tiny_config


def test_run_dir_moves_and_data_moves(lgg_tiny, tmp_path, monkeypatch, capsys):
    work = tmp_path / "project"
    shutil.copytree(lgg_tiny, work / "data" / "lgg")
    config = tiny_config(lgg_tiny, epochs=1, steps_per_epoch=1, image_panels=False, log_every_n_steps=0,
                         hparams=False)
    config["data"]["dir"] = "data/lgg"  # relative to where training runs, as in the shipped experiments
    (work / "exp.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(work)
    assert run_medtf("train", "exp.yaml", "--run-dir", "runs/a") == 0
    saved = yaml.safe_load((work / "runs" / "a" / "config.yaml").read_text())
    assert saved["data"]["dir"] == str(work / "data" / "lgg")  # absolute
    assert run_medtf("check", work / "runs" / "a" / "config.yaml") == 0  # `medtf train` accepts it again

    # The run directory copied elsewhere, evaluated from a third folder.
    shutil.copytree(work / "runs" / "a", tmp_path / "archive" / "a")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    assert run_medtf("evaluate", tmp_path / "archive" / "a", "--split", "test") == 0
    summary = json.loads((tmp_path / "archive" / "a" / "eval-test" / "summary.json").read_text())
    assert summary["n_cases"] == 1 and summary["data_dir"] == str(work / "data" / "lgg")

    # The shards moved: one line naming where it looked and what to do, then --data-dir works.
    shutil.move(work / "data" / "lgg", tmp_path / "moved")
    capsys.readouterr()
    assert run_medtf("evaluate", tmp_path / "archive" / "a", "--split", "test") == 2
    err = capsys.readouterr().err.strip()
    assert str(work / "data" / "lgg") in err and "pass --data-dir DIR" in err and "\n" not in err, err
    assert run_medtf("evaluate", tmp_path / "archive" / "a", "--split", "test", "--data-dir",
                     tmp_path / "moved", "--output", tmp_path / "eval2") == 0
    assert json.loads((tmp_path / "eval2" / "summary.json").read_text())["data_dir"] == str(tmp_path / "moved")
