"""Cross-validation of a whole transfer-learning chain: every fold runs every phase, then its scratch baseline
(`medtf.training.transfer.scratch_config`: the same network on the fold's target data, the experiment's own
optimizer and train settings, as many epochs as the chain's phases on the target data).

`medtf train --folds K` on an experiment with ``transfer:`` phases (`medtf.training.transfer`) comes here. The
**target** data set, the last phase's ``data.dir``, is the one folded: fold ``k`` trains the chain with fold ``k``
of the target held out and evaluates the final model on it. Every phase on the target folder, and the scratch
baseline, splits round ``k`` as `medtf.data.manifest.nested_fold_splits` says for the chain's
``data.selection_fold`` (``inner``: train on K-2 folds, choose on ``fold-((k+1) mod K)``; ``outer``: choose on
``fold-k``); a target phase that sets another ``selection_fold`` is refused. Earlier phases on other data sets
(brain, lung) use their data whole. Two leak guards, checked before anything trains:

* a phase on the target's own shard folder (the thesis's DS1 prostate phase) is folded the same way: otherwise the
  held-out patients would be trained on in an earlier phase and reach the final model through its weights;
* a phase on another folder that shares (hashed) patients with the held-out fold or with the target's ``test``
  split is refused (a ConfigError naming the phase and the count). Hashed IDs are comparable only between
  conversions made with the same ``--id-salt`` / ``--id-key-file``; convert every data set that may hold the same
  patients with one key, or the guard cannot see them.

Run directory layout (what `medtf.training.folds.aggregate_folds` and ``medtf cv-report`` read)::

    run_dir/cv_config.yaml            the resolved experiment, transfer section included
    run_dir/fold_<k>/phases/NN-NAME/  the chain's phase runs for fold k; fold_<k>/scratch/ its scratch baseline
    run_dir/fold_<k>/                 the final phase's config.yaml, checkpoints/ and history.csv (a normal run)
    run_dir/fold_<k>/eval-fold-<k>/   the final model on the held-out fold; fold_<k>/scratch/eval-fold-<k>/ too
    run_dir/cv_report.json / .csv     per metric mean, sd, 95% CI over folds, plus ``scratch/eval/<metric>`` and
                                      ``gain/eval/<metric>`` (chain minus scratch, per fold) when compare_scratch

A SLURM array (`medtf slurm CONFIG --array 0-4`: ``medtf train CONFIG --set +data.fold=k`` per task) writes the
same ``fold_<k>`` folders: `medtf train` on a chain with ``data.fold`` set plans the fold here (same folding and leak
guards), and ``medtf cv-report RUN_DIR --evaluate`` evaluates the chains and their scratch runs, then reports.

The test split is not touched: evaluate it once, at the end, on the model trained for reporting.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from medtf.training.config import ConfigError, save_resolved

__all__ = ["add_scratch_metrics", "evaluate_scratch", "fold_transfer_experiment", "run_transfer_cross_validation",
           "with_scratch_metrics"]


def _abs(path) -> str:
    return os.path.abspath(os.path.expanduser(str(path)))


def _patients(manifest: dict, splits) -> set[str]:
    return {p for s in splits if s in manifest["splits"] for p in manifest["splits"][s].get("patients", ())}


def _train_splits(raw_data: dict, manifest: dict) -> list[str]:
    from medtf.data.manifest import nested_fold_splits

    if raw_data.get("fold") is not None:
        return nested_fold_splits(manifest, int(raw_data["fold"]), raw_data.get("selection_fold", "inner")).train
    split = raw_data.get("train_split", "train")
    return list(split) if isinstance(split, (list, tuple)) else [split]


def fold_transfer_experiment(experiment, k: int, folds: int):
    """The experiment whose chain trains fold ``k`` of ``folds``: phases on the target's folder get
    ``data.fold=k`` and the chain's ``data.selection_fold``; raises `ConfigError` when another phase's training
    data holds held-out or test patients, or a target phase selects another way (or inner on < 3 folds)."""
    from medtf.data.manifest import nested_fold_splits, read_manifest
    from medtf.training.transfer import transfer_phases

    phases = transfer_phases(experiment)
    target = _abs(phases[-1][1]["data"]["dir"])
    target_manifest = read_manifest(target)
    selection = phases[-1][1]["data"].get("selection_fold", "inner")
    try:
        nested_fold_splits(target_manifest, int(k), selection)
    except ValueError as exc:
        raise ConfigError(f"transfer chain, fold {k} of {target}: {exc}") from None
    held_out = _patients(target_manifest, [f"fold-{k}", "test"])
    settings = copy.deepcopy(experiment.transfer)
    for (name, raw), phase in zip(phases, settings["phases"]):
        if raw["data"].get("fold") is not None:
            raise ConfigError(f"transfer phase {name}: data.fold={raw['data']['fold']} is set; under --folds the "
                              f"folds are chosen per fold run (drop it)")
        if _abs(raw["data"]["dir"]) == target:
            if raw["data"].get("selection_fold", "inner") != selection:
                raise ConfigError(f"transfer phase {name}: data.selection_fold={raw['data']['selection_fold']}, but "
                                  f"the chain's last phase selects {selection!r}; every phase on {target} must "
                                  f"choose on the same fold")
            phase["data"] = {**(phase.get("data") or {}), "fold": int(k), "folds": int(folds),
                             "selection_fold": selection}
            continue
        # explicitly whole: the experiment's own data.fold (set below when it is the target) merges into phases
        phase["data"] = {**(phase.get("data") or {}), "fold": None, "folds": None}
        manifest = read_manifest(raw["data"]["dir"])
        shared = held_out & _patients(manifest, _train_splits(raw["data"], manifest))
        if shared:
            raise ConfigError(f"transfer phase {name}: its training data {raw['data']['dir']} holds {len(shared)} "
                              f"patient(s) of the target's held-out fold-{k} or test split ({target}); the chain "
                              f"would learn them before they are evaluated. Train that phase on the target's own "
                              f"folder (it is then folded too) or drop those patients")
    data = experiment.data
    if _abs(data.dir) == target:
        data = data.replace(fold=int(k), folds=int(folds), selection_fold=selection)
    return experiment.replace(data=data, transfer=settings)


def _scratch_values(run_dir: Path, k: int) -> dict[str, float] | None:
    from medtf.training.cv_report import summary_values

    path = run_dir / f"fold_{k}" / "scratch" / f"eval-fold-{k}" / "summary.json"
    try:
        return summary_values(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def add_scratch_metrics(report: dict, run_dir: str | os.PathLike) -> dict:
    """Add ``scratch/eval/<m>`` and ``gain/eval/<m>`` (chain minus scratch, fold by fold) to an `aggregate_folds`
    report, from each fold's ``scratch/eval-fold-<k>/summary.json``; a fold without one is a missing value."""
    from medtf.training.cv_report import fold_stats

    run_dir, k_total = Path(run_dir), report["folds"]
    scratch = [_scratch_values(run_dir, k) for k in range(k_total)]
    names = sorted({n for values in scratch if values for n in values})
    for name in names:
        values = [None if s is None else s.get(name) for s in scratch]
        report["metrics"][f"scratch/{name}"] = {"values": values, **fold_stats(values),
                                                "missing": [k for k, v in enumerate(values) if v is None]}
        chain = (report["metrics"].get(name) or {}).get("values") or [None] * k_total
        gain = [None if a is None or b is None else a - b for a, b in zip(chain, values)]
        report["metrics"][f"gain/{name}"] = {"values": gain, **fold_stats(gain),
                                             "missing": [k for k, v in enumerate(gain) if v is None]}
    return report


def evaluate_scratch(run_dir: str | os.PathLike, folds: int, verbose: bool = True) -> list[int]:
    """Evaluate each fold's finished ``scratch/`` run on its held-out fold when its evaluation is missing or older
    than its best checkpoint (``medtf cv-report --evaluate`` after a SLURM array); returns the folds evaluated."""
    from medtf.tasks import get_task, task_of_run

    done = []
    for k in range(int(folds)):
        where = Path(run_dir) / f"fold_{k}" / "scratch"
        best, summary = where / "checkpoints" / "best.keras", where / f"eval-fold-{k}" / "summary.json"
        if not (where / "phase.json").is_file() or not best.is_file():
            continue
        if not summary.is_file() or summary.stat().st_mtime < best.stat().st_mtime:
            get_task(task_of_run(where)).evaluate(where, split=f"fold-{k}", checkpoint="best",
                                                  output=summary.parent, verbose=verbose)
            done.append(k)
    return done


def with_scratch_metrics(report: dict, run_dir: str | os.PathLike) -> dict:
    """`add_scratch_metrics` and the report rewritten when any fold has a ``scratch/`` run (``medtf cv-report`` on
    a chain's cross-validation); the report unchanged otherwise."""
    from medtf.training.folds import write_report

    if not any((Path(run_dir) / f"fold_{k}" / "scratch").is_dir() for k in range(report["folds"])):
        return report
    report = add_scratch_metrics(report, run_dir)
    write_report(report, run_dir)
    return report


def run_transfer_cross_validation(config, run_dir: str | os.PathLike, folds: int | None = None, *,
                                  evaluate: bool = True, verbose: bool = True) -> dict[str, Any]:
    """Run the chain (and its scratch baseline) on every fold of the target data, evaluate, aggregate.

    Resumable as `medtf.training.folds.run_cross_validation`: finished phases and folds are not run again.
    Returns the `aggregate_folds` report (+ scratch/gain metrics), or with ``"preempted": k``.

    Example:
        >>> report = run_transfer_cross_validation(load_experiment("experiments/prostate_tl_chain.yaml"), "runs/cv")
        >>> report["metrics"]["gain/eval/auc"]["mean"]
    """
    from medtf.tasks import get_task
    from medtf.training.experiment import parse_config
    from medtf.training.folds import BASE_CONFIG, aggregate_folds, fold_dir, manifest_folds
    from medtf.training.transfer import run_transfer, transfer_phases

    experiment = parse_config(config)
    if not experiment.transfer:
        raise ConfigError("run_transfer_cross_validation needs an experiment with transfer.phases")
    target = _abs(transfer_phases(experiment)[-1][1]["data"]["dir"])
    k_total = manifest_folds(target)
    if folds is not None and int(folds) != k_total:
        raise ConfigError(f"--folds={folds}, but {target} (the last phase's data) has {k_total} folds")
    plans = [fold_transfer_experiment(experiment, k, k_total) for k in range(k_total)]  # every guard first
    run_dir = Path(run_dir)
    save_resolved(experiment.as_dict(), run_dir, BASE_CONFIG)
    scratch = bool(experiment.transfer.get("compare_scratch"))
    for k, plan in enumerate(plans):
        path = fold_dir(run_dir, k)
        if verbose:
            print(f"fold {k}/{k_total}: transfer chain in {path}", flush=True)
        summary = run_transfer(plan, path)
        if "preempted" in summary:
            return {**aggregate_folds(run_dir, k_total), "preempted": k}
        if evaluate:
            out, best = path / f"eval-fold-{k}", path / "checkpoints" / "best.keras"
            if not (out / "summary.json").is_file() or (out / "summary.json").stat().st_mtime < best.stat().st_mtime:
                get_task(experiment.task).evaluate(path, split=f"fold-{k}", checkpoint="best", output=out,
                                                   verbose=verbose)
        _clear()
    if evaluate and scratch:
        evaluate_scratch(run_dir, k_total, verbose)
    report = aggregate_folds(run_dir, k_total)
    return with_scratch_metrics(report, run_dir) if scratch else report


def _clear() -> None:
    import keras

    keras.backend.clear_session()  # each fold builds fresh models; free the previous fold's graphs
