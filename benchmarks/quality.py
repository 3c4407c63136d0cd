"""Quality of the two segmentation workloads on held-out synthetic patients: model vs threshold vs shuffled labels.

Issue #13 item 4 ("Evidence"), measured in one run and recorded in ``benchmarks/RESULTS.md`` ("Quality"). For each
workload, on the **same** held-out test patients:

- **model**: the trained network, evaluated by ``evaluate_run`` (whole volumes / slices, sliding window).
- **threshold** (the trivial baseline, `medtf.evaluation.baselines`): brachy ``HU > t`` + connected components of at
  least ``n`` voxels, ``(t, n)`` chosen on the training patients by Dice, scored with the same Dice and catheter
  metrics (reconstruction + matching to the plan) as the model; LGG FLAIR above ``fraction * max`` or a percentile
  of the slice, rule chosen on the training patients' tumour slices.
- **shuffled** (the control): the same patients and split, but every *training* patient's labels replaced by
  another training patient's (a seeded derangement): brachy RT Plans moved into the receiving CT's frame of
  reference; LGG mask slices (slice ``s`` of ``n`` gets the other patient's slice at the same relative position).
  Validation and test keep their own labels, the split is checked to be identical, and the model is evaluated on
  the **true** test shards. High here would mean a leak, not learning.

Data and budgets: brachy = the demo's (``medtf demo``: 10 synthetic patients, split 0.6/0.2/0.2 by patient,
``experiments/brachy_unet3d.yaml`` with ``DEMO_OVERRIDES``); LGG = ``medtf synth lgg-mri`` (10 patients),
``experiments/lgg_unet2d.yaml`` scaled down by ``LGG_OVERRIDES``, Dice on the test patients' tumour slices.
Targets: brachy model Dice >= 0.80 and tip error <= 3 mm with threshold Dice <= 0.5; LGG model >= threshold + 0.15.

Usage::

    .venv/bin/python benchmarks/quality.py [--out DIR] [--only brachy,brachy-shuffled,lgg,lgg-shuffled] [--json FILE]
    .venv/bin/python benchmarks/quality.py --only prostate,prostate-shuffled,prostate-roulette --prostate-cases 60

The prostate workloads (issue #14: VGG-ELU vs the mean-ADC baseline vs shuffled labels, model roulette) live in
``benchmarks/quality_prostate.py`` (its transfer-learning chain in ``quality_prostate_tl.py``); the nucleus
classification workloads (issue #15: fine-tuned nucleus ViT vs the colour + area baseline vs shuffled labels, MIM
linear probes with / without L_inst vs a random probe, tokenizer) in ``benchmarks/quality_nuclei.py``::

    .venv/bin/python benchmarks/quality.py --only nuclei,nuclei-shuffled,nuclei-probe-random,nuclei-mim,\
        nuclei-mim-noinst --nuclei-seeds 0,1

Image-report retrieval (issue #16: brain_clip at CPU size vs shuffled pairs, an untrained model, chance and a
class-only matcher) lives in ``benchmarks/quality_clip.py``: ``--only clip,clip-shuffled,clip-untrained``.

About 25 minutes on 2 idle CPU cores (four trainings); everything is written under ``--out`` (default: a temporary
folder).
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
TARGETS = {"brachy": {"dice": 0.80, "tip_error_mm": 3.0, "threshold_dice_max": 0.5}, "lgg": {"margin": 0.15}}
WORKLOADS = ("brachy", "brachy-shuffled", "lgg", "lgg-shuffled")
DEFAULT_WORKLOADS = WORKLOADS
sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_clip  # noqa: E402  (issue #16's image-report retrieval workloads)
import quality_nuclei  # noqa: E402  (issue #15's nucleus classification workloads)
import quality_prostate  # noqa: E402  (issue #14's prostate workloads, beside this script)
import quality_prostate_tl  # noqa: E402  (issue #14's transfer-learning chain)

WORKLOADS = (WORKLOADS + quality_prostate.WORKLOADS + quality_prostate_tl.WORKLOADS + quality_nuclei.WORKLOADS
             + quality_clip.WORKLOADS)
LGG_SPLIT = "0.6,0.2,0.2"


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


def patients_by_split(source: Path, shards: Path, patient_of=lambda folder: folder.name) -> dict[str, list[Path]]:
    """Source case folders grouped by the split their (hashed) patient landed in; ``patient_of`` maps a folder to
    the raw patient ID the converter hashes (brachy: the folder name; LGG: ``TCGA_<site>_<id>``)."""
    from medtf.data.deid import IdHasher

    manifest = json.loads((shards / "manifest.json").read_text())
    hasher = IdHasher(ID_SALT.encode("utf-8"))
    where = {p: split for split, info in manifest["splits"].items() for p in info["patients"]}
    groups: dict[str, list[Path]] = {}
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        groups.setdefault(where[hasher(patient_of(folder))], []).append(folder)
    return groups


def check_same_split(shards: Path, other: Path) -> None:
    """The control must keep the split, or "test" would mean other patients."""
    true_splits = json.loads((shards / "manifest.json").read_text())["splits"]
    new_splits = json.loads((other / "manifest.json").read_text())["splits"]
    for split in true_splits:
        if sorted(true_splits[split]["patients"]) != sorted(new_splits[split]["patients"]):
            raise SystemExit(f"shuffled conversion changed the {split} patients")


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of ``range(n)`` that moves every element (nobody keeps their own labels)."""
    if n < 2:
        raise SystemExit("the shuffled-label control needs at least 2 training patients")
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


def brachy_threshold_baseline(shards: Path) -> dict:
    """``HU > t`` + connected components fitted on the training patients, scored on the test patients."""
    from medtf.evaluation import cases as cases_lib
    from medtf.evaluation.baselines import fit_hu_threshold, hu_threshold_mask
    from medtf.evaluation.catheters import catheter_metrics
    from medtf.evaluation.evaluate import segmentation_metrics

    train = [(c.image[..., 0], c.mask) for c in cases_lib.volume_cases(cases_lib.iter_examples(shards, "train"))]
    rule = fit_hu_threshold(train)
    rows = []
    for case in cases_lib.volume_cases(cases_lib.iter_examples(shards, "test")):
        pred = hu_threshold_mask(case.image[..., 0], **rule["params"])
        rows.append({**segmentation_metrics(pred, case.mask, case.spacing), **catheter_metrics(pred, case.example)})
    return {"rule": rule, "rows": rows}


def lgg_threshold_baseline(shards: Path) -> dict:
    """FLAIR threshold fitted on the training patients' tumour slices, scored on the test patients' tumour slices."""
    from medtf.evaluation import cases as cases_lib
    from medtf.evaluation.baselines import fit_flair_threshold, flair_threshold_mask, tumour_slice_dice

    train = [(c.image, c.mask) for c in cases_lib.slice_stack_cases(cases_lib.iter_examples(shards, "train"))]
    rule = fit_flair_threshold(train)
    scores = []
    for case in cases_lib.slice_stack_cases(cases_lib.iter_examples(shards, "test")):
        scores += tumour_slice_dice(flair_threshold_mask(case.image, **rule["params"]), case.mask)
    return {"rule": rule, "dice_tumour_slices": float(np.mean(scores)), "n_tumour_slices": len(scores)}


def shuffle_training_plans(source: Path, shuffled: Path, train_folders: list[Path], seed: int) -> list[tuple]:
    """Copy ``source`` to ``shuffled``; give each training patient another training patient's catheters."""
    import pydicom

    from medtf.io import read_dicom_series
    from medtf.rt.brachy_plan import read_brachy_plan
    from medtf.rt.rtplan_writer import write_brachy_plan

    if shuffled.exists():
        shutil.rmtree(shuffled)
    shutil.copytree(source, shuffled)
    perm = derangement(len(train_folders), seed)
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
    return {**result, "overrides": list(DEMO_OVERRIDES), "threshold": brachy_threshold_baseline(shards)}


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
    check_same_split(shards, shuffled_shards)
    result = train_and_evaluate(DEMO_EXPERIMENT, shuffled_shards, out / "runs" / "brachy-shuffled", DEMO_OVERRIDES,
                                eval_data=shards)
    return {**result, "overrides": list(DEMO_OVERRIDES), "train_plan_pairs": pairs}


# === lgg ===

def lgg_sources(out: Path, cases: int, seed: int) -> tuple[Path, Path]:
    source, shards = out / "source" / "lgg-mri", out / "shards" / "lgg-mri"
    if not (shards / "manifest.json").exists():
        _cli("synth", "lgg-mri", "--out", source, "--cases", cases, "--seed", seed)
        _cli("convert", "lgg-mri", "--input", source, "--output", shards, "--split", LGG_SPLIT, "--seed", seed,
             "--id-salt", ID_SALT, "--workers", 2)
    return source, shards


def _lgg_patient(folder: Path) -> str:
    return "_".join(folder.name.split("_")[:3])  # TCGA_<site>_<id>, as tfrecords_builder/lgg_mri.py


def shuffle_training_masks(source: Path, shuffled: Path, train_folders: list[Path], seed: int) -> list[tuple]:
    """Copy ``source`` to ``shuffled``; each training patient's tumour slices get another training patient's tumour
    masks (in order, resampled by index), its empty slices stay empty.

    Keeping which slices have tumour keeps each patient's share of tumour slices, the converter's split stratum, so
    the split stays the same (checked); the in-plane correspondence between image and mask, what Dice on tumour
    slices measures, is gone.
    """
    from PIL import Image

    if shuffled.exists():
        shutil.rmtree(shuffled)
    shutil.copytree(source, shuffled)

    def masks(folder: Path) -> list[Path]:
        return sorted(folder.glob("*_mask.tif"), key=lambda p: int(p.name.rsplit("_", 2)[-2]))

    def tumour(paths: list[Path]) -> list[tuple[Path, np.ndarray]]:
        arrays = [(p, np.array(Image.open(p))) for p in paths]
        return [(p, a) for p, a in arrays if a.any()]

    perm = derangement(len(train_folders), seed)
    pairs = []
    for i, j in enumerate(perm):
        mine, theirs = tumour(masks(train_folders[i])), tumour(masks(train_folders[j]))
        pick = np.round(np.linspace(0, len(theirs) - 1, len(mine))).astype(int)
        target = shuffled / "kaggle_3m" / train_folders[i].name
        for (path, _), k in zip(mine, pick):
            Image.fromarray(theirs[k][1]).save(target / path.name, format="TIFF")
        pairs.append((i, int(j)))
    return pairs


def run_lgg(out: Path, cases: int, seed: int) -> dict:
    _, shards = lgg_sources(out, cases, seed)
    result = train_and_evaluate("lgg_unet2d.yaml", shards, out / "runs" / "lgg", LGG_OVERRIDES, shards)
    return {**result, "overrides": list(LGG_OVERRIDES), "threshold": lgg_threshold_baseline(shards)}


def run_lgg_shuffled(out: Path, cases: int, seed: int) -> dict:
    source, shards = lgg_sources(out, cases, seed)
    groups = patients_by_split(source / "kaggle_3m", shards, _lgg_patient)
    shuffled_source, shuffled_shards = out / "source" / "lgg-mri-shuffled", out / "shards" / "lgg-mri-shuffled"
    pairs = shuffle_training_masks(source, shuffled_source, groups["train"], seed)
    if shuffled_shards.exists():
        shutil.rmtree(shuffled_shards)
    _cli("convert", "lgg-mri", "--input", shuffled_source, "--output", shuffled_shards, "--split", LGG_SPLIT,
         "--seed", seed, "--id-salt", ID_SALT, "--workers", 2)
    check_same_split(shards, shuffled_shards)
    result = train_and_evaluate("lgg_unet2d.yaml", shuffled_shards, out / "runs" / "lgg-shuffled", LGG_OVERRIDES,
                                eval_data=shards)
    return {**result, "overrides": list(LGG_OVERRIDES), "train_mask_pairs": pairs}


RUNNERS = {"brachy": run_brachy, "brachy-shuffled": run_brachy_shuffled, "lgg": run_lgg,
           "lgg-shuffled": run_lgg_shuffled,
           **{name: (lambda run: lambda out, cases, seed: run(out, cases, seed, ID_SALT))(run)
              for name, run in {**quality_prostate.RUNNERS, **quality_prostate_tl.RUNNERS,
                                 **quality_clip.RUNNERS}.items()}}


def _mean(rows: list[dict], key: str) -> float:
    values = np.array([r[key] for r in rows], float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def _pooled(summary: dict) -> float:
    """LGG tumour-slice Dice pooled over every test tumour slice (as the threshold baseline is scored), not the
    per-patient mean that ``summary["metrics"]`` holds."""
    return float(summary["extra"]["dice_tumour_slices"])


def _cells(dice, found=None, missed=None, spurious=None, tip=None, minutes=None) -> str:
    def f(v, d):
        return "" if v is None else ("n/a" if v != v else f"{v:.{d}f}")
    counts = "" if found is None else f"{f(found, 1)} / {f(missed, 1)} / {f(spurious, 1)}"
    return f"{f(dice, 3)} | {counts} | {f(tip, 2)} | {f(minutes, 1)}"


def report(results: dict) -> str:
    """One table: per workload, the model, the threshold baseline and the shuffled-label control on the same
    test patients; then the targets."""
    lines = ["", "| workload | method | test Dice | catheters found / missed / spurious | tip error mm | train min |",
             "|---|---|---|---|---|---|"] if set(results) & set(DEFAULT_WORKLOADS) else []
    verdicts = []
    if "brachy" in results:
        res = results["brachy"]
        m = res["summary"]["metrics"]
        mean = {k: m[k]["mean"] for k in m}
        cells = _cells(mean["dice"], mean["catheters_found"], mean["catheters_missed"], mean["catheters_spurious"],
                       mean["tip_error_mm"], res["train_minutes"])
        lines.append(f"| brachy | model | {cells} |")
        rows, rule = res["threshold"]["rows"], res["threshold"]["rule"]
        thr = {k: _mean(rows, k) for k in ("dice", "catheters_found", "catheters_missed", "catheters_spurious",
                                           "tip_error_mm")}
        p = rule["params"]
        cells = _cells(thr["dice"], thr["catheters_found"], thr["catheters_missed"], thr["catheters_spurious"],
                       thr["tip_error_mm"])
        lines.append(f"| brachy | threshold HU > {p['threshold']:.0f}, components >= {p['min_voxels']} voxels "
                     f"(train Dice {rule['train_dice']:.3f}) | {cells} |")
        t = TARGETS["brachy"]
        verdicts += [("brachy model Dice", mean["dice"], f">= {t['dice']}", mean["dice"] >= t["dice"]),
                     ("brachy model tip error mm", mean["tip_error_mm"], f"<= {t['tip_error_mm']}",
                      mean["tip_error_mm"] <= t["tip_error_mm"]),
                     ("brachy threshold Dice", thr["dice"], f"<= {t['threshold_dice_max']}",
                      thr["dice"] <= t["threshold_dice_max"])]
    if "brachy-shuffled" in results:
        res = results["brachy-shuffled"]
        m = res["summary"]["metrics"]
        mean = {k: m[k]["mean"] for k in m}
        cells = _cells(mean["dice"], mean["catheters_found"], mean["catheters_missed"], mean["catheters_spurious"],
                       mean["tip_error_mm"], res["train_minutes"])
        lines.append(f"| brachy | shuffled-label control | {cells} |")
    if "lgg" in results:
        res = results["lgg"]
        model = _pooled(res["summary"])
        lines.append(f"| lgg | model | {_cells(model, minutes=res['train_minutes'])} |")
        thr = res["threshold"]
        p = thr["rule"]["params"]
        rule_text = (f"FLAIR > {p['value']:.2f} x slice max" if p["rule"] == "fraction"
                     else f"FLAIR > percentile {p['value']:g} of the slice")
        lines.append(f"| lgg | threshold {rule_text} (train Dice {thr['rule']['train_dice']:.3f}) | "
                     f"{_cells(thr['dice_tumour_slices'])} |")
        margin = TARGETS["lgg"]["margin"]
        verdicts.append(("lgg model - threshold (tumour-slice Dice)", model - thr["dice_tumour_slices"],
                         f">= {margin}", model - thr["dice_tumour_slices"] >= margin))
    if "lgg-shuffled" in results:
        res = results["lgg-shuffled"]
        cells = _cells(_pooled(res["summary"]), minutes=res["train_minutes"])
        lines.append(f"| lgg | shuffled-label control | {cells} |")
    if any(name.startswith("prostate") for name in results):
        for module in (quality_prostate, quality_prostate_tl):
            rows, more = module.report(results)
            lines += rows
            verdicts += more
    if any(name.startswith("clip") for name in results):
        rows, more = quality_clip.report(results)
        lines += rows
        verdicts += more
    if any(name.startswith("nuclei") for name in results):
        rows, more = quality_nuclei.report(results)
        lines += rows
        verdicts += more
    lines.append("\nLGG Dice: mean over the test patients' tumour slices (pooled); brachy: mean over test patients.")
    lines += ["", "| target | value | wanted | met? |", "|---|---|---|---|"]
    lines += [f"| {name} | {value:.3f} | {want} | {'yes' if ok else '**no**'} |" for name, value, want, ok in verdicts]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--only", default=",".join(DEFAULT_WORKLOADS), help=f"comma-separated subset of {WORKLOADS}")
    parser.add_argument("--cases", type=int, default=10, help="synthetic brachy patients (the demo's 10)")
    parser.add_argument("--lgg-cases", type=int, default=10, help="synthetic LGG patients")
    parser.add_argument("--prostate-cases", type=int, default=60, help="synthetic PROSTATEx patients")
    parser.add_argument("--clip-cases", type=int, default=quality_clip.CLIP_CASES,
                        help="synthetic brain MRI studies of the clip workloads (one cohort per --out folder)")
    parser.add_argument("--clip-split", default=quality_clip.CLIP_SPLIT,
                        help="train,val,test fractions of the clip studies (by patient)")
    parser.add_argument("--clip-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra dotted override of every clip run (repeatable), e.g. seed=1")
    parser.add_argument("--clip-tag", default="", help="suffix of the clip run folders, e.g. -s1")
    parser.add_argument("--nuclei-seeds", default="0", help="comma-separated seeds of the nuclei MIM / probe runs")
    parser.add_argument("--nuclei-epochs", type=int, default=None,
                        help="fine-tuning epochs of nuclei / nuclei-shuffled (default 12 x 20 steps)")
    parser.add_argument("--nuclei-mim-epochs", type=int, default=None,
                        help="MIM pretraining epochs of nuclei-mim / nuclei-mim-noinst (default 10 x 20 steps)")
    parser.add_argument("--nuclei-mim-checkpoint", choices=("best", "last"), default="best",
                        help="the MIM checkpoint the nuclei probes start from (best: by val loss)")
    parser.add_argument("--nuclei-init", default=None,
                        help="fine-tune nuclei from this MIM run or checkpoint (default: random initialisation)")
    parser.add_argument("--tl-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra dotted override of the prostate-tl chains and their scratch (repeatable), "
                             "e.g. +model.args.pool=avg; phase.NAME.key=value sets one phase's key, "
                             "e.g. phase.ds4-prostate-full.optimizer.learning_rate=1e-3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = set(wanted) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}; choose from {WORKLOADS}")
    out = args.out or Path(tempfile.mkdtemp(prefix="medtf-quality-"))
    quality_prostate_tl.TL_EXTRA = tuple(args.tl_set)
    quality_clip.CLIP_SPLIT = args.clip_split
    quality_clip.CLIP_EXTRA, quality_clip.CLIP_TAG = tuple(args.clip_set), args.clip_tag
    start = time.monotonic()
    results = {}
    for name in wanted:
        print(f"\n=== {name} ===", flush=True)
        cases = (args.lgg_cases if name.startswith("lgg") else
                 args.prostate_cases if name.startswith("prostate") else
                 args.clip_cases if name.startswith("clip") else args.cases)
        if name.startswith("nuclei"):
            seeds = [int(v) for v in args.nuclei_seeds.split(",")]
            run = quality_nuclei.runners(seeds, args.nuclei_epochs, args.nuclei_mim_epochs,
                                         args.nuclei_mim_checkpoint, args.nuclei_init)[name]
            results[name] = run(out, args.seed, ID_SALT)
        else:
            results[name] = RUNNERS[name](out, cases, args.seed)
        text = report(results)  # after every workload: a long run that is stopped still leaves its figures
        print(text, flush=True)
        print(f"\nelapsed {(time.monotonic() - start) / 60:.1f} min; outputs under {out}", flush=True)
        if args.json:
            slim = {k: {**v, "summary": {"metrics": v["summary"]["metrics"], "extra": v["summary"].get("extra", {})}}
                    if "summary" in v else v for k, v in results.items()}
            args.json.write_text(json.dumps(slim, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
