"""User mistakes through the real `medtf` entry point: one line on stderr naming what is wrong, exit code 2 (no
traceback unless --debug); `medtf check` validates an experiment without training."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_medtf
from tests.training.conftest import tiny_config

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
BRACHY = EXPERIMENTS / "brachy_unet3d.yaml"


def _edited(tmp_path: Path, old: str, new: str) -> Path:
    """The shipped brachy experiment with one line's text replaced (a typo as a user would make it)."""
    text = BRACHY.read_text()
    assert old in text
    path = tmp_path / "typo.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


# (command line, text the one stderr line must contain); "{typo:OLD>NEW}" is the brachy file with OLD -> NEW.
MISTAKES = [
    (["check", BRACHY, "--set", "train.epochs=one"], "medtf check: train.epochs: expected an integer, got 'one'"),
    (["train", BRACHY, "--set", "train.epochs=one", "--run-dir", "{tmp}/r"],
     "medtf train: train.epochs: expected an integer, got 'one'"),
    (["check", "{typo:name: unet3d>name: unet3D}"], "model.name: unknown model 'unet3D' (did you mean unet3d?)"),
    (["check", "{typo:name: dice_focal>name: dice_focall}"],
     "loss.name: unknown loss 'dice_focall' (did you mean dice_focal?)"),
    (["check", "{typo:optimizer:>optimiser:}"], "optimiser: unknown key (did you mean optimizer?)"),
    (["train", "{typo:  learning_rate:>  learning_rat:}", "--run-dir", "{tmp}/r"],
     "optimizer.learning_rat: unknown key (did you mean learning_rate?)"),
    (["check", BRACHY, "--set", "train.epoch=1"], "unknown key 'train.epoch' (did you mean epochs?)"),
    (["check", BRACHY, "--set", "+model.args.base_filter=8"],
     "model.args.base_filter: not an argument of model unet3d (did you mean base_filters?)"),
    (["check", BRACHY, "--set", "data.transforms=[{name: random_flp}]"],
     "data.transforms[0].name: unknown transform 'random_flp' (did you mean random_flip?)"),
    (["check", BRACHY, "--set", "data.transforms=[{name: random_flip, axis: [0]}]"],
     "data.transforms[0].axis: not an argument of transform random_flip (did you mean axes?)"),
    (["check", BRACHY, "--set", "schedule.name=cosin"],
     "schedule.name: unknown schedule 'cosin' (did you mean cosine?)"),
    (["check", BRACHY, "--set", "train.strategy=mirored"],
     "train.strategy: unknown strategy 'mirored' (did you mean mirrored?)"),
    (["check", "{tmp}/missing.yaml"], "missing.yaml: config file not found"),
    (["evaluate", "{tmp}/no-run"], "no config.yaml"),
    (["convert", "lgg-mri", "--input", "{tmp}/file.nii.gz", "--output", "{tmp}/out"],
     "file.nii.gz: is a file, not a folder"),
]


def _args(argv, tmp_path: Path) -> list[str]:
    out = []
    for arg in map(str, argv):
        if arg.startswith("{typo:"):
            old, new = arg[len("{typo:"):-1].split(">")
            arg = str(_edited(tmp_path, old, new))
        out.append(arg.replace("{tmp}", str(tmp_path)))
    return out


@pytest.mark.parametrize("argv, message", MISTAKES, ids=[" ".join(map(str, a[:1] + a[2:]))[:60] for a, _ in MISTAKES])
def test_a_mistake_is_one_line_and_exit_2(argv, message, tmp_path, capsys, caplog):
    (tmp_path / "file.nii.gz").write_bytes(b"\x1f\x8b")  # a file where a folder is expected
    assert run_medtf(*_args(argv, tmp_path)) == 2
    # `medtf convert` reports through logging (ERROR medtf.convert: ...), the others print
    err = capsys.readouterr().err.strip() or "\n".join(r.getMessage() for r in caplog.records)
    assert message in err and "\n" not in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()  # nothing ran


def test_check_accepts_the_shipped_experiments_and_adapts_an_impossible_warmup(capsys):
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        assert run_medtf("check", path) == 0
        assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"{path}: OK: model ")
    # brachy: cosine with a 1-epoch warm-up; a one-step run used to fail "need 0 <= warmup_steps (1) < total_steps"
    assert run_medtf("check", BRACHY, "--set", "train.epochs=1", "--set", "train.steps_per_epoch=1") == 0
    out = capsys.readouterr().out
    assert "warm-up shortened to 0 step(s)" in out and "schedule cosine (warm-up 0 steps), 1 epochs x 1 steps" in out


def test_a_one_step_run_with_a_cosine_warmup_trains(lgg_tiny, tmp_path, capsys):
    config = tiny_config(lgg_tiny, epochs=1, steps_per_epoch=1, image_panels=False, log_every_n_steps=0)
    config["schedule"] = {"name": "cosine", "warmup_epochs": 1, "min_lr": 0.0}
    path = tmp_path / "one_step.yaml"
    path.write_text(yaml.safe_dump(config))
    assert run_medtf("train", path, "--run-dir", tmp_path / "run") == 0
    assert "warm-up shortened to 0 step(s)" in capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoints" / "last.keras").is_file()


def test_slurm_status_help_does_not_call_scontrol(tmp_path, monkeypatch, capsys):
    # An scontrol first on PATH that records any call: `--help` must never reach it as a job id.
    marker = tmp_path / "called"
    fake = tmp_path / "bin" / "scontrol"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {marker}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    assert run_medtf("slurm", "status", "--help") == 0
    assert "usage: medtf slurm status JOBID" in capsys.readouterr().out and not marker.exists()


def test_console_script_exit_codes_and_debug(tmp_path):
    """The installed command: exit 2 and one line; --debug (anywhere) gives the traceback instead."""
    medtf = [sys.executable, "-m", "medtf.cli.main"]
    plain = subprocess.run([*medtf, "check", str(BRACHY), "--set", "train.epochs=one"], capture_output=True,
                           text=True)
    assert plain.returncode == 2, plain.stderr
    assert plain.stderr.strip() == "medtf check: train.epochs: expected an integer, got 'one'"
    debug = subprocess.run([*medtf, "check", str(BRACHY), "--set", "train.epochs=one", "--debug"],
                           capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().endswith("ConfigError: train.epochs: expected an integer, got 'one'")
