"""Catheter-level metrics of a predicted brachy-ct mask against the planned catheters stored in the shards.

The predicted mask is turned into centrelines by `medtf.rt.reconstruct.reconstruct_catheters` and matched to the
plan's catheters by `medtf.rt.catheter_match.match_catheters`.
"""

from __future__ import annotations

import numpy as np

from medtf.rt.catheter_match import match_catheters
from medtf.rt.reconstruct import ImplausibleMaskError, reconstruct_catheters

COLUMNS = {  # evaluation column -> key of CatheterMatch.summary()
    "catheters_found": "found",
    "catheters_missed": "missed",
    "catheters_spurious": "spurious",
    "catheter_mean_mm": "mean_distance_mm",
    "catheter_max_mm": "max_distance_mm",
    "tip_error_mm": "tip_error_mm",
}


def planned_catheters(example: dict) -> list[np.ndarray]:
    """The plan's catheters ``[(N_k, 3) LPS mm]`` from ``catheter_points`` split at ``catheter_offsets``.

    Example:
        >>> planned_catheters({"catheter_points": np.zeros((5, 3)), "catheter_offsets": [0, 2, 5]})[1].shape
        (3, 3)
    """
    points = np.asarray(example["catheter_points"], np.float64).reshape(-1, 3)
    offsets = np.asarray(example["catheter_offsets"], np.int64).ravel()
    return [points[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def planned_channel_numbers(example: dict) -> list[int]:
    """The plan's ``ChannelNumber`` of each catheter of a brachy-ct record (``channel_numbers``), in catheter
    order; ``1..n`` for records that do not store them (written before brachy-ct schema v2).

    Example:
        >>> planned_channel_numbers({"catheter_offsets": [0, 2, 5], "channel_numbers": [3, 9]})
        [3, 9]
    """
    numbers = [int(n) for n in np.asarray(example.get("channel_numbers", []), np.int64).ravel()]
    return numbers or list(range(1, len(np.asarray(example["catheter_offsets"]).ravel())))


def catheter_metrics(pred_mask: np.ndarray, example: dict, *, step_mm: float = 1.0, min_length_mm: float = 10.0,
                     max_mean_distance_mm: float = 3.0) -> dict:
    """`COLUMNS` of one case: reconstruct catheters from ``pred_mask (z, y, x)`` and match them to the plan.

    Args:
        pred_mask: predicted binary mask on the example's stored grid.
        example: decoded brachy-ct example (``catheter_points``, ``catheter_offsets``, spacing/origin/direction).
        step_mm, min_length_mm: centreline resampling step and shortest kept catheter.
        max_mean_distance_mm: a predicted catheter matches a planned one below this mean distance.

    A mask that cannot be a catheter segmentation (`medtf.rt.reconstruct.ImplausibleMaskError`: it floods the
    image) counts as no catheter found; its Dice already says how wrong it is.
    """
    from medtf.evaluation.cases import reference_volume

    mask = np.asarray(pred_mask).astype(np.uint8)
    try:
        predicted = reconstruct_catheters(mask, reference_volume(example, mask), step_mm=step_mm,
                                          min_length_mm=min_length_mm)
    except ImplausibleMaskError:  # a mask flooding the image: no catheter found (every planned one missed)
        predicted = []
    summary = match_catheters(predicted, planned_catheters(example),
                              max_mean_distance_mm=max_mean_distance_mm).summary()
    out = {}
    for column, key in COLUMNS.items():
        value = summary[key]
        if column.startswith("catheters_"):
            out[column] = int(value)
        else:  # distances are None/nan when nothing matched
            out[column] = float("nan") if value is None else float(value)
    return out
