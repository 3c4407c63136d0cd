"""A 2-task multi-worker SLURM job survives preemption: both workers stop at one step, requeue, resume, agree.

``scancel --signal=USR1 --batch`` signals the job script (as ``#SBATCH --signal=B:USR1@...`` does before the time
limit); its trap forwards USR1 to srun, which forwards it to both ``medtf train`` workers. Their
PreemptionCallbacks combine the flag in an all-reduce, so both stop after the same batch; the chief saves the
BackupAndRestore state, the script runs ``scontrol requeue``, and the next start resumes both workers from it.
"""

from __future__ import annotations

import csv
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.hpc.conftest import scontrol_job, slurm_log, submit, tiny_config, wait_for_job


def rows(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


# Slow tier (`make test-slow`): two SLURM job starts of two TensorFlow workers each, over a minute on 2 cores. The
# same trap / requeue partial runs in make test through tests/hpc/test_tune_preemption.py (batch-shell).
@pytest.mark.slow
def test_two_workers_preempted_requeue_and_resume_together(slurm, lgg_tiny, cpu_cluster_config, hpc_root, capsys):
    import keras

    import medtf.models  # noqa: F401  (registers the model classes for load_model)

    epochs = 5
    # 20 steps per epoch: an epoch lasts a few seconds on two CPU workers, long enough to signal one mid-run.
    config = tiny_config(lgg_tiny, epochs=epochs, steps_per_epoch=20, keep_worker_outputs=True,
                         log_every_n_steps=0, image_panels=False)
    config_path = hpc_root / "multiworker_preempt.yaml"
    config_path.write_text(yaml.safe_dump(config))
    run_dir = hpc_root / "runs" / "multiworker_preempt"
    chief_csv, worker_csv = run_dir / "history.csv", run_dir / "workers" / "worker-1" / "history.csv"
    job_id = submit(capsys, config_path, "--nodes", "1", "--tasks-per-node", "2", "--gpus-per-node", "0",
                    "--time", "00:10:00", "--run-dir", run_dir, "--cluster-config", cpu_cluster_config)

    end = time.monotonic() + 120
    while time.monotonic() < end:  # signal once the first epoch is logged by both workers and backed up
        if rows(chief_csv) and rows(worker_csv) and (run_dir / "backup" / "training_metadata.json").exists():
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"no epoch logged in time: {slurm_log(scontrol_job(job_id))[-6000:]}")
    done_before = len(rows(chief_csv))
    assert done_before < epochs, "the run finished before it could be preempted: make the epochs longer"
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], env=slurm.env, check=True)

    job = wait_for_job(job_id, timeout=180, states={"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})
    log = slurm_log(job)
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1" and job["NumTasks"] == "2", log[-6000:]
    assert log.count(f"medtf-slurm: job {job_id} start") == 2 and "requeueing job" in log, log[-6000:]
    first_start, second_start = log.split(f"medtf-slurm: job {job_id} start 2")

    # Both workers stopped after the same batch of the same epoch (else one would hang in the next all-reduce).
    stops = re.findall(r"medtf: preempted at epoch (\d+) batch (\d+)", first_start)
    assert len(stops) == 2 and stops[0] == stops[1], first_start[-6000:]
    stopped_epoch = int(stops[0][0]) - 1  # 0-based
    assert done_before <= stopped_epoch < epochs, (done_before, stops)

    # Both workers resumed at the interrupted epoch (the backup's) and ran exactly the epochs left.
    starts = re.findall(r"^Epoch (\d+)/(\d+)$", second_start, flags=re.M)
    assert len(starts) == 2 * (epochs - stopped_epoch), second_start[-6000:]
    assert sorted(int(e) for e, _ in starts)[:2] == [stopped_epoch + 1] * 2, starts
    assert len(re.findall(r"^20/20 - .* loss: ", second_start, flags=re.M)) == 2 * (epochs - stopped_epoch)

    # The chief's history.csv lists every epoch once; worker 1's (rewritten by its second start) the resumed
    # ones, with the same all-reduced metrics.
    chief, other = rows(chief_csv), rows(worker_csv)
    assert [int(r["epoch"]) for r in chief] == list(range(epochs)), chief
    assert [int(r["epoch"]) for r in other] == list(range(stopped_epoch, epochs)), other
    assert chief[stopped_epoch:] == other
    assert not (run_dir / "backup").exists()  # the chief removes it once training finishes

    # Identical final weights on both workers.
    a = keras.saving.load_model(run_dir / "checkpoints" / "last.keras", compile=False)
    b = keras.saving.load_model(run_dir / "workers" / "worker-1" / "checkpoints" / "last.keras", compile=False)
    assert [v.path for v in a.weights] == [v.path for v in b.weights] and len(a.weights) > 10
    different = [v.path for v, w in zip(a.weights, b.weights) if not np.array_equal(np.asarray(v), np.asarray(w))]
    assert different == [], different
