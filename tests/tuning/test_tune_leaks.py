"""keras-tuner searches select on validation splits only: a test split as val_split, in the training splits or
among the space's values is refused before any trial runs (issue #14 item 5)."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import run_medtf
from tests.tuning.conftest import tune_config


def test_tuner_refuses_to_select_on_a_test_split(lgg_tiny):
    from medtf.training.config import ConfigError
    from medtf.training.experiment import parse_config

    config = tune_config(lgg_tiny)
    parse_config(config)  # the validation split: fine
    config["data"]["val_split"] = "test"
    with pytest.raises(ConfigError, match="medtf tune refuses to select on 'test'"):
        parse_config(config)
    config = tune_config(lgg_tiny)
    config["data"]["train_split"] = ["train", "test"]
    with pytest.raises(ConfigError, match="contains the test split"):
        parse_config(config)
    config = tune_config(lgg_tiny)
    config["tune"]["space"]["data.val_split"] = ["val", "test"]
    with pytest.raises(ConfigError, match=r"tune.space.data.val_split: a trial on the test split"):
        parse_config(config)


def test_medtf_tune_exits_2_on_a_test_split(lgg_tiny, tmp_path, capsys):
    config = tune_config(lgg_tiny)
    config["data"]["val_split"] = "test"
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert run_medtf("tune", path, "--tune-dir", tmp_path / "tune", "--quiet") == 2
    assert "refuses to select on 'test'" in capsys.readouterr().err
    assert not (tmp_path / "tune" / "trials").exists()
