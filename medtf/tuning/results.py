"""What a search leaves behind: results.csv, best.yaml, a TensorBoard HParams view and a printed summary."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import yaml

from medtf.tuning.settings import TuneSettings
from medtf.tuning.space import active_values, native

FIXED_COLUMNS = ("trial_id", "status", "tuner_id", "epochs", "best_epoch", "seconds", "run_dir")


def _runs(run_dir: Path) -> list[dict]:
    path = run_dir / "tuner_runs.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def collect_rows(oracle, settings: TuneSettings, tune_dir: str | os.PathLike) -> list[dict]:
    """One dict per trial (in trial-id order): trial_id, status, each hyperparameter (blank when inactive), the
    objective (None unless completed), tuner_id / epochs / best_epoch / seconds of its latest execution, run_dir."""
    tune_dir = Path(tune_dir)
    rows = []
    for trial_id in sorted(oracle.trials):
        trial = oracle.trials[trial_id]
        values = active_values(trial.hyperparameters)
        runs = _runs(tune_dir / "trials" / trial_id)
        last = runs[-1] if runs else {}
        score = native(trial.score) if trial.status == "COMPLETED" and trial.score is not None else None
        rows.append({"trial_id": trial_id, "status": trial.status,
                     **{name: values.get(name, "") for name in settings.specs},
                     settings.objective: score, "tuner_id": last.get("tuner_id", ""),
                     "epochs": last.get("epochs", ""), "best_epoch": last.get("best_epoch", ""),
                     "seconds": last.get("seconds", ""), "executions": len(runs),
                     "run_dir": os.path.join("trials", trial_id), "values": values,
                     # hyperband: the earlier trial whose configuration this one trains for more epochs
                     "continues": trial.hyperparameters.values.get("tuner/trial_id", ""),
                     # the exception of a failed trial (the full traceback is in oracle/trial_<id>/trial.json)
                     "error": ([ln for ln in (trial.message or "").splitlines() if ln.strip()] or [""])[-1]})
    return rows


def write_results_csv(rows: Sequence[dict], settings: TuneSettings, path: str | os.PathLike) -> Path:
    path = Path(path)
    columns = ["trial_id", "status", *settings.specs, settings.objective,
               *[c for c in FIXED_COLUMNS if c not in ("trial_id", "status")], "executions",
               *(["continues"] if settings.tuner == "hyperband" else []), "error"]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    os.replace(tmp, path)
    return path


def write_best_yaml(trial, base: Mapping, settings: TuneSettings, path: str | os.PathLike) -> Path:
    """The best trial's full experiment, loadable by `medtf train` (the tune section is not part of it)."""
    from medtf.tuning.tuner import trial_config

    config = trial_config(base, trial.hyperparameters)
    values = active_values(trial.hyperparameters)
    header = [f"# Best trial {trial.trial_id} of a `medtf tune` search ({settings.tuner}): "
              f"{settings.objective} = {native(trial.score)} ({settings.direction})",
              *[f"#   {k}: {v}" for k, v in values.items()],
              "# Train it with: medtf train best.yaml --run-dir RUN_DIR"]
    path = Path(path)
    path.write_text("\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _domain(spec: Mapping):
    from tensorboard.plugins.hparams import api as hp

    kind = spec["type"]
    if kind == "float":
        return hp.RealInterval(float(spec["min"]), float(spec["max"]))
    if kind == "int":
        return hp.IntInterval(int(spec["min"]), int(spec["max"]))
    if kind == "boolean":
        return hp.Discrete([False, True])
    values = spec["values"] if kind == "choice" else [spec["value"]]
    return hp.Discrete([float(v) if any(isinstance(x, float) for x in values) else v for v in values])


def write_hparams(rows: Sequence[dict], settings: TuneSettings, folder: str | os.PathLike) -> Path:
    """TensorBoard HParams: the experiment (tuned hyperparameters with their domains, the objective) in
    ``folder`` and one session per completed trial in ``folder/<trial id>`` (rewritten on every call).

    ``tensorboard --logdir TUNE_DIR/hparams`` shows the table, parallel coordinates and scatter plots.
    """
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    params = {name: hp.HParam(name, _domain(spec)) for name, spec in settings.specs.items()}
    with tf.summary.create_file_writer(str(folder)).as_default():
        hp.hparams_config(hparams=list(params.values()),
                          metrics=[hp.Metric(settings.objective, display_name=f"{settings.objective} (best epoch)"),
                                   hp.Metric("seconds", display_name="train seconds")])
    for row in rows:
        if row[settings.objective] is None:
            continue
        with tf.summary.create_file_writer(str(folder / row["trial_id"])).as_default():
            hp.hparams({params[k]: v for k, v in row["values"].items() if k in params}, trial_id=row["trial_id"])
            tf.summary.scalar(settings.objective, float(row[settings.objective]), step=0)
            if row["seconds"] != "":
                tf.summary.scalar("seconds", float(row["seconds"]), step=0)
    return folder


def best_trial_id(rows: Sequence[dict], settings: TuneSettings) -> str | None:
    """The completed trial with the best objective; ties go to the earliest trial (stable across re-runs,
    unlike keras-tuner's ``get_best_trials``, whose order follows how the trials were loaded)."""
    done = [r for r in rows if r[settings.objective] is not None]
    if not done:
        return None
    sign = -1.0 if settings.direction == "max" else 1.0
    return min(done, key=lambda r: (sign * float(r[settings.objective]), r["trial_id"]))["trial_id"]


def format_summary(rows: Sequence[dict], settings: TuneSettings, best_id: str | None, top: int = 5) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    lines = [f"{len(rows)} trials ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}); "
             f"objective {settings.objective} ({settings.direction})"]
    done = [r for r in rows if r[settings.objective] is not None]
    done.sort(key=lambda r: r[settings.objective], reverse=settings.direction == "max")
    for row in done[:top]:
        mark = "*" if row["trial_id"] == best_id else " "
        values = ", ".join(f"{k}={v}" for k, v in row["values"].items())
        lines.append(f" {mark} trial {row['trial_id']}: {settings.objective} {row[settings.objective]:.4f}  {values}")
    return "\n".join(lines)


def write_outputs(rows: Sequence[dict], settings: TuneSettings, base: Mapping, oracle,
                  tune_dir: str | os.PathLike) -> dict:
    """results.csv, best.yaml (when a trial completed) and hparams/ in ``tune_dir``; prints the summary."""
    tune_dir = Path(tune_dir)
    results = write_results_csv(rows, settings, tune_dir / "results.csv")
    best_id = best_trial_id(rows, settings)
    best = oracle.trials[best_id] if best_id is not None else None
    best_config = write_best_yaml(best, base, settings, tune_dir / "best.yaml") if best else None
    hparams = write_hparams(rows, settings, tune_dir / "hparams")
    print(format_summary(rows, settings, best.trial_id if best else None))
    print(f"results: {results}")
    print(f"best: {best_config}" if best_config else "no trial completed: no best.yaml")
    print(f"tensorboard --logdir {hparams}   (per-trial curves: --logdir {tune_dir / 'trials'})")
    best_row = next((r for r in rows if best and r["trial_id"] == best.trial_id), None)
    return {"best": best_row, "results": str(results), "best_config": str(best_config) if best_config else None,
            "hparams": str(hparams)}
