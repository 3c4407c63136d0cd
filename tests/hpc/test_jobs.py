"""Rendered job scripts run through a real (private, single-node) SLURM: sbatch, dependencies, status, requeue."""

from __future__ import annotations

import csv
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_medtf
from tests.hpc.conftest import scontrol_job, slurm_log, submit, submitted_id, tiny_config, wait_for_job

REPO = Path(__file__).resolve().parents[2]



def history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished_training(slurm, tiny_config_file, cpu_cluster_config, hpc_root):
    """One CPU training job submitted with `medtf slurm --submit` and run to its end."""
    run_dir = hpc_root / "runs" / "single"
    proc = subprocess.run([".venv/bin/medtf", "slurm", str(tiny_config_file), "--gpus-per-node", "0", "--time",
                           "00:10:00", "--run-dir", str(run_dir), "--cluster-config", str(cpu_cluster_config),
                           "--set", "train.epochs=2", "--submit"],
                          cwd=REPO, env=slurm.env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    job_id = submitted_id(proc.stdout)
    job = wait_for_job(job_id, timeout=180)
    return job_id, job, run_dir


def test_training_job_runs_to_completion(finished_training):
    job_id, job, run_dir = finished_training
    log = slurm_log(job)
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", log
    assert job["Restarts"] == "0" and "gpu" not in job.get("TresPerNode", "")
    rows = history(run_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert (run_dir / "checkpoints" / "last.keras").is_file() and (run_dir / "checkpoints" / "best.keras").is_file()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"] == 2
    assert list((run_dir / "logs").rglob("events.out.tfevents*"))
    assert not (run_dir / "backup").exists()  # a finished run leaves no backup (nothing to requeue)
    assert Path(job["StdOut"]) == run_dir / "slurm" / f"tiny-{job_id}.out"
    assert f"medtf-slurm: job {job_id} start 1" in log and "requeueing" not in log


def test_status_reports_the_state(finished_training, capsys):
    job_id, _, run_dir = finished_training
    capsys.readouterr()
    assert run_medtf("slurm", "status", job_id) == 0
    out = capsys.readouterr().out
    assert re.search(rf"^{job_id} tiny: COMPLETED \(reason None\) elapsed \S+ of 00:10:00 nodes \S+ restarts 0 "
                     r"exit 0:0$", out, re.M), out
    assert "1 job(s): COMPLETED 1" in out and str(run_dir / "slurm") in out
    assert run_medtf("slurm", "status", "999999") == 1
    assert "no such job" in capsys.readouterr().out


def test_failed_dependency_cancels_the_next_job(slurm, tiny_config_file, cpu_cluster_config, hpc_root, capsys):
    chain = hpc_root / "runs" / "chain"
    convert = submit(capsys, "run", "--run-dir", chain, "--cluster-config", cpu_cluster_config, "--time", "00:05:00",
                     "--", "convert", "lgg-mri", "--input", hpc_root / "does-not-exist", "--output", chain / "shards")
    train = submit(capsys, tiny_config_file, "--gpus-per-node", "0", "--run-dir", chain, "--cluster-config",
                   cpu_cluster_config, "--after", convert)
    first = wait_for_job(convert, timeout=120)
    assert first["JobState"] == "FAILED" and first["ExitCode"] != "0:0", slurm_log(first)
    second = wait_for_job(train, timeout=30)
    assert second["JobState"] == "CANCELLED" and second["Reason"] == "DependencyNeverSatisfied"
    assert second["Dependency"].startswith(f"afterok:{convert}")
    assert not (chain / "history.csv").exists() and not (chain / "slurm" / f"tiny-{train}.out").exists()
    capsys.readouterr()
    assert run_medtf("slurm", "status", train) == 0
    assert "CANCELLED (reason DependencyNeverSatisfied)" in capsys.readouterr().out


# Slow tier: tests/hpc/test_multiworker_preemption.py runs the same trap + requeue partial (slurm/partials/requeue.sh)
# on a 2-task job in `make test`; this single-task variant adds a minute of SLURM time.
@pytest.mark.slow
def test_preempted_job_requeues_and_resumes(slurm, lgg_tiny, cpu_cluster_config, hpc_root, capsys):
    epochs = 12
    config = hpc_root / "slow.yaml"
    # ~60 steps of ~17 ms: epochs last about a second, long enough to signal one mid-run.
    config.write_text(yaml.safe_dump(tiny_config(lgg_tiny, epochs=epochs, steps_per_epoch=60)))
    run_dir = hpc_root / "runs" / "preempt"
    job_id = submit(capsys, config, "--gpus-per-node", "0", "--time", "00:10:00", "--run-dir", run_dir,
                    "--cluster-config", cpu_cluster_config)
    end = time.monotonic() + 120
    while time.monotonic() < end:  # signal once the first epoch is logged and backed up
        if (run_dir / "history.csv").exists() and len(history(run_dir)) >= 1 \
                and (run_dir / "backup" / "training_metadata.json").exists():
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"no epoch logged in time: {slurm_log(scontrol_job(job_id))}")
    done_before = len(history(run_dir))
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], env=slurm.env, check=True)
    job = wait_for_job(job_id, timeout=150, states={"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})
    log = slurm_log(job)
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1", log
    assert log.count(f"medtf-slurm: job {job_id} start") == 2 and "requeueing job" in log, log
    second_start = log.split(f"medtf-slurm: job {job_id} start 2")[1]
    resumed_at = int(re.search(r"Epoch (\d+)/", second_start).group(1)) - 1  # 0-based epoch the 2nd start ran first
    assert 1 <= resumed_at <= done_before + 1, log
    # history.csv ends with the resumed run's epochs, each once, up to the last (older rows may precede them when
    # the engine continues the file on resume).
    epochs_logged = [int(r["epoch"]) for r in history(run_dir)]
    assert epochs_logged[-(epochs - resumed_at):] == list(range(resumed_at, epochs)), epochs_logged
    assert len(epochs_logged) == len(set(epochs_logged)), epochs_logged
    assert (run_dir / "checkpoints" / "last.keras").is_file() and not (run_dir / "backup").exists()
    # With the callback the interrupted epoch is saved mid-way and restarted, not lost.
    match = re.search(r"medtf: preempted at epoch (\d+) batch (\d+)", log)
    assert match, log
    assert int(match.group(1)) - 1 == resumed_at


PROBE = '''
"""Stands in for `medtf` inside a job: records what the job script gave one task (argv, SLURM/medtf variables)
and, for a multi-worker run, the cluster that medtf.hpc.workers.slurm_cluster_resolver builds from them."""
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
run_dir = Path(args[args.index("--run-dir") + 1])
run_dir.mkdir(parents=True, exist_ok=True)
record = {"argv": args, "procid": os.environ["SLURM_PROCID"], "array_task": os.environ.get("SLURM_ARRAY_TASK_ID"),
          "port_base": os.environ.get("MEDTF_PORT_BASE")}
if "+train.strategy=multiworker" in args:
    from medtf.hpc.workers import slurm_cluster_resolver

    resolver = slurm_cluster_resolver()
    record["cluster"] = resolver.cluster_spec().as_dict()
    record["task"] = [resolver.task_type, resolver.task_id]
(run_dir / f"probe_{record['procid']}.json").write_text(json.dumps(record))
'''


@pytest.fixture(scope="module")
def probe_cluster_config(hpc_root, cpu_cluster_config) -> Path:
    probe = hpc_root / "probe.py"
    probe.write_text(PROBE)
    path = hpc_root / "probe_cluster.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(cpu_cluster_config.read_text()), "medtf": f"python {probe}"}))
    return path


def test_two_workers_get_a_slurm_cluster(slurm, tiny_config_file, probe_cluster_config, hpc_root, capsys):
    """--tasks-per-node 2: srun starts two workers; SlurmClusterResolver gives them one 2-worker cluster."""
    import json

    run_dir = hpc_root / "runs" / "workers"
    job_id = submit(capsys, tiny_config_file, "--nodes", "1", "--tasks-per-node", "2", "--gpus-per-node", "0",
                    "--run-dir", run_dir, "--cluster-config", probe_cluster_config, "--time", "00:05:00")
    job = wait_for_job(job_id, timeout=120)
    assert job["JobState"] == "COMPLETED" and job["NumTasks"] == "2", slurm_log(job)
    records = [json.loads((run_dir / f"probe_{i}.json").read_text()) for i in (0, 1)]
    base = int(records[0]["port_base"])
    assert 20000 <= base < 40000 and records[1]["port_base"] == str(base)
    host = records[0]["cluster"]["worker"][0].split(":")[0]
    for i, record in enumerate(records):
        assert record["cluster"] == {"worker": [f"{host}:{base}", f"{host}:{base + 1}"]}
        assert record["task"] == ["worker", i]
        assert record["argv"][-2:] == ["--set", "+train.strategy=multiworker"]


def test_array_runs_one_task_per_fold(slurm, tiny_config_file, probe_cluster_config, hpc_root, capsys):
    import json

    run_dir = hpc_root / "runs" / "cv"
    job_id = submit(capsys, tiny_config_file, "--array", "0-1", "--gpus-per-node", "0", "--run-dir", run_dir,
                    "--cluster-config", probe_cluster_config, "--set", "train.epochs=1", "--time", "00:05:00")
    for task in (0, 1):
        job = wait_for_job(f"{job_id}_{task}", timeout=120)
        assert job["JobState"] == "COMPLETED" and job["ArrayTaskId"] == str(task), slurm_log(job)
        assert Path(job["StdOut"]) == run_dir / "slurm" / f"tiny-{job_id}_{task}.out"
        record = json.loads((run_dir / f"fold_{task}" / "probe_0.json").read_text())
        assert record["array_task"] == str(task)
        assert record["argv"][-4:] == ["--set", f"+data.fold={task}", "--set", "train.epochs=1"]
    capsys.readouterr()
    assert run_medtf("slurm", "status", job_id) == 0
    assert "2 job(s): COMPLETED 2" in capsys.readouterr().out
