"""Is the MIM-pretrained linear probe >= 0.10 F1 above a random-init probe? (issue #15 "Quality"), paired by seed.

The protocol is fixed before any run (nothing below is chosen on the test tiles, nor on probe results):

- **Labelled set** (probe only): `quality_nuclei`'s tiles (``generate_nuclei_he(cases=90, seed=0, tile 128, 5
  folds)``) converted in K-fold mode (``--folds 3 --split 0.6,0.2,0.2``: the 20 % test split is kept, the rest is
  dealt into fold-0..2 by tissue x fold). A probe of fold k trains on the other two folds, keeps its best epoch by
  F1 on fold k, and is scored on the test split: folds vary the probe's data, seeds its initialisation.
- **Pretraining set** (tokenizer and MIM; no labels read, L_inst uses boxes only): ``--pretrain-tiles`` other tiles
  (generator seed `PRETRAIN_SEED`) converted ``--split 0.9,0.1,0``. On the 54 labelled training tiles MIM's
  validation loss was lowest at epoch 3 of 50, so the old "best" checkpoint handed every run the same weights.
- **MIM**: ``experiments/nuclei_mim_pretrain.yaml`` (BEiT token targets from ``nuclei_tokenizer.yaml`` trained on
  the pretraining tiles), ``--mim-epochs`` x 20 steps of 8 tiles, **last checkpoint** (rule fixed in advance).
- **Probe**: ``experiments/nuclei_linear_probe.yaml`` with `quality_nuclei.BUDGETS` "probe" (same for every arm).
- **Arms**: ``random`` (probe of a randomly initialised backbone), ``inst`` (MIM with L_inst), ``noinst`` (without).
  Seed s is the MIM seed and the probe seed of every arm, so arm differences pair by seed.
- **Figures**: test macro F1 per (seed, fold); per seed the fold mean; paired difference per seed with mean, sd and
  a 95 % t interval over seeds, and a 95 % tile-bootstrap interval of the mean difference (test tiles resampled
  jointly for every run: the test-sampling spread the seed interval does not see).

    nice -n 10 .venv/bin/python benchmarks/quality_nuclei_probe.py --out /tmp/nqp --prepare
    nice -n 10 .venv/bin/python benchmarks/quality_nuclei_probe.py --out /tmp/nqp --arms inst --seeds 0,1,2 &
    nice -n 10 .venv/bin/python benchmarks/quality_nuclei_probe.py --out /tmp/nqp --arms noinst,random --seeds 0,1,2
    .venv/bin/python benchmarks/quality_nuclei_probe.py --out /tmp/nqp --report --seeds 0,1,2 --json /tmp/nqp/r.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_nuclei as qn  # noqa: E402

ID_SALT = "medtf-quality-benchmark"  # benchmarks/quality.py's fixed key
PRETRAIN_SEED = 1000  # generator seed of the pretraining tiles: other tiles than the labelled set (seed 0)
FOLDS = 3
ARMS = ("random", "inst", "noinst")
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _shards(out: Path, name: str, cases: int, seed: int, convert_args) -> Path:
    from medtf.synth.nuclei_he import generate_nuclei_he

    source, shards = out / "source" / name, out / "shards" / name
    if not (shards / "manifest.json").exists():
        generate_nuclei_he(source, cases=cases, seed=seed, tile_size=qn.TILE, folds=qn.FOLDS, consep_images=0)
        qn._cli("convert", "nuclei-he", "--input", source / "pannuke", "--output", shards, *convert_args,
                "--seed", 0, "--id-salt", ID_SALT, "--quiet")
    return shards


def prepare(out: Path, pretrain_tiles: int) -> tuple[Path, Path, Path]:
    """Labelled K-fold shards, pretraining shards and the tokenizer run (each made once)."""
    labelled = _shards(out, "labelled", qn.TILES, 0, ("--split", qn.SPLIT, "--folds", FOLDS))
    pretrain = _shards(out, f"pretrain-{pretrain_tiles}", pretrain_tiles, PRETRAIN_SEED, ("--split", "0.9,0.1,0"))
    tokenizer = out / "runs" / f"tokenizer-p{pretrain_tiles}"
    if not (tokenizer / "checkpoints" / "last.keras").exists():
        from medtf.tasks import get_task

        minutes = qn._train("nuclei_tokenizer.yaml", pretrain, tokenizer, qn.BUDGETS["tokenizer"], whole=False)
        summary = get_task("tokenizer").evaluate(tokenizer, split="val", verbose=False)
        (tokenizer / "quality.json").write_text(json.dumps({"minutes": minutes, "val": summary["metrics"]}))
    return labelled, pretrain, tokenizer


def mim_run(out: Path, arm: str, seed: int, pretrain_tiles: int, mim_epochs: int, extra=()) -> Path:
    """The MIM run of ``arm`` ('inst' / 'noinst') and seed; trained unless finished. ``extra``: more overrides
    (diagnostics), which must be reflected in the caller's run name via `mim_name`."""
    _, pretrain, tokenizer = prepare(out, pretrain_tiles)
    run = out / "runs" / mim_name(arm, seed, pretrain_tiles, mim_epochs, extra)
    if not qn._trained(run, mim_epochs):
        minutes = qn._train("nuclei_mim_pretrain.yaml", pretrain, run, (
            *qn.VIT, "model.args.target=tokens", f"+model.args.vocab_size={qn.VOCAB}",
            f"+model.args.max_nuclei={qn.MAX_NUCLEI}", f"+model.args.inst_loss={arm == 'inst'}",
            "+train.image_panels=false", f"+targets={{tokenizer: {tokenizer}, cache: true}}", f"seed={seed}",
            *qn.BUDGETS["mim"], f"train.epochs={mim_epochs}", *extra))
        (run / "quality_minutes.json").write_text(json.dumps(minutes))
    return run


def mim_name(arm, seed, pretrain_tiles, mim_epochs, extra=()) -> str:
    tag = "".join("-" + e.split("=")[0].split(".")[-1] + "=" + e.split("=")[1] for e in extra)
    return f"mim-{arm}-p{pretrain_tiles}-e{mim_epochs}{tag}-s{seed}"


def probe_run(out: Path, arm: str, seed: int, fold: int, pretrain_tiles: int, mim_epochs: int,
              init: Path | None = None, tag: str = "", extra=()) -> dict:
    """Linear probe of one arm, seed and fold; its test figures (reused when already evaluated)."""
    labelled, _, _ = prepare(out, pretrain_tiles)
    name = "random" if arm == "random" else f"{arm}-p{pretrain_tiles}-e{mim_epochs}"
    run = out / "runs" / f"probe-{name}{tag}-s{seed}-f{fold}"
    result_file = run / "quality.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    if arm != "random" and init is None:
        init = mim_run(out, arm, seed, pretrain_tiles, mim_epochs) / "checkpoints" / "last.keras"
    minutes = qn._train("nuclei_linear_probe.yaml", labelled, run, (
        *qn.VIT, f"model.args.max_nuclei={qn.MAX_NUCLEI}", f"seed={seed}", f"data.fold={fold}",
        *((f"model.init_from={init}",) if init else ()), *qn.BUDGETS["probe"], *extra))
    result = {"arm": arm, "seed": seed, "fold": fold, "init": str(init) if init else None,
              **qn.evaluate_classifier(run, labelled), "probe_minutes": minutes}
    result_file.write_text(json.dumps(result))
    return result


def t_interval(values) -> dict:
    """Mean, sd and the 95 % t interval of ``values`` (one per seed)."""
    v = np.asarray(values, float)
    mean, sd = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")
    half = T975.get(len(v) - 1, 1.96) * sd / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    return {"mean": mean, "sd": sd, "ci": [mean - half, mean + half], "n": int(len(v)),
            "values": [float(x) for x in v]}


def paired_bootstrap(runs_a: list[Path], runs_b: list[Path], n: int = qn.BOOTSTRAP, seed: int = 0) -> list[float]:
    """95 % interval of mean(F1 of runs_a) - mean(F1 of runs_b), resampling the shared test tiles jointly."""
    from medtf.tasks.nucleus_classification import nucleus_scores

    tables = [qn.per_tile(r) for r in (*runs_a, *runs_b)]
    ids = sorted(tables[0])
    k = 1 + max(int(max(y.max(initial=0), p.max(initial=0))) for t in tables for y, p in t.values())

    def f1(table, pick):
        return nucleus_scores(np.concatenate([table[ids[i]][0] for i in pick]),
                              np.concatenate([table[ids[i]][1] for i in pick]), k)["f1"]

    rng, draws, na = np.random.default_rng(seed), [], len(runs_a)
    for _ in range(n):
        pick = rng.integers(0, len(ids), len(ids))
        scores = [f1(t, pick) for t in tables]
        draws.append(np.mean(scores[:na]) - np.mean(scores[na:]))
    return [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]


def summarise(results: dict[str, list[dict]], run_dirs: dict[str, list[Path]]) -> dict:
    """Per-arm seed means (over folds) and the paired comparisons of the issue."""
    seeds = sorted({r["seed"] for rows in results.values() for r in rows})
    per_seed = {arm: [float(np.mean([r["f1"] for r in rows if r["seed"] == s])) for s in seeds]
                for arm, rows in results.items()}
    out = {"seeds": seeds, "arms": {arm: {**t_interval(v), "per_fold": [
        {k: r[k] for k in ("seed", "fold", "f1", "accuracy", "f1_ci", "per_class_f1")} for r in results[arm]]}
        for arm, v in per_seed.items()}, "paired": {}}
    for a, b in (("inst", "random"), ("noinst", "random"), ("inst", "noinst")):
        if a in per_seed and b in per_seed:
            diff = t_interval(np.subtract(per_seed[a], per_seed[b]))
            diff["tile_bootstrap_ci"] = paired_bootstrap(run_dirs[a], run_dirs[b])
            out["paired"][f"{a} - {b}"] = diff
    return out


def report_lines(summary: dict) -> list[str]:
    f = qn._f
    lines = ["| probe arm | test macro F1 per seed (mean of folds) | mean ± sd [95% t CI over seeds] |",
             "|---|---|---|"]
    for arm, s in summary["arms"].items():
        lines.append(f"| {arm} | {', '.join(f(v) for v in s['values'])} | {f(s['mean'])} ± {f(s['sd'])} "
                     f"[{f(s['ci'][0])}, {f(s['ci'][1])}] |")
    lines += ["", "| paired difference | per seed | mean ± sd | 95% t CI (seeds) | 95% tile bootstrap | >= 0.10? |",
              "|---|---|---|---|---|---|"]
    for name, d in summary["paired"].items():
        lines.append(f"| {name} | {', '.join(f'{v:+.3f}' for v in d['values'])} | {d['mean']:+.3f} ± {f(d['sd'])} | "
                     f"[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] | [{d['tile_bootstrap_ci'][0]:+.3f}, "
                     f"{d['tile_bootstrap_ci'][1]:+.3f}] | {'yes' if d['ci'][0] >= 0.10 else 'no'} (CI low) |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--folds", default=",".join(str(k) for k in range(FOLDS)))
    p.add_argument("--pretrain-tiles", type=int, default=360)
    p.add_argument("--mim-epochs", type=int, default=50)
    p.add_argument("--prepare", action="store_true", help="only make the shards and the tokenizer")
    p.add_argument("--report", action="store_true", help="only summarise finished runs")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    arms, seeds = args.arms.split(","), [int(s) for s in args.seeds.split(",")]
    folds = [int(k) for k in args.folds.split(",")]
    prepare(args.out, args.pretrain_tiles)
    if args.prepare:
        return 0
    results, dirs = {}, {}
    for arm in arms:
        for s in seeds:
            for k in folds:
                name = "random" if arm == "random" else f"{arm}-p{args.pretrain_tiles}-e{args.mim_epochs}"
                done = args.out / "runs" / f"probe-{name}-s{s}-f{k}" / "quality.json"
                if args.report and not done.exists():
                    print(f"missing: {done.parent.name}")
                    continue
                results.setdefault(arm, []).append(probe_run(args.out, arm, s, k, args.pretrain_tiles,
                                                             args.mim_epochs))
        dirs[arm] = [args.out / "runs" / f"probe-{name}-s{r['seed']}-f{r['fold']}" for r in results.get(arm, [])]
    summary = summarise(results, dirs)
    print("\n".join(report_lines(summary)))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
