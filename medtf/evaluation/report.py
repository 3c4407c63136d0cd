"""Write and print evaluation results: ``per_case.csv``, ``summary.json`` and a short table."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def metric_columns(rows: Sequence[Mapping]) -> list[str]:
    """Numeric columns of the per-case rows (in first-row order), i.e. everything but ids."""
    return [k for k, v in rows[0].items() if isinstance(v, (int, float, np.integer, np.floating))
            and not isinstance(v, bool)]


def statistics(rows: Sequence[Mapping]) -> dict:
    """``{column: {mean, sd, median, n, n_nan}}`` over cases, nan ignored (`medtf.metrics.surface.summarize`).

    ``sd`` is the population standard deviation (ddof=0), ``n_nan`` counts cases where the metric is undefined
    (e.g. HD95 with an empty prediction), so failures are never averaged away silently.
    """
    from medtf.metrics.surface import summarize

    columns = metric_columns(rows)
    stats = summarize([{c: float(r[c]) for c in columns} for r in rows])
    return {c: {"mean": s["mean"], "sd": s["std"], "median": s["median"], "n": s["n"], "n_nan": s["n_nan"]}
            for c, s in stats.items()}


def write_per_case(rows: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """One CSV row per case; floats written with ``repr`` precision so the file round-trips exactly."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: repr(float(v)) if isinstance(v, (float, np.floating)) else v for k, v in row.items()})
    return path


def json_safe(value):
    """``value`` as strict JSON can hold it: NaN and ±inf become null, NumPy scalars Python numbers, tuples lists.

    Example:
        >>> json_safe({"dice": [np.float32(0.5), float("nan")], "n": np.int64(3)})
        {'dice': [0.5, None], 'n': 3}
    """
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None  # JSON has no NaN / Infinity
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_summary(summary: Mapping, path: str | os.PathLike) -> Path:
    """``summary.json`` (NaN written as null)."""
    path = Path(path)
    path.write_text(json.dumps(json_safe(dict(summary)), indent=2) + "\n", encoding="utf-8")
    return path


def format_table(summary: Mapping, columns: Sequence[str] | None = None) -> str:
    """A short fixed-width table of mean / sd / median per metric.

    Example:
        >>> print(format_table(summary))   # metric      mean      sd  median   n
    """
    metrics = summary["metrics"]
    columns = list(columns or metrics)
    lines = [f"{summary['kind']} {summary['split']} ({summary['checkpoint']} checkpoint): {summary['n_cases']} cases",
             f"{'metric':<22s}{'mean':>10s}{'sd':>10s}{'median':>10s}{'n':>5s}"]
    for c in columns:
        s = metrics[c]
        lines.append(f"{c:<22s}{s['mean']:>10.4g}{s['sd']:>10.4g}{s['median']:>10.4g}{s['n']:>5d}")
    for key, value in summary.get("extra", {}).items():
        lines.append(f"{key}: {value}")
    return "\n".join(lines)
