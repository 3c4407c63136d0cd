"""`medtf slurm CONFIG --tune --workers 2 --submit` on a real (private) SLURM: one chief, two workers, one budget."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.hpc.conftest import slurm_log, submitted_id, tiny_config, wait_for_job

REPO = Path(__file__).resolve().parents[2]


def test_tune_script_renders_chief_and_workers(tmp_path, monkeypatch, capsys):
    """--dry-run: N tasks (the workers), the chief in the batch shell, valid bash; bad requests fail clearly."""
    import re

    from tests.conftest import run_medtf

    monkeypatch.delenv("MEDTF_CLUSTER_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = tmp_path / "exp.yaml"
    config = tiny_config(tmp_path / "shards", epochs=1)  # a complete experiment: configs are validated first
    path.write_text(yaml.safe_dump({**config, "tune": {"tuner": "random", "max_trials": 5,
                                                       "space": {"model.args.base_filters": [2, 4]}}}))
    capsys.readouterr()
    assert run_medtf("slurm", path, "--tune", "--workers", "3", "--nodes", "2", "--gpus-per-node", "2",
                     "--set", "tune.max_trials=8") == 0
    script = capsys.readouterr().out
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert "{{" not in script
    directives = [line.split(None, 1)[1] for line in script.splitlines() if line.startswith("#SBATCH")]
    assert {"--nodes=2", "--ntasks=3", "--gpus-per-node=2", "--job-name=exp-tune"} <= set(directives)
    assert {"--requeue", "--signal=B:USR1@300"} <= set(directives)  # preemption-safe: it saves and requeues
    assert not any(d.startswith("--ntasks-per-node") for d in directives)
    assert "trap medtf_on_usr1 USR1" in script and 'scontrol requeue "$SLURM_JOB_ID"' in script
    assert f"TUNE_DIR={Path.cwd() / 'runs' / 'exp-tune'}\n" in script
    assert "export MEDTF_TUNE_WORKERS=3 " in script and "export MEDTF_GPUS_PER_NODE=2\n" in script
    assert re.search(rf"^KERASTUNER_TUNER_ID=chief CUDA_VISIBLE_DEVICES= medtf tune {path} --tune-dir "
                     r'"\$TUNE_DIR" --set tune.max_trials=8 &$', script, re.M)
    assert "export KERASTUNER_TUNER_ID=tuner${SLURM_PROCID}" in script
    assert re.search(rf"medtf tune {path} --tune-dir \"\$TUNE_DIR\" --quiet --set tune.max_trials=8 &$", script, re.M)
    for args, message in [(["--workers", "0"], "--workers must be >= 1"),
                          (["--workers", "2", "--nodes", "3"], "--nodes 3 > --workers 2"),
                          (["--array", "0-2"], "--tune and --array exclude each other"),
                          (["--tasks-per-node", "2"], "not --tasks-per-node"),
                          (["--set", "tune.tuner=grid"], "tune.tuner 'grid'"),
                          (["--set", "tune.space={model.args.base_filters: [2, 0.5, x]}"], "must all be numbers")]:
        assert run_medtf("slurm", path, "--tune", *args) == 2, args
        assert message in capsys.readouterr().err, args
    assert run_medtf("slurm", path, "--workers", "2") == 2
    assert "--workers goes with --tune" in capsys.readouterr().err
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(config))
    assert run_medtf("slurm", plain, "--tune") == 2
    assert "no `tune:` section" in capsys.readouterr().err


def _submit(slurm, path, tune_dir, cluster_config, *extra) -> dict:
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "medtf"), "slurm", str(path), "--tune", "--workers", "2",
                           "--gpus-per-node", "0", "--time", "00:10:00", "--run-dir", str(tune_dir),
                           "--cluster-config", str(cluster_config), "--submit", *extra],
                          cwd=REPO, env=slurm.env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return wait_for_job(submitted_id(proc.stdout), timeout=240)


def _results(tune_dir: Path) -> list[dict]:
    with open(tune_dir / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tune_job(slurm, lgg_tiny, cpu_cluster_config, hpc_root):
    """A search of 4 trials by one chief and two workers, run to its end."""
    config = tiny_config(lgg_tiny, epochs=1, steps_per_epoch=1, validation_steps=1, log_every_n_steps=0,
                         image_panels=False, verbose=0)
    config["tune"] = {"tuner": "random", "max_trials": 4, "seed": 0,
                      "objective": {"name": "val_loss", "direction": "min"},
                      "space": {"optimizer.learning_rate": {"type": "float", "min": 1e-4, "max": 1e-1,
                                                            "sampling": "log"},
                                "model.args.base_filters": [2, 4, 8]}}
    path = hpc_root / "tune.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    tune_dir = hpc_root / "runs" / "tune"
    return _submit(slurm, path, tune_dir, cpu_cluster_config), path, tune_dir


# Slow tier: a chief + 2 workers SLURM job (~45 s); the distributed oracle runs in make test locally
# (tests/tuning/test_tune.py::test_distributed_chief_stops_every_worker_after_too_many_failures).
@pytest.mark.slow
def test_chief_and_two_workers_share_one_budget(tune_job):
    from medtf.training.config import load_config

    job, _, tune_dir = tune_job
    log = slurm_log(job)
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", log
    assert job["NumTasks"] == "2", job  # the chief lives in the batch shell: two tasks are the two workers
    assert "chief serving the oracle" in log and "for 2 workers" in log and "tuning finished (exit 0)" in log

    rows = _results(tune_dir)
    assert [r["trial_id"] for r in rows] == ["0", "1", "2", "3"]
    assert [r["status"] for r in rows] == ["COMPLETED"] * 4
    assert len({(r["optimizer.learning_rate"], r["model.args.base_filters"]) for r in rows}) == 4

    # every trial ran exactly once, by one worker, and both workers took part
    runners = {}
    for row in rows:
        lines = (tune_dir / row["run_dir"] / "tuner_runs.jsonl").read_text().splitlines()
        assert len(lines) == 1, (row["trial_id"], lines)
        record = json.loads(lines[0])
        assert record["trial_id"] == row["trial_id"] and record["tuner_id"] == row["tuner_id"]
        runners[row["trial_id"]] = record["tuner_id"]
        ran = load_config(tune_dir / row["run_dir"] / "config.yaml")
        assert ran["model"]["args"]["base_filters"] == int(row["model.args.base_filters"])
        with open(tune_dir / row["run_dir"] / "history.csv", newline="") as f:
            history = list(csv.DictReader(f))
        assert float(row["val_loss"]) == float(history[0]["val_loss"]) or \
            abs(float(row["val_loss"]) - float(history[0]["val_loss"])) < 1e-6
    assert set(runners.values()) == {"tuner0", "tuner1"}, runners

    # the oracle's own record agrees: four trials started and ended once each, none left running
    oracle = json.loads((tune_dir / "oracle" / "oracle.json").read_text())
    assert sorted(oracle["start_order"]) == ["0", "1", "2", "3"] and sorted(oracle["end_order"]) == ["0", "1", "2", "3"]
    assert oracle["ongoing_trials"] == {} and len(set(oracle["tried_so_far"])) == 4
    assert all(v == 1 for v in oracle["run_times"].values()) and len(oracle["run_times"]) == 4
    assert {p.name for p in (tune_dir / "oracle").glob("*.json")} == {"oracle.json", "chief.json", "tuner0.json",
                                                                      "tuner1.json"}

    best = min(rows, key=lambda r: (float(r["val_loss"]), r["trial_id"]))
    best_config = load_config(tune_dir / "best.yaml")
    assert "tune" not in best_config
    assert best_config["model"]["args"]["base_filters"] == int(best["model.args.base_filters"])
    assert best_config["optimizer"]["learning_rate"] == float(best["optimizer.learning_rate"])


# Slow tier: a second SLURM submission; resuming a search is in make test through tests/tuning (local).
@pytest.mark.slow
def test_resubmitting_continues_the_search(tune_job, slurm, cpu_cluster_config):
    job, path, tune_dir = tune_job
    assert job["JobState"] == "COMPLETED", slurm_log(job)
    before = _results(tune_dir)
    stamps = {r["trial_id"]: (tune_dir / r["run_dir"] / "history.csv").stat().st_mtime_ns for r in before}
    again = _submit(slurm, path, tune_dir, cpu_cluster_config, "--set", "tune.max_trials=5")
    assert again["JobState"] == "COMPLETED" and again["ExitCode"] == "0:0", slurm_log(again)
    rows = _results(tune_dir)
    assert [r["trial_id"] for r in rows] == ["0", "1", "2", "3", "4"] and rows[4]["status"] == "COMPLETED"
    # the four finished trials are kept as they were, not trained again
    assert [{k: v for k, v in r.items()} for r in rows[:4]] == before
    assert {t: (tune_dir / "trials" / t / "history.csv").stat().st_mtime_ns for t in stamps} == stamps
    assert len({(r["optimizer.learning_rate"], r["model.args.base_filters"]) for r in rows}) == 5
    assert all(len((tune_dir / r["run_dir"] / "tuner_runs.jsonl").read_text().splitlines()) == 1 for r in rows)
