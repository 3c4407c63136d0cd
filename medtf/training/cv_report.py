"""Cross-validation report for any task: fold values -> mean, sample sd and 95% CI per metric, written as
``cv_report.json`` / ``cv_report.csv`` and printed as a table (`medtf.training.folds` collects the fold values).

A fold's evaluation numbers are whatever its task's ``summary.json`` reports (`summary_values`): segmentation's
per-case means (``metrics.dice.mean`` ...) and pooled ``extra`` values, classification's point estimates
(``metrics.auc.value`` ...), contrastive's retrieval numbers (``metrics.image_to_report_recall_at_1`` ...). The
95% CI is the t interval of the mean over folds, ``mean ± t(0.975, n-1) · sd / √n``: folds are the sample (a
classification fold's own bootstrap CI describes one validation split, not the spread between folds).

Example:
    >>> fold_stats([0.8, 0.9, 0.85])["ci_low"]
    0.7258...
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

CI_LEVEL = 0.95
# Numbers in a summary's metrics that say how it was computed, not what was measured (classification's bootstrap).
SETTINGS = frozenset({"bootstrap_samples", "confidence_level"})
# Segmentation rows `format_report` prints (the JSON/CSV hold every metric): per-case columns that are not counts
# or volumes. Other tasks print every metric.
SHOWN_EVAL = ("dice", "hd95", "msd", "dice_tumour_slices", "catheters_found", "catheters_missed",
              "catheters_spurious", "catheter_mean_mm", "tip_error_mm")


def _number(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def summary_values(summary: Mapping) -> dict[str, float]:
    """One fold's numbers from its task's ``summary.json``: ``{"eval/<metric>": v, "eval_extra/<name>": v}``.

    A metric given as a mapping contributes its ``mean`` (segmentation: the mean over cases) or else its ``value``
    (classification: the point estimate); a plain number (contrastive) itself. ``null`` becomes NaN (counted in
    ``n_nan``); non-numeric entries and `SETTINGS` are skipped.
    """
    out: dict[str, float] = {}
    for name, stats in (summary.get("metrics") or {}).items():
        if name in SETTINGS:
            continue
        if isinstance(stats, Mapping):
            key = "mean" if "mean" in stats else "value" if "value" in stats else None
            value = stats.get(key) if key else "skip"
        else:
            value = stats
        if _number(value):
            out[f"eval/{name}"] = float("nan") if value is None else float(value)
    for name, value in (summary.get("extra") or {}).items():
        if _number(value):
            out[f"eval_extra/{name}"] = float("nan") if value is None else float(value)
    return out


def fold_stats(values: list[float | None]) -> dict[str, Any]:
    """``mean``, sample ``sd`` (ddof=1), ``ci_low`` / ``ci_high`` (95% t interval of the mean), ``n`` (finite
    values) and ``n_nan`` of per-fold values; ``None`` entries are missing folds. sd and CI need n >= 2."""
    from scipy import stats

    finite = [v for v in values if v is not None and math.isfinite(v)]
    n = len(finite)
    mean = float(np.mean(finite)) if n else None
    sd = float(np.std(finite, ddof=1)) if n > 1 else None  # sample sd: folds are a sample of splits
    half = float(stats.t.ppf(0.5 + CI_LEVEL / 2, n - 1) * sd / math.sqrt(n)) if n > 1 else None
    return {"mean": mean, "sd": sd, "ci_low": None if half is None else mean - half,
            "ci_high": None if half is None else mean + half, "n": n,
            "n_nan": sum(1 for v in values if v is not None and not math.isfinite(v))}


def write_report(report: Mapping, run_dir: str | os.PathLike, json_name: str = "cv_report.json",
                 csv_name: str = "cv_report.csv") -> tuple[Path, Path]:
    """The whole report as JSON and one CSV row per metric: fold_0..fold_{K-1}, mean, sd, ci_low, ci_high, n,
    missing."""
    from medtf.data.manifest import write_json_atomic
    from medtf.evaluation.report import json_safe

    run_dir = Path(run_dir)
    json_path, csv_path = run_dir / json_name, run_dir / csv_name
    write_json_atomic(json_path, json_safe(dict(report)))
    folds = [f"fold_{k}" for k in range(report["folds"])]

    def cell(v):
        return "" if v is None else repr(float(v))

    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", *folds, "mean", "sd", "ci_low", "ci_high", "n", "missing"])
        for name, m in report["metrics"].items():
            writer.writerow([name, *(cell(v) for v in m["values"]), cell(m["mean"]), cell(m["sd"]),
                             cell(m.get("ci_low")), cell(m.get("ci_high")), m["n"],
                             " ".join(str(k) for k in m["missing"])])
    return json_path, csv_path


def _shown(name: str, task: str) -> bool:
    source, _, metric = name.partition("/")
    if source in ("scratch", "gain"):  # a transfer chain's baseline and its per-fold gain (medtf.training.cv_transfer)
        return _shown(metric, task)
    if source in ("history", "eval_extra"):
        return True
    return source == "eval" and (task != "segmentation" or metric in SHOWN_EVAL)


def _g(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def format_report(report: Mapping, all_metrics: bool = False) -> str:
    """A fixed-width table: one row per metric with every fold's value, mean ± sd, the 95% CI and n, then the
    folds that are not ok.

    Example:
        >>> print(format_report(aggregate_folds("runs/lgg-cv")))
    """
    k_total, task = report["folds"], report.get("task", "segmentation")
    head = (f"{'metric':<36s}" + "".join(f"{f'fold_{k}':>10s}" for k in range(k_total))
            + f"{'mean ± sd':>22s}{'95% CI':>22s}{'n':>4s}")
    lines = [f"cross-validation {report['run_dir']} ({task}): {k_total} folds"
             + ("" if report["complete"] else f", INCOMPLETE (folds {report['missing']} are not ok)"), head]
    for name, m in report["metrics"].items():
        if not (all_metrics or _shown(name, task)):
            continue
        cells = "".join(f"{_g(v):>10s}" for v in m["values"])
        spread = _g(m["mean"]) + " ± " + _g(m["sd"])
        ci = "-" if m.get("ci_low") is None else "[" + _g(m["ci_low"]) + ", " + _g(m["ci_high"]) + "]"
        lines.append(f"{name:<36s}{cells}{spread:>22s}{ci:>22s}{m['n']:>4d}")
    for r in report["fold_status"]:
        if r["status"] != "ok":
            lines.append(f"fold {r['fold']}: {r['status']}: {r['detail']}")
    lines.extend(f"note: {n}" for n in report.get("notes", []))
    return "\n".join(lines)
