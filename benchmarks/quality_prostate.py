"""Prostate lesion classification quality (issue #14) on held-out synthetic PROSTATEx patients.

Workloads of ``benchmarks/quality.py --only ...`` (same conventions: one fixed ID key so every conversion splits
the patients identically, figures on the **test** patients, nothing chosen on them):

- ``prostate``: VGG-ELU (``experiments/prostate_vgg_elu.yaml`` + `PROSTATE_OVERRIDES`) trained on the training
  patients (best epoch by validation AUC) from each of `PROSTATE_SEEDS`, test AUC (mean, sd); beside it the
  one-feature baseline (`medtf.evaluation.baselines`): mean ADC in a 3 mm disc at the lesion centre, logistic
  regression fitted on the training findings, scored on the same test findings.
- ``prostate-shuffled``: the same conversion with the training and validation findings' labels permuted (seeded
  permutations within each split, written as a relabelled copy of the shards, test untouched; the best epoch is
  chosen on the permuted validation labels, so no true label reaches the control) and the same training;
  evaluated on the true test shards; `SHUFFLED_PERMUTATIONS` permutations, verdict on their
  mean, reported beside `UNTRAINED_SEEDS` untrained networks' AUCs on the same findings (`untrained_scores`): a
  label-free network already ranks these findings by conspicuity, with a sign set by its initialisation, so one
  run's AUC spreads by ~0.14 around 0.5 on 58 findings. High *against that distribution* would mean a leak.
- ``prostate-roulette``: ``medtf roulette`` scores `ROULETTE_CANDIDATES` seeded initialisations on the validation
  split after `ROULETTE_WARMUP` (one epoch); each candidate is then trained the same way (``--init-from`` its
  weights); the winner's test AUC vs the mean test AUC over the same seeds, and Spearman(score, trained AUC).

Every training is a job with a cached JSON result under ``OUT/jobs`` (`prostate_jobs`); helper processes started
beside ``quality.py`` on the same ``--out`` take jobs from the same list (`help_prostate`, `benchmarks/_once.py`),
which cuts the wall clock on a shared machine; rerunning ``quality.py`` reads the cache.

Targets (issue #14 "Quality"): model AUC >= 0.90 and >= baseline + 0.05, shuffled <= 0.60, roulette's winner above
the seeds' mean. The transfer-learning chain's workloads are in ``quality_prostate_tl.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

PROSTATE_SPLIT = "0.6,0.2,0.2"
# Morphology is slower to learn than the old one-feature ADC contrast: more epochs, and the minority (significant)
# class seen 3 times per epoch with its own augmentation draws (the thesis's augmentation factor).
PROSTATE_OVERRIDES = ("data.batch_size=16", "train.epochs=24", "+train.verbose=0", "+train.log_every_n_steps=0",
                      "data.class_balance={method: augmentation_factor, factor: 3, minority: 1}")
PROSTATE_SEEDS = (0, 1, 2)  # model seeds (offsets to --seed) of the `prostate` workload: mean, sd, each with its CI
# One epoch of warm-up: scores after 5 steps measured how the initialisation happens to rank conspicuous lesions,
# not how it trains (at 60 patients the 5-step winner trained to the worst of 4).
ROULETTE_CANDIDATES, ROULETTE_WARMUP = 8, "epoch"
SHUFFLED_PERMUTATIONS = 10  # at 5 the mean (0.618) sat one standard error (0.04) above the target
SYNTH_WORKERS = 3  # processes writing the synthetic patients (a 150-patient cohort: ~25 min in one)
UNTRAINED_SEEDS = 32  # untrained networks scored on the test findings beside the shuffled control
ROI_RADIUS_MM = 3.0
TARGETS = {"auc": 0.90, "margin": 0.05, "shuffled_max": 0.60}
WORKLOADS = ("prostate", "prostate-shuffled", "prostate-roulette")  # + quality_prostate_tl.WORKLOADS


def _cli(*args) -> None:
    from medtf.cli.main import main

    argv = [str(a) for a in args]
    print(f"$ medtf {' '.join(argv)}", flush=True)
    if main(argv) != 0:
        raise SystemExit(f"`medtf {argv[0]}` failed")


def prostate_sources(out: Path, cases: int, seed: int, id_salt: str) -> Path:
    source, shards = out / "source" / "prostate-mpmri", out / "shards" / "prostate-mpmri"
    if not (shards / "manifest.json").exists():
        from medtf.synth.prostate_mpmri import CSV_FOLDERS, generate_prostate_mpmri

        if not (source / CSV_FOLDERS["Train"] / "ProstateX-Findings-Train.csv").is_file():  # written last
            # `medtf synth prostate-mpmri --cases N --seed S`, in worker processes (~9 s a patient in one)
            print(f"synth prostate-mpmri: {cases} patients, seed {seed}, {SYNTH_WORKERS} workers", flush=True)
            generate_prostate_mpmri(source, cases=cases, seed=seed, workers=SYNTH_WORKERS)
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
    """Copy ``shards`` to ``out`` with the known labels (0 / 1; unknown -1 stays where it is) of each of ``splits``
    permuted (seeded, within the split); returns what moved. The validation labels are permuted too: the best
    epoch is chosen on them, and choosing it on true labels would hand the control the label information it must
    not have. Only ``label`` changes: images, ids, manifest split assignment and counts are the conversion's."""
    from _shards import rewrite_splits

    def permute(n, split, examples):
        labels = np.array([ex.features.feature["label"].int64_list.value[0] for ex in examples])
        known = np.flatnonzero(labels >= 0)
        new = labels.copy()
        new[known] = labels[known][np.random.default_rng([seed, n]).permutation(len(known))]
        for ex, value in zip(examples, new):
            ex.features.feature["label"].int64_list.value[:] = [int(value)]
        return {"findings": int(len(known)), "labels_changed": int((new != labels).sum()),
                "positives": int((labels == 1).sum())}

    moved = rewrite_splits(shards, out, splits, permute)
    return {"train_findings": moved["train"]["findings"], "labels_changed": moved["train"]["labels_changed"],
            "positives": moved["train"]["positives"], "splits": moved}


def _stats(values) -> dict:
    v = np.asarray(values, float)
    return {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}


def _seed_job(out: Path, shards: Path, model_seed: int) -> dict:
    name = "prostate" if model_seed == 0 else f"prostate-seed-{model_seed}"
    result = train_and_evaluate(shards, out / "runs" / name, shards, overrides=(f"seed={model_seed}",))
    print(f"prostate seed {model_seed}: test AUC {result['auc']:.3f}", flush=True)
    return {**result, "model_seed": model_seed}


def _shuffled_job(out: Path, shards: Path, k: int, seed: int) -> dict:
    suffix = "" if k == 0 else f"-{k}"
    shuffled = out / "shards" / f"prostate-mpmri-shuffled{suffix}"
    moved = relabel_training_shards(shards, shuffled, seed + k)
    # each permutation with its own initialisation too: an untrained network's score already ranks the test
    # findings (AUC far from 0.5 either way, sign set by the initialisation); one shared seed would repeat it
    result = train_and_evaluate(shuffled, out / "runs" / f"prostate-shuffled{suffix}", eval_data=shards,
                                overrides=(f"seed={seed + k}",))
    print(f"shuffled permutation {seed + k}: test AUC {result['auc']:.3f}", flush=True)
    return {**result, "permutation_seed": seed + k, "model_seed": seed + k, "relabelled": moved}


def _roulette_job(out: Path, shards: Path) -> dict:
    from medtf.cli.demo import experiments_dir

    folder, steps = out / "roulette", warmup_steps(shards)
    _cli("roulette", experiments_dir() / "prostate_vgg_elu.yaml", "--set", f"data.dir={shards}",
         *[a for o in PROSTATE_OVERRIDES for a in ("--set", o)], "--candidates", ROULETTE_CANDIDATES,
         "--warmup-steps", steps, "--metric", "val_auc", "--out", folder, "--keep-all", "--quiet")
    return {**json.loads((folder / "roulette.json").read_text()), "warmup_steps": steps}


def _candidate_job(out: Path, shards: Path, entry: dict) -> dict:
    weights = out / "roulette" / "candidates" / f"seed-{entry['seed']}.keras"
    res = train_and_evaluate(shards, out / "runs" / f"roulette-seed-{entry['seed']}", shards, init_from=weights)
    print(f"roulette seed {entry['seed']}: score {entry['score']:.3f}, test AUC {res['auc']:.3f}", flush=True)
    return {"seed": entry["seed"], "val_score": entry["score"], **res}


def prostate_jobs(out: Path, seed: int) -> list[tuple[Path, object]]:
    """Every training of the `prostate*` workloads (but TL) as (result JSON, job): `_once.help_out` processes
    take them beside ``quality.py`` on the same ``--out`` (after the conversion). Candidates wait for roulette."""
    from functools import partial

    shards, jobs = out / "shards" / "prostate-mpmri", out / "jobs"
    todo = [(jobs / f"prostate-seed-{seed + k}.json", partial(_seed_job, out, shards, seed + k))
            for k in PROSTATE_SEEDS]
    todo.append((jobs / "roulette.json", partial(_roulette_job, out, shards)))
    todo += [(jobs / f"shuffled-{k}.json", partial(_shuffled_job, out, shards, k, seed))
             for k in range(SHUFFLED_PERMUTATIONS)]
    todo.append((jobs / "untrained.json", partial(untrained_scores, shards, range(seed, seed + UNTRAINED_SEEDS))))
    if (jobs / "roulette.json").is_file():
        scored = json.loads((jobs / "roulette.json").read_text())["scores"]
        todo += [(jobs / f"roulette-seed-{e['seed']}.json", partial(_candidate_job, out, shards, e)) for e in scored]
    else:
        todo.append((jobs / "roulette-candidates", None))  # not ready: listed again once roulette.json exists
    return todo


def help_prostate(out: Path, seed: int = 0) -> int:
    """A helper process: ``python -c 'import quality_prostate as q; q.help_prostate(Path(OUT))'`` (benchmarks/
    on sys.path) beside ``quality.py --only prostate,... --out OUT``, once OUT's conversion exists."""
    from _once import help_out

    return help_out(lambda: prostate_jobs(out, seed))


def run_prostate(out: Path, cases: int, seed: int, id_salt: str) -> dict:
    """VGG-ELU from `PROSTATE_SEEDS` model seeds (one seed's test AUC is too noisy a figure: the seeds spread by
    ~0.2 at 60 patients), each with its bootstrap CI; verdict on the mean."""
    from _once import once

    shards = prostate_sources(out, cases, seed, id_salt)
    runs = [once(out / "jobs" / f"prostate-seed-{seed + k}.json", lambda k=k: _seed_job(out, shards, seed + k))
            for k in PROSTATE_SEEDS]
    return {**runs[0], "runs": runs, "auc_stats": _stats([r["auc"] for r in runs]),
            "mean_auc": _stats([r["auc"] for r in runs])["mean"], "overrides": list(PROSTATE_OVERRIDES),
            "baseline": adc_baseline(shards)}


def run_prostate_shuffled(out: Path, cases: int, seed: int, id_salt: str) -> dict:
    """`SHUFFLED_PERMUTATIONS` seeded permutations, each trained once from its own seed: one permutation's AUC is a
    noisy figure (standard error ~0.12 on 24 test findings, ~0.07 on 60); the verdict is on their mean, set beside
    the untrained networks' AUCs on the same test findings (`untrained_scores`)."""
    from _once import once

    shards = prostate_sources(out, cases, seed, id_salt)
    runs = [once(out / "jobs" / f"shuffled-{k}.json", lambda k=k: _shuffled_job(out, shards, k, seed))
            for k in range(SHUFFLED_PERMUTATIONS)]
    untrained = once(out / "jobs" / "untrained.json",
                     lambda: untrained_scores(shards, range(seed, seed + UNTRAINED_SEEDS)))
    return {**runs[0], "runs": runs, "mean_auc": float(np.mean([r["auc"] for r in runs])),
            "auc_stats": _stats([r["auc"] for r in runs]), "overrides": list(PROSTATE_OVERRIDES),
            "untrained": untrained}


def untrained_scores(shards: Path, seeds, split: str = "test") -> dict:
    """Test AUC of the experiment's network straight after initialisation (``keras.utils.set_random_seed(s)``,
    as roulette's candidate ``s``), one per seed, on the true labels of ``split``: the distribution a label-free
    network already reaches on these findings. Also the AUC of two label-free image statistics (crop standard
    deviation, mean |z| inside 5 px of the centre), i.e. how much "conspicuity" alone ranks the classes, and how
    strongly each network's score follows them (Spearman)."""
    import keras
    from scipy.stats import spearmanr

    from medtf.cli.demo import experiments_dir
    from medtf.evaluation.cases import iter_examples
    from medtf.tasks.base import main_output
    from medtf.tasks.classification import _auc
    from medtf.training.config import load_config
    from medtf.training.engine import build_model
    from medtf.training.experiment import parse_config

    config = parse_config(load_config(experiments_dir() / "prostate_vgg_elu.yaml",
                                      [f"data.dir={shards}", *PROSTATE_OVERRIDES]))
    examples = [ex for ex in iter_examples(shards, split) if int(ex["label"]) >= 0]
    x = np.stack([ex["image"] for ex in examples]).astype(np.float32)
    y = np.array([int(ex["label"]) for ex in examples])
    c = x.shape[1] // 2
    stats = {"crop_sd": x.std(axis=(1, 2, 3)), "centre_abs_z": np.abs(x[:, c - 5:c + 6, c - 5:c + 6]).mean((1, 2, 3))}
    aucs, follow = [], []
    for s in seeds:
        keras.utils.set_random_seed(int(s))
        model = build_model(config.model)
        score = np.asarray(main_output(model(x, training=False)), np.float64)[:, -1]
        aucs.append(_auc(y, score))
        follow.append(float(spearmanr(score, stats["crop_sd"]).statistic))
        keras.backend.clear_session()
    aucs = np.asarray(aucs)
    return {"seeds": [int(s) for s in seeds], "aucs": aucs.tolist(), **_stats(aucs),
            "share_above_half": float(np.mean(aucs > 0.5)), "mean_abs_dev": float(np.mean(np.abs(aucs - 0.5))),
            "findings": int(len(y)), "positives": int(y.sum()),
            "stat_aucs": {k: _auc(y, v) for k, v in stats.items()},
            "spearman_with_crop_sd": {"mean": float(np.mean(follow)), "mean_abs": float(np.mean(np.abs(follow)))}}


def warmup_steps(shards: Path) -> int:
    """`ROULETTE_WARMUP` steps, or with "epoch" one training epoch as `medtf train` counts it."""
    if ROULETTE_WARMUP != "epoch":
        return int(ROULETTE_WARMUP)
    from medtf.cli.demo import experiments_dir
    from medtf.training.config import load_config
    from medtf.training.inputs import steps_per_epoch

    config = load_config(experiments_dir() / "prostate_vgg_elu.yaml", [f"data.dir={shards}", *PROSTATE_OVERRIDES])
    return steps_per_epoch(config["data"], config["train"])


def run_prostate_roulette(out: Path, cases: int, seed: int, id_salt: str) -> dict:
    """`ROULETTE_CANDIDATES` candidates scored after the warm-up, each then trained the same way from its
    (warmed-up) weights; the winner's test AUC vs the seeds' mean, and how well the roulette score predicts the
    trained test AUC (Spearman over the candidates)."""
    from scipy.stats import spearmanr

    from _once import once

    shards = prostate_sources(out, cases, seed, id_salt)
    summary = once(out / "jobs" / "roulette.json", lambda: _roulette_job(out, shards))
    trained = [once(out / "jobs" / f"roulette-seed-{e['seed']}.json", lambda e=e: _candidate_job(out, shards, e))
               for e in summary["scores"]]
    best = next(t for t in trained if t["seed"] == summary["best"]["seed"])
    scores, aucs = [t["val_score"] for t in trained], [t["auc"] for t in trained]
    return {"candidates": ROULETTE_CANDIDATES, "warmup_steps": summary["warmup_steps"], "runs": trained,
            "best": best, "mean_auc": float(np.nanmean(aucs)), "auc_stats": _stats(aucs),
            "spearman_score_test_auc": float(spearmanr(scores, aucs).statistic),
            "spearman_score_best_val_auc": float(spearmanr(scores, [t["best_val_auc"] for t in trained]).statistic),
            "train_minutes": float(sum(t["train_minutes"] for t in trained))}


RUNNERS = {"prostate": run_prostate, "prostate-shuffled": run_prostate_shuffled,
           "prostate-roulette": run_prostate_roulette}


def _f(v, d=3) -> str:
    return "n/a" if v is None or v != v else f"{v:.{d}f}"


def report(results: dict) -> tuple[list[str], list[tuple]]:
    """Table rows for the prostate workloads and their verdicts (the table layout of quality.py)."""
    lines = ["", "| prostate method | test AUC [95% CI] | val AUC | train min |", "|---|---|---|---|"]
    verdicts = []
    if "prostate" in results:
        res, base = results["prostate"], results["prostate"]["baseline"]
        for run in res.get("runs", [res]):
            lines.append(f"| VGG-ELU (vgg_elu_small), model seed {run.get('model_seed', 0)} | {_f(run['auc'])} "
                         f"[{_f(run['auc_ci'][0])}, {_f(run['auc_ci'][1])}] | {_f(run['best_val_auc'])} | "
                         f"{_f(run['train_minutes'], 1)} |")
        st = res.get("auc_stats", {"mean": res["auc"], "sd": 0.0, "n": 1})
        lines.append(f"| VGG-ELU, mean ± sd over {st['n']} seeds | {_f(st['mean'])} ± {_f(st['sd'])} | | |")
        lines.append(f"| mean ADC in a {ROI_RADIUS_MM:g} mm disc + logistic regression (train AUC "
                     f"{_f(base['train_auc'])}; {base['n_train']} train / {base['n_test']} test findings, "
                     f"{base['test_positives']} test positives) | {_f(base['test_auc'])} | | |")
        verdicts += [("prostate VGG-ELU test AUC (mean over seeds)", st["mean"], f">= {TARGETS['auc']}",
                      st["mean"] >= TARGETS["auc"]),
                     ("prostate VGG-ELU - ADC baseline", st["mean"] - base["test_auc"], f">= {TARGETS['margin']}",
                      st["mean"] - base["test_auc"] >= TARGETS["margin"])]
    if "prostate-shuffled" in results:
        res = results["prostate-shuffled"]
        for run in res.get("runs", [res]):
            lines.append(f"| shuffled-label control, permutation / model seed {run.get('permutation_seed', 0)} "
                         f"({run['relabelled']['labels_changed']} of {run['relabelled']['train_findings']} training "
                         f"labels changed) | {_f(run['auc'])} [{_f(run['auc_ci'][0])}, {_f(run['auc_ci'][1])}] | "
                         f"{_f(run['best_val_auc'])} | {_f(run['train_minutes'], 1)} |")
        mean = res.get("mean_auc", res["auc"])
        sd = res.get("auc_stats", {}).get("sd")
        lines.append(f"| shuffled-label control, mean ± sd over {len(res.get('runs', [res]))} permutations | "
                     f"{_f(mean)} ± {_f(sd)} | | |")
        if "untrained" in res:
            u = res["untrained"]
            lines.append(f"| untrained networks (no training), {u['n']} seeds, on the same {u['findings']} test "
                         f"findings: mean ± sd (share > 0.5 {_f(u['share_above_half'], 2)}, mean abs(AUC - 0.5) "
                         f"{_f(u['mean_abs_dev'])}) | {_f(u['mean'])} ± {_f(u['sd'])} | | |")
            lines.append(f"| label-free statistics of the test crops: crop sd / mean abs(z) near the centre | "
                         f"{_f(u['stat_aucs']['crop_sd'])} / {_f(u['stat_aucs']['centre_abs_z'])} | | |")
        verdicts.append(("prostate shuffled-label AUC (mean over permutations)", mean,
                         f"<= {TARGETS['shuffled_max']}", mean <= TARGETS["shuffled_max"]))
    if "prostate-roulette" in results:
        res = results["prostate-roulette"]
        seeds = ", ".join(f"{t['seed']}: {_f(t['val_score'])} -> {_f(t['auc'])}" for t in res["runs"])
        lines.append(f"| roulette winner (seed {res['best']['seed']} of {res['candidates']}, {res['warmup_steps']} "
                     f"warm-up steps, val AUC {_f(res['best']['val_score'])}) trained | {_f(res['best']['auc'])} "
                     f"[{_f(res['best']['auc_ci'][0])}, {_f(res['best']['auc_ci'][1])}] | "
                     f"{_f(res['best']['best_val_auc'])} | |")
        st = res.get("auc_stats", {"mean": res["mean_auc"], "sd": float("nan")})
        lines.append(f"| every candidate trained, mean ± sd (seed: roulette score -> test AUC: {seeds}) | "
                     f"{_f(st['mean'])} ± {_f(st['sd'])} | | {_f(res['train_minutes'], 1)} |")
        if "spearman_score_test_auc" in res:
            lines.append(f"| Spearman(roulette score, trained test AUC) / (score, trained best val AUC) | "
                         f"{_f(res['spearman_score_test_auc'], 2)} / {_f(res['spearman_score_best_val_auc'], 2)} "
                         f"| | |")
        verdicts.append(("roulette winner - mean of its seeds", res["best"]["auc"] - res["mean_auc"], "> 0",
                         res["best"]["auc"] - res["mean_auc"] > 0))
    return lines, verdicts
