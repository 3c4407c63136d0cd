"""Prostate lesion classification quality (issue #14) on held-out synthetic PROSTATEx patients.

Workloads of ``benchmarks/quality.py --only ...`` (same conventions: one fixed ID key so every conversion splits
the patients identically, figures on the **test** patients, nothing chosen on them):

- ``prostate``: VGG-ELU (``experiments/prostate_vgg_elu.yaml`` + `PROSTATE_OVERRIDES`) trained on the training
  patients (best epoch by validation AUC), test AUC; beside it the one-feature baseline
  (`medtf.evaluation.baselines`): mean ADC in a 3 mm disc at the lesion centre, logistic regression fitted on the
  training findings, scored on the same test findings.
- ``prostate-shuffled``: the same conversion with the training and validation findings' labels permuted (seeded
  permutations within each split, written as a relabelled copy of the shards, test untouched; the best epoch is
  chosen on the permuted validation labels, so no true label reaches the control) and the same training;
  evaluated on the true test shards; `SHUFFLED_PERMUTATIONS` permutations, verdict on their
  mean. High here would mean a leak (or, for one permutation, luck on 24 test findings).
- ``prostate-roulette``: ``medtf roulette`` scores `ROULETTE_CANDIDATES` seeded initialisations on the validation
  split after `ROULETTE_WARMUP` steps; each candidate is then trained the same way (``--init-from`` its weights);
  the winner's test AUC vs the mean test AUC over the same seeds.

Targets (issue #14 "Quality"): model AUC >= 0.90 and >= baseline + 0.05, shuffled <= 0.60, roulette's winner above
the seeds' mean.

- ``prostate-tl``: ``experiments/prostate_tl_chain.yaml`` cross-validated (`TL_FOLDS` folds of the same synthetic
  prostate patients converted with ``--channels dwi``, all of them in folds) against the same network trained on
  the prostate folds alone, with synthetic brain (`TL_BRAIN_PER_CLASS` images per class) and LUNGx
  (`TL_LUNG_SCANS` scans) data, `TL_OVERRIDES` per phase. Target: chain - scratch >= 0.03 AUC, mean over folds.
- ``prostate-tl-prostate-only``: the same chain without its brain and lung phases (DS1, DS4 frozen, DS4 full: the
  same prostate epochs and learning rates); chain vs this ablation, fold by fold, is what brain and lung add. The
  chain's scratch baseline (`medtf.training.transfer.scratch_config`) is the same network trained on the prostate
  folds with the experiment's own learning rate (1e-3) for as many epochs as the chain's prostate phases together
  (3 x `TL_OVERRIDES` epochs), so "chain - scratch" is not inflated by more prostate training.

The issue's small-training-set setting ("e.g. 40 patients") is ``--prostate-cases 50``: 5 folds of 10 patients, 40
training patients per fold (use its own ``--out``: the conversions are cached per work folder).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

PROSTATE_SPLIT = "0.6,0.2,0.2"
# Morphology is slower to learn than the old one-feature ADC contrast: more epochs, and the minority (significant)
# class seen 3 times per epoch with its own augmentation draws (the thesis's augmentation factor).
PROSTATE_OVERRIDES = ("data.batch_size=16", "train.epochs=24", "+train.verbose=0", "+train.log_every_n_steps=0",
                      "data.class_balance={method: augmentation_factor, factor: 3, minority: 1}")
ROULETTE_CANDIDATES, ROULETTE_WARMUP = 4, 5
SHUFFLED_PERMUTATIONS = 3
ROI_RADIUS_MM = 3.0
TARGETS = {"auc": 0.90, "margin": 0.05, "shuffled_max": 0.60}
WORKLOADS = ("prostate", "prostate-shuffled", "prostate-roulette", "prostate-tl", "prostate-tl-prostate-only")
TL_FOLDS, TL_BRAIN_PER_CLASS, TL_LUNG_SCANS = 5, 100, 40  # larger source sets than the target: what TL is for
TL_OVERRIDES = ("train.epochs=4", "data.batch_size=16", "+train.verbose=0", "+train.log_every_n_steps=0")


def _cli(*args) -> None:
    from medtf.cli.main import main

    argv = [str(a) for a in args]
    print(f"$ medtf {' '.join(argv)}", flush=True)
    if main(argv) != 0:
        raise SystemExit(f"`medtf {argv[0]}` failed")


def prostate_sources(out: Path, cases: int, seed: int, id_salt: str) -> Path:
    source, shards = out / "source" / "prostate-mpmri", out / "shards" / "prostate-mpmri"
    if not (shards / "manifest.json").exists():
        _cli("synth", "prostate-mpmri", "--out", source, "--cases", cases, "--seed", seed)
        _cli("convert", "prostate-mpmri", "--input", source, "--output", shards, "--split", PROSTATE_SPLIT,
             "--seed", seed, "--id-salt", id_salt, "--workers", 2, "--no-alignment-pngs")
    return shards


def roi_features(shards: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean ADC in the lesion disc, label) of every labelled finding of a split."""
    from medtf.evaluation.baselines import lesion_roi_mean
    from medtf.evaluation.cases import iter_examples

    x, y = [], []
    for ex in iter_examples(shards, split):
        if int(ex["label"]) >= 0:
            x.append(lesion_roi_mean(ex["image"], ex["pixel_spacing"], channel=2, radius_mm=ROI_RADIUS_MM))
            y.append(int(ex["label"]))
    return np.asarray(x), np.asarray(y)


def adc_baseline(shards: Path) -> dict:
    from medtf.evaluation.baselines import fit_logistic_1d, predict_logistic_1d
    from medtf.tasks.classification import _auc

    x_train, y_train = roi_features(shards, "train")
    x_test, y_test = roi_features(shards, "test")
    params = fit_logistic_1d(x_train, y_train)
    return {"params": params, "train_auc": _auc(y_train, predict_logistic_1d(x_train, **params)),
            "test_auc": _auc(y_test, predict_logistic_1d(x_test, **params)), "n_train": int(len(y_train)),
            "n_test": int(len(y_test)), "test_positives": int(y_test.sum()), "train_positives": int(y_train.sum())}


def train_and_evaluate(shards: Path, run_dir: Path, eval_data: Path, overrides=(), init_from=None) -> dict:
    from medtf.cli.demo import experiments_dir
    from medtf.tasks import get_task
    from medtf.training.config import load_config
    from medtf.training.engine import train

    extra = [f"+model.init_from={init_from}"] if init_from else []
    config = load_config(experiments_dir() / "prostate_vgg_elu.yaml",
                         [f"data.dir={shards}", *PROSTATE_OVERRIDES, *overrides, *extra])
    start = time.monotonic()
    result = train(config, run_dir)
    minutes = (time.monotonic() - start) / 60
    summary = get_task("classification").evaluate(run_dir, split="test", data_dir=eval_data, verbose=False,
                                                  bootstrap=500)
    m = summary["metrics"]
    return {"auc": m["auc"]["value"], "auc_ci": [m["auc"]["ci_low"], m["auc"]["ci_high"]],
            "best_val_auc": float(np.nanmax(result["history"].get("val_auc", [np.nan]))), "train_minutes": minutes}


def relabel_training_shards(shards: Path, out: Path, seed: int, splits=("train", "val")) -> dict:
    """Copy ``shards`` to ``out`` with the labels of each of ``splits`` permuted (seeded, within the split);
    returns what moved. The validation labels are permuted too: the best epoch is chosen on them, and choosing it
    on true labels would hand the control the label information it must not have."""
    import tensorflow as tf

    from medtf.data.manifest import read_manifest, write_manifest
    from medtf.data.shards import write_shard

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(shards, out)
    manifest = read_manifest(out)
    compression = manifest.get("compression") or ""
    moved = {}
    for n, split in enumerate(splits):
        entries = manifest["splits"][split]["shards"]
        records = [[tf.train.Example.FromString(r.numpy()) for r in
                    tf.data.TFRecordDataset(str(out / s["file"]), compression_type=compression)] for s in entries]
        labels = np.array([ex.features.feature["label"].int64_list.value[0] for shard in records for ex in shard])
        new = labels[np.random.default_rng([seed, n]).permutation(len(labels))]
        i = 0
        for entry, shard in zip(entries, records):
            for ex in shard:
                ex.features.feature["label"].int64_list.value[:] = [int(new[i])]
                i += 1
            entry.update(write_shard(out / entry["file"], [ex.SerializeToString() for ex in shard],
                                     manifest.get("compression")))
        moved[split] = {"findings": int(len(labels)), "labels_changed": int((new != labels).sum()),
                        "positives": int(labels.sum())}
    write_manifest(out, manifest)
    return {"train_findings": moved["train"]["findings"], "labels_changed": moved["train"]["labels_changed"],
            "positives": moved["train"]["positives"], "splits": moved}


def run_prostate(out: Path, cases: int, seed: int, id_salt: str) -> dict:
    shards = prostate_sources(out, cases, seed, id_salt)
    result = train_and_evaluate(shards, out / "runs" / "prostate", shards)
    return {**result, "overrides": list(PROSTATE_OVERRIDES), "baseline": adc_baseline(shards)}


def run_prostate_shuffled(out: Path, cases: int, seed: int, id_salt: str) -> dict:
    """`SHUFFLED_PERMUTATIONS` seeded permutations, each trained once from its own seed: one permutation scored on
    ~24 test findings is too noisy a control (its AUC has a standard error of ~0.12); the verdict is on their mean."""
    shards = prostate_sources(out, cases, seed, id_salt)
    runs = []
    for k in range(SHUFFLED_PERMUTATIONS):
        suffix = "" if k == 0 else f"-{k}"
        shuffled = out / "shards" / f"prostate-mpmri-shuffled{suffix}"
        moved = relabel_training_shards(shards, shuffled, seed + k)
        # each permutation with its own initialisation too: an untrained or noise-trained network's score already
        # tracks lesion conspicuity (roulette's untrained candidates score val AUC 0.3-0.9), with a sign set by its
        # initialisation; one shared seed would repeat that sign in every permutation
        result = train_and_evaluate(shuffled, out / "runs" / f"prostate-shuffled{suffix}", eval_data=shards,
                                    overrides=(f"seed={seed + k}",))
        runs.append({**result, "permutation_seed": seed + k, "model_seed": seed + k, "relabelled": moved})
    return {**runs[0], "runs": runs, "mean_auc": float(np.mean([r["auc"] for r in runs])),
            "overrides": list(PROSTATE_OVERRIDES)}


def run_prostate_roulette(out: Path, cases: int, seed: int, id_salt: str) -> dict:
    from medtf.cli.demo import experiments_dir

    shards = prostate_sources(out, cases, seed, id_salt)
    folder = out / "roulette"
    _cli("roulette", experiments_dir() / "prostate_vgg_elu.yaml", "--set", f"data.dir={shards}",
         *[a for o in PROSTATE_OVERRIDES for a in ("--set", o)], "--candidates", ROULETTE_CANDIDATES,
         "--warmup-steps", ROULETTE_WARMUP, "--metric", "val_auc", "--out", folder, "--keep-all", "--quiet")
    summary = json.loads((folder / "roulette.json").read_text())
    trained = []
    for entry in summary["scores"]:
        weights = folder / "candidates" / f"seed-{entry['seed']}.keras"
        res = train_and_evaluate(shards, out / "runs" / f"roulette-seed-{entry['seed']}", shards, init_from=weights)
        trained.append({"seed": entry["seed"], "val_score": entry["score"], **res})
    best = next(t for t in trained if t["seed"] == summary["best"]["seed"])
    return {"candidates": ROULETTE_CANDIDATES, "warmup_steps": ROULETTE_WARMUP, "runs": trained, "best": best,
            "mean_auc": float(np.nanmean([t["auc"] for t in trained])),
            "train_minutes": float(sum(t["train_minutes"] for t in trained))}


def tl_sources(out: Path, cases: int, seed: int, id_salt: str) -> dict[str, Path]:
    """The chain's three data sets with one input (65x65, one channel), prostate in `TL_FOLDS` folds."""
    prostate_sources(out, cases, seed, id_salt)  # the same synthetic patients as the other workloads
    src, shards = out / "source", out / "shards"
    dirs = {"prostate": shards / "prostate-dwi-folds", "brain": shards / "brain", "lung": shards / "lung"}
    if not (dirs["prostate"] / "manifest.json").exists():
        _cli("convert", "prostate-mpmri", "--input", src / "prostate-mpmri", "--output", dirs["prostate"],
             "--channels", "dwi", "--folds", TL_FOLDS, "--split", "1", "--seed", seed, "--id-salt", id_salt,
             "--workers", 2, "--no-alignment-pngs")
    if not (dirs["brain"] / "manifest.json").exists():
        _cli("synth", "image-folders", "--out", src / "brain", "--cases", TL_BRAIN_PER_CLASS, "--seed", seed)
        _cli("convert", "image-folders", "--input", src / "brain", "--output", dirs["brain"], "--grayscale",
             "--crop-black-margin", "--resize", 65, "--split", "0.8,0.2", "--seed", seed, "--id-salt", id_salt)
    if not (dirs["lung"] / "manifest.json").exists():
        _cli("synth", "lung-nodules", "--out", src / "lung", "--cases", TL_LUNG_SCANS, "--seed", seed)
        _cli("convert", "lung-nodules", "--input", src / "lung", "--output", dirs["lung"], "--patch-mm", 65,
             "--patch-size", 65, "--window", "lung", "--split", "0.75,0.25", "--seed", seed, "--id-salt", id_salt,
             "--no-alignment-pngs")
    return dirs


def run_prostate_tl(out: Path, cases: int, seed: int, id_salt: str, prostate_only: bool = False) -> dict:
    import yaml

    from medtf.cli.demo import experiments_dir
    from medtf.training.config import load_config
    from medtf.training.cv_transfer import run_transfer_cross_validation

    dirs = tl_sources(out, cases, seed, id_salt)
    path = experiments_dir() / "prostate_tl_chain.yaml"
    config = yaml.safe_load(path.read_text())
    where = {"data/prostate-dwi": dirs["prostate"], "data/brain": dirs["brain"], "data/lung": dirs["lung"]}
    config["data"]["dir"] = str(where[config["data"]["dir"]])
    for phase in config["transfer"]["phases"]:
        phase["data"]["dir"] = str(where[phase["data"]["dir"]])
    name = "prostate-tl-prostate-only" if prostate_only else "prostate-tl"
    if prostate_only:
        config["transfer"]["phases"] = [p for p in config["transfer"]["phases"] if p["name"].startswith(("ds1", "ds4"))]
        config["transfer"]["compare_scratch"] = False
    resolved = out / f"{name}.yaml"
    resolved.write_text(yaml.safe_dump(config, sort_keys=False))
    start = time.monotonic()
    report = run_transfer_cross_validation(load_config(resolved, list(TL_OVERRIDES)), out / "runs" / name,
                                           verbose=False)
    keep = ("eval/auc", "scratch/eval/auc", "gain/eval/auc")
    return {"folds": report["folds"], "complete": report["complete"], "overrides": list(TL_OVERRIDES),
            "metrics": {k: report["metrics"][k] for k in keep if k in report["metrics"]},
            "train_minutes": (time.monotonic() - start) / 60}


RUNNERS = {"prostate": run_prostate, "prostate-shuffled": run_prostate_shuffled,
           "prostate-roulette": run_prostate_roulette, "prostate-tl": run_prostate_tl,
           "prostate-tl-prostate-only": lambda *a: run_prostate_tl(*a, prostate_only=True)}


def _f(v, d=3) -> str:
    return "n/a" if v is None or v != v else f"{v:.{d}f}"


def report(results: dict) -> tuple[list[str], list[tuple]]:
    """Table rows for the prostate workloads and their verdicts (the table layout of quality.py)."""
    lines = ["", "| prostate method | test AUC [95% CI] | val AUC | train min |", "|---|---|---|---|"]
    verdicts = []
    if "prostate" in results:
        res, base = results["prostate"], results["prostate"]["baseline"]
        lines.append(f"| VGG-ELU (vgg_elu_small) | {_f(res['auc'])} [{_f(res['auc_ci'][0])}, {_f(res['auc_ci'][1])}] "
                     f"| {_f(res['best_val_auc'])} | {_f(res['train_minutes'], 1)} |")
        lines.append(f"| mean ADC in a {ROI_RADIUS_MM:g} mm disc + logistic regression (train AUC "
                     f"{_f(base['train_auc'])}; {base['n_train']} train / {base['n_test']} test findings, "
                     f"{base['test_positives']} test positives) | {_f(base['test_auc'])} | | |")
        verdicts += [("prostate VGG-ELU test AUC", res["auc"], f">= {TARGETS['auc']}", res["auc"] >= TARGETS["auc"]),
                     ("prostate VGG-ELU - ADC baseline", res["auc"] - base["test_auc"], f">= {TARGETS['margin']}",
                      res["auc"] - base["test_auc"] >= TARGETS["margin"])]
    if "prostate-shuffled" in results:
        res = results["prostate-shuffled"]
        for run in res.get("runs", [res]):
            lines.append(f"| shuffled-label control, permutation seed {run.get('permutation_seed', 0)} "
                         f"({run['relabelled']['labels_changed']} of {run['relabelled']['train_findings']} training "
                         f"labels changed) | {_f(run['auc'])} [{_f(run['auc_ci'][0])}, {_f(run['auc_ci'][1])}] | "
                         f"{_f(run['best_val_auc'])} | {_f(run['train_minutes'], 1)} |")
        mean = res.get("mean_auc", res["auc"])
        lines.append(f"| shuffled-label control, mean over {len(res.get('runs', [res]))} permutations | {_f(mean)} | "
                     f"| |")
        verdicts.append(("prostate shuffled-label AUC (mean over permutations)", mean,
                         f"<= {TARGETS['shuffled_max']}", mean <= TARGETS["shuffled_max"]))
    if "prostate-roulette" in results:
        res = results["prostate-roulette"]
        seeds = ", ".join(f"{t['seed']}: {_f(t['auc'])}" for t in res["runs"])
        lines.append(f"| roulette winner (seed {res['best']['seed']} of {res['candidates']}, {res['warmup_steps']} "
                     f"warm-up steps) trained | {_f(res['best']['auc'])} | {_f(res['best']['best_val_auc'])} | |")
        lines.append(f"| every candidate trained, mean (seed: test AUC {seeds}) | {_f(res['mean_auc'])} | | "
                     f"{_f(res['train_minutes'], 1)} |")
        verdicts.append(("roulette winner - mean of its seeds", res["best"]["auc"] - res["mean_auc"], "> 0",
                         res["best"]["auc"] - res["mean_auc"] > 0))
    if "prostate-tl" in results:
        res = results["prostate-tl"]

        def cell(name):
            m = res["metrics"].get(name) or {}
            return (f"{_f(m.get('mean'))} ± {_f(m.get('sd'))} (95% CI {_f(m.get('ci_low'))} .. "
                    f"{_f(m.get('ci_high'))}; folds {', '.join(_f(v) for v in m.get('values', []))})")
        lines.append(f"| TL chain (7 phases), {res['folds']}-fold CV, AUC on the held-out fold | {cell('eval/auc')} | "
                     f"| {_f(res['train_minutes'], 1)} (chain + scratch) |")
        lines.append(f"| scratch: same network, prostate folds only, the experiment's learning rate, the chain's "
                     f"prostate epochs summed | {cell('scratch/eval/auc')} | | |")
        lines.append(f"| chain - scratch, per fold | {cell('gain/eval/auc')} | | |")
        gain = (res["metrics"].get("gain/eval/auc") or {}).get("mean")
        if gain is not None:
            verdicts.append(("TL chain - scratch (mean over folds)", gain, ">= 0.03", gain >= 0.03))
    if "prostate-tl-prostate-only" in results:
        res = results["prostate-tl-prostate-only"]
        m = res["metrics"]["eval/auc"]
        lines.append(f"| chain without brain / lung (DS1, DS4 frozen, DS4 full), {res['folds']}-fold CV | "
                     f"{_f(m['mean'])} ± {_f(m['sd'])} (95% CI {_f(m['ci_low'])} .. {_f(m['ci_high'])}; folds "
                     f"{', '.join(_f(v) for v in m['values'])}) | | {_f(res['train_minutes'], 1)} |")
        if "prostate-tl" in results:
            from medtf.training.cv_report import fold_stats

            chain = results["prostate-tl"]["metrics"]["eval/auc"]["values"]
            diff = [None if a is None or b is None else a - b for a, b in zip(chain, m["values"])]
            st = fold_stats(diff)
            lines.append(f"| chain - chain without brain / lung, per fold | {_f(st['mean'])} ± {_f(st['sd'])} "
                         f"(95% CI {_f(st['ci_low'])} .. {_f(st['ci_high'])}) | | |")
            verdicts.append(("TL chain - prostate-only chain (mean over folds)", st["mean"], ">= 0.03",
                             st["mean"] >= 0.03))
    return lines, verdicts
