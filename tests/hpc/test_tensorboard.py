"""Monitoring a finished run the way a cluster user does: the real TensorBoard server over the run's logs/,
scalars read back through its HTTP API and compared with history.csv."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.hpc.conftest import tiny_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str, **query):
    url = f"http://127.0.0.1:{port}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def finished_run(lgg_tiny, tmp_path_factory) -> Path:
    from medtf.training.engine import train

    run_dir = tmp_path_factory.mktemp("tb") / "run"
    train(tiny_config(lgg_tiny, epochs=3), run_dir)
    return run_dir


def test_tensorboard_server_serves_the_runs_scalars(finished_run):
    port = _free_port()
    tensorboard = Path(sys.executable).with_name("tensorboard")
    server = subprocess.Popen([str(tensorboard), "--logdir", str(finished_run / "logs"), "--host", "127.0.0.1",
                               "--port", str(port), "--reload_interval", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        tags, deadline = {}, time.monotonic() + 90
        while time.monotonic() < deadline:  # the server starts, then loads the event files asynchronously
            try:
                tags = _get(port, "/data/plugin/scalars/tags")
                if "epoch_loss" in tags.get("train", {}) and "epoch_loss" in tags.get("validation", {}):
                    break
            except OSError:
                pass
            assert server.poll() is None, "tensorboard exited"
            time.sleep(1)
        assert "epoch_loss" in tags.get("train", {}), f"no train scalars served: {tags}"

        served = _get(port, "/data/plugin/scalars/scalars", run="train", tag="epoch_loss")
        served_val = _get(port, "/data/plugin/scalars/scalars", run="validation", tag="epoch_dice")
    finally:
        server.terminate()
        server.wait(timeout=30)

    with open(finished_run / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    # [wall_time, step, value] per epoch; steps are the epoch indices 0..2.
    assert [int(step) for _, step, _ in served] == [0, 1, 2]
    np.testing.assert_allclose([v for _, _, v in served], [float(r["loss"]) for r in rows], rtol=1e-5)
    np.testing.assert_allclose([v for _, _, v in served_val], [float(r["val_dice"]) for r in rows], rtol=1e-5)
