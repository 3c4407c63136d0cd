"""Fixtures for export/predict tests: minimal run directories (config.yaml + checkpoints/*.keras, no training),
exported models and a small oblique synthetic CT series with a bright "catheter" and known patient identifiers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from medtf.io.volume import Volume

WINDOW = [{"name": "window", "center": 650, "width": 1700}]  # HU [-200, 1500] -> [0, 1]; 0.5 <=> 650 HU
PATIENT_NAME, PATIENT_ID = "EXPORTTEST^PATIENT", "PHIX98765"


def pointwise_model(spatial_dims: int, channels: int, gain: float = 20.0):
    """``sigmoid(gain * (mean over channels of x) - gain / 2)`` per voxel: probability > 0.5 <=> mean input > 0.5.

    A model whose prediction is known in closed form (independent of patches and overlap), so tests can check the
    mask voxel by voxel; far from 0.5 almost everywhere, so the threshold does not flip on float noise.
    """
    import keras

    conv = keras.layers.Conv3D if spatial_dims == 3 else keras.layers.Conv2D
    inputs = keras.Input(shape=(None,) * spatial_dims + (channels,), name="image")
    outputs = conv(1, 1, activation="sigmoid", kernel_initializer=keras.initializers.Constant(gain / channels),
                   bias_initializer=keras.initializers.Constant(-gain / 2), name="head")(inputs)
    return keras.Model(inputs, outputs, name="pointwise")


def make_run(root: Path, model, kind: str, *, name: str, preprocess=None, patch_size=None) -> Path:
    """A run directory as `medtf.training.engine.train` leaves it (config.yaml + best/last checkpoints)."""
    run = Path(root)
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    model.save(run / "checkpoints" / "best.keras")
    model.save(run / "checkpoints" / "last.keras")
    data = {"dir": str(run / "no-shards"), "kind": kind, "batch_size": 1, "patch_size": patch_size}
    if preprocess is not None:
        data["preprocess"] = preprocess
    config = {"data": data, "model": {"name": name, "args": {}}, "seed": 0}
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return run


@pytest.fixture(scope="session")
def pointwise3d_model_dir(tmp_path_factory) -> Path:
    """Exported 3D pointwise model (brachy-ct, HU window preprocessing, patch 8x16x16): the model folder."""
    from medtf.export import export_run

    root = tmp_path_factory.mktemp("pointwise3d")
    run = make_run(root / "run", pointwise_model(3, 1), "brachy-ct", name="pointwise3d", preprocess=WINDOW,
                   patch_size={"name": "random_patch", "size": [8, 16, 16]})
    return export_run(run).parent


@pytest.fixture(scope="session")
def pointwise2d_model_dir(tmp_path_factory) -> Path:
    """Exported 2D pointwise model for lgg-mri RGB slices (only the /255 scaling, whole-image patch)."""
    from medtf.export import export_run

    root = tmp_path_factory.mktemp("pointwise2d")
    run = make_run(root / "run", pointwise_model(2, 3), "lgg-mri", name="pointwise2d")
    return export_run(run).parent


def ct_volume(shape=(20, 36, 44)) -> Volume:
    """Oblique CT in HU: soft-tissue noise, one bright rod (a catheter, 1500 HU) and a 900 HU blob."""
    rng = np.random.default_rng(3)
    array = rng.integers(-120, 120, size=shape).astype(np.int16)
    array[2:18, 10:13, 20:23] = 1500
    array[5:9, 25:30, 5:11] = 900
    a = np.deg2rad(12.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return Volume(array, spacing=(0.8, 0.9, 2.5), origin=(-20.0, 15.5, 33.0), direction=tuple(rot.ravel()),
                  modality="CT")


@pytest.fixture(scope="session")
def ct_series(tmp_path_factory):
    """(series folder, written Volume) of a synthetic CT with known patient name/ID."""
    from medtf.synth.dicom_writer import write_dicom_series

    folder = tmp_path_factory.mktemp("ct") / "series"
    volume = ct_volume()
    write_dicom_series(volume, folder, patient_name=PATIENT_NAME, patient_id=PATIENT_ID, file_names="index")
    return folder, volume
