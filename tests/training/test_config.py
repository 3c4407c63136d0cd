import pytest
import yaml

from medtf.training.config import ConfigError, apply_overrides, load_config, save_resolved

BASE = {"data": {"dir": "shards/lgg", "batch_size": 8, "transforms": [{"name": "random_flip"}]},
        "train": {"epochs": 50, "lr": 0.001, "mixed_precision": False}, "seed": 0}


def test_overrides_are_typed_like_yaml():
    out = apply_overrides(BASE, ["train.epochs=5", "train.lr=1e-3", "train.mixed_precision=true",
                                 "data.dir=/scratch/x", "seed=7", "data.transforms=[]"])
    assert out["train"] == {"epochs": 5, "lr": 0.001, "mixed_precision": True}
    assert out["data"]["dir"] == "/scratch/x" and out["seed"] == 7 and out["data"]["transforms"] == []
    assert BASE["train"]["epochs"] == 50  # the input is not modified


def test_unknown_keys_are_errors_unless_added_explicitly():
    with pytest.raises(ConfigError, match="unknown key 'train.epoch'.*epochs"):
        apply_overrides(BASE, ["train.epoch=5"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides(BASE, ["seed.x=1"])
    with pytest.raises(ConfigError, match="key.subkey=value"):
        apply_overrides(BASE, ["train.epochs"])
    assert apply_overrides(BASE, ["+train.note=first run"])["train"]["note"] == "first run"


def test_settings_the_schema_knows_need_no_plus_when_the_file_leaves_them_out():
    out = apply_overrides(BASE, ["train.steps_per_epoch=20", "data.val_split=null", "data.service=auto"])
    assert out["train"]["steps_per_epoch"] == 20 and out["data"]["val_split"] is None
    assert out["data"]["service"] == "auto"
    with pytest.raises(ConfigError, match="unknown key 'train.steps_per_epok'"):  # a typo is still an error
        apply_overrides(BASE, ["train.steps_per_epok=20"])
    with pytest.raises(ConfigError, match="unknown key 'data.args'"):  # a field of another section is not this one's
        apply_overrides(BASE, ["data.args=1"])


def test_load_and_save_round_trip(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(BASE))
    config = load_config(path, ["train.epochs=2"])
    saved = save_resolved(config, tmp_path / "run")
    assert yaml.safe_load(saved.read_text()) == config and config["train"]["epochs"] == 2
    (tmp_path / "bad.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_checking_a_config_leaves_tensorflow_uninitialised(tmp_path):
    """Configs are checked before the engine creates its strategy; MultiWorkerMirroredStrategy can only configure
    collective ops while TensorFlow's eager context is uninitialised, so checking must not create tensors (it once
    instantiated the optimizer to find its class, and every multi-worker SLURM job failed at start)."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.training.conftest import tiny_config

    path = tmp_path / "exp.yaml"
    config = tiny_config(tmp_path / "shards")
    config["optimizer"] = {"name": "sgd", "learning_rate": 0.1, "args": {"momentum": 0.9}}
    path.write_text(yaml.safe_dump(config))
    code = ("import sys, medtf; from tensorflow.python.eager import context; "
            "from medtf.training.experiment import load_experiment; load_experiment(sys.argv[1], []); "
            "print('initialised' if context.context()._initialized else 'clean')")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "clean"
