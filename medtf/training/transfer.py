"""Transfer learning: start from another model's weights, freeze blocks, and run chains of training phases.

A phase chain is the prostate thesis's freeze/unfreeze plan over several body parts (prostate DWI -> brain ->
lung -> prostate): each phase trains on its own data set, starting from the previous phase's best checkpoint,
with some blocks frozen or none. In an experiment::

    transfer:
      compare_scratch: true          # also train the same network on the target data alone, from scratch
      phases:
        - name: brain-frozen         # any section may be overridden, merged into the experiment's own
          data: {dir: shards/brain}
          model: {freeze_up_to: block3, carry: backbone}
          optimizer: {learning_rate: 1.0e-4}
        - name: brain-full
          model: {freeze_up_to: null}
          min_val_metric: 0.8        # optional gate: stop the chain unless this phase's best val metric reaches it

What a phase inherits: every section it does not override, except that ``model.init_from`` of the experiment
(``medtf train --init-from``, e.g. a roulette winner) starts the first phase only (later phases start from the
previous phase), and ``data.fold`` / ``data.folds`` stay with the experiment's own shard folder (a phase on another
folder uses its train / val splits unless it sets them).

The gate ``min_val_metric`` guards against transferring from noise: after the phase (or when a finished phase is
found again on resume) its best validation score of ``train.monitor`` must be at least this value, else the chain
stops with `TransferGateError` naming the phase, the score and its ``history.csv`` (``transfer.json`` is written
with the phases so far and ``"stopped"``). It needs a monitor that is maximised (``val_auc``, ``val_accuracy``...).

`medtf train` runs the chain in ``RUN_DIR/phases/NN-NAME/`` (each a normal run directory with its TensorBoard
logs), resumably: a finished phase (``phase.json`` written) is not run again and a preempted one resumes from its
backup. At the end the last phase's ``config.yaml`` and checkpoints are copied to ``RUN_DIR`` (so ``medtf
evaluate`` / ``export RUN_DIR`` use the final model) and ``RUN_DIR/transfer.json`` compares each phase's best
validation score with the scratch baseline's.

The scratch baseline (`scratch_config`, in ``RUN_DIR/scratch/``) is what the chain must beat to show transfer: the
last phase's network and data (its folds included) from a fresh initialisation, nothing frozen, trained with the
**experiment's own** optimizer, schedule and ``train`` section (not a fine-tuning phase's small learning rate) for
as many epochs as the chain spends on the target data (the summed ``train.epochs`` of every phase on the last
phase's shard folder: DS1 + DS4 frozen + DS4 full in the prostate chain). Equal exposure to the target data, so a
gain comes from the other phases, not from more or better-tuned target training.

Weights are carried layer by layer, paired by name (auto-generated names by their class and rank), where the layer
type and every weight shape agree (`medtf.training.init_weights`: the report, ``init_from_strict``).
``carry: backbone`` leaves the output layer (the head) at its initialisation.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import keras

from medtf.training.config import ConfigError

__all__ = ["TransferGateError", "apply_freeze", "load_initial_weights", "run_transfer", "scratch_config",
           "transfer_phases"]

_SECTIONS = ("data", "model", "task", "loss", "optimizer", "schedule", "train", "seed")
_GATE = "min_val_metric"


class TransferGateError(ConfigError):
    """A phase with ``min_val_metric`` did not reach it: the chain stops instead of transferring from noise (a user
    error, exit code 2 on the CLI: train the phase longer, fix its data, or lower the gate)."""


# === Weights and freezing ===

# Matched by layer name, with a report and a strict mode (medtf.training.init_weights); re-exported here.
from medtf.training.init_weights import load_initial_weights  # noqa: E402


def apply_freeze(model: keras.Model, blocks=(), up_to: str | None = None) -> list[str]:
    """`medtf.models.freeze.freeze` from the model section (nothing when neither is given); before compile."""
    from medtf.models.freeze import freeze

    if blocks:
        return freeze(model, blocks=list(blocks))
    if up_to is not None:
        return freeze(model, up_to=up_to)
    return []


# === Phase chains ===

def _merge(base: Any, override: Any) -> Any:
    """``override`` deep-merged into ``base`` (mappings merge, everything else replaces)."""
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        # a deep copy: phases that do not override a section must not share it (run_transfer sets each phase's
        # model.init_from; a shared dict gave every later such phase the first one's)
        out = copy.deepcopy(dict(base))
        for key, value in override.items():
            out[key] = _merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(override)


def transfer_phases(experiment) -> list[tuple[str, dict]]:
    """``[(name, raw config), ...]``: each phase's overrides merged into the experiment (without ``transfer``),
    every one parsed and checked (a `ConfigError` names the phase and key)."""
    from medtf.training.experiment import parse_config

    settings = experiment.transfer or {}
    unknown = sorted(set(settings) - {"phases", "compare_scratch"})
    if unknown:
        raise ConfigError(f"transfer.{unknown[0]}: unknown key; transfer takes phases and compare_scratch")
    phases = settings.get("phases")
    if not isinstance(phases, list) or not phases:
        raise ConfigError("transfer.phases: a non-empty list of phases ({name: ..., <section overrides>})")
    if not isinstance(settings.get("compare_scratch", False), bool):
        raise ConfigError("transfer.compare_scratch: true or false")
    base = experiment.as_dict()
    base.pop("transfer", None)
    out, names = [], set()
    for i, phase in enumerate(phases):
        key = f"transfer.phases[{i}]"
        if not isinstance(phase, Mapping) or not isinstance(phase.get("name"), str) or not phase["name"]:
            raise ConfigError(f"{key}: a phase is a mapping with a name, got {phase!r}")
        name = phase["name"]
        if name in names or "/" in name:
            raise ConfigError(f"{key}.name: {name!r} is used twice or has a '/'")
        names.add(name)
        extra = sorted(set(phase) - {"name", _GATE, *_SECTIONS})
        if extra:
            raise ConfigError(f"{key}.{extra[0]}: a phase overrides only {', '.join(_SECTIONS)} (and sets {_GATE})")
        gate = phase.get(_GATE)
        if gate is not None and (isinstance(gate, bool) or not isinstance(gate, (int, float))):
            raise ConfigError(f"{key}.{_GATE}: a number (the least best validation score), got {gate!r}")
        raw = _merge(base, {k: v for k, v in phase.items() if k not in ("name", _GATE)})
        if "task" in phase and "monitor" not in (phase.get("train") or {}):
            raw["train"].pop("monitor", None), raw["train"].pop("mode", None)  # the phase's task's defaults
        given = phase.get("data") or {}
        if given.get("dir") and "kind" not in given:
            raw["data"]["kind"] = None  # another data set: its manifest says its kind
        if given.get("dir") and os.path.abspath(os.path.expanduser(str(given["dir"]))) != base["data"]["dir"]:
            for key in ("fold", "folds"):  # the experiment's fold belongs to its own folder, not to this one
                raw["data"].setdefault(key, None)
                if key not in given:
                    raw["data"][key] = None
        if i > 0 and "init_from" not in (phase.get("model") or {}):
            raw["model"]["init_from"] = None  # the experiment's init_from starts the chain; later phases chain
        try:
            parsed = parse_config(raw)
        except ConfigError as exc:
            raise ConfigError(f"{key} ({name}): {exc}") from None
        if gate is not None and parsed.train.mode != "max":
            raise ConfigError(f"{key}.{_GATE}: needs a monitor that is maximised (e.g. val_auc); phase {name!r} "
                              f"monitors {parsed.train.monitor} (mode {parsed.train.mode})")
        out.append((name, raw))
    return out


def scratch_config(experiment, phases: list[tuple[str, dict]] | None = None) -> dict:
    """Raw config of the chain's scratch baseline (see the module docstring): the last phase's model, task, loss
    and data, the experiment's optimizer / schedule / train, ``train.epochs`` = the summed epochs of the phases
    on the target folder, no ``init_from`` and nothing frozen."""
    phases = transfer_phases(experiment) if phases is None else phases
    target = phases[-1][1]
    base = experiment.as_dict()
    raw = copy.deepcopy(target)
    raw["optimizer"], raw["schedule"] = copy.deepcopy(base["optimizer"]), copy.deepcopy(base["schedule"])
    raw["train"] = copy.deepcopy(base["train"])
    for key in ("monitor", "mode"):  # the target task's metric, as the chain's last phase
        raw["train"].pop(key, None)
        if key in target["train"]:
            raw["train"][key] = target["train"][key]
    same = os.path.abspath(os.path.expanduser(str(target["data"]["dir"])))
    raw["train"]["epochs"] = sum(int(r["train"]["epochs"]) for _, r in phases
                                 if os.path.abspath(os.path.expanduser(str(r["data"]["dir"]))) == same)
    raw["model"].update(init_from=None, freeze_blocks=[], freeze_up_to=None, carry="all")
    return raw


def _best_value(run_dir: Path, monitor: str, mode: str) -> float | None:
    import csv

    path = run_dir / "history.csv"
    if not path.is_file():
        return None
    values = [float(r[monitor]) for r in csv.DictReader(open(path, newline="")) if r.get(monitor) not in (None, "")]
    return (max(values) if mode == "max" else min(values)) if values else None


def _run_phase(name: str, raw: dict, run_dir: Path) -> dict | None:
    """Train one phase in ``run_dir`` unless it finished before; its record, or None when preempted."""
    from medtf.training.engine import train

    marker = run_dir / "phase.json"
    if marker.is_file():
        return json.loads(marker.read_text(encoding="utf-8"))
    result = train(raw, run_dir)
    if result["preempted"]:
        return None
    monitor, mode = raw["train"]["monitor"], raw["train"]["mode"]
    record = {"name": name, "run_dir": str(run_dir), "init_from": raw["model"].get("init_from"),
              "freeze_blocks": raw["model"].get("freeze_blocks") or [],
              "freeze_up_to": raw["model"].get("freeze_up_to"), "data_dir": raw["data"]["dir"],
              "monitor": monitor, "mode": mode, "best": _best_value(run_dir, monitor, mode),
              "epochs": len(result["history"].get("loss", []))}
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, marker)  # the marker appears only complete: a phase killed while writing it runs again
    return record


def run_transfer(experiment, run_dir: str | os.PathLike) -> dict:
    """Run the experiment's phase chain (see the module docstring) in ``run_dir``; returns the summary written to
    ``RUN_DIR/transfer.json``, or ``{"preempted": PHASE}`` when a phase was preempted (run again to resume)."""
    run_dir = Path(run_dir)
    phases = transfer_phases(experiment)
    gates = [p.get(_GATE) for p in experiment.transfer["phases"]]
    records, previous = [], None
    for i, (name, raw) in enumerate(phases):
        if previous is not None and not raw["model"].get("init_from"):
            raw["model"]["init_from"] = str(previous)
        record = _run_phase(name, raw, run_dir / "phases" / f"{i + 1:02d}-{name}")
        if record is None:
            return {"preempted": name}
        record = _gate(record, gates[i])
        records.append(record)
        if record.get("passed") is False:  # checked on resume too: a finished phase below its gate stays refused
            _write_summary(run_dir, {"phases": records, "final": None, "scratch": None, "stopped": name})
            best = "no value" if record["best"] is None else f"{record['best']:.4f}"
            raise TransferGateError(
                f"transfer.phases[{i}] ({name}): best {record['monitor']} {best} < {_GATE} {gates[i]} in "
                f"{record['run_dir']}/history.csv: this phase did not learn its task, so the chain stops before "
                f"transferring from it. Train it longer or fix its data (delete {record['run_dir']} to re-run "
                f"it), or lower {_GATE}")
        previous = Path(record["run_dir"]) / "checkpoints" / "best.keras"
    summary = {"phases": records, "final": records[-1]["run_dir"], "scratch": None}
    if (experiment.transfer or {}).get("compare_scratch"):
        record = _run_phase("scratch", scratch_config(experiment, phases), run_dir / "scratch")
        if record is None:
            return {"preempted": "scratch"}
        summary["scratch"] = record
        if record["best"] is not None and records[-1]["best"] is not None:
            sign = 1 if record["mode"] == "max" else -1
            summary["gain_over_scratch"] = sign * (records[-1]["best"] - record["best"])
    final = Path(records[-1]["run_dir"])
    shutil.copy2(final / "config.yaml", run_dir / "config.yaml")
    shutil.copy2(final / "history.csv", run_dir / "history.csv")  # RUN_DIR reads as a finished run (folds, cv-report)
    shutil.copytree(final / "checkpoints", run_dir / "checkpoints", dirs_exist_ok=True)
    _write_summary(run_dir, summary)
    return summary


def _gate(record: dict, gate: float | None) -> dict:
    """``record`` with the phase's gate and whether its best score reached it (``passed``: None without a gate)."""
    passed = None if gate is None else record["best"] is not None and record["best"] >= gate
    return {**record, _GATE: gate, "passed": passed}


def _write_summary(run_dir: Path, summary: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "transfer.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / "transfer.json")
