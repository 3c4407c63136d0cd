"""Helpers of the image-folders tests: convert through the real `medtf` entry point, read the examples back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from medtf.data.decoder import make_decoder
from medtf.data.manifest import read_manifest, shard_paths
from medtf.data.schema import IMAGE_FOLDERS
from tests.conftest import TEST_SALT, run_medtf


def convert(src, out, *extra) -> int:
    return run_medtf("convert", "image-folders", "--input", src, "--output", out, "--id-salt", TEST_SALT, *extra)


def examples(out: Path, split=None) -> list[dict]:
    manifest = read_manifest(out)
    files = [str(p) for p in shard_paths(out, manifest, split)]
    ds = tf.data.TFRecordDataset(files, compression_type=manifest["compression"] or "")
    return list(ds.map(make_decoder(IMAGE_FOLDERS)).as_numpy_iterator())


def write_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path
