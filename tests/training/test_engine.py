"""End-to-end `medtf.training.engine.train` on tiny real lgg shards (synth -> convert -> train)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import run_medtf
from tests.training.conftest import history_rows, tiny_config


def _config(data_dir: Path, **train) -> dict:
    return tiny_config(data_dir, **train)


def test_train_writes_a_complete_run_dir(lgg_tiny, tmp_path):
    import keras

    from medtf.data import make_dataset
    from medtf.training.engine import train
    from medtf.training.experiment import parse_config

    config = _config(lgg_tiny)
    original = copy.deepcopy(config)
    run_dir = tmp_path / "run"
    result = train(config, run_dir)

    assert config == original
    # The resolved config: what was given, every default filled in; `medtf train` reads it back to the same run.
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    for name, given in original.items():
        assert saved[name] == given if not isinstance(given, dict) else saved[name] == {**saved[name], **given}
    assert saved["train"]["strategy"] == "auto" and saved["schedule"] == {"name": "constant"}
    assert parse_config(saved) == parse_config(original)
    assert list((run_dir / "logs").rglob("events.out.tfevents*"))
    rows = (run_dir / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 and "val_dice" in rows[0] and "learning_rate" in rows[0].split(",")
    lr = [float(r["learning_rate"]) for r in history_rows(run_dir)]
    np.testing.assert_allclose(lr, [1e-3, 1e-3], rtol=1e-6)  # constant schedule by default
    hist = result["history"]
    assert len(hist["loss"]) == 2 and all(np.isfinite(hist["loss"]))
    for metric in ("dice", "iou", "precision", "recall", "specificity"):  # the training metrics
        values = np.asarray(hist[f"val_{metric}"] + hist[metric])
        assert ((values >= 0) & (values <= 1)).all(), metric
    # Dice = 2PR / (P + R) on the same confusion counts (one validation pass per epoch).
    p, r = np.asarray(hist["val_precision"]), np.asarray(hist["val_recall"])
    np.testing.assert_allclose(hist["val_dice"], 2 * p * r / np.maximum(p + r, 1e-12), atol=1e-4)
    assert keras.mixed_precision.global_policy().name == "float32"

    x, _ = next(iter(make_dataset(lgg_tiny, "val", batch_size=2, training=False, repeat=False)))
    expected = result["model"].predict(x, verbose=0)
    for name in ("best", "last"):
        path = run_dir / "checkpoints" / f"{name}.keras"
        assert path.is_file() and result[name] == str(path)
        if name == "last":
            reloaded = keras.saving.load_model(path)
            np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
        else:
            assert keras.saving.load_model(path).predict(x, verbose=0).shape == expected.shape


def test_nan_guard_stops_with_a_clear_message(lgg_tiny, tmp_path):
    from medtf.training.engine import NonFiniteLossError, train

    config = _config(lgg_tiny, epochs=3)
    config["optimizer"]["learning_rate"] = 1e30
    config["loss"] = {"name": "weighted_bce", "args": {}}
    with pytest.raises(NonFiniteLossError, match="non-finite loss.*learning rate"):
        train(config, tmp_path / "nan")
    rows = (tmp_path / "nan" / "history.csv").read_text().strip().splitlines() \
        if (tmp_path / "nan" / "history.csv").exists() else []
    assert len(rows) <= 2  # stopped in the first epoch, not after all 3


def test_nan_message_names_float16_overflow():
    from medtf.training.engine import nan_message

    msg = nan_message(3, 0, float("nan"), "mixed_float16", 1e-3)
    assert "mixed_float16" in msg and "overflow" in msg and "mixed_bfloat16" in msg and "learning rate" in msg


def test_cli_train_with_overrides(lgg_tiny, tmp_path, capsys):
    from tests.conftest import run_medtf

    config_path = tmp_path / "exp.yaml"
    config_path.write_text(yaml.safe_dump(_config(lgg_tiny)))
    run_dir = tmp_path / "cli_run"
    assert run_medtf("train", config_path, "--set", "train.epochs=1", "--run-dir", run_dir) == 0
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"] == 1
    assert len((run_dir / "history.csv").read_text().strip().splitlines()) == 2  # header + one epoch
    assert "tensorboard --logdir" in capsys.readouterr().out
    assert run_medtf("train", config_path, "--set", "train.epoch=1", "--run-dir", run_dir) == 2
    assert "unknown key" in capsys.readouterr().err


def test_history_trim_and_best_after_resume(tmp_path):
    from medtf.training.callbacks import backup_epoch, best_so_far, flatten_scalars, trim_history

    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_dice\n0,1.0,0.2\n1,0.9,0.5\n2,0.8,0.4\n")
    assert backup_epoch(tmp_path / "backup") == 0
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "training_metadata.json").write_text('{"epoch": 2, "batch": 0}')
    assert backup_epoch(tmp_path / "backup") == 2
    kept = trim_history(path, 2)  # epoch 2 was logged but not backed up: it runs again
    assert [r["epoch"] for r in kept] == ["0", "1"] and path.read_text().count("\n") == 3
    assert best_so_far(kept, "val_dice", "max") == 0.5 and best_so_far(kept, "loss", "min") == 0.9
    assert best_so_far(kept, "val_iou", "max") is None
    assert trim_history(path, 0) == [] and not path.exists()  # a fresh start overwrites
    assert flatten_scalars({"a": {"b": 1, "c": [1]}, "d": None, "e": "x"}) == {"a.b": 1, "e": "x"}
