"""MultiWorkerMirroredStrategy across two real processes (TF_CONFIG on 127.0.0.1): one training, identical weights.

The SLURM version (srun, SlurmClusterResolver) is tests/hpc/test_multiworker_job.py; this one needs no scheduler.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.training.conftest import history_rows, tiny_config

REPO = Path(__file__).resolve().parents[2]

WORKER_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from medtf.training.engine import train
    from medtf.training.strategy import num_workers, worker_info

    config, run_dir, weights = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    result = train(config, run_dir)
    model, strategy = result["model"], result["strategy"]
    np.savez(weights, **{f"{i}:{v.path.replace('/', '.')}": np.asarray(v) for i, v in enumerate(model.weights)})
    print("RESULT " + json.dumps({"chief": worker_info(strategy)[2], "workers": num_workers(strategy),
                                  "replicas": strategy.num_replicas_in_sync, "loss": result["history"]["loss"],
                                  "val_loss": result["history"]["val_loss"],
                                  "steps": int(model.optimizer.iterations.numpy())}))
""")


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now (held together while chosen, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_two_workers(config: dict, run_dir: Path, scratch: Path, timeout: float = 150.0) -> list[tuple]:
    """Start worker 0 and 1 of one TF_CONFIG cluster; ``[(pid, result dict, weights path)]`` per worker."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "TF_CONFIG"}
    procs = []
    for index in range(2):
        env = {**base, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
               "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
               "TMPDIR": str(scratch)}
        weights = run_dir.parent / f"weights-{index}.npz"
        proc = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, json.dumps(config), str(run_dir), str(weights)],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append((proc, weights))
    outputs = []
    try:
        for proc, weights in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err[-4000:]
            outputs.append((proc.pid, json.loads(out.split("RESULT ", 1)[1].splitlines()[0]), weights))
    finally:
        for proc, _ in procs:  # a worker left waiting on a collective after the other failed
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outputs


def event_pids(folder: Path) -> set[int]:
    """Process ids in the TensorBoard event file names (``events.out.tfevents.<time>.<host>.<pid>.<n>.v2``)."""
    return {int(p.name.split(".")[-3]) for p in folder.glob("events.out.tfevents.*")}


@pytest.mark.slow  # two local TF workers (~24 s); the real 2-task SLURM job in make test checks the same weights
def test_two_workers_train_one_model(lgg_tiny, tmp_path):
    config = tiny_config(lgg_tiny, epochs=2, steps_per_epoch=2, strategy="multiworker", verbose=0,
                         log_every_n_steps=1)
    config["model"]["args"]["norm"] = "batch"  # moving statistics: the variables that drift apart unsynchronized
    run_dir, scratch = tmp_path / "run", tmp_path / "scratch"
    scratch.mkdir()
    (chief_pid, chief, chief_weights), (other_pid, other, other_weights) = run_two_workers(config, run_dir, scratch)

    assert chief["chief"] and not other["chief"]
    assert chief["workers"] == other["workers"] == 2 and chief["replicas"] == other["replicas"] == 2
    assert chief["steps"] == other["steps"] == 4  # 2 epochs x 2 steps, in lockstep
    assert len(chief["loss"]) == 2 and all(math.isfinite(v) for v in chief["loss"] + chief["val_loss"])
    assert chief["loss"] == other["loss"] and chief["val_loss"] == other["val_loss"]  # all-reduced metrics

    # Every variable is bitwise the same on both workers, batch-norm moving statistics included (synchronized).
    a, b = np.load(chief_weights), np.load(other_weights)
    assert len(a.files) == len(b.files) > 10
    different = [name for name in a.files if not np.array_equal(a[name], b[name])]
    assert different == [], different
    moving = [name for name in a.files if name.endswith("moving_mean")]
    assert moving and all(np.abs(a[name]).max() > 0 for name in moving)  # updated from 0 by the 4 steps

    # The chief alone writes the run directory; worker 1 has its own TensorBoard run and no files elsewhere.
    assert [r["epoch"] for r in history_rows(run_dir)] == ["0", "1"]
    assert float(history_rows(run_dir)[-1]["loss"]) == chief["loss"][-1]
    for name in ("config.yaml", "checkpoints/best.keras", "checkpoints/last.keras"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "backup").exists() and not (run_dir / "workers").exists()
    logs = run_dir / "logs"
    assert event_pids(logs / "train") == event_pids(logs / "validation") == {chief_pid}
    assert event_pids(logs / "gradients") == {chief_pid}
    assert event_pids(logs / "worker-1" / "train") == event_pids(logs / "worker-1" / "validation") == {other_pid}
    assert sorted(p.name for p in logs.iterdir() if p.is_dir()) == ["gradients", "images", "train", "validation",
                                                                     "worker-1"]
    assert list(scratch.iterdir()) == []  # worker 1's throw-away checkpoints are removed
