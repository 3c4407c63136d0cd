"""Evaluation of trained runs on whole images/volumes: per-case metrics in mm, summaries, catheter matching.

Example:
    >>> from medtf.evaluation import evaluate_run
    >>> summary = evaluate_run("runs/brachy", split="test", checkpoint="best", overlap=0.5)
"""

from medtf.evaluation.evaluate import evaluate_run, segmentation_metrics, slice_dice

__all__ = ["evaluate_run", "segmentation_metrics", "slice_dice"]
