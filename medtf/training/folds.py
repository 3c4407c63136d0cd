"""K-fold cross-validation as a run type: train every fold, evaluate each on its held-out fold, aggregate.

Run directory layout::

    run_dir/cv_config.yaml                  the resolved base config (data.fold is set per fold)
    run_dir/fold_<k>/                       an ordinary `medtf train` run with ``data.fold=k`` (resumable on its own)
    run_dir/fold_<k>/eval-fold-<k>/         the run's task evaluates the best checkpoint on the held-out ``fold-k``
                                            (``get_task(config.task).evaluate``: segmentation whole volumes,
                                            classification AUC ..., contrastive retrieval)
    run_dir/cv_report.json, cv_report.csv   per metric: the value of every fold, mean, sample sd (ddof=1), 95% CI
                                            of the mean (t interval), n (`medtf.training.cv_report`)

A SLURM array (`medtf slurm CONFIG --array 0-4`, task id -> ``data.fold``) writes the same ``fold_<k>`` folders;
`aggregate_folds` only reads files, so ``medtf cv-report RUN_DIR`` combines folds however they were trained. A fold
that is missing, still training, interrupted or not evaluated is listed in the report (``fold_status``,
``missing``) and its values are ``null``: means over fewer folds are never passed off as complete.

Nested selection (``data.selection_fold``, `medtf.data.manifest.nested_fold_splits`): with ``inner`` (default)
fold ``k`` trains on K-2 folds and chooses its best checkpoint, early stopping and learning-rate drops on
``fold-((k+1) mod K)``; the held-out ``fold-k`` is read once, by the evaluation, so ``eval/*`` is not the figure
the choices were made on. ``outer`` (the behaviour before) chooses on ``fold-k`` itself: its ``eval/*`` is
optimistic. The report says which (``selection_fold``, each fold's ``selection_split``).

Two kinds of numbers per fold:

* ``history/<metric>``: the selection fold's metrics Keras logged (history.csv) at the best epoch by ``train.monitor`` /
  ``train.mode`` (the epoch of ``checkpoints/best.keras``), plus ``history/best_epoch``;
* ``eval/<metric>``: the task's evaluation of the fold's held-out split ``fold-k``, every number its ``summary.json``
  reports (`medtf.training.cv_report.summary_values`): segmentation the mean over cases, classification the
  point estimates (AUC, sensitivity ...), contrastive recall@k and median ranks; ``eval_extra/<name>``: the
  summary's pooled extras (e.g. lgg-mri ``dice_tumour_slices`` over all tumour slices).

Example:
    >>> report = run_cross_validation(load_config("experiments/lgg_unet2d.yaml"), "runs/lgg-cv", folds=5)
    >>> report["metrics"]["eval/dice"]["mean"], report["metrics"]["eval/dice"]["sd"]
    >>> report = aggregate_folds("runs/lgg-cv")          # after `medtf slurm ... --array 0-4`
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from medtf.data.manifest import ManifestError
from medtf.training.config import ConfigError, save_resolved
from medtf.training.cv_report import SHOWN_EVAL, fold_stats, format_report, summary_values  # noqa: F401
from medtf.training.cv_report import write_report as _write_report
from medtf.training.experiment import parse_config

FOLD_DIR_RE = re.compile(r"^fold_(\d+)$")
REPORT_JSON, REPORT_CSV, BASE_CONFIG = "cv_report.json", "cv_report.csv", "cv_config.yaml"


def fold_dir(run_dir: str | os.PathLike, k: int) -> Path:
    """``run_dir/fold_<k>``: where fold ``k`` trains (the SLURM array template uses the same name)."""
    return Path(run_dir) / f"fold_{int(k)}"


def eval_summary_path(run_dir: str | os.PathLike, k: int) -> Path:
    """The task's evaluation summary of fold ``k`` on its held-out split ``fold-k`` (every task's default output)."""
    return fold_dir(run_dir, k) / f"eval-fold-{int(k)}" / "summary.json"


def manifest_folds(data_dir: str | os.PathLike) -> int:
    """Number of ``fold-*`` splits in a shard folder's manifest.

    Raises:
        ConfigError: the folder is not a K-fold conversion (names the folder and its splits).
    """
    from medtf.data.manifest import fold_names, read_manifest

    manifest = read_manifest(data_dir)
    splits, count = list(manifest["splits"]), len(fold_names(manifest))
    if not count:
        raise ConfigError(f"{data_dir} has no fold splits (splits: {splits}); convert it with "
                          f"`medtf convert KIND ... --folds K` for cross-validation")
    return count


def fold_config(config, k: int, folds: int):
    """A copy of the experiment that trains fold ``k`` of ``folds`` (``data.fold`` / ``data.folds`` set)."""
    experiment = parse_config(config, components=False)
    return experiment.replace(data=experiment.data.replace(fold=int(k), folds=int(folds)))


# === Reading fold directories (no TensorFlow) ===

def _float(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def read_history(path: str | os.PathLike) -> list[dict[str, float]]:
    """history.csv rows as floats, one per epoch (the last row wins if an epoch repeats), ordered by epoch."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        return []
    by_epoch = {}
    for row in rows:
        if str(row.get("epoch", "")).isdigit():
            by_epoch[int(row["epoch"])] = {k: _float(v) for k, v in row.items() if k}
    return [by_epoch[e] for e in sorted(by_epoch)]


def best_row(rows: list[dict[str, float]], monitor: str, mode: str) -> dict[str, float] | None:
    """The row `keras.callbacks.ModelCheckpoint(save_best_only=True)` kept: the first best ``monitor`` value."""
    values = np.array([r.get(monitor, float("nan")) for r in rows], np.float64)
    if not np.isfinite(values).any():
        return None
    values[~np.isfinite(values)] = -np.inf if mode == "max" else np.inf
    return rows[int(np.argmax(values) if mode == "max" else np.argmin(values))]


def _read_yaml(path: Path) -> dict | None:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return config if isinstance(config, dict) else None


def read_run_config(path: Path):
    """The `ExperimentConfig` of a ``config.yaml`` (types checked, registries not: no TensorFlow), None when the
    file is missing or unreadable; raises `ConfigError` when it is not a valid experiment."""
    raw = _read_yaml(path)
    return None if raw is None else parse_config(raw, components=False)


def training_state(path: str | os.PathLike, epochs: int | None = None) -> tuple[bool, str]:
    """``(finished, why not)`` of one run directory.

    Finished means: history.csv has every epoch ``0 .. epochs-1`` (``epochs`` default: the run's own
    ``train.epochs``), ``checkpoints/best.keras`` exists and no ``backup/`` is left (the engine removes it at the
    end of a run; one that is left means an interrupted run that re-running resumes).
    """
    path = Path(path)
    if not path.is_dir():
        return False, f"no {path.name} directory"
    try:
        config = read_run_config(path / "config.yaml")
    except ConfigError as exc:
        return False, f"config.yaml is not a valid experiment ({exc})"
    if config is None:
        return False, "not started (no config.yaml)"
    if epochs is None:
        epochs = config.train.epochs
    done = {int(r["epoch"]) for r in read_history(path / "history.csv")}
    if (path / "backup").exists():
        return False, f"interrupted after {len(done)} of {epochs} epochs (backup/ present: re-run to resume)"
    if not set(range(epochs)) <= done:
        return False, f"unfinished: {len(done & set(range(epochs)))} of {epochs} epochs in history.csv"
    if not (path / "checkpoints" / "best.keras").is_file():
        return False, "no checkpoints/best.keras (train.monitor never had a finite value)"
    return True, ""


def eval_state(run_dir: str | os.PathLike, k: int) -> tuple[dict | None, str]:
    """``(summary, why not)``: fold ``k``'s evaluation summary when it exists and is newer than best.keras."""
    path = eval_summary_path(run_dir, k)
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, f"not evaluated (no {path.relative_to(Path(run_dir))})"
    if summary.get("split") != f"fold-{k}":
        return None, f"{path.name} is for split {summary.get('split')!r}, not fold-{k}"
    best = fold_dir(run_dir, k) / "checkpoints" / "best.keras"
    if best.is_file() and path.stat().st_mtime < best.stat().st_mtime:
        return None, "evaluation older than checkpoints/best.keras (re-evaluate)"
    return summary, ""


def _expected_folds(run_dir: Path, found: list[int], notes: list[str], data_dir=None) -> int:
    """K from the base config or a fold's config (``data.folds``, else the manifest); else the fold dirs."""
    configs = [run_dir / BASE_CONFIG] + [fold_dir(run_dir, k) / "config.yaml" for k in found]
    for path in configs:
        try:
            config = read_run_config(path)
        except ConfigError as exc:
            notes.append(f"{path}: {exc}")
            continue
        if config is None:
            continue
        if config.data.folds is not None:
            return config.data.folds
        data_dir = data_dir or config.data.dir
        try:
            return manifest_folds(data_dir)
        except (ManifestError, ConfigError, OSError) as exc:  # a moved shard folder: fall back to the directories
            notes.append(f"could not read the number of folds from {data_dir}: {exc}")
    if not found:
        raise FileNotFoundError(f"{run_dir}: no fold_* directories and no {BASE_CONFIG}")
    notes.append(f"number of folds inferred from the fold_* directories ({max(found) + 1})")
    return max(found) + 1


def aggregate_folds(run_dir: str | os.PathLike, folds: int | None = None, *, write: bool = True,
                    data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Combine ``run_dir/fold_*`` into ``cv_report.json`` / ``cv_report.csv`` (reads files only).

    Args:
        run_dir: cross-validation run directory (from `run_cross_validation` or a SLURM array).
        folds: expected number of folds K (default: ``data.folds`` or the manifest of the runs' ``data.dir``,
            else the highest ``fold_<k>`` + 1).
        write: write the two report files.
        data_dir: the shard folder, where the runs' ``data.dir`` moved (for the number of folds).

    Returns:
        ``{"run_dir", "folds", "complete", "fold_status": [{fold, status, detail, best_epoch, ...}],
        "missing": [folds that are not "ok"], "task", "metrics": {"history/val_dice": {"values": [per fold or
        None], "mean", "sd" (ddof=1), "ci_low", "ci_high" (95% t interval of the mean; None for n < 2), "n",
        "n_nan", "missing": [folds]}, ...}, "notes"}``.
        ``status`` is ``ok``, ``missing``, ``unfinished`` or ``not_evaluated`` (history values are used,
        ``eval/*`` ones are not).

    Example:
        >>> report = aggregate_folds("runs/lgg-cv")
        >>> report["complete"], report["metrics"]["history/val_dice"]["mean"]
    """
    run_dir = Path(run_dir)
    found = sorted(int(m.group(1)) for p in run_dir.glob("fold_*") if p.is_dir() and (m := FOLD_DIR_RE.match(p.name)))
    notes: list[str] = []
    k_total = int(folds) if folds is not None else _expected_folds(run_dir, found, notes, data_dir)
    extra_dirs = [k for k in found if k >= k_total]
    if extra_dirs:
        notes.append(f"ignored fold directories beyond {k_total} folds: {extra_dirs}")

    status, history_values, eval_values, tasks, selections = [], {}, {}, set(), set()
    for k in range(k_total):
        path = fold_dir(run_dir, k)
        record = {"fold": k, "dir": str(path), "status": "ok", "detail": "", "best_epoch": None,
                  "epochs": None, "monitor": None, "selection_split": None, "eval_summary": None}
        finished, why = training_state(path)
        if not finished:
            record.update(status="missing" if not path.is_dir() else "unfinished", detail=why)
            status.append(record)
            continue
        config = read_run_config(path / "config.yaml")  # training_state parsed it already
        train_cfg = config.train
        tasks.add(config.task)
        selection = _selection_fold(path / "config.yaml")
        record["selection_split"] = _selection_split(selection, k, k_total, notes)
        selections.add(selection)
        monitor, mode = train_cfg.monitor, train_cfg.mode
        rows = read_history(path / "history.csv")
        best = best_row(rows, monitor, mode)
        record.update(epochs=len(rows), monitor=f"{monitor} ({mode})")
        if best is not None:
            record["best_epoch"] = int(best["epoch"])
            values = {"best_epoch": best["epoch"], **{m: v for m, v in best.items()
                                                       if m.startswith("val_") or m == monitor}}
            for name, value in values.items():
                history_values.setdefault(name, {})[k] = value
        summary, why = eval_state(run_dir, k)
        if summary is None:
            record.update(status="not_evaluated", detail=why)
        else:
            record["eval_summary"] = str(eval_summary_path(run_dir, k))
            for name, value in summary_values(summary).items():  # whatever the task's summary reports
                eval_values.setdefault(name, {})[k] = value
        status.append(record)

    metrics = {}
    for name, per_fold in [*((f"history/{n}", v) for n, v in history_values.items()), *eval_values.items()]:
        values = [per_fold.get(k) for k in range(k_total)]
        metrics[name] = {"values": values, **fold_stats(values),
                         "missing": [k for k, v in enumerate(values) if v is None]}
    missing = [r["fold"] for r in status if r["status"] != "ok"]
    if len(tasks) > 1:
        notes.append(f"the folds were trained for different tasks: {sorted(tasks)}")
    task = sorted(tasks)[0] if tasks else str((_read_yaml(run_dir / BASE_CONFIG) or {}).get("task") or "segmentation")
    selection = "/".join(sorted(selections)) or None
    if selection == "inner":
        notes.append("nested selection: each fold chose its checkpoint on fold (k+1) mod K; eval/* is on the "
                     "held-out fold k")
    elif selection:  # outer, or folds trained both ways
        notes.append(f"selection_fold {selection}: folds with outer selection chose their checkpoint on the fold "
                     f"eval/* scores (optimistic)")
    report = {"run_dir": str(run_dir), "folds": k_total, "task": task, "complete": not missing,
              "selection_fold": selection, "fold_status": status, "missing": missing, "metrics": metrics,
              "notes": notes}
    if write:
        write_report(report, run_dir)
    return report


def _selection_fold(path: Path) -> str:
    """A run's ``data.selection_fold``. A run's config.yaml has every default filled in, so one without the key was
    written before nested selection existed: it chose on the held-out fold (outer)."""
    data = (_read_yaml(path) or {}).get("data") or {}
    return str(data.get("selection_fold") or "outer")


def _selection_split(selection: str, k: int, k_total: int, notes: list[str]) -> str | None:
    """The fold that chose fold ``k``'s checkpoint (no manifest needed: folds are 0..K-1)."""
    from medtf.data.manifest import nested_fold_splits

    try:
        names = {"splits": {f"fold-{j}": {} for j in range(k_total)}}
        return nested_fold_splits(names, k, selection).selection
    except ValueError as exc:
        notes.append(f"fold {k}: {exc}")
        return None


# === Writing (the report's arithmetic and table: medtf.training.cv_report) ===

def write_report(report: Mapping, run_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``cv_report.json`` (the whole report) and ``cv_report.csv`` (metric, fold_0..fold_{K-1}, mean, sd, ci_low,
    ci_high, n, missing)."""
    return _write_report(report, run_dir, REPORT_JSON, REPORT_CSV)


# === Training every fold ===

def evaluate_folds(run_dir: str | os.PathLike, folds: int, overlap: float = 0.5, verbose: bool = True,
                   data_dir: str | os.PathLike | None = None) -> list[int]:
    """Evaluate each finished fold whose evaluation is missing or stale with its run's task
    (``get_task(config.task).evaluate`` on split ``fold-k``, best checkpoint); returns the folds evaluated.

    ``overlap``: sliding-window overlap (segmentation; other tasks ignore it). ``data_dir``: the shard folder when
    it is no longer where the runs' ``data.dir`` says."""
    from medtf.tasks import get_task, task_of_run

    done = []
    for k in range(int(folds)):
        path = fold_dir(run_dir, k)
        if training_state(path)[0] and eval_state(run_dir, k)[0] is None:
            get_task(task_of_run(path)).evaluate(path, split=f"fold-{k}", checkpoint="best", overlap=overlap,
                                                 verbose=verbose, data_dir=data_dir)
            done.append(k)
    return done


def run_cross_validation(config, run_dir: str | os.PathLike, folds: int | None = None, *,
                         evaluate: bool = True, overlap: float = 0.5, verbose: bool = True) -> dict[str, Any]:
    """Train fold 0..K-1 one after the other into ``run_dir/fold_<k>``, evaluate each, aggregate.

    Each fold is an ordinary resumable run: re-running skips folds that finished (``train.epochs`` of the given
    config), resumes an interrupted one from its backup and evaluates folds whose evaluation is missing or older
    than their best checkpoint.

    Args:
        config: the experiment (`ExperimentConfig` or its mapping) on a K-fold shard folder (no ``data.fold``).
        run_dir: cross-validation run directory.
        folds: expected number of folds; must equal the manifest's (None: take the manifest's).
        evaluate: evaluate each fold's held-out split with the task's evaluator (`evaluate_folds`).
        overlap: sliding-window overlap of a segmentation evaluation.
        verbose: print progress and the evaluation tables.

    Returns:
        The `aggregate_folds` report, plus ``"preempted": k`` when fold ``k``'s training was preempted (then the
        later folds did not run; re-run the same command to resume).

    Raises:
        ConfigError: not a K-fold shard folder, ``folds`` / ``data.folds`` differ from it, ``data.fold`` set, or
            ``data.selection_fold: inner`` on fewer than 3 folds.

    Example:
        >>> report = run_cross_validation(load_config("experiments/lgg_unet2d.yaml"), "runs/lgg-cv")
    """
    from medtf.training.engine import train

    config = parse_config(config)
    data = config.data
    if data.fold is not None:
        raise ConfigError(f"data.fold={data.fold} selects one fold; cross-validation trains all of them "
                          f"(drop data.fold, or train that fold alone without --folds)")
    k_total = manifest_folds(data.dir)
    for given, what in ((folds, "--folds"), (data.folds, "data.folds")):
        if given is not None and int(given) != k_total:
            raise ConfigError(f"{what}={given}, but {data.dir} has {k_total} folds (fold-0 .. fold-{k_total - 1})")
    from medtf.training.inputs import fold_roles

    roles = [fold_roles(fold_config(config, k, k_total).data) for k in range(k_total)]  # K < 3 with inner: refused
    run_dir = Path(run_dir)
    save_resolved(config.as_dict(), run_dir, BASE_CONFIG)
    epochs = config.train.epochs
    for k in range(k_total):
        path = fold_dir(run_dir, k)
        if training_state(path, epochs)[0]:
            if verbose:
                print(f"fold {k}/{k_total}: finished earlier ({path})")
        else:
            _check_resume_selection(path, data.selection_fold)
            if verbose:
                print(f"fold {k}/{k_total}: training in {path} on {', '.join(roles[k].train)}, choosing on "
                      f"{roles[k].selection}, held out {roles[k].held_out}")
            result = train(fold_config(config, k, k_total), path)
            if result["preempted"]:
                report = aggregate_folds(run_dir, k_total)
                return {**report, "preempted": k}
        if evaluate:
            evaluate_folds(run_dir, k + 1, overlap, verbose)
        _free_memory()
    return aggregate_folds(run_dir, k_total)


def _check_resume_selection(path: Path, selection: str) -> None:
    """Refuse to resume fold ``path`` under another ``data.selection_fold`` than it started with: its epochs so far
    validated (and its best checkpoint was chosen) on another split, so the resumed run would mix two selections
    without saying so."""
    if not (path / "backup").exists() or not (path / "config.yaml").is_file():
        return
    started = _selection_fold(path / "config.yaml")
    if started != selection:
        raise ConfigError(f"{path}: this fold started with data.selection_fold {started} (its epochs so far chose on "
                          f"that split) and would resume with {selection}; re-run with "
                          f"--set data.selection_fold={started} to finish it as it started, or delete {path} to "
                          f"train it again with {selection}")


def _free_memory() -> None:
    # Each fold builds a fresh model; without this the graphs of earlier folds stay alive for the whole CV.
    import keras

    keras.backend.clear_session()
