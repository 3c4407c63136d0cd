"""``medtf check CONFIG [--set KEY=VALUE ...]``: validate an experiment config without training.

Parses the file and the overrides exactly as `medtf train` and `medtf tune` do (medtf/training/experiment.py):
unknown keys (with a did-you-mean suggestion), value types, the model, loss, optimizer, schedule and transform
names and their arguments, the tune section's keys and every value its search space can take. It also works out
the learning-rate schedule's step counts (a warm-up longer than the run is shortened, with a note). Prints one
summary line and exits 0, or prints the problem and exits 2. Nothing is trained, no shard folder is needed (it is
read, when present, for the steps per epoch).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands) -> None:
    p = commands.add_parser("check", help="validate an experiment config (keys, types, names) without training",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="CONFIG", help="experiment YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    p.set_defaults(handler=run)


def _steps(experiment) -> tuple[int | None, str]:
    """Steps per epoch and where they come from (the manifest only when train.steps_per_epoch is null)."""
    from medtf.data.manifest import ManifestError
    from medtf.training.inputs import steps_per_epoch

    if experiment.train.steps_per_epoch:
        return experiment.train.steps_per_epoch, ""
    try:
        return steps_per_epoch(experiment.data, experiment.train), " (from the manifest)"
    except ManifestError:
        return None, f" (unknown here: no shards at {experiment.data.dir})"


def summary(experiment, notes: list[str]) -> str:
    """One line: model, loss, optimizer, schedule, epochs x steps, data."""
    from medtf.training.experiment import CosineSchedule
    from medtf.training.schedules import fit_warmup

    steps, source = _steps(experiment)
    schedule = experiment.schedule
    if isinstance(schedule, CosineSchedule) and steps:
        warmup, _ = fit_warmup(schedule, steps, experiment.train.epochs, note=notes.append)
        schedule_text = f"cosine (warm-up {warmup} steps)"
    else:
        schedule_text = schedule.name
    run = f"{experiment.train.epochs} epochs x {steps if steps else '?'} steps{source}"
    tune = f"; tune: {experiment.tune.get('tuner', 'random')} over {len(experiment.tune.get('space') or {})} " \
           f"hyperparameters" if experiment.tune else ""
    return (f"model {experiment.model.name}, loss {experiment.loss.name}, {experiment.optimizer.name} "
            f"lr {experiment.optimizer.learning_rate:g}, schedule {schedule_text}, {run}, batch "
            f"{experiment.data.batch_size}, data {experiment.data.dir}{tune}")


def run(args) -> int:
    from medtf.training.experiment import load_experiment

    experiment = load_experiment(args.config, args.overrides)  # a ConfigError: one line, exit 2 (medtf.cli.main)
    notes: list[str] = []
    line = summary(experiment, notes)
    for note in notes:
        print(f"note: {note}")
    print(f"{Path(args.config)}: OK: {line}")
    return 0
