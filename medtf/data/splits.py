"""Patient-level, optionally stratified, train/val/test splits and K folds.

Splitting happens on patients, never on examples, so no patient can appear in two splits. Patients are ordered by
stratum and, within a stratum, by a seeded shuffle; they are then dealt one by one to the split that is furthest
below its target share (a quota sampler). Every stratum is therefore spread over the splits in proportion, and
the split sizes equal the largest-remainder rounding of ``fraction * num_patients``. A split (or fold) asked for
with a non-zero fraction that this rounding leaves without a patient is an error (`EmptySplitError`), never a
silently missing split.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np

SPLIT_NAMES = ("train", "val", "test")


class EmptySplitError(ValueError):
    """A requested split (or fold) would get no patient; ``empty`` names them, ``num_patients`` says how many
    patients there were to deal."""

    def __init__(self, empty: list[str], num_patients: int, fractions: Mapping[str, float]):
        self.empty, self.num_patients, self.fractions = list(empty), num_patients, dict(fractions)
        shares = ", ".join(f"{k} {v:g}" for k, v in fractions.items())
        super().__init__(f"split(s) {', '.join(empty)} would get no patient: {num_patients} "
                         f"patient{'s' if num_patients != 1 else ''} dealt by fractions {shares}")


def parse_fractions(text: str) -> dict[str, float]:
    """``"0.8,0.1,0.1"`` -> ``{"train": 0.8, "val": 0.1, "test": 0.1}`` (zero-fraction splits dropped)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--split expects comma-separated numbers like 0.8,0.1,0.1, got {text!r}") from None
    if not 1 <= len(values) <= 3 or any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"--split needs 1 to 3 non-negative fractions summing to 1 (train,val,test), got {text!r}")
    return {name: v for name, v in zip(SPLIT_NAMES, values) if v > 0}


def _largest_remainder(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    raw = {k: n * f for k, f in fractions.items()}
    counts = {k: int(np.floor(v)) for k, v in raw.items()}
    order = sorted(raw, key=lambda k: (-(raw[k] - counts[k]), list(fractions).index(k)))
    for k in order[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def _stratified_order(patients: Mapping[str, str], seed: int) -> list[str]:
    order = []
    for stratum in sorted({str(s) for s in patients.values()}):
        members = sorted(p for p, s in patients.items() if str(s) == stratum)
        rng = np.random.default_rng([seed, zlib.crc32(stratum.encode())])
        order.extend(members[i] for i in rng.permutation(len(members)))
    return order


def assign_splits(patients: Mapping[str, str], fractions: Mapping[str, float], seed: int) -> dict[str, str]:
    """Map each patient (hashed id -> stratum label) to a split name."""
    if not patients:
        return {}
    total = sum(fractions.values())
    fractions = {k: v / total for k, v in fractions.items()}
    quota = _largest_remainder(len(patients), fractions)
    empty = [k for k in fractions if fractions[k] > 0 and quota[k] == 0]
    if empty:
        raise EmptySplitError(empty, len(patients), fractions)
    assigned = {k: 0 for k in fractions}
    result = {}
    for i, patient in enumerate(_stratified_order(patients, seed)):
        open_splits = [k for k in fractions if assigned[k] < quota[k]]
        # Deficit of each split against its share of the first i+1 patients; ties go to the earlier split.
        best = max(open_splits, key=lambda k: (fractions[k] * (i + 1) - assigned[k], -list(fractions).index(k)))
        assigned[best] += 1
        result[patient] = best
    return result


def assign_folds(patients: Mapping[str, str], folds: int, test_fraction: float, seed: int) -> dict[str, str]:
    """K-fold assignment: an optional held-out ``test`` split, the rest dealt into ``fold-0 .. fold-{K-1}``."""
    if folds < 2:
        raise ValueError(f"--folds needs at least 2 folds, got {folds}")
    fractions = {f"fold-{k}": (1.0 - test_fraction) / folds for k in range(folds)}
    if test_fraction > 0:
        fractions["test"] = test_fraction
    return assign_splits(patients, fractions, seed)


def strata_from_values(values: Mapping[str, float | str | None], bins: int = 3) -> dict[str, str]:
    """Per-patient stratum labels: strings are used as they are, numbers are cut into quantile bins."""
    numeric = {p: v for p, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if not numeric:
        return {p: "all" if v is None else str(v) for p, v in values.items()}
    distinct = sorted(set(numeric.values()))
    if len(distinct) <= bins:
        return {p: f"{v:g}" for p, v in numeric.items()}
    edges = np.quantile(list(numeric.values()), np.linspace(0, 1, bins + 1)[1:-1])
    return {p: f"q{int(np.searchsorted(edges, v, side='right'))}" for p, v in numeric.items()}
