"""``medtf tune CONFIG --tune-dir DIR``: keras-tuner search over the experiment's ``tune`` section.

    medtf tune experiments/lgg_unet2d_tune.yaml --tune-dir runs/lgg-tune [--set tune.max_trials=40 ...]

Every trial is a normal run directory under DIR/trials/; DIR/results.csv, DIR/best.yaml (train it with
`medtf train DIR/best.yaml`) and DIR/hparams (TensorBoard) are written at the end. Re-running the same command
continues the search. Distributed: set KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT and KERASTUNER_TUNER_ID
(``chief`` for the oracle, ``tuner0``, ``tuner1``, ... for the workers); `medtf slurm CONFIG --tune --workers N`
writes a job that does this.
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
    from medtf.training.config import ConfigError, load_config

    try:
        config = load_config(args.config, args.overrides)
        from medtf.tuning import tune

        out = tune(config, args.tune_dir, verbose=0 if args.quiet else 1)
    except ConfigError as exc:
        print(f"medtf tune: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from medtf.tuning.tuner import SearchFailedError

        if not isinstance(exc, SearchFailedError):
            raise
        print(f"medtf tune: {exc}", file=sys.stderr)
        return 1
    if out["role"] == "worker":
        print(f"medtf tune: worker {out['tuner_id']} done (no more trials)")
    return 0
