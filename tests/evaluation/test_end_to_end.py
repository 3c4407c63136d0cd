"""`medtf train` run directory -> `medtf evaluate`: the real checkpoint format (registered medtf model classes)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from medtf.evaluation import evaluate_run
from medtf.metrics.surface import evaluate_case
from tests.evaluation.conftest import decoded
from tests.evaluation.test_evaluate import read_csv


@pytest.mark.slow
def test_trained_unet_run_dir_is_evaluated_like_a_direct_prediction(lgg_data, tmp_path):
    import keras

    import medtf.models  # noqa: F401  (registers UNet for load_model)
    from medtf.training.engine import train

    config = {
        "data": {"dir": str(lgg_data), "kind": "lgg-mri", "train_split": "train", "val_split": "val",
                 "batch_size": 2, "patch_size": None, "seed": 0},
        "model": {"name": "unet2d_small", "args": {"in_channels": 3, "base_filters": 4, "depth": 2}},
        "loss": {"name": "dice_focal", "args": {}},
        "optimizer": {"name": "adamw", "learning_rate": 1e-2, "weight_decay": 1e-4},
        "train": {"epochs": 1, "steps_per_epoch": 3, "monitor": "val_dice", "mode": "max", "verbose": 0},
        "seed": 0,
    }
    run_dir = tmp_path / "run"
    train(config, run_dir)
    summary = evaluate_run(run_dir, split="test", verbose=False)
    rows = read_csv(run_dir / "eval-test" / "per_case.csv")

    # Independently: the saved model on each whole slice (one window per slice, so blending is the identity).
    model = keras.saving.load_model(run_dir / "checkpoints" / "best.keras", compile=False)
    patients = defaultdict(list)
    for ex in decoded(lgg_data, "test"):
        patients[ex["patient_id"].decode()].append(ex)
    assert len(rows) == len(patients) == summary["n_cases"]
    for row, slices in zip(rows, patients.values()):
        slices.sort(key=lambda e: int(e["slice_index"]))
        x = np.stack([e["image"] for e in slices]).astype(np.float32) / 255.0
        pred = np.asarray(model(x, training=False))[..., 0] > 0.5
        true = np.stack([e["mask"][..., 0] > 0 for e in slices])
        expected = evaluate_case(pred, true, (1.0, 1.0, 1.0))
        assert int(row["voxels_pred"]) == int(pred.sum())
        assert float(row["dice"]) == pytest.approx(expected["dice"], rel=1e-6)
        if np.isnan(expected["hd95"]):
            assert np.isnan(float(row["hd95"]))
        else:
            assert float(row["hd95"]) == pytest.approx(expected["hd95"], rel=1e-6)
