"""``medtf roulette CONFIG --candidates N --out DIR``: best of N seeded initialisations on the validation split.

``--fold k`` scores on cross-validation fold k (as ``--set +data.fold=k``); ``medtf slurm roulette`` runs the
candidates as a SLURM array + a merge job (`medtf.cli.slurm_roulette`).
"""

from __future__ import annotations

import os
import subprocess
import sys


def register(commands) -> None:
    p = commands.add_parser(
        "roulette", help="pick the best of N random initialisations by a validation metric (model roulette)",
        description="Build N seeded initialisations of the experiment's model (seed, seed+1, ...), optionally "
                    "train each for --warmup-steps, score each on data.val_split (or on fold-K with --fold K; a test "
                    "split, or its patients under another split's name, is refused) and "
                    "keep the best as OUT/best.keras, the starting weights of `medtf train CONFIG --init-from "
                    "OUT/best.keras`. Scores in OUT/roulette.json and roulette.csv. Re-running continues.")
    add_arguments(p)
    p.set_defaults(handler=run)


def add_arguments(p, array: bool = True) -> None:
    """The roulette's options (``array=False``: without the per-task / local-process ones, for `medtf slurm
    roulette`, which sets them itself)."""
    p.add_argument("config", metavar="CONFIG", help="experiment YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")
    p.add_argument("--candidates", type=int, required=True, metavar="N", help="number of initialisations")
    p.add_argument("--out", required=True, help="output folder (one per fold / metric / warm-up)")
    p.add_argument("--warmup-steps", type=int, default=0, metavar="S",
                   help="train each candidate S steps before scoring (default 0: score untrained)")
    p.add_argument("--metric", default=None,
                   help="validation metric to maximise (losses are minimised; default: train.monitor, e.g. val_auc)")
    p.add_argument("--fold", type=int, default=None, metavar="K",
                   help="cross-validation round K (--set +data.fold=K): score on its selection fold (inner: "
                        "fold-(K+1) mod N), warm up on its training folds; fold-K stays held out")
    p.add_argument("--keep-all", action="store_true", help="keep every candidate's weights, not just the best")
    if not array:
        return
    p.add_argument("--workers", type=int, default=1, metavar="W",
                   help="local processes sharing the CPUs (each pinned to its share of the cores)")
    p.add_argument("--num-tasks", type=int, default=None, metavar="N",
                   help="score only this task's share of the candidates (a SLURM array: then --merge)")
    p.add_argument("--task-index", type=int, default=None, metavar="I",
                   help="0..N-1 (default $SLURM_ARRAY_TASK_ID)")
    p.add_argument("--merge", action="store_true", help="only rank the scored candidates (after an array)")


def fold_overrides(args) -> list[str]:
    """``--set`` values with ``--fold K`` as ``+data.fold=K`` (what workers and SLURM tasks are given)."""
    return [*args.overrides, *([f"+data.fold={args.fold}"] if args.fold is not None else [])]


def _worker_command(args, count: int, index: int) -> list[str]:
    cmd = [sys.executable, "-m", "medtf.cli.main", "--quiet", "roulette", args.config, "--candidates",
           str(args.candidates), "--out", args.out, "--warmup-steps", str(args.warmup_steps), "--num-tasks",
           str(count), "--task-index", str(index)]
    for override in args.overrides:
        cmd += ["--set", override]
    return cmd + (["--metric", args.metric] if args.metric else [])


def _run_local_workers(args) -> int:
    """``--workers W``: W child processes, each pinned to its own share of the usable cores."""
    cores = sorted(os.sched_getaffinity(0))
    share = max(1, len(cores) // args.workers)
    procs = []
    for k in range(args.workers):
        mine = set(cores[(k * share) % len(cores):][:share]) or set(cores)
        procs.append(subprocess.Popen(_worker_command(args, args.workers, k),
                                      preexec_fn=lambda mine=mine: os.sched_setaffinity(0, mine)))
    codes = [p.wait() for p in procs]
    bad = [k for k, c in enumerate(codes) if c]
    if bad:
        print(f"medtf roulette: worker(s) {bad} failed (exit {[codes[k] for k in bad]}); re-run to continue",
              file=sys.stderr)
        return 1
    return 0


def run(args) -> int:
    from medtf.data.manifest import ManifestError
    from medtf.training.config import ConfigError
    from medtf.training.config import load_config
    from medtf.training.experiment import parse_config
    from medtf.training.roulette import check_split, run_candidates, select_best

    if args.candidates < 1 or args.workers < 1:
        print("medtf roulette: --candidates and --workers must be at least 1", file=sys.stderr)
        return 2
    args.overrides, args.fold = fold_overrides(args), None
    try:
        # --merge ranks JSON records: no TensorFlow (the registry checks import it), so a merge job starts in seconds.
        experiment = parse_config(load_config(args.config, args.overrides), components=not args.merge)
        split = check_split(experiment, args.warmup_steps)  # before any worker starts
        index = args.task_index
        if args.num_tasks is not None and index is None:
            index = int(os.environ.get("SLURM_ARRAY_TASK_ID", "-1"))
        if args.num_tasks is not None:
            if not 0 <= index < args.num_tasks:
                print(f"medtf roulette: --task-index {index} is outside 0..{args.num_tasks - 1}", file=sys.stderr)
                return 2
            records = run_candidates(experiment, args.out, args.candidates, args.warmup_steps, args.metric,
                                     num_tasks=args.num_tasks, task_index=index)
            print(f"task {index}/{args.num_tasks}: scored {len(records)} candidate(s) in {args.out}")
            return 0
        if not args.merge:
            if args.workers > 1:
                code = _run_local_workers(args)
                if code:
                    return code
            else:
                run_candidates(experiment, args.out, args.candidates, args.warmup_steps, args.metric)
        summary = select_best(args.out, args.candidates, keep_all=args.keep_all, split=split)
    except (ConfigError, ManifestError, ValueError, FileNotFoundError) as exc:
        print(f"medtf roulette: {exc}", file=sys.stderr)
        return 2
    best = summary["best"]
    print(f"best of {summary['candidates']}: seed {best['seed']} {summary['metric']} {best['score']:.4f} on "
          f"{summary['split']} (mean {summary['mean']:.4f} ± {summary['sd']:.4f})")
    fold = "".join(f" --set {o}" for o in args.overrides if o.startswith("+data.fold="))  # train that fold
    print(f"start training from it: medtf train {args.config}{fold} --init-from {args.out}/best.keras --run-dir RUN")
    return 0
