"""``medtf slurm CONFIG --data-workers N [--data-worker-cpus C] [--data-service-layout hetjob|separate]``.

A training job whose input pipeline runs on N CPU-only tf.data service workers (`medtf.data.service`):

    hetjob (default)  one heterogeneous job (slurm/train_data_service.sbatch): component 0 is the trainer (its GPUs,
                      the dispatcher in the batch shell), component 1 holds the N workers (``srun --het-group=1``,
                      C CPUs each). One job id; everything starts, requeues and ends together. SLURM starts
                      heterogeneous jobs from its backfill scheduler only, which books whole nodes for a planned
                      start: the two components cannot start on one node (on a single-node SLURM both pend with
                      Reason=Resources for ever), so the workers need a node of their own (e.g.
                      --data-worker-partition cpu), or use ``separate``.
    separate          the same training script without component 1, plus a job array of N worker tasks
                      (slurm/data_workers.sbatch) submitted with ``--dependency=after:TRAINING``: for sites that
                      do not allow heterogeneous jobs, or to add workers to a running training.

Both pass ``--set +data.service=auto`` to `medtf train` and export $MEDTF_DATA_SERVICE_FILE
(RUN_DIR/data_service/dispatcher.address). --submit prints the training job's id.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

LAYOUTS = ("hetjob", "separate")
# The options' defaults: one that differs was given (and must not be ignored where it means nothing).
_DEFAULTS = {"data_workers": None, "data_worker_cpus": 4, "data_worker_partition": None,
             "data_service_layout": "hetjob"}


def add_data_service_options(p, d) -> None:
    """The options of `medtf slurm` for a data-service job; ``d(value)`` gives the default (see `_add_options`)."""
    p.add_argument("--data-workers", type=int, default=d(None), metavar="N",
                   help="run the training's input pipeline on N CPU-only tf.data service workers "
                        "(sets data.service=auto)")
    p.add_argument("--data-worker-cpus", type=int, default=d(4), metavar="C",
                   help="CPUs per data worker (default 4)")
    p.add_argument("--data-worker-partition", default=d(None), metavar="P",
                   help="partition of the data workers (default: the training's), e.g. a CPU partition")
    p.add_argument("--data-service-layout", choices=LAYOUTS, default=d("hetjob"),
                   help="hetjob: one heterogeneous job (default); separate: a worker job array beside the training")


def misplaced_options(args) -> str | None:
    """Why the data-service options given do not apply to ``args.target`` (None: they do, or none was given).

    They feed `medtf train`'s input pipeline, so only `medtf slurm CONFIG --data-workers N` takes them; a `run` or
    `convert` job has no tf.data service and would silently ignore them.
    """
    given = [f"--{key.replace('_', '-')}" for key, default in _DEFAULTS.items()
             if getattr(args, key, default) != default]
    if not given:
        return None
    if args.target in ("run", "convert", "roulette", "status"):
        return (f"{', '.join(given)}: only a training job (medtf slurm CONFIG --data-workers N) runs its input "
                f"pipeline on tf.data service workers; `medtf slurm {args.target}` has none")
    if args.data_workers is None:
        return f"{', '.join(given)} go with --data-workers N (the number of tf.data service workers)"
    return None


def _values(spec, cluster, template: str, name: str) -> dict:
    """The placeholders the partials (doc, header, env, requeue) need, as `medtf.hpc.slurm.render_job` fills them."""
    from medtf.hpc.slurm import sbatch_options, time_seconds

    run_dir = Path(spec.run_dir).absolute()
    return {
        "template": template, "script_name": f"{name}.sbatch", "job_name": name, "time": spec.time,
        "log_dir": shlex.quote(str(run_dir / "slurm")),
        "output_pattern": "%x-%A_%a.out" if spec.array else "%x-%j.out",
        "sbatch_options": "\n".join(sbatch_options(spec, cluster)),
        "env_setup": cluster.env_setup(), "workdir": shlex.quote(str(Path(spec.workdir).absolute())),
        "run_dir": shlex.quote(str(run_dir)), "medtf": cluster.medtf,
        "signal_seconds": min(int(cluster.signal_seconds), max(60, time_seconds(spec.time) // 2)),
        "max_requeues": int(cluster.max_requeues),
        "config": shlex.quote(str(Path(spec.config).absolute())) if spec.config else "",
        "overrides": " ".join(f"--set {shlex.quote(o)}" for o in spec.overrides),
        "array": spec.array or "",
    }


def render_scripts(spec, cluster, workers: int, cpus: int, layout: str, training_id: str = "TRAINING_JOB_ID",
                   partition: str | None = None):
    """``(training script, worker array script or None)`` for a data-service training job."""
    from dataclasses import replace

    from medtf.hpc.slurm import JobSpec, SlurmError, render_template, sbatch_options, template_dir

    if workers < 1 or cpus < 1:
        raise SlurmError(f"--data-workers and --data-worker-cpus must be >= 1 (got {workers}, {cpus})")
    if layout not in LAYOUTS:
        raise SlurmError(f"--data-service-layout must be one of {LAYOUTS}, got {layout!r}")
    if spec.tune or spec.array or spec.nodes > 1 or spec.tasks_per_node > 1:
        raise SlurmError("--data-workers goes with a single-node training (one task, its GPUs): not with --tune, "
                         "--array, --nodes or --tasks-per-node")
    name = spec.job_name or Path(spec.config).stem
    if spec.gpus_per_node > 1:  # as train_multigpu.sbatch: one process, MirroredStrategy
        spec = replace(spec, overrides=["+train.strategy=mirrored", *spec.overrides])
    worker_spec = JobSpec(command=["data-service", "worker"], run_dir=spec.run_dir, time=spec.time,
                          partition=partition or spec.partition, account=spec.account, cpus_per_task=cpus,
                          workdir=spec.workdir)
    values = _values(spec, cluster, "train_data_service.sbatch", name)
    values.update(data_workers=workers, data_worker_cpus=cpus, worker_component="", worker_launch="",
                  layout_note=f"a separate job array, {name}-workers" if layout == "separate"
                  else "component 1 of this heterogeneous job")
    if layout == "hetjob":
        values["worker_component"] = "\n".join(
            ["#SBATCH hetjob", f"#SBATCH --ntasks={workers}", f"#SBATCH --time={spec.time}"]
            + sbatch_options(worker_spec, cluster))
        values["worker_launch"] = (
            "# One worker per task of component 1; each logs to its own file. Component 1 starts on other\n"
            "# node(s) than component 0 (SLURM's backfill books whole nodes): on a single-node cluster use\n"
            "# --data-service-layout separate.\n"
            f"srun --het-group=1 --kill-on-bad-exit=0 --output={values['log_dir']}/data-worker-%j-%t.out \\\n"
            f"    {cluster.medtf} data-service worker --address-file \"$MEDTF_DATA_SERVICE_FILE\" &\n"
            "MEDTF_WORKERS=$!")
    training = render_template((template_dir() / "train_data_service.sbatch").read_text(), values)
    if layout == "hetjob":
        return training, None
    worker_values = _values(replace(worker_spec, array=f"0-{workers - 1}"), cluster, "data_workers.sbatch",
                            f"{name}-workers")
    worker_values["sbatch_options"] += f"\n#SBATCH --dependency=after:{training_id}"
    address = Path(spec.run_dir).absolute() / "data_service" / "dispatcher.address"
    worker_values.update(data_worker_cpus=cpus, address_file=shlex.quote(str(address)))
    return training, render_template((template_dir() / "data_workers.sbatch").read_text(), worker_values)


def _write(script: str, run_dir: str, name: str) -> Path:
    folder = Path(run_dir).absolute() / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.sbatch"
    path.write_text(script)
    path.chmod(0o755)
    return path


def data_service_jobs(args, spec, cluster) -> int:
    """Print (--dry-run) or write and submit the training job and, with ``separate``, its worker array."""
    from medtf.hpc.slurm import submit

    workers, cpus, layout = args.data_workers, args.data_worker_cpus, args.data_service_layout
    partition = args.data_worker_partition
    training, worker_script = render_scripts(spec, cluster, workers, cpus, layout, partition=partition)
    if not args.submit:
        sys.stdout.write(training)
        if worker_script:
            sys.stdout.write("\n# ==== worker array: submitted after the training job (TRAINING_JOB_ID) ====\n")
            sys.stdout.write(worker_script)
        return 0
    name = spec.job_name or Path(spec.config).stem
    path = _write(training, spec.run_dir, name)
    training_id = submit(path)
    message = f"submitted {path} as job {training_id} ({workers} data workers"
    if layout == "separate":
        _, worker_script = render_scripts(spec, cluster, workers, cpus, layout, training_id, partition)
        worker_path = _write(worker_script, spec.run_dir, f"{name}-workers")
        message += f": job array {submit(worker_path)} from {worker_path}"
    print(message + ")", file=sys.stderr)
    print(training_id)
    return 0

