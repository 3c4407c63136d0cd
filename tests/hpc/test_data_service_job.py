"""`medtf slurm CONFIG --data-workers 1 --submit` on the real local SLURM, both layouts: the training (dispatcher +
trainer) and its worker(s) train to COMPLETED through the tf.data service, and the dispatcher's and the worker's
logs are there.

The heterogeneous job (the default layout) runs on a private two-node instance (`LocalSlurm(cpu_nodes=1)`, its own
ports and SLURM_CONF, so the session's single-node instance and the other HPC tests are untouched): SLURM starts
heterogeneous jobs from the backfill scheduler only, whose plan books whole nodes, so on one node the second
component is always planned after the first ends and both pend with Reason=Resources for ever. A real cluster
(GPU nodes + CPU nodes) is the two-node case.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import history_epochs, run_medtf
from tests.hpc.conftest import slurm_log, submitted_id, tiny_config, wait_for_job


# In make test: the one real-SLURM run of the service (40-60 s of SLURM + three TensorFlow processes).
def test_training_and_worker_jobs_complete_through_the_service(slurm, lgg_tiny, cpu_cluster_config, hpc_root,
                                                               capsys):
    config = hpc_root / "service.yaml"
    config.write_text(yaml.safe_dump(tiny_config(lgg_tiny, epochs=2)))
    run_dir = hpc_root / "runs" / "data_service"
    capsys.readouterr()
    # 2 CPUs on the local node: 1 for the trainer (+ dispatcher), 1 for the worker task.
    assert run_medtf("slurm", "--submit", config, "--gpus-per-node", "0", "--data-workers", "1",
                     "--data-worker-cpus", "1", "--data-service-layout", "separate", "--time", "00:10:00",
                     "--run-dir", run_dir, "--cluster-config", cpu_cluster_config) == 0
    out, err = capsys.readouterr()
    training_id = submitted_id(out)
    workers_id = re.search(r"job array (\d+) from", err).group(1)
    job = wait_for_job(training_id, timeout=400)
    log = slurm_log(job)
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", log
    worker = wait_for_job(f"{workers_id}_0", timeout=60)
    assert worker["JobState"] == "COMPLETED" and worker["Dependency"] in ("(null)", f"after:{training_id}(unfulfilled)")
    assert history_epochs(run_dir) == [0, 1], log
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["service"] == "auto"
    dispatcher = (run_dir / "slurm" / f"data-dispatcher-{training_id}.out").read_text()
    assert "1 worker(s) registered" in dispatcher and "dispatcher stopped" in dispatcher, dispatcher
    worker_log = slurm_log(worker)
    assert "serving the dispatcher at grpc://" in worker_log and "removed: the dispatcher stopped" in worker_log
    assert not (run_dir / "data_service" / "dispatcher.address").exists()


@pytest.fixture(scope="module")
def two_node_slurm():
    """A private SLURM with a second, CPU-only node (partition ``cpu``); stopped after this module."""
    from medtf.hpc.local_cluster import LocalSlurm, LocalSlurmError

    root = Path(tempfile.mkdtemp(prefix="medtf-slurm2-"))  # short: the munge socket path
    cluster = LocalSlurm(root, cpu_nodes=1)
    try:
        cluster.start()
    except LocalSlurmError as exc:
        shutil.rmtree(root, ignore_errors=True)
        if os.environ.get("MEDTF_REQUIRE_SLURM") == "1":
            pytest.fail(f"MEDTF_REQUIRE_SLURM=1 but a two-node local SLURM cannot start: {exc}")
        pytest.skip(f"no local SLURM: {exc}")
    yield cluster
    import subprocess

    subprocess.run(["scancel", "--full", "-u", "root"], env=cluster.env, capture_output=True)  # this instance only
    cluster.stop()
    assert cluster.pids() == {}, f"daemons left running: {cluster.pids()}"
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow  # 50-85 s: SLURM + three TensorFlow processes on two shared cores
def test_heterogeneous_job_completes_through_the_service(two_node_slurm, lgg_tiny, cpu_cluster_config, hpc_root,
                                                         capsys, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(two_node_slurm.conf))
    config = hpc_root / "service-het.yaml"
    config.write_text(yaml.safe_dump(tiny_config(lgg_tiny, epochs=2)))
    run_dir = hpc_root / "runs" / "data_service_het"
    capsys.readouterr()
    # Component 0 (trainer + dispatcher) on the first node, component 1 (the worker) on the CPU partition's node.
    assert run_medtf("slurm", "--submit", config, "--gpus-per-node", "0", "--data-workers", "1",
                     "--data-worker-cpus", "1", "--data-worker-partition", "cpu", "--time", "00:10:00",
                     "--run-dir", run_dir, "--cluster-config", cpu_cluster_config) == 0
    out, err = capsys.readouterr()
    job_id = submitted_id(out)
    assert "job array" not in err  # one heterogeneous job, no worker array
    job = wait_for_job(f"{job_id}+0", timeout=400)  # `scontrol show job ID` lists every component
    log = slurm_log(job)
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", log
    assert job["HetJobId"] == job_id and job["HetJobOffset"] == "0", job
    workers = wait_for_job(f"{job_id}+1", timeout=60)
    assert workers["HetJobId"] == job_id and workers["JobState"] == "COMPLETED", workers
    assert workers["NodeList"] == f"{two_node_slurm.host}-cpu1" and workers["Partition"] == "cpu", workers
    assert job["NodeList"] == two_node_slurm.host, job
    assert history_epochs(run_dir) == [0, 1], log
    dispatcher = (run_dir / "slurm" / f"data-dispatcher-{job_id}.out").read_text()
    assert "1 worker(s) registered" in dispatcher and "dispatcher stopped" in dispatcher, dispatcher
    worker_logs = sorted((run_dir / "slurm").glob("data-worker-*.out"))
    assert len(worker_logs) == 1, (worker_logs, log)
    worker_log = worker_logs[0].read_text()
    assert "serving the dispatcher at grpc://" in worker_log and "removed: the dispatcher stopped" in worker_log, \
        worker_log
    assert not (run_dir / "data_service" / "dispatcher.address").exists()
