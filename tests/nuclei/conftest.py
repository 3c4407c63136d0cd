"""Synthetic nucleus sources shared by the nuclei-he tests (made once per session, kept small)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def nuclei_source(tmp_path_factory) -> Path:
    """PanNuke-style: 8 tiles of 256 in 2 folds (3 tissues each); CoNSeP-style: 2 images of 400x400."""
    from medtf.synth.nuclei_he import generate_nuclei_he

    root = tmp_path_factory.mktemp("nuclei_source")
    generate_nuclei_he(root, cases=8, seed=3, folds=2, consep_images=2, consep_size=400)
    return root


def decoded(out: Path, split: str | None = None) -> list[dict]:
    """Every example of ``out`` (or of one split), decoded with the schema."""
    import tensorflow as tf

    from medtf.data.decoder import make_decoder
    from medtf.data.manifest import read_manifest, shard_paths
    from medtf.data.schema import NUCLEI_HE

    manifest = read_manifest(out)
    files = [str(p) for p in shard_paths(out, manifest, split)]
    dataset = tf.data.TFRecordDataset(files, compression_type=manifest["compression"] or "")
    return list(dataset.map(make_decoder(NUCLEI_HE)).as_numpy_iterator())


def check_boxes(example: dict) -> None:
    """Every box encloses exactly its instance's pixels (max exclusive) and every instance has one box."""
    import numpy as np

    inst, ids, boxes = example["instances"], example["instance_ids"], example["boxes"]
    assert inst.dtype == np.uint16 and boxes.dtype == np.float32 and boxes.shape == (ids.size, 4)
    assert example["classes"].shape == ids.shape and example["classes"].dtype == np.int32
    assert sorted(ids.tolist()) == sorted(set(np.unique(inst).tolist()) - {0})
    for k, box in zip(ids, boxes):
        ys, xs = np.nonzero(inst == k)
        assert box.tolist() == [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], k


def tiny_tile_shards(root: Path) -> Path:
    """4 synthetic PanNuke-style 64 px tiles (seed 2) converted with `medtf convert nuclei-he` into ``root/shards``
    (train 2 / val 2): the shared input of the small nucleus-model CLI tests."""
    from medtf.synth.nuclei_he import generate_nuclei_he
    from tests.conftest import TEST_SALT, run_medtf

    generate_nuclei_he(root / "src", cases=4, seed=2, tile_size=64, consep_images=0)
    shards = root / "shards"
    assert run_medtf("convert", "nuclei-he", "--input", root / "src" / "pannuke", "--output", shards,
                     "--id-salt", TEST_SALT, "--split", "0.5,0.5,0", "--quiet") == 0
    return shards
