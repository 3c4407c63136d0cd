"""`generate_prostate_mpmri(workers=N)`: patients written in spawned processes are the same files, byte for byte,
as the single-process run (each patient is a function of (seed, index) alone)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from medtf.synth.prostate_mpmri import generate_prostate_mpmri

TINY = dict(cases=2, seed=11, test_cases=1, fov_mm=32.0, t2_slices=4, sagittal=False)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow  # spawns worker processes: ~23 s under a load of 25 on 2 cores
def test_workers_write_the_same_files_as_one_process(tmp_path):
    one = generate_prostate_mpmri(tmp_path / "one", **TINY)
    two = generate_prostate_mpmri(tmp_path / "two", workers=2, **TINY)
    assert [p.name for p in one] == [p.name for p in two] == [f"ProstateX-000{i}" for i in range(3)]
    a, b = _digests(tmp_path / "one"), _digests(tmp_path / "two")
    assert len(a) > 3 * 3  # DICOM slices of several series per patient, and the CSVs
    assert any(k.endswith("ProstateX-Findings-Train.csv") for k in a)
    assert a == b
