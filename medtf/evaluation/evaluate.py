"""`evaluate_run`: a trained run directory + a data split -> per-case metrics, a summary and a table.

Per case, on the whole image/volume predicted with sliding-window inference: Dice, HD95 and mean surface distance
in mm (`medtf.metrics.surface`, spacing from the stored geometry), voxel counts and volumes; brachy-ct adds the
catheter columns (`medtf.evaluation.catheters`), lgg-mri the mean Dice over tumour slices (the issue's target is
Dice >= 0.80 on slices whose ground truth is non-empty).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from medtf.evaluation import cases as cases_lib
from medtf.evaluation import report
from medtf.evaluation.catheters import catheter_metrics
from medtf.evaluation.predict import THRESHOLD, predict_masks
from medtf.evaluation.run import build_preprocess, data_dir_of, eval_patch_size, load_run

KINDS = ("brachy-ct", "lgg-mri")


def segmentation_metrics(pred: np.ndarray, true: np.ndarray, spacing) -> dict:
    """Dice, HD95, MSD (mm), voxel counts and volumes (ml) of one case; arrays ``(z, y, x)``, spacing ``(x, y, z)``."""
    from medtf.metrics.surface import evaluate_case

    m = evaluate_case(pred, true, spacing)
    return {"dice": m["dice"], "hd95": m["hd95"], "msd": m["msd"], "voxels_pred": int(np.count_nonzero(pred)),
            "voxels_true": int(np.count_nonzero(true)), "volume_pred_ml": m["volume_pred_ml"],
            "volume_true_ml": m["volume_true_ml"]}


def slice_dice(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-slice Dice of ``(S, H, W)`` stacks (1.0 where both slices are empty)."""
    from medtf.metrics.surface import dice

    return np.array([dice(p, t) for p, t in zip(pred, true)], np.float64)


def _evaluate_brachy(model, examples, patch, overlap, bar) -> list[dict]:
    rows = []
    for case in cases_lib.volume_cases(examples):
        pred = predict_masks(model, case.image[None], eval_patch_size(patch, case.mask.shape), overlap)[0]
        rows.append({"case_id": case.case_id, "patient_id": case.patient_id,
                     **segmentation_metrics(pred, case.mask, case.spacing), **catheter_metrics(pred, case.example)})
        bar.update()
    return rows


def _evaluate_slices(model, examples, patch, overlap, extra: dict, bar) -> list[dict]:
    rows, tumour_dice = [], []
    for case in cases_lib.slice_stack_cases(examples):
        pred = predict_masks(model, case.image, eval_patch_size(patch, case.mask.shape[1:]), overlap)
        per_slice = slice_dice(pred, case.mask)
        tumour = case.mask.reshape(len(case.mask), -1).any(axis=1)
        tumour_dice.extend(per_slice[tumour].tolist())
        rows.append({"case_id": case.case_id, "n_slices": int(len(case.mask)), "n_tumour_slices": int(tumour.sum()),
                     **segmentation_metrics(pred, case.mask, case.spacing),
                     "dice_tumour_slices": float(per_slice[tumour].mean()) if tumour.any() else float("nan")})
        bar.update()
    # The target is over slices, not patients: pool every tumour slice of the split.
    extra["dice_tumour_slices"] = float(np.mean(tumour_dice)) if tumour_dice else float("nan")
    extra["n_tumour_slices"] = len(tumour_dice)
    return rows


def evaluate_run(run_dir: str | os.PathLike, split: str = "test", checkpoint: str = "best", overlap: float = 0.5,
                 output: str | os.PathLike | None = None, *, data_dir: str | os.PathLike | None = None,
                 verbose: bool = True, tta: bool = False) -> dict[str, Any]:
    """Evaluate a run's checkpoint on a split; write ``per_case.csv`` and ``summary.json`` into ``output``.

    Args:
        run_dir: run directory of `medtf.training.engine.train` (``config.yaml``, ``checkpoints/``).
        split: shard split to evaluate (``"test"``, ``"val"``, ``"fold-2"`` ...).
        checkpoint: ``"best"``, ``"last"`` or a path to a ``.keras`` file.
        overlap: sliding-window overlap in ``[0, 1)``.
        output: output folder (default ``run_dir/eval-<split>``).
        data_dir: shard folder (default: the config's ``data.dir``).
        verbose: print the summary table.
        tta: average the probabilities over every flip of the spatial axes (`medtf.inferers.flip_tta`, mapped
            back before averaging).

    Returns:
        The summary (as written to ``summary.json``) plus ``"per_case"`` (the CSV rows as dicts),
        ``"per_case_csv"`` and ``"summary_json"`` (paths).

    Example:
        >>> summary = evaluate_run("runs/lgg", split="test")
        >>> summary["metrics"]["dice"]["mean"], summary["extra"]["dice_tumour_slices"]
    """
    from medtf.data.manifest import read_manifest
    from medtf.progress import progress

    config, model, config_path, ckpt = load_run(run_dir, checkpoint)
    if tta:
        from medtf.inferers import flip_tta

        model = flip_tta(model)
    data_dir = data_dir_of(config, config_path, data_dir)  # names the path and suggests --data-dir when moved
    manifest = read_manifest(data_dir)
    kind = manifest["kind"]
    if kind not in KINDS:
        raise ValueError(f"medtf evaluate supports {KINDS}, not {kind!r}")
    output = Path(output) if output is not None else Path(run_dir) / f"eval-{split}"
    output.mkdir(parents=True, exist_ok=True)

    examples = cases_lib.iter_examples(data_dir, split, build_preprocess(config))
    notes: list[str] = []
    extra: dict[str, Any] = {}
    patch = config.data.patch_size
    # One case per volume (brachy-ct) or per patient's slice stack (lgg-mri).
    counts = manifest["splits"].get(split) or {}
    total = counts.get("num_examples" if kind == "brachy-ct" else "num_patients")
    with progress(total=total, desc=f"evaluate {split}", unit="case") as bar:
        if kind == "brachy-ct":
            rows = _evaluate_brachy(model, examples, patch, overlap, bar)
        else:
            rows = _evaluate_slices(model, examples, patch, overlap, extra, bar)
    if not rows:
        raise ValueError(f"split {split!r} of {data_dir} has no examples")

    summary = {
        "kind": kind, "split": split, "checkpoint": checkpoint, "checkpoint_path": str(ckpt),
        "config": str(config_path), "run_dir": str(run_dir), "data_dir": str(data_dir), "n_cases": len(rows),
        "overlap": overlap, "tta": bool(tta), "threshold": THRESHOLD, "patch_size": patch,
        "metrics": report.statistics(rows), "extra": extra, "notes": notes,
    }
    csv_path = report.write_per_case(rows, output / "per_case.csv")
    json_path = report.write_summary(summary, output / "summary.json")
    if verbose:
        shown = [c for c in ("dice", "hd95", "msd", "dice_tumour_slices", "catheters_found", "catheters_missed",
                             "catheters_spurious", "catheter_mean_mm", "tip_error_mm") if c in summary["metrics"]]
        print(report.format_table(summary, shown))
        for note in notes:
            print(f"note: {note}")
        print(f"wrote {csv_path} and {json_path}")
    return {**summary, "per_case": rows, "per_case_csv": str(csv_path), "summary_json": str(json_path)}
