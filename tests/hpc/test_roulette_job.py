"""Model roulette as SLURM jobs: `medtf slurm roulette` renders a requeueing array of candidate tasks + a merge job
that waits for it (dry run), and on a real (private) SLURM 2 tasks score one untrained candidate each on one
cross-validation fold of tiny prostate data, then the merge keeps the best recorded score (the loss: tiny folds give
AUC ties, so the best is the argmin)."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import TEST_SALT, run_medtf
from tests.hpc.conftest import slurm_log, wait_for_job

REPO = Path(__file__).resolve().parents[2]
SIZE = 32


@pytest.fixture(scope="module")
def prostate_config(hpc_root) -> Path:
    """4 small synthetic PROSTATEx patients (32 mm field of view, 6 T2 slices), 32x32 T2/DWI/ADC crops dealt into 2
    folds; the shipped VGG-ELU experiment pointed at them."""
    from medtf.synth.prostate_mpmri import generate_prostate_mpmri

    generate_prostate_mpmri(hpc_root / "src_prostate", cases=4, seed=5, fov_mm=32.0, t2_slices=6, t2_spacing=1.0,
                            sagittal=False)
    data = hpc_root / "prostate_folds"
    assert run_medtf("convert", "prostate-mpmri", "--input", hpc_root / "src_prostate", "--output", data,
                     "--id-salt", TEST_SALT, "--patch-mm", SIZE, "--patch-size", SIZE, "--no-alignment-pngs",
                     "--folds", 2, "--split", "1") == 0
    config = yaml.safe_load((REPO / "experiments/prostate_vgg_elu.yaml").read_text())
    config["data"].update(dir=str(data), batch_size=4, selection_fold="outer")  # 2 folds: no inner selection fold
    config["model"]["args"]["input_shape"] = [SIZE, SIZE]
    path = hpc_root / "prostate_roulette.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _sbatch_lines(script: str) -> list[str]:
    return [line.split(None, 1)[1] for line in script.splitlines() if line.startswith("#SBATCH")]


def test_render_roulette_array_and_merge(prostate_config, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MEDTF_CLUSTER_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no site cluster config
    out = tmp_path / "roulette"
    capsys.readouterr()
    assert run_medtf("slurm", "roulette", prostate_config, "--candidates", 4, "--num-tasks", 2, "--fold", 0,
                     "--metric", "val_auc", "--out", out, "--time", "00:30:00", "--after", 17) == 0
    tasks, merge = capsys.readouterr().out.split(
        "\n# ==== merge job: submitted after the array, ARRAY_JOB_ID is the array's job id ====\n")
    for script in (tasks, merge):
        proc = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
        assert proc.returncode == 0, proc.stderr + script
        assert "{{" not in script and "scontrol requeue" in script and "(roulette.sbatch)" in script
    opts = _sbatch_lines(tasks)
    assert {"--array=0-1", "--requeue", "--gpus-per-node=1", "--time=00:30:00", "--dependency=afterok:17",
            "--job-name=roulette-prostate_roulette", f"--output={out}/slurm/%x-%A_%a.out"} <= set(opts), opts
    command = (f"run_resumable medtf roulette {prostate_config} --candidates 4 --out {out} --set +data.fold=0")
    assert re.search(rf"^{re.escape(command)} --warmup-steps 0 --num-tasks 2 --metric val_auc$", tasks, re.M), tasks
    opts = _sbatch_lines(merge)
    assert {"--job-name=roulette-prostate_roulette-merge", "--dependency=afterok:ARRAY_JOB_ID",
            "--kill-on-invalid-dep=yes", f"--output={out}/slurm/%x-%j.out"} <= set(opts), opts
    assert not any(o.startswith("--array") or "gpu" in o for o in opts)  # ranking needs no GPU
    assert re.search(rf"^{re.escape(command)} --merge$", merge, re.M), merge

    # Refused before anything is queued or written: a test split, training-only job options, more tasks than
    # candidates.
    for args, message in ((["--set", "+data.val_split=test"], "refuses to select on 'test'"),
                          (["--nodes", "2"], "--nodes: not for roulette"),
                          (["--num-tasks", "5"], "need 1 <= --num-tasks (5) <= --candidates (4)")):
        assert run_medtf("slurm", "roulette", prostate_config, "--candidates", 4, "--out", out,
                         *(["--num-tasks", "2"] if "--num-tasks" not in args else []), *args, "--submit") == 2
        assert message in capsys.readouterr().err
    assert not out.exists()


def test_roulette_array_then_merge_on_slurm(slurm, prostate_config, cpu_cluster_config, hpc_root, capsys):
    out = hpc_root / "roulette-fold0"
    capsys.readouterr()
    assert run_medtf("slurm", "roulette", prostate_config, "--candidates", 2, "--num-tasks", 2, "--fold", 0,
                     "--metric", "val_loss", "--out", out, "--keep-all", "--gpus-per-node", 0, "--time", "00:05:00",
                     "--cluster-config", cpu_cluster_config, "--submit") == 0
    captured = capsys.readouterr()
    merge_id = captured.out.split()[-1]
    array_id = re.search(r"as job array (\d+)", captured.err).group(1)
    for k in (0, 1):
        job = wait_for_job(f"{array_id}_{k}", timeout=120)
        log = slurm_log(job)
        assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", log
        assert f"task {k}/2: scored 1 candidate(s)" in log, log
    job = wait_for_job(merge_id, timeout=60)
    log = slurm_log(job)
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", log
    assert "best of 2: seed" in log and "on fold-0" in log, log

    # Every candidate was scored exactly once (candidate i by task i mod 2), on fold 0.
    records = [json.loads(p.read_text()) for p in sorted((out / "candidates").glob("seed-*.json"))]
    assert sorted(r["candidate"] for r in records) == [0, 1]
    assert {(r["split"], r["metric"], r["mode"]) for r in records} == {("fold-0", "loss", "min")}
    with open(out / "roulette.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["candidate"]) for r in rows] == [0, 1] and [int(r["seed"]) for r in rows] == [0, 1]
    scores = [float(r["loss"]) for r in rows]
    assert scores == [r["score"] for r in sorted(records, key=lambda r: r["candidate"])]
    assert len(set(scores)) == 2, scores  # two different initialisations: the choice is real

    # The merged best.keras is the candidate with the best (lowest) recorded loss, byte for byte.
    best = int(np.argmin(scores))
    summary = json.loads((out / "roulette.json").read_text())
    assert summary["best"]["seed"] == best and summary["split"] == "fold-0"
    winner = (out / "best.keras").read_bytes()
    for seed in range(2):
        assert ((out / "candidates" / f"seed-{seed}.keras").read_bytes() == winner) == (seed == best), seed
