"""`medtf slurm CONFIG --data-workers N`: the heterogeneous job and the two-job variant, as rendered (bash -n)."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.conftest import run_medtf
from tests.training.conftest import tiny_config


@pytest.fixture
def job_files(service_shards, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(service_shards)))
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({"partition": "gpu", "cpus_per_gpu": 8, "gpu_request": "gres"}))
    return config, cluster, tmp_path / "run"


def _render(capsys, *args) -> str:
    capsys.readouterr()
    code = run_medtf("slurm", *map(str, args))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _bash_syntax_ok(script: str) -> None:
    proc = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_heterogeneous_job(job_files, capsys):
    config, cluster, run_dir = job_files
    out = _render(capsys, config, "--gpus-per-node", 2, "--data-workers", 3, "--data-worker-cpus", 6,
                  "--run-dir", run_dir, "--cluster-config", cluster)
    trainer, workers = out.split("#SBATCH hetjob\n")
    header = lambda text: re.findall(r"^#SBATCH (.+)$", text, re.M)  # noqa: E731
    assert {"--gres=gpu:2", "--cpus-per-task=16", "--partition=gpu", "--nodes=1", "--ntasks=1"} <= set(header(trainer))
    worker_options = header(workers.split("set -euo pipefail")[0])
    assert worker_options == ["--ntasks=3", "--time=01:00:00", "--partition=gpu", "--cpus-per-task=6"]
    assert "srun --het-group=1" in workers and f"--output={run_dir}/slurm/data-worker-%j-%t.out" in workers
    assert f'export MEDTF_DATA_SERVICE_FILE="$SERVICE_DIR/dispatcher.address"' in out
    assert "data-service dispatcher --work-dir" in out and "data-service worker --address-file" in out
    assert re.search(r"medtf train \S+ --run-dir \"\$RUN_DIR\" --set \+data.service=auto "
                     r"--set \+train.strategy=mirrored$", out, re.M), out
    _bash_syntax_ok(out)


def test_two_job_variant(job_files, capsys):
    config, cluster, run_dir = job_files
    out = _render(capsys, config, "--gpus-per-node", 1, "--data-workers", 4, "--data-worker-cpus", 2,
                  "--data-worker-partition", "cpu",
                  "--data-service-layout", "separate", "--run-dir", run_dir, "--cluster-config", cluster)
    trainer, workers = out.split("# ==== worker array")
    assert "hetjob" not in trainer and "srun" not in trainer and "--set +data.service=auto" in trainer
    assert "#SBATCH --array=0-3" in workers and "#SBATCH --dependency=after:TRAINING_JOB_ID" in workers
    assert "#SBATCH --cpus-per-task=2" in workers and "--gres" not in workers
    assert "#SBATCH --partition=cpu" in workers and "#SBATCH --partition=gpu" in trainer
    assert f"data-service worker --address-file {run_dir}/data_service/dispatcher.address" in workers
    _bash_syntax_ok(trainer)
    _bash_syntax_ok("#!/bin/bash\n" + workers.split("#!/bin/bash\n", 1)[1])


@pytest.mark.parametrize("extra, message", [(["--data-workers", 0], "--data-workers and --data-worker-cpus must be"),
                                            (["--data-workers", 2, "--array", "0-1"], "single-node training")])
def test_refused(job_files, capsys, extra, message):
    config, cluster, run_dir = job_files
    capsys.readouterr()
    assert run_medtf("slurm", config, *map(str, extra), "--run-dir", run_dir, "--cluster-config", cluster) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("target", ["run", "convert"])
def test_data_workers_outside_a_training_job_are_refused(target, job_files, capsys, tmp_path):
    """`--data-workers` on a job with no tf.data service fails, naming the option (it used to be ignored)."""
    _, cluster, run_dir = job_files
    args = {"run": ["run", "--data-workers", 2, "--run-dir", run_dir, "--", "evaluate", "x"],
            "convert": ["convert", "lgg-mri", "--input", tmp_path, "--output", tmp_path / "out", "--num-tasks", 2,
                        "--data-workers", 2, "--data-worker-cpus", 3, "--run-dir", run_dir]}[target]
    capsys.readouterr()
    code = run_medtf("slurm", *map(str, args), "--cluster-config", str(cluster))
    out, err = capsys.readouterr()
    assert code == 2 and out == "", out
    assert err.startswith(f"medtf slurm {target}: --data-workers") and "only a training job" in err, err
    assert ("--data-worker-cpus" in err) == (target == "convert"), err
    assert not (run_dir / "slurm").exists()  # nothing written


def test_data_worker_options_without_data_workers_are_refused(job_files, capsys):
    config, cluster, run_dir = job_files
    capsys.readouterr()
    code = run_medtf("slurm", str(config), "--data-worker-cpus", "8", "--data-service-layout", "separate",
                     "--run-dir", str(run_dir), "--cluster-config", str(cluster))
    err = capsys.readouterr().err
    assert code == 2 and "--data-worker-cpus, --data-service-layout go with --data-workers N" in err, err
