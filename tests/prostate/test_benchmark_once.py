"""benchmarks/_once.py: a job runs once across processes sharing a work folder; helpers skip claimed jobs and
wait for jobs whose inputs are not ready."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _once import help_out, once  # noqa: E402


def test_once_runs_a_job_once_and_reads_its_result_after(tmp_path):
    calls = []
    job = lambda: calls.append(1) or {"auc": 0.5 + len(calls)}  # noqa: E731
    assert once(tmp_path / "a.json", job) == {"auc": 1.5}
    assert once(tmp_path / "a.json", job) == {"auc": 1.5}
    assert calls == [1]


def test_a_claimed_job_is_left_to_its_owner(tmp_path):
    (tmp_path / "b.claim").touch()  # another process is running it
    assert once(tmp_path / "b.json", lambda: {"x": 1}, wait=False) is None
    assert not (tmp_path / "b.json").exists()


def test_helper_takes_ready_unclaimed_jobs_and_waits_for_pending_ones(tmp_path):
    (tmp_path / "c.claim").touch()
    rounds = []

    def jobs():
        rounds.append(1)
        listed = [(tmp_path / "a.json", lambda: {"a": 1}), (tmp_path / "c.json", lambda: {"c": 1})]
        if len(rounds) < 2:  # "d" needs a's result first: listed without a job in the first round
            return listed + [(tmp_path / "d-pending", None)]
        return listed + [(tmp_path / "d.json", lambda: {"d": 2})]

    assert help_out(jobs, poll_s=0.01) == 2
    assert len(rounds) == 2  # the second round finds d ready and nothing pending
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["a.json", "d.json"]  # c: its owner's
