"""Quality of the two segmentation workloads on held-out synthetic patients, with a shuffled-label control.

Issue #5 targets, measured in one run and recorded in ``benchmarks/RESULTS.md``:

- **brachy**: the demo's data and budget (``medtf demo``: 10 synthetic breast-brachytherapy patients, split
  0.6/0.2/0.2 by patient, ``experiments/brachy_unet3d.yaml`` with ``DEMO_OVERRIDES``), evaluated on the test
  patients with whole-volume sliding-window inference: catheter Dice >= 0.80 and mean tip error <= 3 mm.
- **brachy-shuffled** (the control): the same patients, but every *training* patient's RT Plan is replaced by the
  plan of another training patient (a seeded derangement), moved into the receiving CT's frame of reference (same
  position relative to the volume origin) and re-labelled with the receiving patient's identity, so the converter
  accepts it. The masks are then real catheter layouts that have nothing to do with the needles in the image.
  Validation and test patients keep their own plans, the same key and seed give the same split (checked), and the
  model is evaluated on the **true** test shards (``evaluate_run(data_dir=...)``). A model that learned the
  needles scores high on the real labels and near zero here; if the control also scored high, the number would
  come from a leak (e.g. labels visible in the input), not from learning.
- **lgg**: synthetic LGG FLAIR slices (``medtf synth lgg-mri``, Kaggle layout), split by patient, a small 2D
  U-Net (``experiments/lgg_unet2d.yaml`` scaled down by ``LGG_OVERRIDES``), Dice on the test patients' tumour
  slices (``dice_tumour_slices``) >= 0.80.

Usage::

    .venv/bin/python benchmarks/quality.py [--out DIR] [--only brachy,brachy-shuffled,lgg] [--json FILE]

About 15 minutes on 2 CPU cores; everything is written under ``--out`` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ID_SALT = "medtf-quality-benchmark"  # a fixed key: the true and the shuffled conversion split patients identically
BRACHY_SPLIT = "0.6,0.2,0.2"
LGG_OVERRIDES = (
    "model.args.depth=4",
    "model.args.base_filters=8",
    "data.batch_size=8",
    "train.epochs=12",
    "train.steps_per_epoch=30",
)
TARGETS = {"brachy": {"dice": 0.80, "tip_error_mm": 3.0}, "lgg": {"dice_tumour_slices": 0.80}}
WORKLOADS = ("brachy", "brachy-shuffled", "lgg")


def _cli(*args) -> None:
    from medtf.cli.main import main

    argv = [str(a) for a in args]
    print(f"$ medtf {' '.join(argv)}", flush=True)
    if main(argv) != 0:
        raise SystemExit(f"`medtf {argv[0]}` failed")


def _metric(summary: dict, name: str) -> float:
    if name in summary["metrics"]:
        return float(summary["metrics"][name]["mean"])
    return float(summary["extra"][name])


def train_and_evaluate(experiment: str, shards: Path, run_dir: Path, overrides, eval_data: Path) -> dict:
    from medtf.cli.demo import experiments_dir
    from medtf.evaluation import evaluate_run
    from medtf.training.config import load_config
    from medtf.training.engine import train

    config = load_config(experiments_dir() / experiment, [f"data.dir={shards}", *overrides])
    start = time.monotonic()
    result = train(config, run_dir)
    train_min = (time.monotonic() - start) / 60
    summary = evaluate_run(run_dir, split="test", data_dir=eval_data, verbose=False)
    best_val = float(np.nanmax(result["history"].get("val_dice", [np.nan])))
    return {"summary": summary, "train_minutes": train_min, "best_val_dice": best_val}


# === brachy ===

def brachy_sources(out: Path, cases: int, seed: int) -> tuple[Path, Path]:
    source, shards = out / "source" / "brachy-ct", out / "shards" / "brachy-ct"
    if not (shards / "manifest.json").exists():
        _cli("synth", "brachy-ct", "--out", source, "--cases", cases, "--seed", seed)
        _cli("convert", "brachy-ct", "--input", source, "--output", shards, "--split", BRACHY_SPLIT,
             "--seed", seed, "--id-salt", ID_SALT, "--workers", 2)
    return source, shards


def patients_by_split(source: Path, shards: Path) -> dict[str, list[Path]]:
    """Source case folders grouped by the split their (hashed) patient landed in."""
    from medtf.data.deid import IdHasher

    manifest = json.loads((shards / "manifest.json").read_text())
    hasher = IdHasher(ID_SALT.encode("utf-8"))
    where = {p: split for split, info in manifest["splits"].items() for p in info["patients"]}
    groups: dict[str, list[Path]] = {}
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        groups.setdefault(where[hasher(folder.name)], []).append(folder)
    return groups


def shuffle_training_plans(source: Path, shuffled: Path, train_folders: list[Path], seed: int) -> list[tuple]:
    """Copy ``source`` to ``shuffled``; give each training patient another training patient's catheters."""
    import pydicom

    from medtf.io import read_dicom_series
    from medtf.rt.brachy_plan import read_brachy_plan
    from medtf.rt.rtplan_writer import write_brachy_plan

    if shuffled.exists():
        shutil.rmtree(shuffled)
    shutil.copytree(source, shuffled)
    n = len(train_folders)
    if n < 2:
        raise SystemExit("the shuffled-label control needs at least 2 training patients")
    rng = np.random.default_rng(seed)
    while True:  # a derangement: nobody keeps their own plan
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            break
    origins = [np.asarray(read_dicom_series(f / "CT").origin, float) for f in train_folders]
    plans = [next(f.glob("RP*.dcm")) for f in train_folders]
    polylines = [read_brachy_plan(p).polylines for p in plans]
    pairs = []
    for i, j in enumerate(perm):
        target = shuffled / train_folders[i].name / plans[i].name
        own = pydicom.dcmread(target)
        moved = [np.asarray(line, float) - origins[j] + origins[i] for line in polylines[j]]
        target.unlink()
        write_brachy_plan(target, moved, frame_of_reference_uid=str(own.FrameOfReferenceUID), identity_source=own,
                          dwell_step_mm=None, sop_instance_uid=str(own.SOPInstanceUID))
        pairs.append((i, int(j)))
    return pairs


def run_brachy(out: Path, cases: int, seed: int) -> dict:
    from medtf.cli.demo import DEMO_EXPERIMENT, DEMO_OVERRIDES

    _, shards = brachy_sources(out, cases, seed)
    result = train_and_evaluate(DEMO_EXPERIMENT, shards, out / "runs" / "brachy", DEMO_OVERRIDES, shards)
    return {**result, "overrides": list(DEMO_OVERRIDES)}


def run_brachy_shuffled(out: Path, cases: int, seed: int) -> dict:
    from medtf.cli.demo import DEMO_EXPERIMENT, DEMO_OVERRIDES

    source, shards = brachy_sources(out, cases, seed)
    groups = patients_by_split(source, shards)
    shuffled_source, shuffled_shards = out / "source" / "brachy-ct-shuffled", out / "shards" / "brachy-ct-shuffled"
    pairs = shuffle_training_plans(source, shuffled_source, groups["train"], seed)
    if shuffled_shards.exists():
        shutil.rmtree(shuffled_shards)
    _cli("convert", "brachy-ct", "--input", shuffled_source, "--output", shuffled_shards, "--split", BRACHY_SPLIT,
         "--seed", seed, "--id-salt", ID_SALT, "--workers", 2)
    true_splits = json.loads((shards / "manifest.json").read_text())["splits"]
    new_splits = json.loads((shuffled_shards / "manifest.json").read_text())["splits"]
    for split in true_splits:  # the control must keep the split, or "test" would mean other patients
        if sorted(true_splits[split]["patients"]) != sorted(new_splits[split]["patients"]):
            raise SystemExit(f"shuffled conversion changed the {split} patients")
    result = train_and_evaluate(DEMO_EXPERIMENT, shuffled_shards, out / "runs" / "brachy-shuffled", DEMO_OVERRIDES,
                                eval_data=shards)
    return {**result, "overrides": list(DEMO_OVERRIDES), "train_plan_pairs": pairs}


# === lgg ===

def run_lgg(out: Path, cases: int, seed: int) -> dict:
    source, shards = out / "source" / "lgg-mri", out / "shards" / "lgg-mri"
    if not (shards / "manifest.json").exists():
        _cli("synth", "lgg-mri", "--out", source, "--cases", cases, "--seed", seed)
        _cli("convert", "lgg-mri", "--input", source, "--output", shards, "--split", "0.6,0.2,0.2", "--seed", seed,
             "--id-salt", ID_SALT, "--workers", 2)
    result = train_and_evaluate("lgg_unet2d.yaml", shards, out / "runs" / "lgg", LGG_OVERRIDES, shards)
    return {**result, "overrides": list(LGG_OVERRIDES)}


RUNNERS = {"brachy": run_brachy, "brachy-shuffled": run_brachy_shuffled, "lgg": run_lgg}


def report(results: dict) -> str:
    lines = ["", "| workload | test metric | value | target | met? | best val Dice | train min |", "|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        targets = TARGETS.get(name, {})
        shown = targets or {"dice": None}
        for metric, target in shown.items():
            value = _metric(res["summary"], metric)
            if target is None:
                verdict, target_text = "", ""
            else:
                ok = value <= target if metric.endswith("_mm") else value >= target
                verdict, target_text = ("yes" if ok else "**no**"), (f"<= {target}" if metric.endswith("_mm")
                                                                     else f">= {target}")
            lines.append(f"| {name} | {metric} | {value:.3f} | {target_text} | {verdict} | "
                         f"{res['best_val_dice']:.3f} | {res['train_minutes']:.1f} |")
    if "brachy" in results and "brachy-shuffled" in results:
        true, control = (_metric(results[k]["summary"], "dice") for k in ("brachy", "brachy-shuffled"))
        lines.append(f"\nshuffled-label control: test Dice {control:.3f} vs {true:.3f} with the real labels "
                     f"(ratio {control / true:.3f}); far lower = learned, not leaked")
    extra = results.get("brachy", {}).get("summary", {}).get("metrics", {})
    for key in ("hd95", "catheters_found", "catheters_missed", "catheters_spurious", "catheter_mean_mm"):
        if key in extra:
            lines.append(f"brachy test {key}: mean {extra[key]['mean']:.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--only", default=",".join(WORKLOADS), help=f"comma-separated subset of {WORKLOADS}")
    parser.add_argument("--cases", type=int, default=10, help="synthetic brachy patients (the demo's 10)")
    parser.add_argument("--lgg-cases", type=int, default=10, help="synthetic LGG patients")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = set(wanted) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}; choose from {WORKLOADS}")
    out = args.out or Path(tempfile.mkdtemp(prefix="medtf-quality-"))
    start = time.monotonic()
    results = {}
    for name in wanted:
        print(f"\n=== {name} ===", flush=True)
        cases = args.lgg_cases if name == "lgg" else args.cases
        results[name] = RUNNERS[name](out, cases, args.seed)
    text = report(results)
    print(text)
    print(f"\ntotal {(time.monotonic() - start) / 60:.1f} min; outputs under {out}")
    if args.json:
        slim = {k: {**v, "summary": {"metrics": v["summary"]["metrics"], "extra": v["summary"].get("extra", {})}}
                for k, v in results.items()}
        args.json.write_text(json.dumps(slim, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
