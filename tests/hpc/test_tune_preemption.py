"""A `medtf slurm --tune` search preempted mid-trial (USR1 to the batch shell) requeues once and finishes its budget:
the interrupted trials resume from their backups under their own ids, nothing runs twice, best.yaml is written."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import history_epochs
from tests.hpc.conftest import scontrol_job, slurm_log, submitted_id, tiny_config, wait_for_job

REPO = Path(__file__).resolve().parents[2]
EPOCHS, TRIALS = 4, 3


# The batch-shell path is what `slurm/tune.sbatch` gets from `--signal=B:USR1@S`: default tier. Signalling only the
# workers is the rarer path and costs another minute of SLURM time: slow tier (`make test-slow`).
@pytest.mark.parametrize("scancel", [["--batch"], pytest.param([], marks=pytest.mark.slow)],
                         ids=["batch-shell", "workers-only"])
def test_preempted_search_requeues_and_finishes_its_budget(scancel, slurm, lgg_tiny, cpu_cluster_config, hpc_root):
    """``--batch``: USR1 to the batch shell, as SLURM's ``--signal=B:USR1@S`` does (the trap forwards it); without
    it, scancel signals only the job steps (the workers): the shell then tells the chief once they are gone."""
    from medtf.training.config import load_config

    # ~60 steps of ~17 ms: epochs of about a second, long enough to signal a trial mid-run.
    config = tiny_config(lgg_tiny, epochs=EPOCHS, steps_per_epoch=60, validation_steps=1, log_every_n_steps=0,
                         image_panels=False, verbose=0)
    config["tune"] = {"tuner": "random", "max_trials": TRIALS, "seed": 0,
                      "objective": {"name": "val_loss", "direction": "min"},
                      "space": {"optimizer.learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2,
                                                            "sampling": "log"},
                                "model.args.base_filters": [2, 4, 8]}}
    name = "tune-preempt" + "".join(scancel)
    path = hpc_root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    tune_dir = hpc_root / "runs" / name
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "medtf"), "slurm", str(path), "--tune", "--workers", "2",
                           "--gpus-per-node", "0", "--time", "00:10:00", "--run-dir", str(tune_dir),
                           "--cluster-config", str(cpu_cluster_config), "--submit"],
                          cwd=REPO, env=slurm.env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    job_id = submitted_id(proc.stdout)

    end = time.monotonic() + 150
    while time.monotonic() < end:  # signal once a trial has logged and backed up an epoch (and is still running)
        running = [d for d in (tune_dir / "trials").glob("*") if 1 <= len(history_epochs(d)) < EPOCHS - 1
                   and (d / "backup" / "training_metadata.json").exists()]
        if running:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"no trial epoch logged in time: {slurm_log(scontrol_job(job_id))}")
    subprocess.run(["scancel", "--signal=USR1", *scancel, job_id], env=slurm.env, check=True)
    job = wait_for_job(job_id, timeout=240, states={"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})
    log = slurm_log(job)
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0" and job["Restarts"] == "1", log
    assert log.count(f"medtf-slurm: job {job_id} start") == 2 and "requeueing job" in log, log
    first_start = log.split(f"medtf-slurm: job {job_id} start 2")[0]
    assert "chief preempted: oracle saved" in first_start and "tuning finished (exit 0)" in log, log
    assert ("medtf-slurm: USR1 at" in first_start) == bool(scancel), log

    # the trials stopped by the signal (each one at most once: a trial id and a 1-based epoch)
    stopped = {Path(m.group(3)).parent.name: int(m.group(1)) - 1 for m in
               re.finditer(r"medtf: preempted at epoch (\d+) batch (\d+): backup saved in (\S+)", first_start)}
    assert stopped and set(stopped) <= {str(i) for i in range(TRIALS)}, first_start
    assert any(epoch >= 1 for epoch in stopped.values()), stopped

    with open(tune_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial_id"] for r in rows] == [str(i) for i in range(TRIALS)], rows  # the budget, no extra trial
    assert [r["status"] for r in rows] == ["COMPLETED"] * TRIALS
    for row in rows:
        run_dir = tune_dir / row["run_dir"]
        assert history_epochs(run_dir) == list(range(EPOCHS)), (row["trial_id"], history_epochs(run_dir))  # each epoch once
        runs = [json.loads(line) for line in (run_dir / "tuner_runs.jsonl").read_text().splitlines()]
        assert len(runs) == 1 and runs[0]["epochs"] == EPOCHS, (row["trial_id"], runs)  # finished exactly once
        # a preempted trial resumed in its own directory from the epoch its backup saved; the others from scratch
        assert runs[0]["initial_epoch"] == stopped.get(row["trial_id"], 0), (row["trial_id"], runs, stopped)
        assert not (run_dir / "backup").exists()

    oracle = json.loads((tune_dir / "oracle" / "oracle.json").read_text())
    assert sorted(oracle["start_order"]) == sorted(oracle["end_order"]) == [str(i) for i in range(TRIALS)]
    assert oracle["ongoing_trials"] == {} and oracle["retry_queue"] == []
    assert oracle["run_times"] == {str(i): 1 for i in range(TRIALS)}
    best = min(rows, key=lambda r: (float(r["val_loss"]), r["trial_id"]))
    assert load_config(tune_dir / "best.yaml")["model"]["args"]["base_filters"] == \
        int(best["model.args.base_filters"])
