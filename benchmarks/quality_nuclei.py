"""Nucleus classification quality (issue #15 "Quality") on held-out synthetic H&E tiles.

Workloads of ``benchmarks/quality.py --only ...`` (its conventions: one fixed ID key, figures on the **test** tiles,
nothing chosen on them). Data: ``generate_nuclei_he`` PanNuke layout, `TILES` tiles of `TILE` px over `FOLDS`
folds, converted with ``--split 0.6,0.2,0.2`` (the converter splits by tissue x fold). Every model sees whole
tiles (no crops; ``image_size = TILE``) with the experiments' tiny ViT (2 layers, width 32, patch 8) and
`MAX_NUCLEI` nucleus slots; all figures are on the first `MAX_NUCLEI` nuclei of each test tile (the slots the model
has), the baseline included.

- ``nuclei``: ``experiments/nuclei_finetune.yaml`` (random init, every layer trains), test macro F1 / accuracy with a
  95 % tile-bootstrap CI; beside it the trivial baseline (`medtf.evaluation.baselines`: mean R, G, B + log area per
  nucleus, multinomial logistic regression fitted on the training nuclei).
- ``nuclei-shuffled``: the same training with the training nuclei's classes permuted (seeded, across all training
  nuclei; validation / test untouched), evaluated on the true test tiles. High here would mean a leak.
- ``nuclei-tokenizer``: ``experiments/nuclei_tokenizer.yaml`` on the training tiles; test perplexity / PSNR.
- ``nuclei-mim`` / ``nuclei-mim-noinst``: BEiT-style MIM with nucleus tokens on the tokenizer's token targets, with
  and without L_inst (``model.args.inst_loss``), then ``experiments/nuclei_linear_probe.yaml`` from each run, per
  seed of ``--nuclei-seeds`` (the spread); ``nuclei-probe-random``: the same probe from a random initialisation.
  ``--nuclei-mim-epochs N --nuclei-mim-checkpoint last`` probes the last MIM checkpoint of longer runs: on 54
  training tiles the MIM validation loss is lowest at epoch 3, so "best" hands every run length the same weights.

The decisive probe comparison (3 seeds x 3 folds, pretraining on separate unlabelled tiles, last MIM checkpoint,
paired differences with CIs) is ``benchmarks/quality_nuclei_probe.py``; ``benchmarks/quality_nuclei_features.py``
probes the same frozen features to convergence on z-scores (why the SGD probe's gains are not the features').

Targets: fine-tuned F1 >= 0.85 and >= baseline + 0.05; MIM probe >= random probe + 0.10 F1; L_inst reported.
The default 12 x 20 fine-tuning steps are a smoke budget: ``--nuclei-epochs 100`` is what reached F1 >= 0.85
(benchmarks/RESULTS.md); ``--nuclei-init RUN/checkpoints/last.keras`` fine-tunes from a MIM run.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np

TILE, TILES, FOLDS, MAX_NUCLEI = 128, 90, 5, 64
SPLIT = "0.6,0.2,0.2"
VOCAB = 128  # experiments/nuclei_tokenizer.yaml's num_codes
QUIET = ("+train.verbose=0", "+train.log_every_n_steps=0", "+train.hparams=false")
WHOLE = ("data.patch_size=null", "data.val_patch_size=null")
VIT = (f"model.args.image_size={TILE}", "model.args.position_embedding=xywh")
BUDGETS = {  # CPU-sized (2 shared cores): epochs x steps of 8 tiles
    "finetune": ("train.epochs=12", "+train.steps_per_epoch=20", "data.batch_size=8"),
    "tokenizer": (),  # the experiment's own: 25 x 20 steps on 64 px crops with flips (10 steps on whole tiles
    # without flips collapsed to perplexity 2.3); fully convolutional, so it tokenizes whole tiles for MIM
    "mim": ("train.epochs=10", "+train.steps_per_epoch=20", "data.batch_size=8", "data.transforms=[]"),
    "probe": ("train.epochs=8", "+train.steps_per_epoch=20", "data.batch_size=8"),
}
TARGETS = {"f1": 0.85, "margin": 0.05, "probe_gain": 0.10}
WORKLOADS = ("nuclei", "nuclei-shuffled", "nuclei-tokenizer", "nuclei-mim", "nuclei-mim-noinst", "nuclei-probe-random")
BOOTSTRAP = 500


def _cli(*args) -> None:
    from medtf.cli.main import main

    argv = [str(a) for a in args]
    print(f"$ medtf {' '.join(argv)}", flush=True)
    if main(argv) != 0:
        raise SystemExit(f"`medtf {argv[0]}` failed")


def nuclei_sources(out: Path, seed: int, id_salt: str, tiles: int = TILES) -> Path:
    from medtf.synth.nuclei_he import generate_nuclei_he

    source, shards = out / "source" / "nuclei-he", out / "shards" / "nuclei-he"
    if not (shards / "manifest.json").exists():
        generate_nuclei_he(source, cases=tiles, seed=seed, tile_size=TILE, folds=FOLDS, consep_images=0)
        _cli("convert", "nuclei-he", "--input", source / "pannuke", "--output", shards, "--split", SPLIT,
             "--seed", seed, "--id-salt", id_salt, "--quiet")
    return shards


def _train(experiment: str, shards: Path, run_dir: Path, overrides, whole: bool = True) -> float:
    from medtf.cli.demo import experiments_dir
    from medtf.training.config import load_config
    from medtf.training.engine import train

    config = load_config(experiments_dir() / experiment, [f"data.dir={shards}", *QUIET, *(WHOLE if whole else ()),
                                                                *overrides])
    start = time.monotonic()
    if run_dir.exists():
        shutil.rmtree(run_dir)
    train(config, run_dir)
    return (time.monotonic() - start) / 60


def tile_bootstrap(tiles: list[tuple[np.ndarray, np.ndarray]], seed: int = 0, n: int = BOOTSTRAP) -> dict:
    """Macro F1 / accuracy of per-tile ``(labels, predictions)`` and a 95 % CI resampling tiles (nuclei of one tile
    are not independent)."""
    from medtf.tasks.nucleus_classification import nucleus_scores

    k = int(max(max(t[0].max(initial=0), t[1].max(initial=0)) for t in tiles)) + 1
    full = nucleus_scores(np.concatenate([t[0] for t in tiles]), np.concatenate([t[1] for t in tiles]), k)
    rng, draws = np.random.default_rng(seed), []
    for _ in range(n):
        pick = [tiles[i] for i in rng.integers(0, len(tiles), len(tiles))]
        draws.append(nucleus_scores(np.concatenate([t[0] for t in pick]), np.concatenate([t[1] for t in pick]),
                                    k)["f1"])
    return {"f1": full["f1"], "accuracy": full["accuracy"], "n": full["n"], "tiles": len(tiles),
            "f1_ci": [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))],
            "per_class_f1": [round(v["f1"], 3) for v in full["per_class"].values()]}


def per_tile(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``example_id -> (labels, predictions)`` of an evaluated classifier run's test nuclei."""
    by_tile: dict[str, tuple[list, list]] = {}
    with open(run_dir / "eval-test" / "per_nucleus.csv") as f:
        for row in csv.DictReader(f):
            labels, preds = by_tile.setdefault(row["example_id"], ([], []))
            labels.append(int(row["label"]))
            preds.append(int(row["prediction"]))
    return {k: (np.asarray(a), np.asarray(b)) for k, (a, b) in by_tile.items()}


def evaluate_classifier(run_dir: Path, shards: Path) -> dict:
    from medtf.tasks import get_task

    summary = get_task("nucleus_classification").evaluate(run_dir, split="test", data_dir=shards, verbose=False)
    tiles = list(per_tile(run_dir).values())
    return {**tile_bootstrap(tiles), "dropped": summary["nuclei_dropped"],
            "class_names": summary["metrics"]["class_names"]}


def _baseline_rows(shards: Path, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    from medtf.evaluation.baselines import nucleus_colour_area
    from medtf.evaluation.cases import iter_examples

    rows = []
    for ex in iter_examples(shards, split):
        ids, classes = ex["instance_ids"][:MAX_NUCLEI], ex["classes"][:MAX_NUCLEI] - 1  # 0 = background
        rows.append((nucleus_colour_area(ex["image"], ex["instances"], ids), classes))
    return rows


def colour_area_baseline(shards: Path) -> dict:
    from medtf.evaluation.baselines import fit_softmax_regression

    train, test = _baseline_rows(shards, "train"), _baseline_rows(shards, "test")
    model = fit_softmax_regression(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]))
    return {**tile_bootstrap([(y, model.predict(x)) for x, y in test]),
            "n_train": int(sum(len(y) for _, y in train))}


def relabel_training_classes(shards: Path, out: Path, seed: int) -> dict:
    """Copy ``shards`` to ``out`` with the classes of all training nuclei permuted (seeded)."""
    import tensorflow as tf

    from medtf.data.manifest import read_manifest, write_manifest
    from medtf.data.shards import write_shard

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(shards, out)
    manifest = read_manifest(out)
    compression = manifest.get("compression") or ""
    entries = manifest["splits"]["train"]["shards"]
    records = [[tf.train.Example.FromString(r.numpy()) for r in
                tf.data.TFRecordDataset(str(out / s["file"]), compression_type=compression)] for s in entries]
    field = lambda ex: ex.features.feature["classes"].bytes_list  # noqa: E731  (raw int32 bytes)
    old = np.concatenate([np.frombuffer(field(ex).value[0], np.int32) for shard in records for ex in shard])
    new = old[np.random.default_rng(seed).permutation(len(old))]
    i = 0
    for entry, shard in zip(entries, records):
        for ex in shard:
            k = len(np.frombuffer(field(ex).value[0], np.int32))
            field(ex).value[0] = new[i:i + k].astype(np.int32).tobytes()
            i += k
        entry.update(write_shard(out / entry["file"], [ex.SerializeToString() for ex in shard],
                                 manifest.get("compression")))
    write_manifest(out, manifest)
    return {"train_nuclei": int(len(old)), "labels_changed": int((new != old).sum())}


def run_nuclei(out: Path, seed: int, id_salt: str, shuffled: bool = False, epochs: int | None = None,
               init: str | None = None) -> dict:
    """Fine-tune (``epochs``: instead of `BUDGETS`' 12; ``init``: a MIM run or checkpoint to start from, each in its
    own run folder) and evaluate; the baseline beside."""
    shards = nuclei_sources(out, seed, id_salt)
    data, extra = shards, {}
    if shuffled:
        data = out / "shards" / "nuclei-he-shuffled"
        extra["relabelled"] = relabel_training_classes(shards, data, seed)
    run = out / "runs" / (("nuclei-shuffled" if shuffled else "nuclei") + (f"-e{epochs}" if epochs else "")
                          + ("-init" if init else ""))
    budget = BUDGETS["finetune"] + ((f"train.epochs={epochs}",) if epochs else ()) + \
        ((f"+model.init_from={init}",) if init else ())
    extra["init_from"] = init
    minutes = _train("nuclei_finetune.yaml", data, run, (*VIT, f"model.args.max_nuclei={MAX_NUCLEI}", *budget))
    result = {**evaluate_classifier(run, shards), "train_minutes": minutes, "epochs": epochs or 12, **extra}
    if not shuffled:
        result["baseline"] = colour_area_baseline(shards)
    return result


def run_tokenizer(out: Path, seed: int, id_salt: str) -> dict:
    from medtf.tasks import get_task

    shards, run = nuclei_sources(out, seed, id_salt), out / "runs" / "nuclei-tokenizer"
    if (run / "eval-test" / "summary.json").exists():  # a MIM workload already made it
        return {"metrics": json.loads((run / "eval-test" / "summary.json").read_text())["metrics"],
                "train_minutes": json.loads((run / "quality_minutes.json").read_text())}
    minutes = _train("nuclei_tokenizer.yaml", shards, run, BUDGETS["tokenizer"], whole=False)
    (run / "quality_minutes.json").write_text(json.dumps(minutes))
    summary = get_task("tokenizer").evaluate(run, split="test", verbose=False)
    return {"metrics": summary["metrics"], "train_minutes": minutes}


def _trained(run_dir: Path, epochs: int) -> bool:
    """A finished run of ``epochs`` epochs (reused instead of trained again)."""
    history = run_dir / "history.csv"
    return (run_dir / "checkpoints" / "last.keras").exists() and history.exists() and \
        len(history.read_text().strip().splitlines()) == epochs + 1


def run_probe(out: Path, seed: int, id_salt: str, pretrain: str | None, seeds=(0,), mim_epochs=None,
              checkpoint: str = "best") -> dict:
    """Linear probe per seed from MIM (``pretrain``: 'inst' or 'noinst', pretrained with that seed for
    ``mim_epochs`` x 20 steps, default `BUDGETS`' 10; its ``checkpoint``: best by val loss, or last) or from a random
    initialisation."""
    shards = nuclei_sources(out, seed, id_salt)
    tokenizer = run_tokenizer(out, seed, id_salt) if pretrain else None
    rows = []
    for s in seeds:
        init, mim_minutes = [], 0.0
        if pretrain:
            tag = f"-e{mim_epochs}" if mim_epochs else ""
            mim = out / "runs" / f"nuclei-mim-{pretrain}{tag}-s{s}"
            mim_minutes = 0.0 if _trained(mim, mim_epochs or 10) else _train("nuclei_mim_pretrain.yaml", shards, mim, (
                *VIT, "model.args.target=tokens", f"+model.args.vocab_size={VOCAB}",
                f"+model.args.max_nuclei={MAX_NUCLEI}", f"+model.args.inst_loss={pretrain == 'inst'}",
                "+train.image_panels=false",
                f"+targets={{tokenizer: {out / 'runs' / 'nuclei-tokenizer'}, cache: true}}",
                f"seed={s}", *BUDGETS["mim"], *((f"train.epochs={mim_epochs}",) if mim_epochs else ())))
            init = [f"model.init_from={mim / 'checkpoints' / f'{checkpoint}.keras'}"]
            tag += "-last" if checkpoint == "last" else ""
        probe = out / "runs" / f"nuclei-probe-{pretrain or 'random'}{tag if pretrain else ''}-s{s}"
        minutes = _train("nuclei_linear_probe.yaml", shards, probe, (
            *VIT, f"model.args.max_nuclei={MAX_NUCLEI}", f"seed={s}", *init, *BUDGETS["probe"]))
        rows.append({"seed": s, **evaluate_classifier(probe, shards), "mim_minutes": mim_minutes,
                     "probe_minutes": minutes})
    f1 = np.array([r["f1"] for r in rows])
    return {"seeds": rows, "f1_mean": float(f1.mean()), "f1_sd": float(f1.std(ddof=1)) if len(f1) > 1 else None,
            "tokenizer": tokenizer, "mim_epochs": (mim_epochs or 10) if pretrain else None, "checkpoint": checkpoint}


def runners(seeds, epochs: int | None = None, mim_epochs: int | None = None, checkpoint: str = "best",
            init: str | None = None) -> dict:
    return {"nuclei": lambda *a: run_nuclei(*a, epochs=epochs, init=init),
            "nuclei-shuffled": lambda *a: run_nuclei(*a, shuffled=True, epochs=epochs),
            "nuclei-tokenizer": run_tokenizer,
            "nuclei-mim": lambda *a: run_probe(*a, pretrain="inst", seeds=seeds, mim_epochs=mim_epochs,
                                                 checkpoint=checkpoint),
            "nuclei-mim-noinst": lambda *a: run_probe(*a, pretrain="noinst", seeds=seeds, mim_epochs=mim_epochs,
                                                               checkpoint=checkpoint),
            "nuclei-probe-random": lambda *a: run_probe(*a, pretrain=None, seeds=seeds)}


def _f(v, d=3) -> str:
    return "n/a" if v is None or v != v else f"{v:.{d}f}"


def _ci(r) -> str:
    return f"{_f(r['f1'])} [{_f(r['f1_ci'][0])}, {_f(r['f1_ci'][1])}]"


def report(results: dict) -> tuple[list[str], list[tuple]]:
    """Table rows for the nuclei workloads and their verdicts (the table layout of quality.py)."""
    lines = ["", "| nuclei method | test macro F1 [95% tile-bootstrap CI] | accuracy | per-class F1 (neo, inf, con, "
             "dead, epi) | train min |", "|---|---|---|---|---|"]
    verdicts = []

    def row(name, r, minutes):
        lines.append(f"| {name} | {_ci(r)} | {_f(r['accuracy'])} | {r['per_class_f1']} | {_f(minutes, 1)} |")

    if "nuclei" in results:
        res, base = results["nuclei"], results["nuclei"]["baseline"]
        start = f"from {res['init_from']}" if res.get("init_from") else "random init"
        row(f"fine-tuned nucleus ViT ({res['epochs']} x 20 steps, {start}; {res['n']} nuclei, {res['tiles']} "
            f"test tiles)", res,
            res["train_minutes"])
        row(f"mean RGB + log area, logistic regression ({base['n_train']} training nuclei)", base, None)
        verdicts += [("nuclei fine-tuned F1", res["f1"], f">= {TARGETS['f1']}", res["f1"] >= TARGETS["f1"]),
                     ("nuclei fine-tuned - colour/area baseline F1", res["f1"] - base["f1"], f">= {TARGETS['margin']}",
                      res["f1"] - base["f1"] >= TARGETS["margin"])]
    if "nuclei-shuffled" in results:
        res = results["nuclei-shuffled"]
        moved = res["relabelled"]
        row(f"shuffled-label control ({res['epochs']} x 20 steps; {moved['labels_changed']} of "
            f"{moved['train_nuclei']} training classes changed)", res, res["train_minutes"])
    probes = {}
    for name, label in (("nuclei-probe-random", "linear probe, random init"),
                        ("nuclei-mim-noinst", "linear probe, MIM without L_inst"),
                        ("nuclei-mim", "linear probe, MIM with L_inst")):
        if name in results:
            res = probes[name] = results[name]
            if res.get("mim_epochs"):
                label += f" ({res['mim_epochs']} x 20 MIM steps, {res.get('checkpoint', 'best')} checkpoint)"
            for r in res["seeds"]:
                row(f"{label} (seed {r['seed']})", r, r["mim_minutes"] + r["probe_minutes"])
            if len(res["seeds"]) > 1:
                lines.append(f"| {label}: mean ± sd over {len(res['seeds'])} seeds | {_f(res['f1_mean'])} ± "
                             f"{_f(res['f1_sd'])} | | | |")
    tok = next((r["tokenizer"] for r in probes.values() if r.get("tokenizer")), results.get("nuclei-tokenizer"))
    if tok:
        m = tok["metrics"]
        lines.append(f"\nTokenizer (test tiles): perplexity {_f(m.get('perplexity'), 1)} of {VOCAB} codes, usage "
                     f"{_f(m.get('usage'))}, reconstruction PSNR {_f(m.get('psnr'), 1)} dB, "
                     f"{_f(tok['train_minutes'], 1)} min training.")
    if "nuclei-probe-random" in probes:
        base = probes["nuclei-probe-random"]["f1_mean"]
        for name in ("nuclei-mim", "nuclei-mim-noinst"):
            if name in probes:
                gain = probes[name]["f1_mean"] - base
                verdicts.append((f"{name} probe - random probe F1", gain, f">= {TARGETS['probe_gain']}",
                                 gain >= TARGETS["probe_gain"]))
    if "nuclei-mim" in probes and "nuclei-mim-noinst" in probes:
        d = probes["nuclei-mim"]["f1_mean"] - probes["nuclei-mim-noinst"]["f1_mean"]
        verdicts.append(("nuclei probe: with - without L_inst F1 (reported)", d, "reported", True))
    return lines, verdicts
