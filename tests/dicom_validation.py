"""Validate DICOM files with dicom3tools' ``dciodvfy`` (an IOD checker medtf did not write).

The ``dciodvfy`` fixture (tests/conftest.py) installs Debian's ``dicom3tools`` with apt when the program is missing
and the tests run as root (as CI does, like the SLURM packages of tests/hpc); elsewhere the tests that need it skip
with the reason, and under ``MEDTF_FAIL_ON_SKIP=1`` (.ci/run) that skip is a failure.

Example:
    >>> report = validate_dicom(path)
    >>> assert report.errors == [], report.output
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

PACKAGE = "dicom3tools"
PROGRAM = "dciodvfy"


class ValidatorUnavailable(RuntimeError):
    """dciodvfy is missing and cannot be installed here (not root, no apt-get, apt failed)."""


@dataclasses.dataclass
class DicomReport:
    """What ``dciodvfy FILE`` said: its ``Error``/``Abort`` lines, its ``Warning`` lines and the whole output."""

    path: Path
    errors: list[str]
    warnings: list[str]
    output: str


def install_command() -> list[str]:
    return ["apt-get", "install", "-y", "--no-install-recommends", PACKAGE]


def ensure_dciodvfy(timeout: float = 600.0) -> str:
    """The path of ``dciodvfy``, installing ``dicom3tools`` with apt first when it is missing and we are root."""
    found = shutil.which(PROGRAM)
    if found:
        return found
    if os.geteuid() != 0:
        raise ValidatorUnavailable(
            f"{PROGRAM} is missing and installing {PACKAGE} needs root: {' '.join(install_command())}")
    if shutil.which("apt-get") is None:
        raise ValidatorUnavailable(f"{PROGRAM} is missing and there is no apt-get: install {PACKAGE} yourself")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        proc = subprocess.run(install_command(), env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ValidatorUnavailable(f"{' '.join(install_command())} took longer than {timeout:.0f} s") from None
    found = shutil.which(PROGRAM)
    if proc.returncode != 0 or not found:
        raise ValidatorUnavailable(f"{' '.join(install_command())} failed ({proc.returncode}): "
                                   f"{(proc.stderr or proc.stdout).strip()[-800:]}")
    return found


def validate_dicom(path: str | os.PathLike, program: str = PROGRAM) -> DicomReport:
    """Run ``dciodvfy`` on one file; errors include ``Abort`` lines (an unreadable file is not valid)."""
    proc = subprocess.run([program, str(path)], capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    lines = [line.strip() for line in output.splitlines()]
    errors = [line for line in lines if line.startswith(("Error", "Abort"))]
    warnings = [line for line in lines if line.startswith("Warning")]
    return DicomReport(Path(path), errors, warnings, output)
