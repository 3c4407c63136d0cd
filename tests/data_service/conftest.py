"""Real tf.data service processes on localhost (`medtf data-service dispatcher|worker`, free ports) and tiny shards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TEST_SALT, run_medtf

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}


class Service:
    """A dispatcher and workers started as `medtf data-service` subprocesses, each logging to its own file."""

    def __init__(self, root: Path):
        self.root = root
        self.work_dir = root / "dispatcher"
        self.address_file = self.work_dir / "dispatcher.address"
        self.procs: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, *args) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "medtf.cli.main", "data-service", *map(str, args)],
                                cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_dispatcher(self, port: int = 0, timeout: float = 60.0, name: str = "dispatcher",
                         workers: int = 0) -> str:
        """Start it (and ``workers`` workers at the same time: they wait for its address file) and wait until it
        has written its address (a restart on the same port rewrites the same one)."""
        proc = self._start(name, "dispatcher", "--port", port, "--work-dir", self.work_dir, "--host", "localhost",
                           "--worker-timeout", "3")
        for i in range(workers):
            self.start_worker(f"worker{i}")
        from medtf.data.service import read_address_file

        end = time.monotonic() + timeout
        while "dispatcher at " not in self.log(name):
            assert proc.poll() is None, self.log(name)
            assert time.monotonic() < end, f"dispatcher not up in {timeout:.0f} s: {self.log(name)}"
            time.sleep(0.1)
        self.address = read_address_file(self.address_file)
        return self.address

    def start_worker(self, name: str) -> subprocess.Popen:
        return self._start(name, "worker", "--address-file", self.address_file, "--host", "localhost")

    def wait_workers(self, count: int, timeout: float = 90.0) -> None:
        from medtf.data.service import wait_for_workers

        wait_for_workers(self.address, timeout=timeout, minimum=count)

    def stop(self, name: str, sig=signal.SIGTERM, timeout: float = 30.0) -> int:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def close(self) -> dict[str, int]:
        """Stop the dispatcher (SIGTERM: it removes the address file), then the workers leave on their own."""
        codes = {}
        for name in [n for n in self.procs if n.startswith("dispatcher")]:
            codes[name] = self.stop(name)
        for name in [n for n in self.procs if not n.startswith("dispatcher")]:
            proc = self.procs[name]
            try:
                codes[name] = proc.wait(20)
            except subprocess.TimeoutExpired:
                codes[name] = self.stop(name, signal.SIGKILL)
        return codes


@pytest.fixture
def service_factory(tmp_path):
    """``start(workers=N) -> Service`` with N registered workers; everything is stopped afterwards."""
    services = []

    def start(workers: int = 2, root: Path | None = None) -> Service:
        svc = Service(root or tmp_path / f"service{len(services)}")
        svc.root.mkdir(parents=True, exist_ok=True)
        services.append(svc)
        svc.start_dispatcher(workers=workers)  # three TensorFlow imports in parallel
        if workers:
            svc.wait_workers(workers)
        return svc

    yield start
    for svc in services:
        svc.close()


@pytest.fixture(scope="session")
def service_shards(tmp_path_factory) -> Path:
    """lgg-mri, 4 patients x 6 slices of 32x32 (train 2 / val 1 / test 1 patients) in several small shard files."""
    from medtf.synth.lgg_mri import generate_lgg_mri

    root = tmp_path_factory.mktemp("service_shards")
    generate_lgg_mri(root / "src", cases=4, seed=3, num_slices=6, size=32)
    out = root / "lgg"
    assert run_medtf("convert", "lgg-mri", "--input", root / "src", "--output", out, "--split", "0.5,0.25,0.25",
                     "--id-salt", TEST_SALT, "--shard-size-mb", "0.02") == 0
    return out
