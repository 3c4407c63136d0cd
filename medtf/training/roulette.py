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

Candidates split across processes by ``num_tasks`` / ``task_index`` (local ``--workers W`` or a SLURM array:
``medtf slurm roulette``); `select_best` then ranks whatever is scored.

Per cross-validation fold (``data.fold: k``, ``medtf roulette --fold k``) the candidates are scored on the round's
selection fold and warmed up on its training folds, as ``medtf train --set +data.fold=k`` splits them
(`medtf.training.inputs.fold_roles`): with ``data.selection_fold: inner`` (default) scored on ``fold-((k+1) mod K)``,
warmed up on the other K-2 folds, and the held-out ``fold-k`` (and its patients) is refused for both; with
``outer`` scored on ``fold-k`` (the old, optimistic choice). On a transfer chain the fold is planned as for
training (`medtf.training.cv_transfer.fold_transfer_experiment`: a phase whose data holds held-out-fold or test
patients is refused). Every record names its split, metric and warm-up, and one output folder holds one setting:
a fold's roulette never ranks another fold's scores.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np

from medtf.training.config import ConfigError

__all__ = ["run_candidates", "select_best", "run_roulette", "check_split"]


def check_split(experiment, warmup_steps: int = 0) -> str:
    """The split candidates are scored on: ``data.val_split``, or with ``data.fold: k`` the round's selection fold
    (`medtf.training.inputs.fold_roles`: ``inner`` ``fold-((k+1) mod K)``, ``outer`` ``fold-k``).

    Refused (`ConfigError`): no validation split, a test split as the validation split or hidden among the training
    splits (`medtf.training.selection.check_selection_split`), a validation split holding test patients, warm-up
    training data holding validation or test patients, with inner selection a scoring or warm-up split holding
    patients of the held-out ``fold-k``, and on a transfer chain with ``data.fold`` a phase whose
    data holds held-out-fold or test patients (the chain's own fold planning).
    """
    from medtf.training.inputs import fold_roles, split_names
    from medtf.training.selection import check_selection_split

    data = experiment.data
    if data.fold is not None and experiment.transfer:
        from medtf.training.cv_transfer import fold_transfer_experiment
        from medtf.training.folds import manifest_folds

        # The chain this roulette initialises is trained with the same fold planning (`medtf train --set
        # +data.fold=k`): refuse here what it would refuse there, before any candidate is scored.
        fold_transfer_experiment(experiment.replace(data=data.replace(fold=None, folds=None)), data.fold,
                                 data.folds or manifest_folds(data.dir))
    train, _ = split_names(data)  # with data.fold: the round's training and selection folds, as `medtf train`
    split = check_selection_split(experiment, "medtf roulette")  # == val: one split resolution for both
    train = [train] if isinstance(train, str) else list(train)
    _check_patients(data.dir, train, split, warmup_steps)
    if data.fold is not None and data.selection_fold == "inner":
        _check_held_out(data.dir, fold_roles(data).held_out, train if warmup_steps else [], split)
    return split


def _check_held_out(data_dir, held_out: str, train: list[str], split: str) -> None:
    """Inner selection: the held-out fold is scored once, by the final evaluation; never by a chooser."""
    from medtf.data.manifest import read_manifest

    splits = read_manifest(data_dir)["splits"]
    used = [split, *train]
    if held_out in used:
        raise ConfigError(f"medtf roulette: {data_dir}: {held_out!r} is the held-out fold of this round; it may not "
                          f"be scored on or trained on")
    hidden = set(splits[held_out].get("patients", ())) & {p for s in used for p in splits[s].get("patients", ())}
    if hidden:
        raise ConfigError(f"medtf roulette: {data_dir}: splits {used} hold {len(hidden)} patient(s) of the held-out "
                          f"fold {held_out!r}; choosing on them leaks it into the cross-validated result")


def _check_patients(data_dir, train: list[str], val: str, warmup_steps: int) -> None:
    """Patient-level guard on the manifest: split names can hide the same (hashed) patients."""
    from medtf.data.manifest import read_manifest
    from medtf.training.selection import is_test_split

    splits = read_manifest(data_dir)["splits"]

    def patients(names) -> set[str]:
        return {p for name in names if name in splits for p in splits[name].get("patients", ())}

    test = patients([name for name in splits if is_test_split(name)])
    shared = patients([val]) & test
    if shared:
        raise ConfigError(f"medtf roulette: {data_dir}: validation split {val!r} holds {len(shared)} patient(s) of "
                          f"the test split; choosing on them leaks the test split into the reported result")
    if warmup_steps:
        shared = patients(train) & (test | patients([val]))
        if shared:
            raise ConfigError(f"medtf roulette: {data_dir}: the warm-up training splits {train} hold {len(shared)} "
                              f"patient(s) of the validation split {val!r} or the test split")


def _metric(experiment, metric: str | None, mode: str | None) -> tuple[str, str]:
    monitor = metric or experiment.train.monitor
    mode = mode or (experiment.train.mode if metric is None else ("min" if monitor.endswith("loss") else "max"))
    return monitor.removeprefix("val_"), mode


def _score(experiment, seed: int, warmup_steps: int, metric: str):
    import keras

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
    split = check_split(experiment, warmup_steps)
    name, mode = _metric(experiment, metric, mode)
    setting = {"metric": name, "mode": mode, "split": split, "warmup_steps": int(warmup_steps)}
    base = int(experiment.seed or 0)
    folder = Path(out) / "candidates"
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(task_index, candidates, num_tasks):
        seed = base + i
        path = folder / f"seed-{seed}.json"
        if path.is_file():
            records.append(_same_setting(json.loads(path.read_text(encoding="utf-8")), setting, path))
            continue
        value, model = _score(experiment, seed, warmup_steps, name)
        model.save(folder / f"seed-{seed}.keras")
        record = {"candidate": i, "seed": seed, **setting, "score": value}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        os.replace(tmp, path)  # the record last: it says the weights beside it are complete
        records.append(record)
    return records


def _same_setting(record: dict, setting: dict, path) -> dict:
    """A record scored another way (another fold, metric or warm-up) must not be reused or ranked with these."""
    other = {k: record.get(k) for k in setting}
    if other != setting:
        raise ValueError(f"{path}: scored with {other}, but this roulette scores with {setting}; "
                         f"use one --out folder per fold / metric / warm-up")
    return record


def select_best(out, candidates: int, keep_all: bool = False, split: str | None = None) -> dict:
    """Rank the scored candidates of ``out``; write roulette.json/.csv and best.keras. Missing candidates (a task
    that has not finished) are an error naming them, and so are records of different settings or, when ``split``
    is given, of another split. NaN scores rank last."""
    folder = Path(out) / "candidates"
    paths = sorted(folder.glob("seed-*.json"))
    records = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    if records:
        first = {k: records[0].get(k) for k in ("metric", "mode", "split", "warmup_steps")}
        if split is not None and first["split"] != split:
            raise ValueError(f"{paths[0]}: scored on {first['split']!r}, but this roulette scores on {split!r}")
        records = [_same_setting(r, first, p) for r, p in zip(records, paths)]
    done = {r["candidate"] for r in records}
    missing = sorted(set(range(candidates)) - done)
    if missing:
        raise ValueError(f"{len(missing)} of {candidates} candidates are not scored yet (e.g. candidate "
                         f"{missing[0]}): run the remaining tasks, or the same command again")
    records = sorted((r for r in records if r["candidate"] < candidates), key=lambda r: r["candidate"])
    twice = [a["candidate"] for a, b in zip(records, records[1:]) if a["candidate"] == b["candidate"]]
    if twice:  # e.g. the experiment's seed changed between runs into one folder
        raise ValueError(f"{folder}: candidate {twice[0]} is scored twice (different seeds): use a new --out")
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
