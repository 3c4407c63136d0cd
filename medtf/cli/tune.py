"""``medtf tune CONFIG --tune-dir DIR``: keras-tuner search over the experiment's ``tune`` section.

    medtf tune experiments/lgg_unet2d_tune.yaml --tune-dir runs/lgg-tune [--set tune.max_trials=40 ...]

Every trial is a normal run directory under DIR/trials/; DIR/results.csv, DIR/best.yaml (train it with
`medtf train DIR/best.yaml`) and DIR/hparams (TensorBoard) are written at the end. Re-running the same command
continues the search. Distributed: set KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT and KERASTUNER_TUNER_ID
(``chief`` for the oracle, ``tuner0``, ``tuner1``, ... for the workers); `medtf slurm CONFIG --tune --workers N`
writes a job that does this.

SIGUSR1 (preemption) stops the search where it is, keeping what it needs to continue (medtf/tuning/stop.py):
a running trial saves its backup, the oracle its state; the chief (or a local search) then exits 75, a worker 0.
"""

from __future__ import annotations

import argparse
import sys


def register(commands) -> None:
    p = commands.add_parser("tune", help="hyperparameter search over an experiment's tune section (keras-tuner)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="CONFIG", help="experiment YAML with a `tune:` section")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set tune.max_trials=40 (repeatable)")
    p.add_argument("--tune-dir", required=True, help="search folder (re-running the same one continues)")
    p.add_argument("--quiet", action="store_true", help="no per-trial tables from keras-tuner")
    p.set_defaults(handler=run)


def run(args) -> int:
    from medtf.tuning.stop import STOP

    # Armed before the slow imports: a USR1 that comes early must stop the search, not kill the process (a worker
    # killed by it would make srun --kill-on-bad-exit stop the workers that are saving their backups).
    with STOP.armed():
        return _run(args)


def _run(args) -> int:
    from medtf.training.experiment import load_experiment

    config = load_experiment(args.config, args.overrides)  # a ConfigError: one line, exit 2 (medtf.cli.main)
    try:
        from medtf.tuning import tune

        out = tune(config, args.tune_dir, verbose=0 if args.quiet else 1)
    except RuntimeError as exc:
        from medtf.tuning.tuner import SearchFailedError

        if not isinstance(exc, SearchFailedError):
            raise
        print(f"medtf tune: {exc}", file=sys.stderr)
        return 1
    if out["role"] == "worker":
        # 0 even when preempted: under srun --kill-on-bad-exit, an error would kill the workers still saving
        print(f"medtf tune: worker {out['tuner_id']} " + ("preempted: stopped (the search continues on the next "
                                                        "start)" if out["preempted"] else "done (no more trials)"))
        return 0
    if out["preempted"]:
        from medtf.tuning.stop import EXIT_PREEMPTED

        print(f"medtf tune: preempted: the search state is saved in {args.tune_dir}; run the same command again "
              f"to continue (exit {EXIT_PREEMPTED})")
        return EXIT_PREEMPTED
    return 0
