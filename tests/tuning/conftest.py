"""A tiny experiment with a `tune` section (the shards: `lgg_tiny` in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path


def tune_config(data_dir: Path, **tune) -> dict:
    """A 2-level U-Net, 1 epoch x 1 step, searching the learning rate and the filter count."""
    return {
        "data": {"dir": str(data_dir), "kind": "lgg-mri", "train_split": "train", "val_split": "val",
                 "batch_size": 2, "transforms": [], "patch_size": None, "seed": 0},
        "model": {"name": "unet2d_small", "args": {"in_channels": 3, "base_filters": 4, "depth": 2}},
        "loss": {"name": "dice_focal", "args": {}},
        "optimizer": {"name": "adamw", "learning_rate": 1e-3, "weight_decay": 1e-4},
        "train": {"epochs": 1, "steps_per_epoch": 1, "validation_steps": 1, "monitor": "val_dice", "mode": "max",
                  "precision": "float32", "verbose": 0, "log_every_n_steps": 0, "image_panels": False},
        "seed": 0,
        "tune": {"tuner": "random", "max_trials": 3, "seed": 0,
                 "space": {"optimizer.learning_rate": {"type": "float", "min": 1e-4, "max": 1e-1,
                                                       "sampling": "log"},
                           "model.args.base_filters": [2, 4, 8]},
                 **tune},
    }
