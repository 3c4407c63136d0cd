"""Run a benchmark's independent jobs once across cooperating processes on one work folder.

A job's result is a JSON file; a claim file (created with O_EXCL) marks it as taken. `once` runs the job if nobody
has claimed it and otherwise waits for the result, so ``quality.py`` stays a plain sequential program, while helper
processes started beside it (`help_out`) take jobs from the same list and shorten the wall clock on a machine
where each process gets a small share of the cores. A helper killed mid-job leaves its claim: delete
``*.claim`` in the work folder before rerunning.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable


def _claim(path: Path) -> bool:
    try:
        os.close(os.open(path.with_suffix(".claim"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _write(path: Path, value) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def once(path: Path, job: Callable[[], dict], wait: bool = True, poll_s: float = 10.0):
    """``job()``'s result, computed here or by another process (``path``: its JSON). ``wait=False``: None when
    another process holds the claim."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        return json.loads(path.read_text())
    if _claim(path):
        value = job()
        _write(path, value)
        return value
    if not wait:
        return None
    while not path.is_file():
        time.sleep(poll_s)
    return json.loads(path.read_text())


def help_out(jobs: Callable[[], list[tuple[Path, Callable[[], dict] | None]]], poll_s: float = 20.0) -> int:
    """Take unclaimed jobs until every job is done or claimed; ``jobs()`` is re-read each round (a job whose inputs
    are not ready yet is listed with None). Returns how many jobs this process ran."""
    ran = 0
    while True:
        pending = False
        for path, job in jobs():
            if Path(path).is_file() or Path(path).with_suffix(".claim").exists():
                continue
            if job is None:
                pending = True
                continue
            if once(path, job, wait=False) is not None:
                ran += 1
        if not pending:
            return ran
        time.sleep(poll_s)
