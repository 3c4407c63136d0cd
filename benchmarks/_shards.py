"""Copy a shard folder and rewrite the examples of some splits: the shared step of the quality benchmarks'
label-permutation controls (``quality_prostate.relabel_training_shards``; ``quality_clip.shuffle_pairs`` is a near
copy that moves reports with their labels).

The copy keeps the manifest's split assignment, shard files and order; only the rewritten splits' shard entries
(``num_examples``, ``sha256``, ``bytes``) are refreshed, so the copy reads exactly like a conversion.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np


def rewrite_splits(shards: Path, out: Path, splits, edit: Callable[[int, str, list], dict]) -> dict:
    """Copy ``shards`` to ``out`` (replacing it) and, for each of ``splits`` in order, call
    ``edit(index, split, examples)`` on the split's ``tf.train.Example`` list (manifest order, edited in place);
    the edited examples are written back. Returns ``{split: edit's return value}``."""
    import tensorflow as tf

    from medtf.data.manifest import read_manifest, write_manifest
    from medtf.data.shards import write_shard

    shards, out = Path(shards), Path(out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(shards, out)
    manifest = read_manifest(out)
    compression = manifest.get("compression") or ""
    done = {}
    for n, split in enumerate(splits):
        if split not in manifest["splits"]:
            raise KeyError(f"{shards}: no split {split!r} in the manifest (splits: {sorted(manifest['splits'])})")
        entries = manifest["splits"][split]["shards"]
        records = [[tf.train.Example.FromString(r.numpy()) for r in
                    tf.data.TFRecordDataset(str(out / s["file"]), compression_type=compression)] for s in entries]
        done[split] = edit(n, split, [ex for shard in records for ex in shard])
        for entry, shard in zip(entries, records):
            entry.update(write_shard(out / entry["file"], [ex.SerializeToString() for ex in shard],
                                     manifest.get("compression")))
    write_manifest(out, manifest)
    return done


def split_labels(shards: Path, split: str, key: str = "label") -> np.ndarray:
    """The integer ``key`` of every example of ``split``, in manifest order (raw records, no parsing)."""
    import tensorflow as tf

    from medtf.data.manifest import read_manifest

    manifest = read_manifest(shards)
    compression = manifest.get("compression") or ""
    return np.array([tf.train.Example.FromString(r.numpy()).features.feature[key].int64_list.value[0]
                     for s in manifest["splits"][split]["shards"]
                     for r in tf.data.TFRecordDataset(str(Path(shards) / s["file"]), compression_type=compression)],
                    dtype=np.int64)
