"""Statistics of benchmarks/quality_nuclei_probe.py (issue #15's paired probe comparison): t interval against
SciPy, the paired tile bootstrap on hand-made per-nucleus tables, and the report's verdict on the CI's low end."""

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import quality_nuclei_probe as qp  # noqa: E402


def test_t_interval_matches_scipy():
    v = [0.21, 0.05, 0.13, 0.30]
    got = qp.t_interval(v)
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=stats.sem(v))
    assert got["mean"] == pytest.approx(np.mean(v))
    assert got["sd"] == pytest.approx(np.std(v, ddof=1))
    assert got["ci"] == pytest.approx([lo, hi], abs=1e-3)  # T975 is tabulated to 3 decimals


def _run(tmp_path: Path, name: str, tiles: dict[str, tuple[list, list]]) -> Path:
    run = tmp_path / name
    (run / "eval-test").mkdir(parents=True)
    with open(run / "eval-test" / "per_nucleus.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["example_id", "label", "prediction"])
        w.writeheader()
        for tile, (labels, preds) in tiles.items():
            for y, p in zip(labels, preds):
                w.writerow({"example_id": tile, "label": y, "prediction": p})
    return run


def test_paired_bootstrap_of_identical_and_perfect_vs_wrong_runs(tmp_path):
    labels = {f"t{i}": [0, 1, 2, i % 3] for i in range(6)}
    perfect = _run(tmp_path, "perfect", {t: (y, y) for t, y in labels.items()})
    same = _run(tmp_path, "same", {t: (y, y) for t, y in labels.items()})
    wrong = _run(tmp_path, "wrong", {t: (y, [(c + 1) % 3 for c in y]) for t, y in labels.items()})
    assert qp.paired_bootstrap([perfect], [same], n=50) == [0.0, 0.0]
    # every draw: F1 1.0 vs 0.0, so the interval of the mean difference is exactly [1, 1]
    assert qp.paired_bootstrap([perfect], [wrong], n=50) == pytest.approx([1.0, 1.0])
    # two runs per arm: the mean over runs, (1 + 0) / 2 - 0 = 0.5
    assert qp.paired_bootstrap([perfect, wrong], [wrong, wrong], n=50) == pytest.approx([0.5, 0.5])


def test_summary_pairs_by_seed_and_judges_the_ci_low_end(tmp_path):
    labels = {f"t{i}": [0, 1, 2] for i in range(4)}
    runs = {name: _run(tmp_path, name, {t: (y, y if ok else [1, 2, 0]) for t, y in labels.items()})
            for name, ok in (("a", True), ("b", False))}
    rows = lambda arm, f1s: [{"arm": arm, "seed": s, "fold": k, "f1": f, "accuracy": f, "f1_ci": [f, f],  # noqa
                               "per_class_f1": []} for s, fs in enumerate(f1s) for k, f in enumerate(fs)]
    results = {"inst": rows("inst", [[0.6, 0.8], [0.5, 0.5], [0.7, 0.7]]),
               "random": rows("random", [[0.4, 0.4], [0.4, 0.4], [0.4, 0.6]])}
    summary = qp.summarise(results, {"inst": [runs["a"]], "random": [runs["b"]]})
    d = summary["paired"]["inst - random"]
    assert d["values"] == pytest.approx([0.3, 0.1, 0.2])  # fold means, then paired by seed
    assert d["mean"] == pytest.approx(0.2) and d["sd"] == pytest.approx(0.1)
    assert d["ci"] == pytest.approx([0.2 - 4.303 * 0.1 / np.sqrt(3), 0.2 + 4.303 * 0.1 / np.sqrt(3)])
    assert "| inst - random | +0.300, +0.100, +0.200 | +0.200 ± 0.100 |" in "\n".join(qp.report_lines(summary))
    assert qp.report_lines(summary)[-1].endswith("| no (CI low) |")  # low end -0.048 < 0.10


def _feats(rng, n, scale):
    """Three classes told apart by one feature of tiny spread, riding on a large shared offset (a frozen
    LayerNorm's token often looks like this); the other features are noise."""
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 1, (n, 6)) + 50.0
    x[:, 0] = 50.0 + scale * (y + rng.normal(0, 0.05, n))
    return {"nucleus": x, "labels": y}


def test_probes_on_a_small_spread_feature(tmp_path):
    import quality_nuclei_features as qf

    rng = np.random.default_rng(0)
    feats = {"fold-0": _feats(rng, 300, 0.01), "fold-1": _feats(rng, 300, 0.01), "test": _feats(rng, 200, 0.01)}
    # fold 0 held out: trains on fold-1, scores the test nuclei
    assert qf.converged_probe(feats, 0, 2, "nucleus", "lbfgs") > 0.95
    assert qf.converged_probe(feats, 0, 2, "nucleus", "sgd-std") > 0.95  # z-scores expose the feature
    assert qf.converged_probe(feats, 0, 2, "nucleus", "sgd-raw") < 0.6  # 160 steps on raw features do not find it
