"""Why a MIM probe gains what it gains (issue #15 "Quality", step 2): the frozen features, probed to convergence.

`quality_nuclei_probe` trains the linear probe by SGD for a fixed budget (8 x 20 steps, Adam 1e-2) on the
backbone's nucleus tokens as they come out of its final LayerNorm. This module takes the frozen backbone of a
finished probe run, extracts per-nucleus features on every split of the labelled K-fold shards and fits a
multinomial logistic regression on standardised features (`medtf.evaluation.baselines.fit_softmax_regression`,
L-BFGS to convergence), training on the folds the probe trained on and scoring the test split. Variants:

- ``nucleus``: the nucleus token (what the probe sees), ``cls``: the [CLS] token (one per tile: a tile-level
  control), ``nucleus+cls``: both concatenated, ``grid``: the mean of the grid tokens whose patch centre falls in the
  nucleus box (the BEiT loss trains those; nucleus tokens only get a loss from L_inst).

Probes (`PROBES`): ``lbfgs`` the converged one on z-scored features; ``sgd-raw`` / ``sgd-std`` the SGD probe's
budget (160 Adam steps, lr 1e-2, ~320 nuclei a step) in NumPy on the raw / z-scored nucleus tokens. Differences
between them separate "the probe budget / feature scale" from "the features".

    .venv/bin/python benchmarks/quality_nuclei_features.py --out /tmp/nqp --seeds 0,1,2 --json /tmp/nqp/feat.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_nuclei_probe as qp  # noqa: E402

VARIANTS = ("nucleus", "cls", "nucleus+cls", "grid")


def extract(run_dir: Path, shards: Path, splits) -> dict[str, dict[str, np.ndarray]]:
    """``split -> {"nucleus", "cls", "grid" (N, D), "labels" (N,)}`` of the real nuclei of a probe run's backbone."""
    import keras

    from medtf.data import make_dataset
    from medtf.evaluation.run import build_preprocess, load_run
    from medtf.tasks import get_task

    config, model, _, _ = load_run(run_dir, "best")
    slice_layer = model.get_layer("nucleus_features")
    features = keras.Model(model.input, [slice_layer.input, slice_layer.output])
    grid_hw = tuple(int(g) for g in model.grid)
    patch, p = int(model.patch_size), int(model.num_patches)
    rows, cols = np.meshgrid(np.arange(grid_hw[0]), np.arange(grid_hw[1]), indexing="ij")
    centres = np.stack([(rows.ravel() + 0.5) * patch, (cols.ravel() + 0.5) * patch], 1)  # (P, 2) y, x in px
    out = {}
    for split in splits:
        ds = make_dataset(shards, split, batch_size=8, training=False, repeat=False,
                          patch_size=config.data.val_patch_size, transforms=build_preprocess(config),
                          model_inputs=get_task("nucleus_classification").model_inputs(model, with_ids=True))
        acc = {"nucleus": [], "cls": [], "grid": [], "labels": []}
        for x, y in ds:
            tokens, nuclei = (np.asarray(t, np.float32) for t in features(x, training=False))
            for b in range(tokens.shape[0]):
                for slot in range(int(x["num_boxes"][b])):
                    ymin, xmin, ymax, xmax = np.asarray(x["boxes"][b, slot])
                    inside = ((centres[:, 0] >= ymin) & (centres[:, 0] <= ymax) & (centres[:, 1] >= xmin)
                              & (centres[:, 1] <= xmax))
                    if not inside.any():  # a box smaller than a patch: the patch under its centre
                        inside = np.zeros(p, bool)
                        c = np.array([(ymin + ymax) / 2, (xmin + xmax) / 2])
                        inside[np.argmin(((centres - c) ** 2).sum(1))] = True
                    acc["nucleus"].append(nuclei[b, slot])
                    acc["cls"].append(tokens[b, 0])
                    acc["grid"].append(tokens[b, 1:1 + p][inside].mean(0))
                    acc["labels"].append(int(y["labels"][b, slot]))
        out[split] = {k: np.asarray(v) for k, v in acc.items()}
    return out


def cached(run_dir: Path, shards: Path, splits) -> dict[str, dict[str, np.ndarray]]:
    """`extract`, kept in ``run_dir/features.npz`` (the backbone is frozen: reruns of the probes reuse it)."""
    path = run_dir / "features.npz"
    if not path.exists():
        feats = extract(run_dir, shards, splits)
        np.savez(path, **{f"{split}/{k}": v for split, d in feats.items() for k, v in d.items()})
    with np.load(path) as z:
        out: dict[str, dict[str, np.ndarray]] = {}
        for key in z.files:
            split, k = key.split("/")
            out.setdefault(split, {})[k] = z[key]
    return out


def variant(feats: dict, name: str) -> np.ndarray:
    return np.concatenate([feats["nucleus"], feats["cls"]], 1) if name == "nucleus+cls" else feats[name]


def sgd_probe(x, y, k: int, standardise: bool, steps: int = 160, lr: float = 1e-2, batch: int = 320,
              seed: int = 0):
    """Softmax regression by Adam for the SGD probe's budget (8 x 20 steps of 8 tiles ~ 320 nuclei, lr 1e-2),
    in NumPy; returns ``predict(x)``. ``standardise``: per-feature z-scores from the training nuclei first (what
    a BatchNorm without affine before the head does, the MAE paper's linear-probe recipe)."""
    mu, sd = (x.mean(0), x.std(0) + 1e-6) if standardise else (0.0, 1.0)
    z = (x - mu) / sd
    rng = np.random.default_rng(seed)
    w, b = rng.normal(0, 0.05, (z.shape[1], k)), np.zeros(k)  # a glorot-sized start, like the Dense head's
    m = [np.zeros_like(w), np.zeros_like(b)]
    v = [np.zeros_like(w), np.zeros_like(b)]
    for t in range(1, steps + 1):
        i = rng.integers(0, len(z), batch)
        logits = z[i] @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(batch), y[i]] -= 1.0
        grads = [z[i].T @ p / batch, p.mean(0)]
        for j, (param, g) in enumerate(zip((w, b), grads)):
            m[j] = 0.9 * m[j] + 0.1 * g
            v[j] = 0.999 * v[j] + 0.001 * g * g
            param -= lr * (m[j] / (1 - 0.9 ** t)) / (np.sqrt(v[j] / (1 - 0.999 ** t)) + 1e-7)
    return lambda q: (((q - mu) / sd) @ w + b).argmax(1)


PROBES = ("lbfgs", "sgd-raw", "sgd-std")  # converged on z-scores; the SGD budget on raw / on z-scored features


def converged_probe(feats: dict, fold: int, folds: int, name: str, probe: str = "lbfgs") -> float:
    """Test macro F1 of a linear probe (`PROBES`) on ``name`` features of every fold but ``fold``."""
    from medtf.evaluation.baselines import fit_softmax_regression
    from medtf.tasks.nucleus_classification import nucleus_scores

    train = [feats[f"fold-{j}"] for j in range(folds) if j != fold]
    x = np.concatenate([variant(t, name) for t in train]).astype(np.float64)
    y = np.concatenate([t["labels"] for t in train])
    test = feats["test"]
    k = int(max(y.max(), test["labels"].max())) + 1
    predict = fit_softmax_regression(x, y).predict if probe == "lbfgs" else \
        sgd_probe(x, y, k, standardise=probe == "sgd-std", seed=fold)
    return nucleus_scores(test["labels"], predict(variant(test, name).astype(np.float64)), k)["f1"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--arms", default=",".join(qp.ARMS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--pretrain-tiles", type=int, default=360)
    p.add_argument("--mim-epochs", type=int, default=50)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    labelled = args.out / "shards" / "labelled"
    splits = [f"fold-{k}" for k in range(qp.FOLDS)] + ["test"]
    result = {}
    for arm in args.arms.split(","):
        name = "random" if arm == "random" else f"{arm}-p{args.pretrain_tiles}-e{args.mim_epochs}"
        for s in (int(v) for v in args.seeds.split(",")):
            run = args.out / "runs" / f"probe-{name}-s{s}-f0"  # the backbone is frozen: any fold's run has it
            done = run / "feature_probes.json"
            scores = json.loads(done.read_text()) if done.exists() else {}
            feats = None
            for v in [f"{v}/lbfgs" for v in VARIANTS] + ["nucleus/sgd-raw", "nucleus/sgd-std"]:
                if v not in scores:
                    feats = feats or cached(run, labelled, splits)
                    scores[v] = [converged_probe(feats, k, qp.FOLDS, *v.split("/")) for k in range(qp.FOLDS)]
                    done.write_text(json.dumps(scores))
                f1 = scores[v]
                result.setdefault(arm, {}).setdefault(v, []).append(float(np.mean(f1)))
                print(f"{arm} seed {s} {v}: fold F1 {np.round(f1, 3).tolist()} mean {np.mean(f1):.3f}", flush=True)
    summary = {arm: {v: qp.t_interval(vals) for v, vals in by.items()} for arm, by in result.items()}
    if "random" in result:
        for arm in result:
            if arm != "random":
                for v in result[arm]:
                    summary[arm][v]["paired_vs_random"] = qp.t_interval(np.subtract(result[arm][v],
                                                                                    result["random"][v]))
    for arm, by in summary.items():
        print(arm, {v: f"{d['mean']:.3f} ± {d['sd']:.3f}" + (f" (vs random {d['paired_vs_random']['mean']:+.3f} "
                                                            f"[{d['paired_vs_random']['ci'][0]:+.3f}, "
                                                            f"{d['paired_vs_random']['ci'][1]:+.3f}])"
                                                            if "paired_vs_random" in d else "")
                    for v, d in by.items()})
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
