"""`medtf slurm CONFIG --data-workers 1 --data-service-layout separate --submit` on the real local SLURM: the training
job (dispatcher + trainer) and the worker array job train to COMPLETED through the tf.data service, and the
dispatcher's and the worker's logs are there.

The heterogeneous layout (the default) is only rendered here (tests/data_service/test_slurm_render.py): on the
single-node local SLURM its two components never start together (both pend with Reason=Resources; the backfill
plans component 1 after component 0 ends), so the real-SLURM run uses the two-job variant.
"""

from __future__ import annotations

import re

import pytest
import yaml

from tests.conftest import history_epochs, run_medtf
from tests.hpc.conftest import slurm_log, submitted_id, tiny_config, wait_for_job


@pytest.mark.slow  # ~40 s of SLURM + three TensorFlow processes on two cores
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
