"""A real private SLURM for the HPC tests (started once per session, stopped at the end), its helpers and configs.

Where SLURM cannot run (not root, packages missing) the SLURM tests skip with the reason, unless
``MEDTF_REQUIRE_SLURM=1`` (set by .ci/run): then the fixture fails, so a CI machine cannot silently skip them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_medtf
from tests.training.conftest import tiny_config as training_tiny_config


FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}


@pytest.fixture(scope="session")
def slurm():
    """A started `LocalSlurm`; ``SLURM_CONF`` points at it for the whole session (restored afterwards)."""
    import tempfile

    from medtf.hpc.local_cluster import LocalSlurm, LocalSlurmError, install, missing_programs

    # A short root under /tmp: the munge socket path must stay under ~100 characters.
    root = Path(tempfile.mkdtemp(prefix="medtf-slurm-"))
    cluster = LocalSlurm(root)
    try:
        if missing_programs() and os.geteuid() == 0:
            install()  # CI runs as root on a Debian machine; elsewhere start() explains what is missing
        cluster.start()
    except LocalSlurmError as exc:
        shutil.rmtree(root, ignore_errors=True)
        if os.environ.get("MEDTF_REQUIRE_SLURM") == "1":
            pytest.fail(f"MEDTF_REQUIRE_SLURM=1 but a local SLURM cannot start: {exc}")
        pytest.skip(f"no local SLURM: {exc}")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    yield cluster
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous
    subprocess.run(["scancel", "--full", "-u", "root"], env=cluster.env, capture_output=True)  # our instance only
    cluster.stop()
    assert cluster.pids() == {}, f"daemons left running: {cluster.pids()}"
    shutil.rmtree(root, ignore_errors=True)


def scontrol_job(job_id: str) -> dict:
    from medtf.hpc.slurm import job_info

    jobs = job_info(job_id)
    assert len(jobs) == 1, f"job {job_id}: {jobs}"
    return jobs[0]


def wait_for_job(job_id: str, timeout: float = 120.0, states=FINAL_STATES) -> dict:
    """Poll ``scontrol show job`` until the job reaches one of ``states``; returns its record."""
    end = time.monotonic() + timeout
    job = {}
    while time.monotonic() < end:
        job = scontrol_job(job_id)
        if job["JobState"] in states:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.get('JobState')} ({job.get('Reason')}) after {timeout:.0f} s")


def slurm_log(job: dict) -> str:
    path = Path(job["StdOut"])
    return path.read_text(errors="replace") if path.exists() else f"(no log at {path})"


@pytest.fixture(scope="session")
def hpc_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hpc")


def tiny_config(data_dir: Path, **train) -> dict:
    """The training tests' tiny config (tests/training/conftest.py), logging one line per epoch (job logs)."""
    return training_tiny_config(data_dir, **{"verbose": 2, **train})


@pytest.fixture(scope="session")
def tiny_config_file(hpc_root, lgg_tiny) -> Path:
    path = hpc_root / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(lgg_tiny)))
    return path


@pytest.fixture(scope="session")
def cpu_cluster_config(hpc_root) -> Path:
    """Site settings for the local SLURM: no GPUs, jobs use this interpreter's virtual environment."""
    path = hpc_root / "cluster.yaml"
    path.write_text(yaml.safe_dump({"venv": sys.prefix, "setup": ["export TF_CPP_MIN_LOG_LEVEL=2",
                                                                   "export CUDA_VISIBLE_DEVICES="],
                                    "signal_seconds": 60}))
    return path


def submitted_id(out: str) -> str:
    """The job id `medtf slurm --submit` printed (the only stdout line)."""
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines and re.fullmatch(r"\d+", lines[-1]), out
    return lines[-1]


def submit(capsys, *args) -> str:
    """``medtf slurm --submit ARGS`` in-process; the job id it printed (the exit code must be 0)."""
    capsys.readouterr()
    code = run_medtf("slurm", "--submit", *map(str, args))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return submitted_id(captured.out)
