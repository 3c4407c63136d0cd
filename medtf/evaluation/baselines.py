"""Trivial baselines a segmentation model must beat: intensity thresholds fitted on the training patients.

- **brachy-ct**: ``HU > t``, then 26-connected components smaller than ``min_voxels`` dropped; ``(t, min_voxels)``
  chosen on the training patients by mean Dice. Only the bright polarity is tried (wires, needles, metal).
- **lgg-mri**: FLAIR (channel 1) above a per-slice level, either ``fraction * max`` or a percentile of the slice;
  the rule and its value are chosen on the training patients' tumour slices by mean per-slice Dice, the metric
  `evaluate_run` reports as ``dice_tumour_slices``.
- **prostate-mpmri** (classification): one feature, the mean ADC inside the lesion ROI (a disc of ``radius_mm``
  around the crop centre, where the converter puts the finding), and a logistic regression on it fitted on the
  training findings; the VGG-ELU must beat it.
- **nuclei-he** (nucleus classification): per nucleus its mean R, G, B and log area (from the instance map), a
  multinomial logistic regression on the standardised features fitted on the training nuclei; the nucleus ViT must
  beat it by more than colour and size can explain.

Example:
    >>> rule = fit_hu_threshold(train_cases)                      # [(hu (z, y, x), mask (z, y, x) bool), ...]
    >>> pred = hu_threshold_mask(test_hu, **rule["params"])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medtf.metrics.surface import dice

HU_THRESHOLDS = tuple(range(0, 2001, 100))
MIN_VOXELS = (1, 5, 20, 50)
FLAIR_FRACTIONS = tuple(np.round(np.arange(0.3, 0.96, 0.05), 2))
FLAIR_PERCENTILES = (80.0, 85.0, 90.0, 93.0, 95.0, 97.0, 98.0, 99.0, 99.5)


def hu_threshold_mask(hu: np.ndarray, threshold: float, min_voxels: int = 1) -> np.ndarray:
    """``hu > threshold`` with 26-connected components of fewer than ``min_voxels`` voxels removed."""
    mask = np.asarray(hu) > threshold
    if min_voxels <= 1 or not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def fit_hu_threshold(cases: Sequence[tuple[np.ndarray, np.ndarray]], thresholds=HU_THRESHOLDS,
                     min_voxels=MIN_VOXELS) -> dict:
    """Best ``(threshold, min_voxels)`` by mean Dice over ``cases`` of ``(hu, mask)``; returns the rule and its
    training Dice."""
    best = None
    for t in thresholds:
        raw = [np.asarray(hu) > t for hu, _ in cases]
        if not any(r.any() for r in raw):
            continue
        for m in min_voxels:
            scores = [dice(hu_threshold_mask(hu, t, m), mask) for hu, mask in cases]
            score = float(np.mean(scores))
            if best is None or score > best["train_dice"]:
                best = {"params": {"threshold": float(t), "min_voxels": int(m)}, "train_dice": score}
    if best is None:
        raise ValueError("no threshold marks any voxel of the training cases")
    return best


def flair_threshold_mask(slices: np.ndarray, rule: str, value: float, channel: int = 1) -> np.ndarray:
    """Masks ``(S, H, W)`` of ``slices (S, H, W, C)``: channel above ``value * max`` (``rule="fraction"``) or above
    its ``value``-th percentile (``rule="percentile"``), per slice."""
    x = np.asarray(slices, np.float64)[..., channel]
    flat = x.reshape(len(x), -1)
    if rule == "fraction":
        level = value * flat.max(axis=1)
    elif rule == "percentile":
        level = np.percentile(flat, value, axis=1)
    else:
        raise ValueError(f"rule must be 'fraction' or 'percentile', got {rule!r}")
    return x > level[:, None, None]


def tumour_slice_dice(pred: np.ndarray, mask: np.ndarray) -> list[float]:
    """Per-slice Dice of the slices whose ``mask`` has tumour (``(S, H, W)`` stacks)."""
    return [dice(p, m) for p, m in zip(pred, mask) if np.any(m)]


def fit_flair_threshold(cases: Sequence[tuple[np.ndarray, np.ndarray]], channel: int = 1) -> dict:
    """Best FLAIR rule over ``cases`` of ``(slices (S, H, W, C), mask (S, H, W))`` by mean tumour-slice Dice."""
    candidates = [("fraction", float(v)) for v in FLAIR_FRACTIONS] + [("percentile", v) for v in FLAIR_PERCENTILES]
    best = None
    for rule, value in candidates:
        scores = []
        for slices, mask in cases:
            scores += tumour_slice_dice(flair_threshold_mask(slices, rule, value, channel), mask)
        if not scores:
            raise ValueError("the training cases have no tumour slice")
        score = float(np.mean(scores))
        if best is None or score > best["train_dice"]:
            best = {"params": {"rule": rule, "value": value, "channel": channel}, "train_dice": score}
    return best


def lesion_roi_mean(image: np.ndarray, spacing_mm, channel: int = 2, radius_mm: float = 3.0) -> float:
    """Mean of ``image (H, W, C)[..., channel]`` (prostate-mpmri: 2 = ADC) over the pixels whose centres lie within
    ``radius_mm`` of the crop centre; ``spacing_mm`` is the pixel size ``(x, y)`` (the shards' pixel_spacing)."""
    x = np.asarray(image, np.float64)[..., channel]
    h, w = x.shape
    sx, sy = (float(v) for v in np.asarray(spacing_mm, np.float64).ravel()[:2])
    yy, xx = np.mgrid[:h, :w]
    inside = (((yy - (h - 1) / 2) * sy) ** 2 + ((xx - (w - 1) / 2) * sx) ** 2) <= radius_mm ** 2
    if not inside.any():
        raise ValueError(f"radius_mm={radius_mm} holds no pixel centre at spacing {sx, sy} mm")
    return float(x[inside].mean())


def fit_logistic_1d(x, y, l2: float = 1e-4, iterations: int = 100) -> dict:
    """Logistic regression ``p = sigmoid(a * z + b)`` on one standardised feature ``z = (x - mean) / sd`` by Newton's
    method, with a small L2 penalty on ``a`` (a finite answer on separable data). Returns
    ``{"a", "b", "mean", "sd"}`` for `predict_logistic_1d`."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if len(x) != len(y) or len(np.unique(y)) != 2:
        raise ValueError("fit_logistic_1d needs as many labels as values, and both classes")
    mean, sd = float(x.mean()), float(x.std()) or 1.0
    design = np.stack([(x - mean) / sd, np.ones_like(x)], axis=1)
    theta, penalty = np.zeros(2), np.diag([l2 * len(x), 0.0])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-design @ theta))
        grad = design.T @ (p - y) + penalty @ theta
        hess = design.T @ (design * (p * (1 - p))[:, None]) + penalty + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return {"a": float(theta[0]), "b": float(theta[1]), "mean": mean, "sd": sd}


def predict_logistic_1d(x, a: float, b: float, mean: float, sd: float) -> np.ndarray:
    """Probabilities of the model `fit_logistic_1d` returned."""
    z = (np.asarray(x, np.float64) - mean) / sd
    return 1.0 / (1.0 + np.exp(-(a * z + b)))


def nucleus_colour_area(image: np.ndarray, instances: np.ndarray, instance_ids) -> np.ndarray:
    """``(N, 4)`` per nucleus of ``instance_ids``: mean R, G, B of its pixels in ``image (H, W, 3)`` and log of its
    pixel count in ``instances (H, W)``; a nucleus without pixels (cropped away) gets NaN."""
    image, inst = np.asarray(image, np.float64), np.asarray(instances).ravel()
    ids = np.asarray(instance_ids, np.int64).ravel()
    top = int(max(inst.max(initial=0), ids.max(initial=0))) + 1
    area = np.bincount(inst, minlength=top).astype(np.float64)
    sums = np.stack([np.bincount(inst, weights=image[..., c].ravel(), minlength=top) for c in range(3)], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums[ids] / area[ids, None]
        log_area = np.where(area[ids] > 0, np.log(area[ids]), np.nan)
    return np.concatenate([mean, log_area[:, None]], axis=1)


def fit_softmax_regression(x, y, c: float = 1.0):
    """Multinomial logistic regression (scikit-learn, L-BFGS, L2 ``c``) on standardised ``x (N, F)``; returns the
    fitted pipeline (``predict`` / ``predict_proba``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = np.asarray(x, np.float64), np.asarray(y).ravel()
    if len(x) != len(y) or len(np.unique(y)) < 2 or not np.isfinite(x).all():
        raise ValueError("fit_softmax_regression needs finite features, one label per row and two classes or more")
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(x, y)


__all__ = ["fit_flair_threshold", "fit_hu_threshold", "fit_logistic_1d", "fit_softmax_regression",
           "flair_threshold_mask", "hu_threshold_mask", "lesion_roi_mean", "nucleus_colour_area",
           "predict_logistic_1d", "tumour_slice_dice"]
