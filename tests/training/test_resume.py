"""A `medtf train` killed with SIGKILL resumes from its backup: same run dir, same command, history continued."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import sigkill_when
from tests.training.conftest import history_rows, tiny_config

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 8


def _backup_epoch(run_dir: Path) -> int:
    from medtf.training.callbacks import backup_epoch

    return backup_epoch(run_dir / "backup")


def test_killed_run_resumes_at_the_next_epoch(lgg_tiny, tmp_path):
    config = tiny_config(lgg_tiny, epochs=EPOCHS, steps_per_epoch=25, image_panels=False, log_every_n_steps=0)
    config_path = tmp_path / "exp.yaml"
    config_path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "medtf.cli.main", "train", str(config_path), "--run-dir", str(run_dir)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}

    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # Two epochs finished, logged and backed up.
    sigkill_when(first, lambda: _backup_epoch(run_dir) >= 2, 180, "no backup of epoch 2",
                 lambda: first.stdout.read().decode())
    assert first.returncode == -signal.SIGKILL
    resume_at = _backup_epoch(run_dir)
    rows_at_kill = len(history_rows(run_dir))
    assert resume_at == 2 and rows_at_kill in (2, 3)  # a third row may be written but not yet backed up

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    out = second.stdout + second.stderr
    assert f"Epoch 3/{EPOCHS}" in out and f"Epoch 1/{EPOCHS}" not in out and f"Epoch 2/{EPOCHS}" not in out
    rows = history_rows(run_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))  # continued, nothing repeated or lost
    assert [round(float(r["learning_rate"]), 9) for r in rows] == [1e-3] * EPOCHS
    assert not (run_dir / "backup").exists() and (run_dir / "checkpoints" / "last.keras").is_file()
