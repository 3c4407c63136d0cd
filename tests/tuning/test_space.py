"""tune.space -> keras-tuner HyperParameters: types, conditions, validation errors, values applied to a config."""

from __future__ import annotations

import pytest

from medtf.tuning import (SpaceError, TuneConfigError, active_values, apply_values, build_hyperparameters,
                          parse_space, tune_settings)

SPACE = {
    "optimizer.learning_rate": {"type": "float", "min": 1.0e-4, "max": 1.0e-2, "sampling": "log"},
    "model.args.base_filters": [8, 16, 32],
    "model.args.depth": {"type": "int", "min": 2, "max": 4, "step": 1},
    "+loss.args.alpha": {"type": "float", "min": 0.1, "max": 0.9, "parent": {"loss.name": ["dice_focal"]}},
    "loss.name": {"type": "choice", "values": ["dice_focal", "dice_ce"]},
    "train.jit_compile": {"type": "boolean"},
}

CONFIG = {"data": {"dir": "shards/lgg", "batch_size": 2},
          "model": {"name": "unet2d", "args": {"base_filters": 32, "depth": 5}},
          "loss": {"name": "dice_focal", "args": {}},
          "optimizer": {"name": "adamw", "learning_rate": 1e-3},
          "train": {"epochs": 3, "monitor": "val_dice", "mode": "max", "jit_compile": False},
          "seed": 0}


def test_space_becomes_hyperparameters_with_parents_first():
    specs = parse_space(SPACE)
    # the conditional alpha was declared before its parent: it must come after it (keras-tuner samples in order)
    names = list(specs)
    assert names.index("loss.name") < names.index("loss.args.alpha")
    hp = build_hyperparameters(specs)
    by_name = {p.name: p for p in hp.space}
    assert set(by_name) == {"optimizer.learning_rate", "model.args.base_filters", "model.args.depth",
                            "loss.args.alpha", "loss.name", "train.jit_compile"}
    lr = by_name["optimizer.learning_rate"]
    assert (lr.min_value, lr.max_value, lr.sampling) == (1e-4, 1e-2, "log")
    assert list(by_name["model.args.base_filters"].values) == [8, 16, 32]
    depth = by_name["model.args.depth"]
    assert (depth.min_value, depth.max_value, depth.step) == (2, 4, 1)
    (cond,) = by_name["loss.args.alpha"].conditions
    assert cond.name == "loss.name" and list(cond.values) == ["dice_focal"]
    assert by_name["loss.name"].conditions == []


def test_conditional_value_is_applied_only_when_parent_matches():
    hp = build_hyperparameters(parse_space(SPACE))
    hp.values.update({"loss.name": "dice_ce", "loss.args.alpha": 0.5, "model.args.base_filters": 16,
                      "optimizer.learning_rate": 3e-3, "model.args.depth": 3, "train.jit_compile": True})
    values = active_values(hp)
    assert "loss.args.alpha" not in values  # parent is dice_ce: alpha inactive
    config = apply_values(CONFIG, values)
    assert config["loss"] == {"name": "dice_ce", "args": {}}
    assert config["model"]["args"] == {"base_filters": 16, "depth": 3}
    assert config["optimizer"]["learning_rate"] == pytest.approx(3e-3)
    assert config["train"]["jit_compile"] is True
    assert CONFIG["model"]["args"]["base_filters"] == 32  # the base config is not modified

    hp.values["loss.name"] = "dice_focal"
    config = apply_values(CONFIG, active_values(hp))
    assert config["loss"] == {"name": "dice_focal", "args": {"alpha": 0.5}}


def test_random_samples_stay_in_range_and_respect_conditions():
    import keras_tuner

    oracle = keras_tuner.oracles.RandomSearchOracle(objective=keras_tuner.Objective("val_dice", "max"),
                                                    max_trials=30, seed=5,
                                                    hyperparameters=build_hyperparameters(parse_space(SPACE)))
    seen_alpha = 0
    for i in range(20):
        values = oracle.populate_space(str(i))["values"]
        hp = oracle.hyperparameters.copy()
        hp.values = values
        active = active_values(hp)
        assert 1e-4 <= active["optimizer.learning_rate"] <= 1e-2
        assert active["model.args.base_filters"] in (8, 16, 32)
        assert active["model.args.depth"] in (2, 3, 4)
        assert ("loss.args.alpha" in active) == (active["loss.name"] == "dice_focal")
        if "loss.args.alpha" in active:
            seen_alpha += 1
            assert 0.1 <= active["loss.args.alpha"] <= 0.9
    assert 0 < seen_alpha < 20


@pytest.mark.parametrize("space, message", [
    ({"a.b": {"type": "gaussian"}}, "unknown type 'gaussian'"),
    ({"a.b": {"type": "float", "min": 2.0, "max": 1.0}}, "min 2.0 > max 1.0"),
    ({"a.b": {"type": "float", "min": 0.0, "max": 1.0, "sampling": "log"}}, "log sampling needs min > 0"),
    ({"a.b": {"type": "int", "min": -1, "max": 8, "sampling": "log"}}, "log sampling needs min > 0"),
    ({"a.b": {"type": "float", "min": 1e-4, "max": 1.0, "sampling": "cubic"}}, "unknown sampling 'cubic'"),
    ({"a.b": {"type": "float", "min": 0.1, "max": 0.9, "parent": {"a.c": ["x"]}}}, "parent 'a.c' is not in"),
    ({"a.b": {"type": "choice", "values": ["x", 1]}}, "must all be numbers, all strings"),
    ({"a.b": {"type": "choice", "values": []}}, "non-empty list"),
    ({"a.b": {"type": "float", "min": 0.1, "max": 0.9, "stepp": 0.1}}, "unknown field(s) ['stepp']"),
    ({"a.b": {"type": "float", "min": "low", "max": 0.9}}, "min must be a number"),
    ({"a.b": {"type": "int", "min": 1.5, "max": 4}}, "whole-number bounds"),
    ({"a.c": ["x", "y"], "a.b": {"type": "boolean", "parent": {"a.c": ["z"]}}}, "not choices of 'a.c'"),
    ({"a.b": {"type": "choice", "values": [1, 2], "parent": {"a.c": [1]}},
      "a.c": {"type": "choice", "values": [1, 2], "parent": {"a.b": [1]}}}, "form a cycle"),
    ({"a.b": {"type": "float", "min": 0.1, "max": 0.9, "default": 2.0}}, "default 2.0 is not one of"),
    ({}, "non-empty mapping"),
])
def test_invalid_space_is_a_clear_error(space, message):
    with pytest.raises(SpaceError) as info:
        build_hyperparameters(parse_space(space))
    assert message in str(info.value)


def test_settings_check_keys_objective_and_tuner():
    ok = {**CONFIG, "tune": {"tuner": "random", "max_trials": 4, "space": SPACE}}
    settings = tune_settings(ok)
    assert (settings.tuner, settings.objective, settings.direction) == ("random", "val_dice", "max")
    assert settings.oracle_args["max_trials"] == 4
    assert settings.oracle_args["seed"] == 1  # seed 0 -> 1: keras-tuner reads 0 as "random seed"

    hyper = tune_settings({**CONFIG, "tune": {"tuner": "hyperband", "factor": 2, "space": SPACE,
                                              "objective": {"name": "val_loss", "direction": "min"}}})
    assert hyper.oracle_args["max_epochs"] == 3 and hyper.oracle_args["factor"] == 2
    assert (hyper.objective, hyper.direction) == ("val_loss", "min")

    cases = [
        ({"tuner": "grid", "space": SPACE}, "tune.tuner 'grid'"),
        ({"tuner": "hyperband", "max_trials": 3, "space": SPACE}, "unknown key(s) ['max_trials']"),
        ({"tuner": "random", "space": {"model.args.base_filtres": [8, 16]}}, "unknown key 'model.args.base_filtres'"),
        ({"tuner": "random", "space": {"loss.args.alpha": {"type": "float", "min": 0.1, "max": 0.9}}},
         "prefix it with '+'"),
        ({"tuner": "random", "space": {"model.name.x": [1, 2]}}, "'model.name' is not a section"),
        ({"tuner": "random", "objective": "val_iou", "space": SPACE}, "give the direction"),
        ({"tuner": "random", "max_trials": 0, "space": SPACE}, "tune.max_trials must be an integer >= 1"),
        ({"tuner": "hyperband", "space": {"train.epochs": [1, 2]}}, "hyperband sets train.epochs"),
        # every value an entry can take is applied and checked like a value in the file
        ({"tuner": "random", "space": {"+train.epocs": [1, 2]}},
         "tune.space.train.epocs = 1: train.epocs: unknown key (did you mean epochs?)"),
        ({"tuner": "random", "space": {"loss.name": ["dice_focal", "dice_cee"]}},
         "tune.space.loss.name = 'dice_cee': loss.name: unknown loss 'dice_cee' (did you mean dice_ce?)"),
        ({"tuner": "random", "space": {"train.epochs": {"type": "float", "min": 1, "max": 3}}},
         "tune.space.train.epochs = 1.0: train.epochs: expected an integer, got 1.0"),
        ({"tuner": "random", "space": {"+loss.args.gama": {"type": "float", "min": 1, "max": 3,
                                                            "parent": {"loss.name": ["dice_focal"]}},
                                       "loss.name": ["dice_focal", "dice_ce"]}},
         "loss.args.gama: not an argument of loss dice_focal (did you mean gamma?)"),
    ]
    for tune, message in cases:
        with pytest.raises(TuneConfigError.__mro__[1]) as info:  # ConfigError: what the CLI reports
            tune_settings({**CONFIG, "tune": tune})
        assert message in str(info.value), (tune, str(info.value))
    with pytest.raises(TuneConfigError, match="no `tune:` section"):
        tune_settings(CONFIG)
