"""Distribution strategies: names, cluster resolver choice, chief/worker paths, a real 2-replica fit."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from tests.training.conftest import history_rows, tiny_config

REPO = Path(__file__).resolve().parents[2]


def test_cluster_resolver_follows_slurm_environment():
    from medtf.training.strategy import cluster_resolver_kind

    assert cluster_resolver_kind({"SLURM_JOB_ID": "12", "SLURM_NTASKS": "4"}) == "slurm"
    assert cluster_resolver_kind({"SLURM_JOB_ID": "12", "SLURM_NTASKS": "1"}) == "tf_config"
    assert cluster_resolver_kind({"SLURM_NTASKS": "4"}) == "tf_config"
    assert cluster_resolver_kind({"TF_CONFIG": "{}"}) == "tf_config"


def test_make_strategy_names():
    import tensorflow as tf

    from medtf.training.strategy import make_strategy

    assert make_strategy("auto").num_replicas_in_sync == 1  # no GPUs here: the default strategy
    one = make_strategy("one_device")
    assert isinstance(one, tf.distribute.OneDeviceStrategy) and one.num_replicas_in_sync == 1
    with pytest.raises(ValueError, match="unknown train.strategy 'horovod'"):
        make_strategy("horovod")


def test_only_the_chief_writes_the_run_dir(tmp_path):
    import tensorflow as tf

    from medtf.training.strategy import run_paths, worker_info

    cluster = tf.train.ClusterSpec({"worker": ["a:1", "b:2", "c:3"]})
    worker = lambda i: types.SimpleNamespace(  # noqa: E731  (what a multi-worker strategy exposes)
        cluster_resolver=tf.distribute.cluster_resolver.SimpleClusterResolver(cluster, task_type="worker", task_id=i))
    assert worker_info(worker(0)) == ("worker", 0, True)
    assert worker_info(worker(2)) == ("worker", 2, False)
    chief, other = run_paths(tmp_path, worker(0)), run_paths(tmp_path, worker(2))
    assert chief.is_chief and chief.logs == tmp_path / "logs" and chief.checkpoints == tmp_path / "checkpoints"
    assert not other.is_chief and other.logs == tmp_path / "logs" / "worker-2"
    assert tmp_path not in other.checkpoints.parents and tmp_path not in other.history.parents
    assert chief.backup == other.backup == tmp_path / "backup"  # shared: all workers resume the same epoch
    shutil.rmtree(other.scratch)  # the non-chief scratch folder lives outside tmp_path
    with_chief = tf.train.ClusterSpec({"chief": ["a:1"], "worker": ["b:2"]})
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(with_chief, task_type="worker", task_id=0)
    w0 = types.SimpleNamespace(cluster_resolver=resolver)
    assert worker_info(w0)[2] is False


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from medtf.training.engine import train
    config = json.loads(sys.argv[1])
    result = train(config, sys.argv[2])
    print("RESULT " + json.dumps({"replicas": result["strategy"].num_replicas_in_sync,
                                  "strategy": type(result["strategy"]).__name__,
                                  "loss": result["history"]["loss"]}))
""")


def test_mirrored_strategy_fit_on_two_logical_cpus(lgg_tiny, tmp_path):
    config = tiny_config(lgg_tiny, epochs=1, steps_per_epoch=2, strategy="mirrored", log_every_n_steps=1)
    run_dir = tmp_path / "mirrored"
    proc = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, json.dumps(config), str(run_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert result["replicas"] == 2 and result["strategy"] == "MirroredStrategy"
    assert len(result["loss"]) == 1 and math.isfinite(result["loss"][0])
    for name in ("config.yaml", "history.csv", "checkpoints/best.keras", "checkpoints/last.keras"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "backup").exists()  # finished: the backup is removed
    assert list((run_dir / "logs" / "gradients").glob("events.out.tfevents*"))
    assert [r["epoch"] for r in history_rows(run_dir)] == ["0"]


@pytest.mark.slow  # multi-worker training runs in make test on real SLURM (tests/hpc/test_multiworker_job.py)
def test_multiworker_strategy_single_worker_fit(lgg_tiny, tmp_path):
    """Without TF_CONFIG or a SLURM step, MultiWorkerMirroredStrategy is one local worker: the chief."""
    config = tiny_config(lgg_tiny, epochs=1, steps_per_epoch=1, strategy="multiworker", image_panels=False,
                         log_every_n_steps=0)
    run_dir = tmp_path / "multiworker"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "TF_CONFIG"}
    script = MIRRORED_SCRIPT.replace("[tf.config.LogicalDeviceConfiguration()] * 2",
                                     "[tf.config.LogicalDeviceConfiguration()]")
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(config), str(run_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=240,
                          env={**env, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert result["strategy"] == "MultiWorkerStrategy" and result["replicas"] == 1  # medtf's MultiWorkerMirroredStrategy
    assert math.isfinite(result["loss"][0]) and (run_dir / "checkpoints" / "last.keras").is_file()
    assert not list((run_dir / "logs").glob("worker-*"))  # the chief writes the run dir itself
