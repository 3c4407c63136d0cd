"""Segmentation metrics: streaming Keras metrics (:mod:`.segmentation`) and per-case surface metrics
(:mod:`.surface`, NumPy/SciPy, physical spacing)."""

from medtf.metrics.segmentation import (
    DiceScore,
    IoUScore,
    PerClassScore,
    SegF1,
    SegPrecision,
    SegRecall,
    SegSpecificity,
)
from medtf.metrics.surface import dice, evaluate_case, hausdorff95, mean_surface_distance, summarize

__all__ = ["DiceScore", "IoUScore", "PerClassScore", "SegF1", "SegPrecision", "SegRecall", "SegSpecificity", "dice",
           "evaluate_case", "hausdorff95", "mean_surface_distance", "summarize"]
