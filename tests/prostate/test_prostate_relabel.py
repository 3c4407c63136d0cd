"""benchmarks/quality_prostate.relabel_training_shards (the shuffled-label control's data): labels permuted
within train and val only, nothing else of the shards changes, so the control's copy carries no per-class trace
(same images, ids, patients per split, class counts) and the test split keeps its true labels."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from medtf.data.manifest import read_manifest
from tests.prostate.conftest import examples

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import quality_prostate as qp  # noqa: E402
from _shards import split_labels  # noqa: E402


def _by_split(out: Path) -> dict[str, list[dict]]:
    manifest = read_manifest(out)
    names = {s["file"]: split for split, entry in manifest["splits"].items() for s in entry["shards"]}
    rows = examples(out)  # manifest shard order, as the splits list their files
    files = [f for split in manifest["splits"] for f in (s["file"] for s in manifest["splits"][split]["shards"])]
    assert len(set(names[f] for f in files)) == len(manifest["splits"])
    split_of = []
    for f in files:
        split_of += [names[f]] * next(s["num_examples"] for e in manifest["splits"].values() for s in e["shards"]
                                      if s["file"] == f)
    grouped: dict[str, list[dict]] = {}
    for split, row in zip(split_of, rows):
        grouped.setdefault(split, []).append(row)
    return grouped


def test_relabelled_copy_permutes_train_and_val_labels_only(prostate_out, tmp_path):
    out = tmp_path / "shuffled"
    moved = qp.relabel_training_shards(prostate_out, out, seed=3)
    before, after = _by_split(prostate_out), _by_split(out)
    assert set(before) == set(after) == {"train", "val", "test"}
    for split in before:
        a, b = before[split], after[split]
        assert [r["example_id"] for r in a] == [r["example_id"] for r in b]
        assert [r["patient_id"] for r in a] == [r["patient_id"] for r in b]
        for ra, rb in zip(a, b):  # every feature but the label is the conversion's, bit for bit
            for key in ra:
                if key != "label":
                    np.testing.assert_array_equal(ra[key], rb[key], err_msg=f"{split} {key}")
        la, lb = np.array([int(r["label"]) for r in a]), np.array([int(r["label"]) for r in b])
        assert sorted(la) == sorted(lb)  # class counts (and shares seen in training) unchanged
        if split == "test":
            np.testing.assert_array_equal(la, lb)
        else:
            assert moved["splits"][split]["labels_changed"] == int((la != lb).sum())
            assert moved["splits"][split]["positives"] == int((la == 1).sum())
    assert moved["labels_changed"] > 0
    m0, m1 = read_manifest(prostate_out), read_manifest(out)
    for split in m0["splits"]:
        assert m0["splits"][split].get("patients") == m1["splits"][split].get("patients")
        assert m0["splits"][split]["num_examples"] == m1["splits"][split]["num_examples"]
    np.testing.assert_array_equal(split_labels(out, "test"), split_labels(prostate_out, "test"))


def test_relabelling_is_seeded(prostate_out, tmp_path):
    a = qp.relabel_training_shards(prostate_out, tmp_path / "a", seed=3)
    b = qp.relabel_training_shards(prostate_out, tmp_path / "b", seed=3)
    assert a == b
    np.testing.assert_array_equal(split_labels(tmp_path / "a", "train"), split_labels(tmp_path / "b", "train"))
