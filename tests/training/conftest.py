"""Tiny lgg shards shared by the training tests (synth -> convert, once per session) and a tiny config."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TEST_SALT, run_medtf


@pytest.fixture(scope="session")
def lgg_tiny(tmp_path_factory) -> Path:
    """4 patients x 6 slices of 32x32 (train 2 / val 1 / test 1 patients)."""
    from medtf.synth.lgg_mri import generate_lgg_mri

    root = tmp_path_factory.mktemp("engine")
    generate_lgg_mri(root / "src", cases=4, seed=3, num_slices=6, size=32)
    out = root / "lgg"
    assert run_medtf("convert", "lgg-mri", "--input", root / "src", "--output", out, "--split", "0.5,0.25,0.25",
                     "--id-salt", TEST_SALT) == 0
    return out


def tiny_config(data_dir: Path, **train) -> dict:
    """A 2-level, 4-filter 2D U-Net config on ``data_dir``; keyword arguments go into ``train``."""
    return {
        "data": {"dir": str(data_dir), "kind": "lgg-mri", "train_split": "train", "val_split": "val",
                 "batch_size": 2, "transforms": [{"name": "random_flip", "prob": 0.5}],
                 "patch_size": None, "seed": 0},
        "model": {"name": "unet2d_small", "args": {"in_channels": 3, "base_filters": 4, "depth": 2}},
        "loss": {"name": "dice_focal", "args": {}},
        "optimizer": {"name": "adamw", "learning_rate": 1e-3, "weight_decay": 1e-4},
        "train": {"epochs": 2, "steps_per_epoch": 2, "validation_steps": None, "monitor": "val_dice",
                  "mode": "max", "precision": "float32", **train},
        "seed": 0,
    }


def history_rows(run_dir: Path) -> list[dict]:
    import csv

    with open(Path(run_dir) / "history.csv", newline="") as f:
        return list(csv.DictReader(f))
