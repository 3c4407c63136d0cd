"""A real 2-task SLURM job trains one model with MultiWorkerMirroredStrategy (SlurmClusterResolver, CPU only).

``medtf slurm --tasks-per-node 2`` renders slurm/train_multinode.sbatch: srun starts two ``medtf train`` workers,
which find each other through SlurmClusterResolver (medtf.hpc.workers) and train in lockstep. The config keeps
worker 1's checkpoints (``train.keep_worker_outputs``) so the test can compare both workers' final weights.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import yaml

from tests.conftest import run_medtf
from tests.hpc.conftest import slurm_log, submitted_id, tiny_config, wait_for_job


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def event_pids(folder: Path) -> set[int]:
    """Process ids in the TensorBoard event file names (``events.out.tfevents.<time>.<host>.<pid>.<n>.v2``)."""
    return {int(p.name.split(".")[-3]) for p in folder.glob("events.out.tfevents.*")}


def test_two_slurm_tasks_train_one_model(slurm, lgg_tiny, cpu_cluster_config, hpc_root, capsys):
    import keras

    import medtf.models  # noqa: F401  (registers the model classes for load_model)

    config = tiny_config(lgg_tiny, epochs=2, steps_per_epoch=2, keep_worker_outputs=True, log_every_n_steps=1)
    config["model"]["args"]["norm"] = "batch"  # moving statistics must agree too (synchronized across workers)
    config_path = hpc_root / "multiworker.yaml"
    config_path.write_text(yaml.safe_dump(config))
    run_dir = hpc_root / "runs" / "multiworker"
    capsys.readouterr()
    assert run_medtf("slurm", config_path, "--nodes", "1", "--tasks-per-node", "2", "--gpus-per-node", "0",
                     "--time", "00:10:00", "--run-dir", run_dir, "--cluster-config", cpu_cluster_config,
                     "--submit") == 0, capsys.readouterr().err
    job = wait_for_job(submitted_id(capsys.readouterr().out), timeout=300)
    log = slurm_log(job)
    assert job["JobState"] == "COMPLETED" and job["NumTasks"] == "2", log[-6000:]

    # Both tasks trained: the job script saw 2 workers, and each printed its 2 epochs (Keras verbose=2 lines).
    base = re.search(r"medtf-slurm: 2 workers on \S+, port base (\d+)", log)
    assert base and 20000 <= int(base.group(1)) < 40000, log[-3000:]
    assert len(re.findall(r"^2/2 - .* loss: ", log, flags=re.M)) == 4, log[-6000:]

    # The chief (task 0) wrote the run directory; worker 1 its own copy (kept on request) with the same history.
    chief, other = rows(run_dir / "history.csv"), rows(run_dir / "workers" / "worker-1" / "history.csv")
    assert [r["epoch"] for r in chief] == ["0", "1"] and all(math.isfinite(float(r["loss"])) for r in chief)
    assert chief == other  # metrics all-reduced over both workers
    for name in ("config.yaml", "checkpoints/best.keras", "checkpoints/last.keras"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "backup").exists()  # the chief removes it when training finishes
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["strategy"] == "multiworker"

    # Identical final weights on both workers, every variable (batch-norm moving statistics included).
    a = keras.saving.load_model(run_dir / "checkpoints" / "last.keras", compile=False)
    b = keras.saving.load_model(run_dir / "workers" / "worker-1" / "checkpoints" / "last.keras", compile=False)
    assert [v.path for v in a.weights] == [v.path for v in b.weights] and len(a.weights) > 10
    different = [v.path for v, w in zip(a.weights, b.weights) if not np.array_equal(np.asarray(v), np.asarray(w))]
    assert different == [], different
    assert any(np.abs(np.asarray(v)).max() > 0 for v in a.weights if v.path.endswith("moving_mean"))

    # TensorBoard: one process per run folder, the non-chief worker in its own subdirectory.
    logs = run_dir / "logs"
    chief_pids, other_pids = event_pids(logs / "train"), event_pids(logs / "worker-1" / "train")
    assert len(chief_pids) == len(other_pids) == 1 and chief_pids != other_pids
    assert event_pids(logs / "validation") == chief_pids and event_pids(logs / "worker-1" / "validation") == other_pids
    assert not (logs / "worker-0").exists()
