"""A tiny training config for the training tests (the shards: `lgg_tiny` in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path


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
