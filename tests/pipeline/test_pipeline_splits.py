"""Split and fold selection from the manifest, drop_remainder, caching, and streaming by default."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from medtf.data import fold_splits, make_dataset
from medtf.data.manifest import ManifestError, read_manifest


def _patients(ds) -> set[str]:
    return {p.decode() for batch in ds for p in batch["patient_id"].numpy()}


def test_folds_select_exactly_the_manifest_patients(lgg_shards):
    manifest = read_manifest(lgg_shards)
    splits = manifest["splits"]
    for folds in ([1], [0, 2]):
        ds = make_dataset(lgg_shards, folds=folds, batch_size=4, training=False, output="dict")
        expected = {p for k in folds for p in splits[f"fold-{k}"]["patients"]}
        assert _patients(ds) == expected
        assert sum(int(b["image"].shape[0]) for b in ds) == sum(splits[f"fold-{k}"]["num_examples"] for k in folds)
    assert _patients(make_dataset(lgg_shards, "test", batch_size=4, training=False, output="dict")) == set(
        splits["test"]["patients"])


def test_fold_splits():
    manifest = {"splits": {"fold-0": {}, "fold-1": {}, "fold-2": {}, "test": {}}}
    assert fold_splits(manifest, 1) == (["fold-0", "fold-2"], "fold-1")
    assert fold_splits(manifest, 0) == (["fold-1", "fold-2"], "fold-0")
    with pytest.raises(ValueError):
        fold_splits(manifest, 3)
    with pytest.raises(ManifestError):
        fold_splits({"splits": {"train": {}, "val": {}}}, 0)


def test_unknown_split_or_fold_raises(lgg_shards, brachy_shards):
    with pytest.raises(ManifestError, match="available"):
        make_dataset(lgg_shards, "train", batch_size=2, training=False)   # a K-fold manifest has no "train"
    with pytest.raises(ManifestError, match="fold-7"):
        make_dataset(lgg_shards, folds=[7], batch_size=2, training=False)
    with pytest.raises(ManifestError, match="no folds"):
        make_dataset(brachy_shards, folds=[0], batch_size=2, training=False)
    with pytest.raises(ValueError, match="not both"):
        make_dataset(lgg_shards, "test", folds=[0], batch_size=2, training=False)


def test_drop_remainder_in_training_only(lgg_shards):
    n = read_manifest(lgg_shards)["splits"]["fold-0"]["num_examples"]
    assert n % 4 != 0
    evaluation = make_dataset(lgg_shards, "fold-0", batch_size=4, training=False)
    assert [int(x.shape[0]) for x, _ in evaluation] == [4] * (n // 4) + [n % 4]
    training = make_dataset(lgg_shards, "fold-0", batch_size=4, training=True, repeat=False, seed=0)
    assert [int(x.shape[0]) for x, _ in training] == [4] * (n // 4)
    assert training.element_spec[0].shape[0] == 4   # static batch dimension for Keras/XLA


def _noise(example, seed):
    noise = tf.random.stateless_uniform(tf.shape(example["image"]), seed)
    return {**example, "image": example["image"] + noise}


def test_memory_cache_equals_streaming_over_the_first_epoch(lgg_shards):
    n = sum(read_manifest(lgg_shards)["splits"][f"fold-{k}"]["num_examples"] for k in (0, 1))
    kwargs = dict(folds=[0, 1], batch_size=3, training=True, seed=5, transforms=_noise, output="dict")
    # n batches of 3 = exactly three epochs, whatever n is (the sets below are compared over whole epochs).
    plain = list(make_dataset(lgg_shards, **kwargs).take(n))
    cached = list(make_dataset(lgg_shards, cache="memory", **kwargs).take(n))
    for a, b in zip(plain[: n // 3], cached[: n // 3]):
        assert a["example_id"].numpy().tolist() == b["example_id"].numpy().tolist()
        np.testing.assert_array_equal(a["image"], b["image"])
    # Later epochs: the same examples with fresh augmentation seeds (the stream reshuffles its files per epoch,
    # the cache replays the first epoch's file order, so only the sets are compared).
    ids = [sorted(i for b in part for i in b["example_id"].numpy().tolist()) for part in (plain, cached)]
    assert ids[0] == ids[1]
    epoch1 = {i: x for b in cached[: n // 3] for i, x in zip(b["example_id"].numpy(), b["image"].numpy())}
    epoch2 = {i: x for b in cached[n // 3:] for i, x in zip(b["example_id"].numpy(), b["image"].numpy())}
    assert all(not np.array_equal(epoch1[i], epoch2[i]) for i in epoch1.keys() & epoch2.keys())


def _ops(ds) -> set[str]:
    graph = tf.compat.v1.GraphDef.FromString(ds._as_serialized_graph().numpy())
    return {node.op for node in graph.node} | {n.op for f in graph.library.function for n in f.node_def}


def test_streams_without_cache_by_default(lgg_shards, tmp_path):
    ops = _ops(make_dataset(lgg_shards, folds=[0], batch_size=2, training=True))
    assert "TFRecordDataset" in ops or "TFRecordDatasetV2" in ops
    assert not any("Cache" in op for op in ops)
    assert any("Cache" in op for op in _ops(make_dataset(lgg_shards, folds=[0], batch_size=2, training=True,
                                                         cache="memory")))
    file_cached = make_dataset(lgg_shards, "test", batch_size=64, training=False, cache=tmp_path / "c")
    assert len(list(file_cached)) == 1 and list(tmp_path.glob("c*"))


def test_importing_medtf_data_does_not_import_tensorflow():
    code = ("import sys, medtf.data; assert 'tensorflow' not in sys.modules; "
            "from medtf.data import make_dataset; assert 'tensorflow' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
