"""``medtf slurm roulette``: model roulette as a SLURM job array of candidate tasks + a dependent merge job.

    medtf slurm roulette CONFIG --candidates N --num-tasks K --out DIR [--warmup-steps S] [--metric M]
                         [--fold F] [--set k=v ...] [--keep-all] [--gpus-per-node G] [job options]

Task ``I`` of the array runs ``medtf roulette CONFIG ... --num-tasks K`` (its index from ``$SLURM_ARRAY_TASK_ID``)
and scores candidates ``I, I+K, I+2K, ...``; the merge job (``--dependency=afterok`` on the array) runs the same
command with ``--merge`` and writes OUT/best.keras, roulette.json and roulette.csv. Both use slurm/roulette.sbatch
and requeue when preempted (scored candidates are not scored again). Every check the roulette makes (a test split,
test or held-out-fold patients, a bad config) runs here, before anything is queued. ``--submit`` prints the merge
job's id, so training can wait for the winner:

    merge=$(medtf slurm roulette CONFIG --candidates 200 --num-tasks 20 --out runs/roulette --fold 0 --submit)
    medtf slurm CONFIG --after "$merge" --set +data.fold=0 --set +model.init_from=runs/roulette/best.keras --submit
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Job options that mean nothing for roulette tasks (one process each; --workers is `medtf roulette`'s local mode).
_NOT_FOR_ROULETTE = {"nodes": 1, "tasks_per_node": 1, "array": None, "tune": False, "workers": None,
                     "data_workers": None}


def roulette_parser(prog: str = "medtf slurm roulette", **kwargs) -> argparse.ArgumentParser:
    """`medtf roulette`'s options without the ones the job sets (--num-tasks is the array's size here)."""
    from medtf.cli.roulette import add_arguments

    p = argparse.ArgumentParser(prog=prog, allow_abbrev=False, **kwargs)
    add_arguments(p, array=False)
    p.add_argument("--num-tasks", type=int, required=True, metavar="K", help="array tasks sharing the candidates")
    return p


def split_roulette_rest(args, rest: list[str]):
    """Apply the job options written after ``roulette``; return the parsed roulette options (None: refused)."""
    from medtf.cli.slurm import _add_options

    parser = argparse.ArgumentParser(prog="medtf slurm roulette", add_help=False, allow_abbrev=False)
    _add_options(parser, default=argparse.SUPPRESS)
    given, remaining = parser.parse_known_args(rest)
    for key, value in vars(given).items():
        setattr(args, key, getattr(args, key) + value if isinstance(value, list) else value)
    wrong = [f"--{k.replace('_', '-')}" for k, default in _NOT_FOR_ROULETTE.items()
             if getattr(args, k, default) != default]
    if wrong:
        print(f"medtf slurm roulette: {', '.join(wrong)}: not for roulette, whose --num-tasks array tasks are "
              f"one process on one node each", file=sys.stderr)
        return None
    if args.dry_run and args.submit:
        print("medtf slurm: --dry-run and --submit exclude each other", file=sys.stderr)
        return None
    try:
        options = roulette_parser().parse_args(remaining)
    except SystemExit:
        return None
    options.overrides = [*args.overrides, *options.overrides]  # --set given before or after CONFIG
    return options


def _command(options, merge: bool) -> list[str]:
    from medtf.cli.roulette import fold_overrides

    cmd = ["roulette", str(Path(options.config).absolute()), "--candidates", str(options.candidates),
           "--out", str(Path(options.out).absolute())]
    for override in fold_overrides(options):
        cmd += ["--set", override]
    if merge:
        return cmd + ["--merge"] + (["--keep-all"] if options.keep_all else [])
    return (cmd + ["--warmup-steps", str(options.warmup_steps), "--num-tasks", str(options.num_tasks)]
            + (["--metric", options.metric] if options.metric else []))


def roulette_jobs(args, options, cluster) -> int:
    """Render (or write and submit) the candidates' array and the merge job."""
    from medtf.cli.roulette import fold_overrides
    from medtf.data.manifest import ManifestError
    from medtf.hpc.slurm import JobSpec, render_job, submit, write_job
    from medtf.training.experiment import load_experiment
    from medtf.training.roulette import check_split

    if options.candidates < 1 or not 1 <= options.num_tasks <= options.candidates:
        print(f"medtf slurm roulette: need 1 <= --num-tasks ({options.num_tasks}) <= --candidates "
              f"({options.candidates})", file=sys.stderr)
        return 2
    if not Path(options.config).is_file():
        print(f"medtf slurm roulette: {options.config}: config file not found", file=sys.stderr)
        return 2
    experiment = load_experiment(options.config, fold_overrides(options))  # ConfigError: reported by `medtf slurm`
    try:
        check_split(experiment, options.warmup_steps)  # a refused split fails now, not in the queue
    except ManifestError as exc:
        print(f"medtf slurm roulette: {exc}", file=sys.stderr)
        return 2
    name = args.job_name or f"roulette-{Path(options.config).stem}"
    common = dict(run_dir=args.run_dir or options.out, time=args.time, partition=args.partition,
                  account=args.account, resumable=True)
    tasks = JobSpec(command=_command(options, merge=False), array=f"0-{options.num_tasks - 1}", job_name=name,
                    after=args.after, gpus_per_node=args.gpus_per_node, **common)

    def merge(array_id: str) -> JobSpec:  # ranks JSON records and copies one file: no GPU
        return JobSpec(command=_command(options, merge=True), job_name=f"{name}-merge", after=[array_id],
                       gpus_per_node=0, **common)

    if not args.submit:
        sys.stdout.write(render_job(tasks, cluster))
        sys.stdout.write("\n# ==== merge job: submitted after the array, ARRAY_JOB_ID is the array's job id ====\n")
        sys.stdout.write(render_job(merge("ARRAY_JOB_ID"), cluster))
        return 0
    tasks_path = write_job(tasks, cluster)
    array_id = submit(tasks_path)
    merge_path = write_job(merge(array_id), cluster)
    merge_id = submit(merge_path)
    print(f"submitted {tasks_path} as job array {array_id} ({options.num_tasks} tasks, {options.candidates} "
          f"candidates) and {merge_path} as job {merge_id} (ranks them after every task succeeded)", file=sys.stderr)
    print(merge_id)
    return 0
