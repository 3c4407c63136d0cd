"""ClipLoss / recall@1 negatives gathered across replicas: 2 replicas (MirroredStrategy on 2 logical CPUs; two
MultiWorkerMirroredStrategy processes) compute the loss, gradients and one fit step of one device on the same global
batch (tests/tasks/_clip_replicas_check.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("_clip_replicas_check.py")
ENV = {"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def _result(text: str) -> dict:
    return json.loads(text.split("RESULT ", 1)[1].splitlines()[0])


@pytest.fixture(scope="module")
def replicas() -> dict:
    proc = subprocess.run([sys.executable, str(SCRIPT), "mirrored"], cwd=REPO, capture_output=True, text=True,
                          timeout=240, env={**os.environ, **ENV})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _result(proc.stdout)


def test_uneven_replica_batches_use_global_targets(replicas):
    assert replicas["replicas"] == 2 and replicas["strategy"] == "MirroredStrategy"
    # Rows 0-2 on replica 0, rows 3-4 on replica 1: each row's loss is against all 5 pairs, own pair the target.
    np.testing.assert_allclose(replicas["uneven_loss"], replicas["uneven_single"], rtol=1e-5)
    np.testing.assert_allclose(replicas["aware_loss"], replicas["aware_single"], rtol=1e-5)
    assert np.abs(np.subtract(replicas["aware_loss"], replicas["uneven_loss"])).max() > 1e-3  # the classes count
    # Image 3 (replica 1) retrieves report 0 (replica 0): 9 of 10 directions hit, per replica alone all 10.
    assert replicas["recall_single"] == pytest.approx(0.9)
    assert replicas["recall_mirrored"] == pytest.approx(replicas["recall_single"], rel=1e-6)


def test_two_replicas_step_equals_one_device(replicas):
    assert replicas["local_batch_sizes"] == [4, 4]
    assert replicas["mirrored_loss"] == pytest.approx(replicas["single_loss"], rel=1e-5)
    # Contrasting only each replica's own 4 pairs would be a different loss: the comparison can fail.
    assert abs(replicas["in_batch_only_loss"] - replicas["single_loss"]) > 0.05
    assert min(replicas["grad_max_abs"]) > 0  # every weight gets a gradient, also through the gather
    assert replicas["grad_rel_err"] < 1e-5, replicas["grad_max_abs_diff"]


def test_two_replicas_fit_step_equals_one_device(replicas):
    loss, recall = replicas["fit_loss"], replicas["fit_recall"]
    assert loss["mirrored"] == pytest.approx(loss["single"], rel=1e-5)
    assert loss["single"] == pytest.approx(replicas["single_loss"], rel=1e-5)
    assert recall["mirrored"] == pytest.approx(recall["single"], rel=1e-6)
    assert replicas["fit_weight_max_step"] > 1e-3  # the step moved the weights ...
    assert replicas["fit_weight_max_abs_diff"] < 1e-5  # ... by the same gradient on both


def _check_worker(result: dict, index: int) -> None:
    assert result["replicas"] == 2 and result["strategy"] == "MultiWorkerStrategy"
    assert result["local_replicas"] == [index] and result["local_batch_sizes"] == [4]
    np.testing.assert_allclose(result["uneven_loss"], result["uneven_single"], rtol=1e-5)
    np.testing.assert_allclose(result["aware_loss"], result["aware_single"], rtol=1e-5)
    assert result["recall_mirrored"] == pytest.approx(result["recall_single"], rel=1e-6)
    assert result["mirrored_loss"] == pytest.approx(result["single_loss"], rel=1e-5)
    assert result["grad_rel_err"] < 1e-5, result["grad_max_abs_diff"]
    assert result["fit_loss"]["mirrored"] == pytest.approx(result["fit_loss"]["single"], rel=1e-5)
    assert result["fit_weight_max_abs_diff"] < 1e-5


@pytest.mark.slow
def test_two_workers_gather_negatives_across_processes(tmp_path):
    """MultiWorkerMirroredStrategy, two processes on 127.0.0.1 (TF_CONFIG): the gather crosses processes."""
    from tests.training.test_multiworker import free_ports

    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "TF_CONFIG"}
    procs = []
    for index in range(2):
        env = {**base, **ENV, "TMPDIR": str(tmp_path),
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen([sys.executable, str(SCRIPT), "multiworker"], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        for index, proc in enumerate(procs):
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err[-4000:]
            _check_worker(_result(out), index)
    finally:
        for proc in procs:  # a worker left waiting on a collective after the other failed
            if proc.poll() is None:
                proc.kill()
                proc.wait()
