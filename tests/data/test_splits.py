from collections import Counter

import numpy as np
import pytest

from medtf.data import splits
from medtf.data.schema import LGG_MRI
from medtf.data.writer import DatasetWriter, SplitLeakError, iter_record_file, write_record_file


def _patients(strata_sizes):
    return {f"p-{s}-{i:03d}": s for s, n in strata_sizes.items() for i in range(n)}


def test_parse_fractions():
    assert splits.parse_fractions("0.8,0.1,0.1") == {"train": 0.8, "val": 0.1, "test": 0.1}
    assert splits.parse_fractions("0.7,0.3") == {"train": 0.7, "val": 0.3}
    assert splits.parse_fractions("1,0,0") == {"train": 1.0}
    for bad in ("0.8,0.1", "a,b", "0.5,0.6,-0.1", "0.2,0.2,0.2,0.4"):
        with pytest.raises(ValueError):
            splits.parse_fractions(bad)


def test_split_sizes_follow_largest_remainder():
    assignment = splits.assign_splits(_patients({"a": 17}), {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    # 13.6, 1.7, 1.7 -> floors 13, 1, 1; the two left over go to the largest remainders (val, test)
    assert Counter(assignment.values()) == {"train": 13, "val": 2, "test": 2}


def test_stratification_within_one_patient_per_stratum():
    patients = _patients({"a": 30, "b": 20, "c": 10})
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    assignment = splits.assign_splits(patients, fractions, seed=3)
    for stratum, n in {"a": 30, "b": 20, "c": 10}.items():
        counts = Counter(assignment[p] for p, s in patients.items() if s == stratum)
        for split, f in fractions.items():
            assert abs(counts[split] - f * n) <= 1.0, (stratum, split, counts)


def test_seed_is_reproducible_and_matters():
    patients = _patients({"a": 40})
    fr = {"train": 0.5, "val": 0.5}
    assert splits.assign_splits(patients, fr, 1) == splits.assign_splits(dict(reversed(patients.items())), fr, 1)
    assert splits.assign_splits(patients, fr, 1) != splits.assign_splits(patients, fr, 2)


def test_folds_are_balanced_and_keep_a_test_split():
    assignment = splits.assign_folds(_patients({"a": 23, "b": 12}), folds=5, test_fraction=0.2, seed=0)
    counts = Counter(assignment.values())
    assert counts["test"] == 7
    fold_sizes = [counts[f"fold-{k}"] for k in range(5)]
    assert sum(fold_sizes) == 28 and max(fold_sizes) - min(fold_sizes) <= 1
    with pytest.raises(ValueError):
        splits.assign_folds(_patients({"a": 4}), folds=1, test_fraction=0, seed=0)


def test_numeric_strata_become_quantile_bins():
    values = {f"p{i}": float(v) for i, v in enumerate(np.linspace(0, 1, 9))}
    strata = splits.strata_from_values(values, bins=3)
    assert Counter(strata.values()) == {"q0": 3, "q1": 3, "q2": 3}
    assert splits.strata_from_values({"a": None, "b": None}) == {"a": "all", "b": "all"}


def test_writer_refuses_one_patient_in_two_splits(tmp_path):
    write_record_file(tmp_path / "case.rec", [b"record-1", b"record-2"])
    first, second = iter_record_file(tmp_path / "case.rec")
    writer = DatasetWriter(tmp_path / "out", LGG_MRI)
    writer.add("train", "p-1", first)
    writer.add("train", "p-1", second)
    with pytest.raises(SplitLeakError, match="p-1"):
        writer.add("test", "p-1", first)


def test_a_split_without_patients_is_an_error():
    with pytest.raises(splits.EmptySplitError, match=r"val, test .*1 patient") as info:
        splits.assign_splits(_patients({"a": 1}), {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    assert info.value.empty == ["val", "test"] and info.value.num_patients == 1
    with pytest.raises(splits.EmptySplitError, match="test") as info:  # 6 x (0.8, 0.1, 0.1) -> 5, 1, 0
        splits.assign_splits(_patients({"a": 6}), {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    assert info.value.empty == ["test"]
    with pytest.raises(splits.EmptySplitError, match="fold-2") as info:
        splits.assign_folds(_patients({"a": 2}), folds=3, test_fraction=0, seed=0)
    assert info.value.empty == ["fold-2"]
    assert set(splits.assign_splits(_patients({"a": 1}), {"train": 1.0}, seed=0).values()) == {"train"}
