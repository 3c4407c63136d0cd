"""SLURM job scripts for medtf: pick a template, render it, submit it with sbatch, and read a job's state back.

Templates live in the repository's ``slurm/`` folder (override with ``$MEDTF_SLURM_TEMPLATES``). They are plain
bash with two placeholder forms, chosen to stay readable and to be easy to fill by hand:

    {{name}}                  replaced by a value; a line holding only a placeholder that renders empty is dropped
    {{include partials/x.sh}} replaced by that file (rendered too)

Example:
    >>> spec = JobSpec(config="experiments/lgg_unet2d.yaml", run_dir="runs/lgg", gpus_per_node=4)
    >>> script = render_job(spec, ClusterConfig(gpu_request="gres"))   # doctest: +SKIP
    >>> "#SBATCH --gres=gpu:4" in script                               # doctest: +SKIP
    True
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from medtf.hpc.cluster_config import ClusterConfig

TEMPLATES = {"gpu": "train_gpu.sbatch", "multigpu": "train_multigpu.sbatch", "multinode": "train_multinode.sbatch",
             "array": "train_array.sbatch", "command": "command.sbatch", "tune": "tune.sbatch",
             "convert": "convert.sbatch", "roulette": "roulette.sbatch"}
# Kinds whose processes build and run a model: they get the GPUs asked for (other commands run on CPUs).
_GPU_KINDS = {"gpu", "multigpu", "multinode", "array", "tune", "roulette"}
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
_INCLUDE = re.compile(r"\{\{\s*include\s+([\w./-]+)\s*\}\}")
_TIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d{2}):(\d{2})$")


class SlurmError(RuntimeError):
    pass


def template_dir() -> Path:
    if os.environ.get("MEDTF_SLURM_TEMPLATES"):
        return Path(os.environ["MEDTF_SLURM_TEMPLATES"])
    return Path(__file__).resolve().parents[2] / "slurm"


def render_template(text: str, values: Mapping[str, object], base: Path | None = None, _depth: int = 0) -> str:
    """Fill ``{{include ...}}`` and ``{{name}}`` placeholders; unknown names are an error, not a silent blank."""
    base = base or template_dir()
    if _depth > 5:
        raise SlurmError("template includes nest deeper than 5 levels")
    text = _INCLUDE.sub(lambda m: render_template((base / m.group(1)).read_text(), values, base, _depth + 1)
                        .rstrip("\n"), text)
    missing = sorted({m.group(1) for m in _PLACEHOLDER.finditer(text)} - set(values))
    if missing:
        raise SlurmError(f"template placeholders without a value: {missing}")
    lines = []
    for line in text.splitlines():
        rendered = _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), line)
        if _PLACEHOLDER.fullmatch(line.strip()) and not rendered.strip():
            continue  # an optional block (e.g. no extra #SBATCH options) leaves no blank line behind
        lines.append(rendered.rstrip())
    return "\n".join(lines) + "\n"


def time_seconds(text: str) -> int:
    """``[D-]HH:MM:SS`` -> seconds (SLURM's --time form)."""
    match = _TIME.match(text.strip())
    if not match:
        raise SlurmError(f"--time {text!r}: expected HH:MM:SS or D-HH:MM:SS")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


@dataclass
class JobSpec:
    """What one job should do and how much it asks for.

    Args:
        config: experiment YAML (training jobs) — made absolute, jobs start in ``workdir``.
        run_dir: the run directory; the script and SLURM logs go to ``run_dir/slurm/``.
        command: for a non-training job, the medtf arguments (e.g. ``["convert", "lgg-mri", ...]``).
        resumable: the command resumes when run again (``medtf convert``, its tasks and merge): the job requeues
            itself when preempted, and with ``array`` runs one command per task (convert.sbatch; a resumable
            ``medtf roulette`` command: roulette.sbatch, with ``gpus_per_node`` GPUs per task).
        cpus_per_task: CPUs per task (default: the cluster config's), e.g. a conversion's ``--workers``.
        nodes, gpus_per_node, tasks_per_node: 1 / 1 / 1 -> single-GPU template; G > 1 -> MirroredStrategy;
            N > 1 or T > 1 -> N x T workers (srun tasks) with MultiWorkerMirroredStrategy, T per node (1: each
            worker uses all GPUs of its node; T = G: one worker per GPU); gpus_per_node 0 -> a CPU job.
        array: ``--array`` spec (one task per fold: the task id becomes ``data.fold``).
        overrides: ``--set`` values passed to ``medtf train``.
        after: job ids this job waits for (``afterok``; cancelled if one of them fails).
        tune, workers: a `medtf tune` search instead of one training run: a chief (the keras-tuner oracle, in the
            batch shell) and ``workers`` srun tasks spread over ``nodes``, each training one trial at a time on
            one GPU of its node (``gpus_per_node`` GPUs requested per node; 0: CPU workers). ``run_dir`` is the
            tune directory.
    """

    config: str | None = None
    run_dir: str = "runs/job"
    command: Sequence[str] = ()
    nodes: int = 1
    gpus_per_node: int = 1
    tasks_per_node: int = 1
    time: str = "01:00:00"
    partition: str | None = None
    account: str | None = None
    array: str | None = None
    overrides: Sequence[str] = ()
    after: Sequence[str] = ()
    job_name: str | None = None
    workdir: str = field(default_factory=os.getcwd)
    tune: bool = False
    workers: int = 1
    resumable: bool = False
    cpus_per_task: int | None = None

    def kind(self) -> str:
        if self.command:
            if self.resumable:
                return "roulette" if self.command[0] == "roulette" else "convert"
            return "command"
        if self.tune:
            return "tune"
        if self.array:
            return "array"
        if self.nodes > 1 or self.tasks_per_node > 1:
            return "multinode"
        return "multigpu" if self.gpus_per_node > 1 else "gpu"


def sbatch_options(spec: JobSpec, cluster: ClusterConfig) -> list[str]:
    """The optional #SBATCH options: partition, account, GPUs, CPUs, memory, dependencies, site extras."""
    options = []
    if spec.partition or cluster.partition:
        options.append(f"--partition={spec.partition or cluster.partition}")
    if spec.account or cluster.account:
        options.append(f"--account={spec.account or cluster.account}")
    gpus = spec.gpus_per_node if spec.kind() in _GPU_KINDS else 0
    if cluster.gpu_option(gpus):
        options.append(cluster.gpu_option(gpus))
    cpus = spec.cpus_per_task or cluster.cpus(gpus)
    if cpus:
        options.append(f"--cpus-per-task={cpus}")
    if cluster.mem:
        options.append(f"--mem={cluster.mem}")
    if spec.after:
        # kill-on-invalid-dep: a failed prerequisite cancels this job instead of leaving it pending forever.
        options += [f"--dependency=afterok:{':'.join(str(a) for a in spec.after)}", "--kill-on-invalid-dep=yes"]
    options += list(cluster.sbatch)
    return [f"#SBATCH {o}" for o in options]


def render_job(spec: JobSpec, cluster: ClusterConfig | None = None) -> str:
    """The complete job script for ``spec`` on ``cluster`` (no files written)."""
    cluster = cluster or ClusterConfig()
    kind = spec.kind()
    if not spec.command and not spec.config:
        raise SlurmError("a training job needs an experiment config")
    if kind == "tune":
        _check_tune(spec)
    if spec.nodes < 1 or spec.tasks_per_node < 1 or spec.gpus_per_node < 0:
        raise SlurmError(f"--nodes and --tasks-per-node must be >= 1 and --gpus-per-node >= 0 (got {spec.nodes}, "
                         f"{spec.tasks_per_node}, {spec.gpus_per_node})")
    if spec.gpus_per_node and spec.gpus_per_node % spec.tasks_per_node:
        raise SlurmError(f"--gpus-per-node {spec.gpus_per_node} does not split evenly over "
                         f"--tasks-per-node {spec.tasks_per_node}")
    if spec.array and (spec.nodes > 1 or spec.tasks_per_node > 1):
        raise SlurmError("--array with several nodes or tasks is not supported: one array task per fold runs "
                         "as one process on one node")
    limit = time_seconds(spec.time)
    run_dir = Path(spec.run_dir).absolute()
    overrides = list(spec.overrides)
    if kind == "array" and spec.gpus_per_node > 1:  # each fold on several GPUs of its node
        overrides.insert(0, "+train.strategy=mirrored")
    name = spec.job_name or (Path(spec.config).stem if spec.config else f"medtf-{spec.command[0]}")
    values = {
        "template": TEMPLATES[kind], "script_name": f"{name}.sbatch", "job_name": name, "time": spec.time,
        "nodes": spec.nodes, "gpus_per_node": spec.gpus_per_node, "tasks_per_node": spec.tasks_per_node,
        "array": spec.array or "",
        "array_option": f"#SBATCH --array={spec.array}" if spec.array else "",
        "log_dir": shlex.quote(str(run_dir / "slurm")),
        "output_pattern": "%x-%A_%a.out" if spec.array and kind in ("array", "convert", "roulette") else "%x-%j.out",
        "sbatch_options": "\n".join(sbatch_options(spec, cluster)),
        "env_setup": cluster.env_setup(), "workdir": shlex.quote(str(Path(spec.workdir).absolute())),
        "run_dir": shlex.quote(str(run_dir)), "medtf": cluster.medtf,
        "config": shlex.quote(str(Path(spec.config).absolute())) if spec.config else "",
        "overrides": " ".join(f"--set {shlex.quote(o)}" for o in overrides),
        # USR1 must come before the limit but not at the start; SLURM's timer resolution is ~60 s.
        "signal_seconds": min(int(cluster.signal_seconds), max(60, limit // 2)),
        "max_requeues": int(cluster.max_requeues),
        "command": " ".join(shlex.quote(str(c)) for c in spec.command),
        "workers": spec.workers,
    }
    return render_template((template_dir() / TEMPLATES[kind]).read_text(), values)


def _check_tune(spec: JobSpec) -> None:
    if spec.workers < 1:
        raise SlurmError(f"--workers must be >= 1 (got {spec.workers})")
    if spec.array:
        raise SlurmError("--tune and --array exclude each other (the tuner picks the trials)")
    if spec.tasks_per_node != 1:
        raise SlurmError("--tune places its workers with --workers (spread over --nodes), not --tasks-per-node")
    if spec.nodes > spec.workers:
        raise SlurmError(f"--nodes {spec.nodes} > --workers {spec.workers}: a node without a worker would idle")


def write_job(spec: JobSpec, cluster: ClusterConfig | None = None) -> Path:
    """Render and write the script to ``run_dir/slurm/<job name>.sbatch`` (creating the log folder)."""
    script = render_job(spec, cluster)
    folder = Path(spec.run_dir).absolute() / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    name = re.search(r"^#SBATCH --job-name=(.+)$", script, re.M).group(1)
    path = folder / f"{name}.sbatch"
    path.write_text(script)
    path.chmod(0o755)
    return path


def submit(script: str | os.PathLike, env: Mapping[str, str] | None = None) -> str:
    """``sbatch --parsable SCRIPT`` -> the job id (raises `SlurmError` with sbatch's message)."""
    try:
        proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, env=env,
                              timeout=60)
    except FileNotFoundError:
        raise SlurmError("sbatch not found: submit from a SLURM login node") from None
    if proc.returncode != 0:
        raise SlurmError(f"sbatch failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout.strip().split(";")[0]


def parse_scontrol(text: str) -> list[dict[str, str]]:
    """``scontrol show job -o`` output -> one dict per job (array tasks are separate jobs)."""
    jobs = []
    for line in text.splitlines():
        if not line.strip():
            continue
        # Values may contain spaces (paths, comments): split only before the next `Key=`.
        parts = re.split(r" (?=[A-Za-z][A-Za-z0-9_:/]*=)", line.strip())
        jobs.append(dict(p.split("=", 1) for p in parts if "=" in p))
    return jobs


def job_info(job_id: str, env: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """Every record SLURM still holds for ``job_id`` (an array gives one per task); [] when it is unknown."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True, env=env,
                          timeout=60)
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:
            return []
        raise SlurmError(f"scontrol failed ({proc.returncode}): {proc.stderr.strip()}")
    return parse_scontrol(proc.stdout)


STATUS_FIELDS = ("JobId", "ArrayTaskId", "JobName", "JobState", "Reason", "RunTime", "TimeLimit", "NodeList",
                 "Restarts", "ExitCode", "StdOut")


def summarize(jobs: Sequence[Mapping[str, str]]) -> str:
    """A short report: one line per job / array task, then a count per state."""
    if not jobs:
        return "no such job (unknown id, or finished longer ago than the controller keeps jobs: MinJobAge)"
    lines = []
    for job in jobs:
        task = f"[{job['ArrayTaskId']}]" if job.get("ArrayTaskId") else ""
        lines.append(f"{job.get('JobId')}{task} {job.get('JobName')}: {job.get('JobState')}"
                     f" (reason {job.get('Reason')}) elapsed {job.get('RunTime')} of {job.get('TimeLimit')}"
                     f" nodes {job.get('NodeList') or '-'} restarts {job.get('Restarts', '0')}"
                     f" exit {job.get('ExitCode')}\n    log {job.get('StdOut')}")
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.get("JobState", "?")] = counts.get(job.get("JobState", "?"), 0) + 1
    lines.append(f"{len(jobs)} job(s): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return "\n".join(lines)
