"""`medtf slurm CONFIG --dry-run`: the rendered scripts ask for the right resources and are valid bash."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.conftest import run_medtf


@pytest.fixture(autouse=True)
def no_site_cluster_config(monkeypatch, tmp_path):
    """The machine's own ~/.config/medtf/cluster.yaml or $MEDTF_CLUSTER_CONFIG must not change what is asserted."""
    monkeypatch.delenv("MEDTF_CLUSTER_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("data: {dir: data/lgg, batch_size: 2}\nmodel: {name: unet2d_small}\nloss: {name: dice_focal}\n"
                    "train: {epochs: 1}\n")
    return path


def render(capsys, *args) -> str:
    capsys.readouterr()
    assert run_medtf("slurm", *map(str, args)) == 0
    script = capsys.readouterr().out
    proc = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr + script
    assert "{{" not in script and "}}" not in script
    return script


def sbatch_lines(script: str) -> list[str]:
    """The directives sbatch reads: #SBATCH lines before the first command."""
    lines = []
    for line in script.splitlines()[1:]:
        if line.startswith("#SBATCH"):
            lines.append(line.split(None, 1)[1])
        elif line.strip() and not line.startswith("#"):
            break
    return lines


def test_single_gpu(config_file, tmp_path, capsys):
    script = render(capsys, config_file, "--run-dir", tmp_path / "run", "--time", "02:00:00",
                    "--set", "train.epochs=3")
    opts = sbatch_lines(script)
    assert {"--nodes=1", "--ntasks=1", "--gpus-per-node=1", "--time=02:00:00", "--requeue",
            "--signal=B:USR1@300", "--open-mode=append", "--job-name=exp"} <= set(opts)
    assert f"--output={tmp_path}/run/slurm/%x-%j.out" in opts
    assert not any(o.startswith(("--gres", "--partition", "--account", "--dependency")) for o in opts)
    assert re.search(rf"run_resumable medtf train {config_file} --run-dir \"\$RUN_DIR\" --set train.epochs=3$",
                     script, re.M)
    assert f"RUN_DIR={tmp_path}/run\n" in script
    assert "scontrol requeue" in script and "trap medtf_on_usr1 USR1" in script


def test_cpu_job_has_no_gpu_request(config_file, capsys):
    opts = sbatch_lines(render(capsys, config_file, "--gpus-per-node", "0"))
    assert not any("gpu" in o for o in opts)


def test_gres_style_and_env_block_from_cluster_config(config_file, tmp_path, capsys):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({
        "partition": "gpu", "account": "def-prof", "gpu_request": "gres", "gpu_type": "v100l", "cpus_per_gpu": 6,
        "mem": "32G", "modules": ["StdEnv/2023", "python/3.11", "cuda/12.2"], "module_purge": True,
        "venv": "~/envs/medtf", "setup": ["export TF_CPP_MIN_LOG_LEVEL=2"], "sbatch": ["--mail-type=FAIL"],
        "signal_seconds": 600}))
    script = render(capsys, config_file, "--gpus-per-node", "2", "--time", "1-00:00:00", "--cluster-config",
                    cluster, "--account", "def-other")
    opts = sbatch_lines(script)
    assert {"--gres=gpu:v100l:2", "--cpus-per-task=12", "--mem=32G", "--partition=gpu", "--account=def-other",
            "--mail-type=FAIL", "--signal=B:USR1@600", "--time=1-00:00:00"} <= set(opts)
    assert "--gpus-per-node=2" not in opts
    env_block = script[script.index("module purge"):script.index("RUN_DIR=")]
    assert env_block.splitlines()[:4] == ["module purge", "module load StdEnv/2023 python/3.11 cuda/12.2",
                                          'source "$HOME"/envs/medtf/bin/activate', "export TF_CPP_MIN_LOG_LEVEL=2"]
    assert "--set +train.strategy=mirrored" in script  # several GPUs on one node: MirroredStrategy


def test_multinode(config_file, capsys):
    script = render(capsys, config_file, "--nodes", "2", "--gpus-per-node", "4")
    opts = sbatch_lines(script)
    assert {"--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=4"} <= set(opts)
    assert "--ntasks=1" not in opts
    assert "run_resumable srun --kill-on-bad-exit=1 medtf train" in script
    assert "--set +train.strategy=multiworker" in script
    assert "export MEDTF_PORT_BASE" in script and "export MEDTF_GPUS_PER_NODE=4" in script


def test_array_one_task_per_fold(config_file, tmp_path, capsys):
    script = render(capsys, config_file, "--array", "0-4%2", "--gpus-per-node", "1", "--run-dir", tmp_path / "cv")
    opts = sbatch_lines(script)
    assert "--array=0-4%2" in opts and f"--output={tmp_path}/cv/slurm/%x-%A_%a.out" in opts
    assert f"RUN_DIR={tmp_path}/cv/fold_${{FOLD}}" in script
    assert '--set +data.fold="${FOLD}"' in script and "FOLD=${SLURM_ARRAY_TASK_ID}" in script


def test_short_time_limit_signals_at_half_and_dependency(config_file, capsys):
    opts = sbatch_lines(render(capsys, config_file, "--time", "00:01:30", "--after", "41", "--after", "42"))
    assert "--signal=B:USR1@60" in opts  # never more than half of a short limit, never under SLURM's 60 s tick
    assert "--dependency=afterok:41:42" in opts and "--kill-on-invalid-dep=yes" in opts


def test_run_command_job(tmp_path, capsys):
    script = render(capsys, "run", "--run-dir", tmp_path / "prep", "--", "convert", "lgg-mri", "--input",
                    "raw dir", "--output", "data/lgg")
    assert "--job-name=medtf-convert" in sbatch_lines(script)
    assert re.search(r"^medtf convert lgg-mri --input 'raw dir' --output data/lgg$", script, re.M)
    assert "--requeue" not in script


@pytest.mark.parametrize("args, message", [
    (("missing.yaml",), "config file not found"),
    (("{cfg}", "--time", "90"), "expected HH:MM:SS"),
    (("{cfg}", "--array", "0-1", "--nodes", "2"), "not supported"),
    (("status",), "at least one job id"),
    (("{cfg}", "--set", "model.name=unet3D"), "model.name: unknown model 'unet3D' (did you mean unet3d?)"),
])
def test_bad_requests_fail_clearly(config_file, capsys, args, message):
    args = [a.replace("{cfg}", str(config_file)) for a in args]
    assert run_medtf("slurm", *args) == 2
    assert message in capsys.readouterr().err


def test_unknown_cluster_config_key(config_file, tmp_path, capsys):
    cluster = tmp_path / "c.yaml"
    cluster.write_text("partiton: gpu\n")
    assert run_medtf("slurm", config_file, "--cluster-config", cluster) == 2
    assert "unknown keys ['partiton']" in capsys.readouterr().err


def test_parse_scontrol_keeps_values_with_spaces():
    from medtf.hpc.slurm import parse_scontrol

    line = ("JobId=7 ArrayJobId=6 ArrayTaskId=1 JobName=exp JobState=PENDING Reason=Dependency "
            "Command=/tmp/a b/x.sbatch WorkDir=/tmp StdOut=/tmp/a b/slurm/exp-7.out")
    (job,) = parse_scontrol(line + "\n")
    assert job["Command"] == "/tmp/a b/x.sbatch" and job["StdOut"] == "/tmp/a b/slurm/exp-7.out"
    assert job["ArrayTaskId"] == "1" and job["Reason"] == "Dependency"


def test_convert_array_and_merge(tmp_path, capsys):
    """`slurm convert`: an array of N requeueing tasks, and a merge job that waits for all of them."""
    src = tmp_path / "raw"
    src.mkdir()
    capsys.readouterr()
    assert run_medtf("slurm", "convert", "lgg-mri", "--input", src, "--output", tmp_path / "shards", "--num-tasks", 4,
                     "--split", "0.7,0.15,0.15", "--workers", 3, "--time", "00:30:00", "--run-dir", tmp_path / "conv",
                     "--after", "17") == 0
    text = capsys.readouterr().out
    tasks, merge = text.split("\n# ==== merge job: submitted after the array, ARRAY_JOB_ID is the array's job id "
                              "====\n")
    for script in (tasks, merge):
        proc = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
        assert proc.returncode == 0, proc.stderr + script
        assert "{{" not in script and "scontrol requeue" in script and "trap medtf_on_usr1 USR1" in script
    opts = sbatch_lines(tasks)
    assert {"--array=0-3", "--requeue", "--cpus-per-task=3", "--time=00:30:00", "--job-name=convert-lgg-mri",
            f"--output={tmp_path}/conv/slurm/%x-%A_%a.out", "--dependency=afterok:17"} <= set(opts), opts
    assert not any("gpu" in o for o in opts)
    command = (f"run_resumable medtf convert lgg-mri --input {src} --output {tmp_path}/shards --num-tasks 4 "
               f"--split 0.7,0.15,0.15 --workers 3")
    assert re.search(rf"^{re.escape(command)}$", tasks, re.M), tasks
    opts = sbatch_lines(merge)
    assert {"--requeue", "--job-name=convert-lgg-mri-merge", "--dependency=afterok:ARRAY_JOB_ID",
            "--kill-on-invalid-dep=yes", f"--output={tmp_path}/conv/slurm/%x-%j.out"} <= set(opts), opts
    assert not any(o.startswith(("--array", "--cpus-per-task")) for o in opts)
    assert re.search(rf"^{re.escape(command)} --merge$", merge, re.M), merge


@pytest.mark.parametrize("args, message", [
    (("lgg-mri", "--input", "{src}", "--output", "o"), "give --num-tasks N"),
    (("lgg-mri", "--input", "{src}", "--output", "o", "--num-tasks", "2", "--task-index", "1"), "give --num-tasks N"),
    (("lgg-mri", "--input", "{src}", "--output", "o", "--num-tasks", "2", "--merge"), "give --num-tasks N"),
    (("lgg-mri", "--input", "{src}", "--output", "o", "--num-tasks", "0"), "--num-tasks must be at least 1"),
    (("lgg-mri", "--input", "{src}/nope", "--output", "o", "--num-tasks", "2"), "input folder does not exist"),
    (("lgg-mri", "--input", "{src}", "--output", "o", "--num-tasks", "2", "--spacing", "1"),
     "unrecognized arguments: --spacing 1"),
    (("mri", "--input", "{src}", "--output", "o", "--num-tasks", "2"), "unknown kind 'mri'"),
    (("--input", "{src}", "--output", "o", "--num-tasks", "2"), "give the kind first"),
    (("lgg-mri", "--input", "{src}", "--output", "o", "--num-tasks", "2", "--nodes", "2"), "--nodes are training"),
])
def test_bad_convert_requests_fail_before_submitting(tmp_path, capsys, args, message):
    args = [a.replace("{src}", str(tmp_path)) for a in args]
    assert run_medtf("slurm", "convert", *args, "--submit") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.idkey").exists()
