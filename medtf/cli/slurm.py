"""``medtf slurm``: job scripts for a SLURM cluster, rendered from the templates in slurm/.

    medtf slurm CONFIG [--nodes N] [--gpus-per-node G] [--tasks-per-node T] [--time HH:MM:SS] [--array SPEC]
                       [--partition P] [--account A] [--job-name NAME] [--set k=v ...]
                       [--run-dir DIR] [--cluster-config FILE] [--after JOBID] [--dry-run | --submit]
    medtf slurm CONFIG --tune --workers N [--nodes M] [--gpus-per-node G] ...   a `medtf tune` search job
    medtf slurm CONFIG --data-workers N [--data-worker-cpus C] [--data-service-layout hetjob|separate]
                                                 augmentation on N CPU-only tf.data service workers
    medtf slurm run [options] -- COMMAND ...     any other medtf command as a job (convert, evaluate, ...)
    medtf slurm convert KIND --input IN --output OUT --num-tasks N [convert options] [job options]
                                                 conversion as a job array of N tasks + a dependent merge job
    medtf slurm roulette CONFIG --candidates N --num-tasks K --out DIR [roulette options] [job options]
                                                 model roulette as a job array of K tasks + a dependent merge job
    medtf slurm status JOBID [JOBID ...]         state, reason, elapsed time, nodes, array tasks

The template follows from the resources: 1 GPU (or 0: a CPU job), several GPUs on one node (MirroredStrategy),
several nodes or tasks (N x T workers, MultiWorkerMirroredStrategy), or --array (one task per fold); with --tune,
a keras-tuner search: one chief (the oracle) and --workers N workers spread over --nodes, one GPU each
(RUN_DIR is then the tune directory, default runs/<config name>-tune).
Options may come before or after CONFIG. --dry-run (the default) prints the script; --submit writes it to
RUN_DIR/slurm/NAME.sbatch, submits it and prints only the job id on stdout, so chains read naturally:

    conv=$(medtf slurm run --submit --run-dir runs/lgg -- convert lgg-mri --input raw --output data/lgg)
    train=$(medtf slurm experiments/lgg_unet2d.yaml --submit --after "$conv" --run-dir runs/lgg)

`slurm convert` takes `medtf convert KIND`'s options (checked before anything is submitted; `--workers W` also asks
for W CPUs per task) and the job options --time, --partition, --account, --job-name, --run-dir (default
runs/convert-KIND), --after, --cluster-config; --submit prints the merge job's id (wait on it with --after).

Site settings (modules, venv, account, partition, --gres vs --gpus-per-node) come from the cluster config:
--cluster-config FILE, $MEDTF_CLUSTER_CONFIG or ~/.config/medtf/cluster.yaml (format: medtf/hpc/cluster_config.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _add_options(p, default=None) -> None:
    """The job options; ``default=argparse.SUPPRESS`` makes a parser that returns only the options given."""
    def d(value):
        return value if default is None else default

    p.add_argument("--nodes", type=int, default=d(1), help="nodes, one worker each (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=d(1), help="GPUs per node; 0 for a CPU job (default 1)")
    p.add_argument("--tasks-per-node", type=int, default=d(1),
                   help="workers per node (default 1: one worker uses all GPUs of its node; G: one per GPU)")
    p.add_argument("--time", default=d("01:00:00"), help="time limit [D-]HH:MM:SS (default 01:00:00)")
    p.add_argument("--partition", default=d(None), help="partition (default: cluster config)")
    p.add_argument("--account", default=d(None), help="account (default: cluster config)")
    p.add_argument("--array", default=d(None), metavar="SPEC",
                   help="job array, one task per fold, e.g. 0-4 (task id -> data.fold)")
    p.add_argument("--run-dir", default=d(None), help="run directory (default runs/<config name>)")
    p.add_argument("--job-name", default=d(None), help="job name (default: the config's file name)")
    p.add_argument("--set", dest="overrides", action="append", default=d([]), metavar="KEY=VALUE",
                   help="config override passed to `medtf train` (repeatable)")
    p.add_argument("--after", action="append", default=d([]), metavar="JOBID",
                   help="start only after this job succeeded (afterok); cancelled if it fails (repeatable)")
    p.add_argument("--cluster-config", default=d(None), metavar="FILE", help="site settings (see above)")
    p.add_argument("--tune", action="store_true", default=d(False),
                   help="a `medtf tune` search over the config's tune section instead of one training run")
    p.add_argument("--workers", type=int, default=d(None),
                   help="with --tune: workers training trials in parallel (default 1), besides the chief")
    from medtf.cli.slurm_data_service import add_data_service_options

    add_data_service_options(p, d)  # --data-workers N: input pipeline on tf.data service workers
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", default=d(False), help="print the script (the default)")
    mode.add_argument("--submit", action="store_true", default=d(False),
                      help="write the script and submit it with sbatch")


def register(commands) -> None:
    p = commands.add_parser("slurm", help="render / submit SLURM job scripts, and show job status",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", metavar="CONFIG|run|convert|roulette|status",
                   help="experiment YAML to train, `run` (any medtf command after --), `convert` (a conversion as "
                        "a job array + merge), `roulette` (candidates as a job array + merge) or `status`")
    # REMAINDER: options after the target and a medtf command after `--` (re-parsed in `_split_rest`).
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="...",
                   help="options; job ids for `status`; `-- COMMAND ...` for `run`")
    _add_options(p)
    p.set_defaults(handler=run)


_TARGETS = {
    "status": ("JOBID [JOBID ...]", "State, reason, elapsed time, nodes and array tasks of SLURM jobs."),
    "run": ("[job options] -- COMMAND ...", "Any other medtf command (convert, evaluate, cv-report ...) as a SLURM "
                                            "job; the command follows --."),
    "convert": ("KIND --input IN --output OUT --num-tasks N [convert options] [job options]",
                "A conversion as a requeueing job array of N tasks and a merge job that runs after every task "
                "succeeded. KIND's options: medtf slurm convert KIND --help."),
    "roulette": ("CONFIG --candidates N --num-tasks K --out DIR [roulette options] [job options]",
                 "Model roulette as a requeueing job array of K tasks sharing N candidates and a merge job that "
                 "ranks them after every task succeeded (medtf.cli.slurm_roulette)."),
    "CONFIG": ("[job options]", "A training job for an experiment config (a keras-tuner search with --tune): "
                                "the script is printed (--dry-run, the default) or written and submitted (--submit)."),
}


def _wants_help(args) -> bool:
    """``medtf slurm TARGET --help`` (before any ``--``); ``convert KIND --help`` is the converter's own help."""
    own = args.rest[: args.rest.index("--")] if "--" in args.rest else args.rest
    if args.target == "convert" and own and not own[0].startswith("-"):
        return False
    return "-h" in own or "--help" in own


def _target_parser(target: str) -> argparse.ArgumentParser:
    """The help of one target: its usage, what it does and the options it takes."""
    name = target if target in _TARGETS else "CONFIG"
    usage, description = _TARGETS[name]
    p = argparse.ArgumentParser(prog=f"medtf slurm {name}", usage=f"medtf slurm {name} {usage}",
                                description=description)
    if name == "status":
        p.add_argument("job_ids", nargs="+", metavar="JOBID", help="SLURM job id (JOBID_INDEX for an array task)")
        return p
    if name == "CONFIG":
        p.add_argument("config", metavar="CONFIG", help="experiment YAML file")
    elif name == "convert":
        p.add_argument("kind", metavar="KIND", help="data kind, as in `medtf convert KIND`")
    elif name == "roulette":
        from medtf.cli.slurm_roulette import roulette_parser

        p = roulette_parser(p.prog, conflict_handler="resolve")  # --set: one option, the same meaning
        p.usage, p.description = f"{p.prog} {usage}", description
    _add_options(p)
    if name == "run":
        p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the medtf command to run")
    return p


def _split_rest(args) -> list[str] | None:
    """Apply the options written after the target; return the job ids / medtf command (None: bad options)."""
    rest = list(args.rest)
    if args.target == "status":
        return rest
    if args.target == "convert":
        return _split_convert_rest(args, rest)
    if args.target == "roulette":
        from medtf.cli.slurm_roulette import split_roulette_rest

        return split_roulette_rest(args, rest)
    command: list[str] = []
    if "--" in rest:
        rest, command = rest[: rest.index("--")], rest[rest.index("--") + 1:]
    parser = argparse.ArgumentParser(prog=f"medtf slurm {args.target}", add_help=False)
    _add_options(parser, default=argparse.SUPPRESS)
    given, unknown = parser.parse_known_args(rest)
    if unknown:
        print(f"medtf slurm: unexpected arguments {unknown}"
              + (" (put the medtf command after --)" if args.target == "run" else
                 " (config overrides go in --set KEY=VALUE)"), file=sys.stderr)
        return None
    for key, value in vars(given).items():
        if isinstance(value, list):
            value = getattr(args, key) + value
        setattr(args, key, value)
    if args.dry_run and args.submit:
        print("medtf slurm: --dry-run and --submit exclude each other", file=sys.stderr)
        return None
    return command


# Job options of a training job that mean nothing for a conversion (its --workers goes to `medtf convert`).
_NOT_FOR_CONVERT = {"nodes": 1, "tasks_per_node": 1, "array": None, "overrides": [], "tune": False}


def _split_convert_rest(args, rest: list[str]) -> list[str] | None:
    """`slurm convert`: apply the job options; return the `medtf convert` arguments (KIND first)."""
    parser = argparse.ArgumentParser(prog="medtf slurm convert", add_help=False, allow_abbrev=False)
    _add_options(parser, default=argparse.SUPPRESS)
    given, command = parser.parse_known_args(rest)
    for key, value in vars(given).items():
        setattr(args, key, getattr(args, key) + value if isinstance(value, list) else value)
    wrong = [f"--{k.replace('_', '-')}" if k != "overrides" else "--set" for k, default in _NOT_FOR_CONVERT.items()
             if getattr(args, k) != default]
    if wrong:
        print(f"medtf slurm convert: {', '.join(wrong)} are training options; a conversion runs as --num-tasks "
              f"single-node tasks", file=sys.stderr)
        return None
    if args.workers is not None:  # worker processes of each task: `medtf convert --workers`
        command += ["--workers", str(args.workers)]
    if args.dry_run and args.submit:
        print("medtf slurm: --dry-run and --submit exclude each other", file=sys.stderr)
        return None
    return command


def _convert_jobs(args, command: list[str], cluster) -> int:
    """Render (or write and submit) the task array and the merge job of a cluster conversion."""
    from medtf.cli.output import clean_text
    from medtf.data import deid
    from medtf.hpc.slurm import JobSpec, render_job, submit, write_job
    from tfrecords_builder import CONVERTERS, get_converter
    from tfrecords_builder.engine import add_common_arguments

    if not command or command[0].startswith("-"):
        print(f"medtf slurm convert: give the kind first, one of {sorted(CONVERTERS)}", file=sys.stderr)
        return 2
    kind, convert_args = command[0], command[1:]
    if kind not in CONVERTERS:
        print(f"medtf slurm convert: unknown kind {kind!r}; known: {sorted(CONVERTERS)}", file=sys.stderr)
        return 2
    converter = get_converter(kind)
    description = (f"medtf convert {kind} as a SLURM job array of --num-tasks tasks + a merge job, with the "
                   f"options of `medtf convert {kind}`:\n\n" + (sys.modules[type(converter).__module__].__doc__ or ""))
    parser = argparse.ArgumentParser(prog=f"medtf slurm convert {kind}", description=clean_text(description),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    converter.add_arguments(parser)
    try:
        options = parser.parse_args(convert_args)  # the tasks' options fail here, not in the queue
    except SystemExit as exc:
        return int(exc.code or 0)
    if options.num_tasks is None or options.task_index is not None or options.merge:
        print("medtf slurm convert: give --num-tasks N (the array's size); the job sets each task's index and "
              "runs --merge itself", file=sys.stderr)
        return 2
    if options.num_tasks < 1:
        print(f"medtf slurm convert: --num-tasks must be at least 1, got {options.num_tasks}", file=sys.stderr)
        return 2
    if not options.input.is_dir():
        what = ("is a file, not a folder (--input takes the folder of the source layout)"
                if options.input.exists() else "input folder does not exist")
        print(f"medtf slurm convert: {options.input}: {what}", file=sys.stderr)
        return 2
    n = options.num_tasks
    name = args.job_name or f"convert-{kind}"
    common = dict(run_dir=args.run_dir or f"runs/convert-{kind}", time=args.time, partition=args.partition,
                  account=args.account, resumable=True, cpus_per_task=options.workers if options.workers > 1 else None)
    tasks = JobSpec(command=["convert", *command], array=f"0-{n - 1}", job_name=name, after=args.after, **common)

    def merge(array_id: str) -> JobSpec:
        return JobSpec(command=["convert", *command, "--merge"], job_name=f"{name}-merge", after=[array_id],
                       **{**common, "cpus_per_task": None})  # the merge copies records: one process

    if not args.submit:
        sys.stdout.write(render_job(tasks, cluster))
        sys.stdout.write(f"\n# ==== merge job: submitted after the array, ARRAY_JOB_ID is the array's job id ====\n")
        sys.stdout.write(render_job(merge("ARRAY_JOB_ID"), cluster))
        return 0
    if not (options.id_salt or options.id_key_file):
        # Made once, here, rather than by whichever task starts first.
        deid.load_or_create_key(options.output)
    tasks_path = write_job(tasks, cluster)
    array_id = submit(tasks_path)
    merge_path = write_job(merge(array_id), cluster)
    merge_id = submit(merge_path)
    print(f"submitted {tasks_path} as job array {array_id} ({n} tasks) and {merge_path} as job {merge_id} "
          f"(merges after every task succeeded)", file=sys.stderr)
    print(merge_id)
    return 0


def run(args) -> int:
    from medtf.hpc.cluster_config import ClusterConfigError, load_cluster_config
    from medtf.hpc.slurm import JobSpec, SlurmError, job_info, render_job, submit, summarize, write_job
    from medtf.training.config import ConfigError

    if _wants_help(args):
        _target_parser(args.target).print_help()
        return 0
    rest = _split_rest(args)
    if rest is None:
        return 2
    from medtf.cli.slurm_data_service import misplaced_options

    misplaced = misplaced_options(args)  # e.g. `slurm run ... --data-workers 4` would otherwise be ignored
    if misplaced:
        print(f"medtf slurm {args.target}: {misplaced}", file=sys.stderr)
        return 2
    try:
        if args.target == "status":
            if not rest:
                print("medtf slurm status: give at least one job id", file=sys.stderr)
                return 2
            found = True
            for job_id in rest:
                jobs = job_info(job_id)
                found &= bool(jobs)
                print(summarize(jobs))
            return 0 if found else 1
        cluster = load_cluster_config(args.cluster_config)
        if args.target == "convert":
            return _convert_jobs(args, rest, cluster)
        if args.target == "roulette":
            from medtf.cli.slurm_roulette import roulette_jobs

            return roulette_jobs(args, rest, cluster)
        if args.target == "run":
            if not rest:
                print("medtf slurm run: give the medtf command after --, e.g. -- convert lgg-mri ...",
                      file=sys.stderr)
                return 2
            if args.tune or args.workers is not None:
                print("medtf slurm run: --tune / --workers are for an experiment config", file=sys.stderr)
                return 2
            spec = JobSpec(command=rest, run_dir=args.run_dir or f"runs/{rest[0]}",
                           job_name=args.job_name, time=args.time, partition=args.partition, account=args.account,
                           after=args.after)
        else:
            if rest:
                print(f"medtf slurm: unexpected arguments {rest} after --", file=sys.stderr)
                return 2
            if not Path(args.target).is_file():
                print(f"medtf slurm: {args.target}: config file not found", file=sys.stderr)
                return 2
            if args.workers is not None and not args.tune:
                print("medtf slurm: --workers goes with --tune", file=sys.stderr)
                return 2
            _check_config(args.target, args.overrides, args.tune, array=args.array)
            stem = Path(args.target).stem + ("-tune" if args.tune else "")
            spec = JobSpec(config=args.target, run_dir=args.run_dir or f"runs/{stem}",
                           nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                           tasks_per_node=args.tasks_per_node, time=args.time,
                           partition=args.partition, account=args.account, array=args.array,
                           overrides=args.overrides, after=args.after,
                           job_name=args.job_name or (stem if args.tune else None),
                           tune=args.tune, workers=1 if args.workers is None else args.workers)
            if args.data_workers is not None:
                from medtf.cli.slurm_data_service import data_service_jobs

                return data_service_jobs(args, spec, cluster)
        if not args.submit:
            sys.stdout.write(render_job(spec, cluster))
            return 0
        path = write_job(spec, cluster)
        job_id = submit(path)
        print(f"submitted {path} as job {job_id}", file=sys.stderr)
        print(job_id)
        return 0
    except (SlurmError, ClusterConfigError, ConfigError) as exc:
        print(f"medtf slurm: {exc}", file=sys.stderr)
        return 2


def _check_config(config: str, overrides, tune: bool, array: str | None = None) -> None:
    """A bad experiment (or tune section) fails here, at submission, rather than after waiting in the queue."""
    from medtf.training.experiment import load_experiment
    from medtf.tuning.settings import tune_settings

    experiment = load_experiment(config, overrides)  # the tune section too, when the file has one
    if tune:
        tune_settings(experiment)  # --tune without a tune section
    if array:
        _check_fold_selection(experiment.data)


def _check_fold_selection(data) -> None:
    """``--array`` (task id -> data.fold) on a K-fold folder its selection cannot split (inner on K < 3): refused
    now, not in every task. A folder that is not readable here (another file system) is left to the tasks."""
    from medtf.data.manifest import ManifestError, fold_names, read_manifest
    from medtf.training.inputs import fold_roles

    try:
        folds = fold_names(read_manifest(data.dir))
    except (ManifestError, OSError, ValueError):
        return
    if folds:
        fold_roles(data.replace(fold=0, folds=None))
