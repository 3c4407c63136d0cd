"""Shared test harness: synthetic sources made once per session, an in-process `medtf` runner, PHI scanning."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import medtf  # noqa: F401  (first: oneDNN and thread defaults are set before any test module imports TensorFlow)

TEST_SALT = "medtf-test-salt"


def run_medtf(*args) -> int:
    """Run the real ``medtf`` entry point in-process (same argument parsing, same code path as the console)."""
    from medtf.cli.main import main

    return main([str(a) for a in args])


def tree_bytes(folder: Path):
    """Yield (path, bytes) of every file below ``folder``."""
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            yield path, path.read_bytes()


def find_phi(folder: Path, needles) -> list[str]:
    """Every (file, needle) where a raw identifier occurs in the bytes (case-insensitive, also UTF-16)."""
    hits = []
    for path, data in tree_bytes(folder):
        low = data.lower()
        for needle in needles:
            n = needle.lower().encode()
            if n in low or needle.encode("utf-16-le").lower() in low or n in str(path).lower().encode():
                hits.append(f"{path.relative_to(folder)}: {needle}")
    return hits


def sha256_tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(b).hexdigest() for p, b in tree_bytes(folder)}


@pytest.fixture(scope="session")
def lgg_source(tmp_path_factory) -> Path:
    from medtf.synth.lgg_mri import generate_lgg_mri

    root = tmp_path_factory.mktemp("lgg_source")
    generate_lgg_mri(root, cases=6, seed=7, num_slices=8, size=64)
    return root


def history_epochs(run_dir: Path) -> list[int]:
    """The epoch column of ``run_dir/history.csv`` ([] when there is none yet)."""
    import csv

    path = run_dir / "history.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def sigkill_when(proc, ready, timeout: float, what: str, output) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` is true (polled every 10 ms); fail if it exits first (showing
    ``output()``, its last log) or ``timeout`` seconds pass ("``what`` in time"). The process is reaped."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, output()[-3000:]
            assert time.monotonic() < deadline, f"{what} in time"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def lgg_tiny(tmp_path_factory) -> Path:
    """Tiny lgg-mri shards shared by the training, tuning and HPC tests: 4 patients x 6 slices of 32x32
    (train 2 / val 1 / test 1 patients)."""
    from medtf.synth.lgg_mri import generate_lgg_mri

    root = tmp_path_factory.mktemp("lgg_tiny")
    generate_lgg_mri(root / "src", cases=4, seed=3, num_slices=6, size=32)
    out = root / "lgg"
    assert run_medtf("convert", "lgg-mri", "--input", root / "src", "--output", out, "--split", "0.5,0.25,0.25",
                     "--id-salt", TEST_SALT) == 0
    return out


def pytest_collection_modifyitems(config, items):
    """``make test`` runs on both cores with pytest-xdist (``--dist loadgroup``). The real-SLURM tests share one
    small local cluster (2 CPUs, one slurmd): they stay on one worker, in order, so two jobs never wait on each
    other's CPUs."""
    for item in items:
        if item.nodeid.startswith("tests/hpc/"):
            item.add_marker(pytest.mark.xdist_group("slurm"))


def pytest_runtest_makereport(item, call):
    """Under CI (``MEDTF_FAIL_ON_SKIP=1``, set by .ci/run) a skipped test fails: a component a test needs (SLURM,
    TensorBoard, ...) that could not start is a broken environment, not a pass."""
    import os

    if os.environ.get("MEDTF_FAIL_ON_SKIP") != "1" or call.excinfo is None:
        return None
    if call.excinfo.errisinstance(pytest.skip.Exception) and not hasattr(item, "wasxfail"):
        from _pytest.reports import TestReport

        report = TestReport.from_item_and_call(item, call)
        report.outcome = "failed"
        report.longrepr = f"skipped under MEDTF_FAIL_ON_SKIP=1: {call.excinfo.value}"
        return report
    return None


@pytest.fixture(scope="session")
def dciodvfy():
    """``validate(path) -> DicomReport`` with dicom3tools' dciodvfy (installed with apt as root when missing; skips
    with the reason elsewhere, which fails under ``MEDTF_FAIL_ON_SKIP=1``). See tests/dicom_validation.py."""
    from tests.dicom_validation import ValidatorUnavailable, ensure_dciodvfy, validate_dicom

    try:
        program = ensure_dciodvfy()
    except ValidatorUnavailable as exc:
        pytest.skip(f"no DICOM validator: {exc}")
    return lambda path: validate_dicom(path, program)
