"""Tiny real shard sets and run directories with known-output models (no training) for the evaluation tests.

The models are a single 1x1(x1) convolution + sigmoid with fixed weights, i.e. a threshold on one input channel:
``predicted mask = channel > t``. Because the model is pointwise, sliding-window blending returns exactly its
probabilities, so the tests can compute the expected masks independently from the decoded shards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import TEST_SALT, run_medtf

BRACHY_HU = 400.5      # predicted catheter: HU > 400 (half-integer: no voxel sits on the threshold)
BRACHY_WINDOW = {"name": "window", "center": 650, "width": 1700}   # HU [-200, 1500] -> [0, 1]
LGG_FLAIR = 140.5 / 255.0  # predicted tumour: FLAIR (channel 1) > 140/255
SLOPE = 200.0          # logit slope: |logit| >= 200 * 0.5/1700 ~ 0.06 for every voxel (never exactly 0.5)


def convert(kind: str, src: Path, out: Path, *extra) -> Path:
    assert run_medtf("convert", kind, "--input", src, "--output", out, "--id-salt", TEST_SALT, *extra) == 0
    return out


def decoded(out: Path, split: str) -> list[dict]:
    """Every example of a split decoded directly (no pipeline, no preprocessing), in manifest order."""
    import tensorflow as tf

    from medtf.data.decoder import make_decoder
    from medtf.data.manifest import read_manifest, shard_paths
    from medtf.data.schema import get_schema

    manifest = read_manifest(out)
    files = [str(p) for p in shard_paths(out, manifest, split)]
    ds = tf.data.TFRecordDataset(files, compression_type=manifest["compression"] or "")
    return list(ds.map(make_decoder(get_schema(manifest["kind"]))).as_numpy_iterator())


def threshold_model(spatial_dims: int, channels: int, channel: int, threshold: float):
    """``sigmoid(SLOPE * (x[..., channel] - threshold))`` as a 1x1 convolution with fixed weights."""
    import keras

    conv = (keras.layers.Conv2D if spatial_dims == 2 else keras.layers.Conv3D)(1, 1, activation="sigmoid",
                                                                                 name="threshold")
    inputs = keras.Input((None,) * spatial_dims + (channels,))
    model = keras.Model(inputs, conv(inputs))
    kernel = np.zeros((1,) * spatial_dims + (channels, 1), np.float32)
    kernel[..., channel, 0] = SLOPE
    conv.set_weights([kernel, np.array([-SLOPE * threshold], np.float32)])
    return model


def make_run(run_dir: Path, data_dir: Path, model, data: dict) -> Path:
    """A run directory as `medtf train` leaves it: config.yaml + checkpoints/{best,last}.keras."""
    (run_dir / "checkpoints").mkdir(parents=True)
    config = {"data": {"dir": str(data_dir), "batch_size": 1, **data}, "model": {"name": "fixed-threshold"},
              "loss": {"name": "dice_focal"}, "seed": 0}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    model.save(run_dir / "checkpoints" / "best.keras")
    model.save(run_dir / "checkpoints" / "last.keras")
    return run_dir


@pytest.fixture(scope="session")
def eval_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("evaluation")


@pytest.fixture(scope="session")
def brachy_data(eval_root) -> Path:
    """4 plans (train 2 / val 1 / test 1), resampled to 2 x 2 x 4 mm: (16, 48, 48) volumes."""
    from medtf.synth.brachy_ct import generate_brachy_ct

    src = eval_root / "brachy_src"
    # The old bright-needle look: the known-output models here threshold the CT (HU > 400), which the realistic
    # catheters (air lumen, plastic wall) defeat by design (tests/synth/test_brachy_realism.py).
    generate_brachy_ct(src, cases=4, seed=1, shape=(32, 96, 96), n_catheters=(2, 3), realism="bright-needles")
    return convert("brachy-ct", src, eval_root / "brachy", "--split", "0.5,0.25,0.25", "--spacing", "2,2,4",
                   "--catheter-radius-mm", "2")


@pytest.fixture(scope="session")
def lgg_data(eval_root) -> Path:
    """8 patients x 6 slices of 32x32 (train 4 / val 2 / test 2)."""
    from medtf.synth.lgg_mri import generate_lgg_mri

    src = eval_root / "lgg_src"
    generate_lgg_mri(src, cases=8, seed=2, num_slices=6, size=32)
    return convert("lgg-mri", src, eval_root / "lgg", "--split", "0.5,0.25,0.25")


@pytest.fixture(scope="session")
def brachy_run(eval_root, brachy_data) -> Path:
    # The window maps HU to [0, 1]; the model thresholds the windowed value at the window position of BRACHY_HU.
    t = (BRACHY_HU - (650 - 850)) / 1700.0
    return make_run(eval_root / "brachy_run", brachy_data, threshold_model(3, 1, 0, t),
                    {"kind": "brachy-ct", "preprocess": [BRACHY_WINDOW], "patch_size":
                     {"name": "random_patch", "size": [8, 32, 32]}})


@pytest.fixture(scope="session")
def lgg_run(eval_root, lgg_data) -> Path:
    return make_run(eval_root / "lgg_run", lgg_data, threshold_model(2, 3, 1, LGG_FLAIR),
                    {"kind": "lgg-mri", "patch_size": None})
