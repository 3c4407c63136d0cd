"""Match reconstructed catheters to planned ones and measure their geometric agreement (mm).

Distance between two catheters: both directions of exact point-to-polyline distance. Each curve is resampled
every `SAMPLE_STEP_MM` along its arc (so the mean is an arc-length average, independent of vertex density), every
sample's distance to the *other* polyline's segments is computed exactly, and

* ``mean_mm`` = the average of the two directed means (prediction -> plan and plan -> prediction), so a catheter
  found only half way is penalised as well as one that runs off course;
* ``max_mm`` = the larger directed maximum (the symmetric Hausdorff distance between the two curves);
* ``tip_mm`` = distance between the first points (tips) of the predicted and the planned catheter.

Matching is one-to-one (Hungarian, `scipy.optimize.linear_sum_assignment`) on ``mean_mm``; pairs above
``max_mean_distance_mm`` are not matched. Unmatched planned catheters are *missed*, unmatched predictions *spurious*.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from medtf.rt.polyline import resample_polyline

SAMPLE_STEP_MM = 0.5


def point_to_polyline_distance(points: np.ndarray, polyline: np.ndarray) -> np.ndarray:
    """Exact distance (mm) from each of ``points`` ``(N, 3)`` to the segments of ``polyline`` ``(M, 3)``.

    Example:
        >>> point_to_polyline_distance(np.array([[1.0, 2.0, 0.0]]), np.array([[0.0, 0, 0], [4.0, 0, 0]]))
        array([2.])
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    line = np.asarray(polyline, dtype=np.float64).reshape(-1, 3)
    if len(line) == 1:
        return np.linalg.norm(p - line[0], axis=1)
    a, ab = line[:-1], np.diff(line, axis=0)  # (S, 3)
    len2 = np.maximum((ab * ab).sum(1), 1e-300)
    ap = p[:, None, :] - a[None]  # (N, S, 3)
    t = np.clip((ap * ab[None]).sum(-1) / len2, 0.0, 1.0)
    return np.sqrt(((ap - t[..., None] * ab[None]) ** 2).sum(-1).min(axis=1))


def curve_distances(predicted: np.ndarray, planned: np.ndarray) -> tuple[float, float]:
    """``(mean_mm, max_mm)`` between two polylines, symmetric as described in the module docstring."""
    pred, plan = np.asarray(predicted, np.float64), np.asarray(planned, np.float64)
    d_pp = point_to_polyline_distance(resample_polyline(pred, SAMPLE_STEP_MM), plan)
    d_qp = point_to_polyline_distance(resample_polyline(plan, SAMPLE_STEP_MM), pred)
    return 0.5 * float(d_pp.mean() + d_qp.mean()), float(max(d_pp.max(), d_qp.max()))


@dataclasses.dataclass
class CatheterMatch:
    """Result of `match_catheters`.

    Args:
        pairs: ``(pred_index, plan_index, mean_mm, max_mm, tip_mm)`` per matched catheter, by plan index.
        missed: planned indices without a match.
        spurious: predicted indices without a match.
    """

    pairs: list[tuple[int, int, float, float, float]]
    missed: list[int]
    spurious: list[int]

    def summary(self) -> dict:
        """Counts and distances (means over matched pairs; NaN when nothing matched)."""
        arr = np.array([p[2:] for p in self.pairs], dtype=np.float64).reshape(-1, 3)
        nan = float("nan")
        return {
            "found": len(self.pairs),
            "missed": len(self.missed),
            "spurious": len(self.spurious),
            "mean_distance_mm": float(arr[:, 0].mean()) if len(arr) else nan,
            "max_distance_mm": float(arr[:, 1].max()) if len(arr) else nan,
            "tip_error_mm": float(arr[:, 2].mean()) if len(arr) else nan,
            "tip_error_max_mm": float(arr[:, 2].max()) if len(arr) else nan,
        }

    def channel_numbers(self, planned_numbers: Sequence[int]) -> list[int]:
        """A ``ChannelNumber`` per predicted catheter, in prediction order: a matched catheter gets its planned
        catheter's number, an unmatched (spurious) one the next numbers above all planned ones.

        Args:
            planned_numbers: the plan's ChannelNumber per planned catheter (``Catheter.channel_number``, or a
                brachy-ct record's ``channel_numbers``), in the order given to `match_catheters`.

        Example:
            >>> m = match_catheters(reconstructed, plan.polylines)
            >>> write_reconstructed_plan(path, reconstructed, reference_ct=hdr,
            ...                          channel_numbers=m.channel_numbers([c.channel_number for c in plan.catheters]))
        """
        planned = [int(n) for n in planned_numbers]
        n_predicted = len(self.pairs) + len(self.spurious)
        numbers: list[int | None] = [None] * n_predicted
        for pred, plan, *_ in self.pairs:
            numbers[pred] = planned[plan]
        next_free = max(planned, default=0) + 1
        for i in range(n_predicted):
            if numbers[i] is None:
                numbers[i], next_free = next_free, next_free + 1
        return numbers


def match_catheters(
    predicted: Sequence[np.ndarray], planned: Sequence[np.ndarray], *, max_mean_distance_mm: float = 3.0
) -> CatheterMatch:
    """One-to-one matching of predicted to planned catheters (LPS mm polylines, tip first).

    Args:
        predicted: reconstructed centrelines, e.g. from `medtf.rt.reconstruct.reconstruct_catheters`.
        planned: reference centrelines, e.g. ``read_brachy_plan(path).polylines``.
        max_mean_distance_mm: pairs whose symmetric mean distance exceeds this are never matched.

    Example:
        >>> m = match_catheters(reconstruct_catheters(mask, ct), plan.polylines)
        >>> m.summary()["found"], m.missed
    """
    n_pred, n_plan = len(predicted), len(planned)
    mean = np.full((n_pred, n_plan), np.inf)
    worst = np.full((n_pred, n_plan), np.inf)
    for i, pred in enumerate(predicted):
        for j, plan in enumerate(planned):
            mean[i, j], worst[i, j] = curve_distances(pred, plan)
    pairs = []
    if n_pred and n_plan:
        allowed = mean <= max_mean_distance_mm
        # Disallowed pairs get a cost above any allowed total, so they are only chosen when nothing else fits.
        big = 1.0 + (mean[allowed].sum() if allowed.any() else 0.0)
        rows, cols = linear_sum_assignment(np.where(allowed, mean, big))
        for i, j in zip(rows, cols):
            if allowed[i, j]:
                tip = float(np.linalg.norm(np.asarray(predicted[i], float)[0] - np.asarray(planned[j], float)[0]))
                pairs.append((int(i), int(j), float(mean[i, j]), float(worst[i, j]), tip))
    pairs.sort(key=lambda p: p[1])
    matched_pred, matched_plan = {p[0] for p in pairs}, {p[1] for p in pairs}
    return CatheterMatch(
        pairs=pairs,
        missed=[j for j in range(n_plan) if j not in matched_plan],
        spurious=[i for i in range(n_pred) if i not in matched_pred],
    )


__all__ = ["CatheterMatch", "curve_distances", "match_catheters", "point_to_polyline_distance"]
