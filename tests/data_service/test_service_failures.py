"""Training through a real tf.data service (`medtf train` code path, data.service=ADDRESS): a 2-replica
MirroredStrategy fit, a worker killed with SIGKILL, a dispatcher killed and restarted from its journal.

Slow tier: each starts a dispatcher, two workers and a trainer (four TensorFlow processes on two cores).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import history_epochs, sigkill_when
from tests.data_service.conftest import ENV, REPO
from tests.training.conftest import tiny_config

SCRIPT = Path(__file__).with_name("_train.py")


def _trainer(shards, address, run_dir: Path, cpus: int = 1, **train) -> subprocess.Popen:
    config = tiny_config(shards, **train)
    config["data"].update(service=address, service_timeout=60)
    log = open(run_dir.parent / f"{run_dir.name}.log", "wb")
    return subprocess.Popen([sys.executable, str(SCRIPT), json.dumps(config), str(run_dir), str(cpus)], cwd=REPO,
                            env=ENV, stdout=log, stderr=subprocess.STDOUT)


def _finish(proc, run_dir: Path, timeout: float = 300) -> dict:
    proc.wait(timeout)
    out = (run_dir.parent / f"{run_dir.name}.log").read_text(errors="replace")
    assert proc.returncode == 0, out[-4000:]
    return json.loads(out.split("RESULT ", 1)[1].splitlines()[0])


@pytest.mark.slow  # ~90 s (two replicas + two workers on two cores)
def test_mirrored_fit_on_two_replicas_reads_the_service(service_factory, service_shards, tmp_path):
    svc = service_factory(workers=2)
    run_dir = tmp_path / "mirrored"
    result = _finish(_trainer(service_shards, svc.address, run_dir, cpus=2, epochs=2, steps_per_epoch=3,
                              strategy="mirrored"), run_dir)
    assert result["replicas"] == 2 and len(result["loss"]) == 2
    assert all(math.isfinite(v) for v in result["loss"])
    assert history_epochs(run_dir) == [0, 1]


# In make test (not slow): the failure behaviour the issue asks for, ~40 s idle (98 s measured under load 10).
def test_worker_killed_mid_training_does_not_fail_it(service_factory, service_shards, tmp_path):
    svc = service_factory(workers=2)
    run_dir = tmp_path / "kill"
    trainer = _trainer(service_shards, svc.address, run_dir, epochs=4, steps_per_epoch=6)
    sigkill_when(svc.procs["worker0"], lambda: history_epochs(run_dir) != [], timeout=240,
                 what="first epoch", output=lambda: (run_dir.parent / "kill.log").read_text())
    assert trainer.poll() is None, "training ended before the worker was killed"
    result = _finish(trainer, run_dir)
    assert history_epochs(run_dir) == [0, 1, 2, 3] and len(result["loss"]) == 4
    # The killed worker is really gone and the other one still serves (the dispatcher keeps counting the dead one:
    # TF drops only its tasks after --worker-timeout, so its log is no evidence either way).
    assert svc.procs["worker0"].returncode == -9 and svc.procs["worker1"].poll() is None


@pytest.mark.slow  # ~85 s
def test_dispatcher_restarted_from_its_journal_keeps_the_training_going(service_factory, service_shards, tmp_path):
    svc = service_factory(workers=2)
    address = svc.address
    run_dir = tmp_path / "restart"
    trainer = _trainer(service_shards, address, run_dir, epochs=4, steps_per_epoch=6)
    sigkill_when(svc.procs["dispatcher"], lambda: history_epochs(run_dir) != [], timeout=240,
                 what="first epoch", output=lambda: (run_dir.parent / "restart.log").read_text())
    assert trainer.poll() is None, "training ended before the dispatcher was killed"
    # --port 0 on a restart reuses the port of the address file the killed dispatcher left.
    assert svc.start_dispatcher(name="dispatcher2") == address
    assert "resumed from" in svc.log("dispatcher2")
    result = _finish(trainer, run_dir)
    assert history_epochs(run_dir) == [0, 1, 2, 3] and len(result["loss"]) == 4
    svc.wait_workers(2, timeout=60)  # both workers re-registered with the restarted dispatcher
