"""Model roulette: pick the best of N seeded initialisations by a validation metric, as the starting weights.

The prostate thesis found its VGG-ELU so sensitive to initialisation that it built 200 random initialisations and
kept the one with the best validation AUC. `run_roulette` does that reproducibly: candidate ``i`` is the
experiment's model built after ``keras.utils.set_random_seed(seed + i)``, optionally trained for
``warmup_steps`` steps, then scored on the **validation** split (never the test split: choosing on test data
leaks it into the reported result, the thesis's mistake). Results go to ``OUT``::

    OUT/candidates/seed-S.json     score of one candidate (written atomically: a killed worker's candidate reruns)
    OUT/candidates/seed-S.keras    its weights (kept for the best only once all are scored)
    OUT/roulette.json, roulette.csv   every score, the best seed, the metric and split
    OUT/best.keras                 the winner: `medtf train CONFIG --init-from OUT/best.keras`

Candidates split across processes by ``num_tasks`` / ``task_index`` (local ``--workers W`` or a SLURM array);
`select_best` then ranks whatever is scored.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np

from medtf.training.config import ConfigError

__all__ = ["run_candidates", "select_best", "run_roulette", "check_split"]


def check_split(experiment) -> str:
    """The split candidates are scored on: ``data.val_split``; a test split or none is refused."""
    split = experiment.data.val_split
    if not split:
        raise ConfigError("medtf roulette scores candidates on data.val_split, which is null: set a validation split")
    if "test" in str(split).lower():
        raise ConfigError(f"medtf roulette refuses to score on {split!r}: choosing an initialisation on the test "
                          f"split leaks it into the reported result; score on a validation split")
    return split


def _metric(experiment, metric: str | None, mode: str | None) -> tuple[str, str]:
    monitor = metric or experiment.train.monitor
    mode = mode or (experiment.train.mode if metric is None else ("min" if monitor.endswith("loss") else "max"))
    return monitor.removeprefix("val_"), mode


def _score(experiment, seed: int, warmup_steps: int, metric: str) -> tuple[float, keras.Model]:
    from medtf.tasks import get_task
    from medtf.training.engine import build_model, build_optimizer
    from medtf.training.inputs import build_datasets

    keras.utils.set_random_seed(int(seed))
    model = build_model(experiment.model)
    task = get_task(experiment.task)
    task.compile(model, build_optimizer(experiment.optimizer), loss=experiment.loss.as_dict())
    # The same data order for every candidate: only the initialisation differs.
    train_ds, val_ds = build_datasets(experiment.data, None, seed=experiment.data_seed,
                                      model_inputs=task.model_inputs(model))
    if warmup_steps:
        model.fit(train_ds, epochs=1, steps_per_epoch=int(warmup_steps), verbose=0, shuffle=False)
    logs = model.evaluate(val_ds, steps=experiment.train.validation_steps, return_dict=True, verbose=0)
    if metric not in logs:
        raise ConfigError(f"metric {metric!r} is not among the task's validation metrics {sorted(logs)}")
    return float(logs[metric]), model


def run_candidates(experiment, out, candidates: int, warmup_steps: int = 0, metric: str | None = None,
                   mode: str | None = None, num_tasks: int = 1, task_index: int = 0) -> list[dict]:
    """Score this task's share of the candidates (``i % num_tasks == task_index``); already scored ones are
    skipped (a rerun after a kill continues). Returns the records written."""
    from medtf.training.experiment import parse_config

    experiment = parse_config(experiment)
    split = check_split(experiment)
    name, mode = _metric(experiment, metric, mode)
    base = int(experiment.seed or 0)
    folder = Path(out) / "candidates"
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(task_index, candidates, num_tasks):
        seed = base + i
        path = folder / f"seed-{seed}.json"
        if path.is_file():
            records.append(json.loads(path.read_text(encoding="utf-8")))
            continue
        value, model = _score(experiment, seed, warmup_steps, name)
        model.save(folder / f"seed-{seed}.keras")
        record = {"candidate": i, "seed": seed, "metric": name, "mode": mode, "split": split,
                  "warmup_steps": int(warmup_steps), "score": value}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        os.replace(tmp, path)  # the record last: it says the weights beside it are complete
        records.append(record)
    return records


def select_best(out, candidates: int, keep_all: bool = False) -> dict:
    """Rank the scored candidates of ``out``; write roulette.json/.csv and best.keras. Missing candidates (a task
    that has not finished) are an error naming them. NaN scores rank last."""
    folder = Path(out) / "candidates"
    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("seed-*.json"))]
    done = {r["candidate"] for r in records}
    missing = sorted(set(range(candidates)) - done)
    if missing:
        raise ValueError(f"{len(missing)} of {candidates} candidates are not scored yet (e.g. candidate "
                         f"{missing[0]}): run the remaining tasks, or the same command again")
    records = sorted((r for r in records if r["candidate"] < candidates), key=lambda r: r["candidate"])
    mode = records[0]["mode"]
    scores = np.array([r["score"] for r in records], dtype=float)
    ranked = np.where(np.isnan(scores), -np.inf if mode == "max" else np.inf, scores)
    best = records[int(np.argmax(ranked) if mode == "max" else np.argmin(ranked))]
    out = Path(out)
    shutil.copy2(folder / f"seed-{best['seed']}.keras", out / "best.keras.tmp")
    os.replace(out / "best.keras.tmp", out / "best.keras")
    summary = {"metric": best["metric"], "mode": mode, "split": best["split"], "candidates": len(records),
               "warmup_steps": best["warmup_steps"], "best": best, "mean": float(np.nanmean(scores)),
               "sd": float(np.nanstd(scores, ddof=1)) if len(scores) > 1 else 0.0,
               "scores": [{"seed": r["seed"], "score": r["score"]} for r in records]}
    (out / "roulette.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    with open(out / "roulette.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["candidate", "seed", best["metric"]])
        writer.writerows([r["candidate"], r["seed"], r["score"]] for r in records)
    if not keep_all:
        for r in records:
            if r["seed"] != best["seed"]:
                (folder / f"seed-{r['seed']}.keras").unlink(missing_ok=True)
    return summary


def run_roulette(experiment, out, candidates: int, warmup_steps: int = 0, metric: str | None = None,
                 mode: str | None = None, keep_all: bool = False) -> dict:
    """Every candidate in this process, then `select_best`."""
    run_candidates(experiment, out, candidates, warmup_steps, metric, mode)
    return select_best(out, candidates, keep_all)
