"""experiments/prostate_tl_chain.yaml: the shipped chain parses, every phase builds with one input, freezes what it
says, and one --set scales every phase (default tier: no data, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = REPO / "experiments/prostate_tl_chain.yaml"
PHASES = ["ds1-prostate", "ds2-brain-frozen", "ds2-brain-full", "ds3-lung-frozen", "ds3-lung-full",
          "ds4-prostate-frozen", "ds4-prostate-full"]


def test_chain_parses_builds_every_phase_and_scales_by_set():
    import keras

    from medtf.models.freeze import trainable_counts
    from medtf.training.engine import build_model
    from medtf.training.experiment import load_experiment, parse_config
    from medtf.training.transfer import apply_freeze, transfer_phases

    experiment = load_experiment(EXPERIMENT, ["train.epochs=1", "+train.steps_per_epoch=2", "data.batch_size=4"])
    assert experiment.transfer["compare_scratch"] is True
    phases = transfer_phases(experiment)
    assert [name for name, _ in phases] == PHASES
    dirs = [Path(raw["data"]["dir"]).name for _, raw in phases]
    assert dirs == ["prostate-dwi", "brain", "brain", "lung", "lung", "prostate-dwi", "prostate-dwi"]
    # source phases learn their task at 1e-3 (at 1e-4 they stayed near chance); the last prostate phase at the
    # scratch baseline's 1e-3 (chosen on the selection folds over 1e-4, benchmarks/RESULTS.md)
    assert [raw["optimizer"]["learning_rate"] for _, raw in phases] == [1e-3] * 7
    # brain / lung inputs ([0, 1]) are z-scored per image, as the prostate crops are by the converter
    assert [[t["name"] for t in raw["data"]["preprocess"]] for _, raw in phases] == \
        [[], ["zscore"], ["zscore"], ["zscore"], ["zscore"], [], []]
    # the top-level --set reaches every phase (no phase overrides train or batch size)
    assert {(raw["train"]["epochs"], raw["train"]["steps_per_epoch"], raw["data"]["batch_size"])
            for _, raw in phases} == {(1, 2, 4)}
    # the target (last phase) is the top-level data set: what --folds folds and scratch trains on
    assert Path(phases[-1][1]["data"]["dir"]).resolve() == Path(experiment.data.dir)

    # every phase owns its sections (run_transfer writes model.init_from into each: a shared dict leaked the
    # first full phase's init_from into every later phase without a model override)
    models = [raw["model"] for _, raw in phases]
    assert len({id(m) for m in models}) == len(models)
    phases[2][1]["model"]["init_from"] = "x"
    assert [raw["model"].get("init_from") for _, raw in phases].count("x") == 1

    shapes = set()
    for name, raw in phases:
        config = parse_config(raw)
        keras.backend.clear_session()
        model = build_model(config.model)
        shapes.add(tuple(model.input_shape))
        frozen = apply_freeze(model, config.model.freeze_blocks, config.model.freeze_up_to)
        counts = trainable_counts(model)
        if name.endswith("-frozen"):
            assert config.model.carry == "backbone" and frozen
            assert counts["block1"] == counts["block2"] == counts["block3"] == 0, name
            assert counts["fc1"] > 0 and counts["head"] > 0, name
        else:
            assert config.model.carry == "all" and not frozen and counts["block1"] > 0, name
    assert shapes == {(None, 65, 65, 1)}  # one input for every phase: the weights carry over


def test_a_phase_with_another_input_size_is_caught_before_training(tmp_path):
    """Carrying weights between phases needs one input: a phase that changes the crop size fails to load them
    (load_initial_weights raises: nothing of the flatten head fits) rather than silently training from scratch."""
    import keras

    from medtf.models import get_model
    from medtf.training.transfer import load_initial_weights

    keras.utils.set_random_seed(0)
    source = get_model("vgg_elu_small", in_channels=3, num_classes=1, input_shape=[65, 65])
    source.save(tmp_path / "a.keras")
    other = get_model("vgg_elu_small", in_channels=1, num_classes=1, input_shape=[33, 33])
    with pytest.raises(ValueError, match="block1_conv1: .*fc1_dense: "):  # strict (the default): each named
        load_initial_weights(other, tmp_path / "a.keras")
    done = load_initial_weights(other, tmp_path / "a.keras", strict=False)
    assert "block1_conv1" in done["skipped"]  # 1 vs 3 input channels: the first convolution cannot carry
    assert "fc1_dense" in done["skipped"]     # 33 vs 65 px: the flattened features differ in size
    with pytest.raises(Exception):
        load_initial_weights(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), tmp_path / "a.keras")


def test_init_from_starts_only_the_first_phase_and_fold_stays_with_its_folder(tmp_path):
    """`medtf train CHAIN --init-from ROULETTE/best.keras --set data.fold=0`: the winner starts DS1 (later phases
    chain from their predecessor), and fold 0 applies to the prostate phases, not to brain / lung."""
    from medtf.training.experiment import load_experiment
    from medtf.training.transfer import transfer_phases

    experiment = load_experiment(EXPERIMENT, [f"+model.init_from={tmp_path / 'best.keras'}", "+data.fold=0"])
    phases = transfer_phases(experiment)
    starts = [raw["model"]["init_from"] for _, raw in phases]
    assert starts[0] == str(tmp_path / "best.keras") and starts[1:] == [None] * 6
    folds = {name: raw["data"]["fold"] for name, raw in phases}
    assert folds == {"ds1-prostate": 0, "ds2-brain-frozen": None, "ds2-brain-full": None, "ds3-lung-frozen": None,
                     "ds3-lung-full": None, "ds4-prostate-frozen": 0, "ds4-prostate-full": 0}


def test_scratch_baseline_gets_the_experiments_config_and_the_chains_target_epochs():
    """compare_scratch trains the same network on the target data with the experiment's own optimizer and train
    settings for as many epochs as the chain spends on the target folder (DS1 + DS4 frozen + DS4 full), not with
    the last (fine-tuning) phase's learning rate for one phase's epochs (which made the chain look better)."""
    import yaml

    from medtf.training.experiment import parse_config
    from medtf.training.transfer import scratch_config, transfer_phases

    config = yaml.safe_load(EXPERIMENT.read_text())
    config["optimizer"]["learning_rate"] = 3e-3
    config["train"]["epochs"] = 5
    config["transfer"]["phases"][0]["train"] = {"epochs": 2}  # DS1 shorter than the rest
    experiment = parse_config(config)
    phases = transfer_phases(experiment)
    phases[-1][1]["model"]["init_from"] = "runs/x/phase6/best.keras"  # as run_transfer chains it
    raw = scratch_config(experiment, phases)
    assert raw["train"]["epochs"] == 2 + 5 + 5  # ds1 + ds4-frozen + ds4-full; brain / lung phases not counted
    assert raw["optimizer"]["learning_rate"] == 3e-3 != phases[-1][1]["optimizer"]["learning_rate"]
    assert raw["model"]["init_from"] is None and raw["model"]["freeze_blocks"] == []
    assert raw["model"]["freeze_up_to"] is None and raw["model"]["carry"] == "all"
    assert raw["data"] == phases[-1][1]["data"] and raw["model"]["args"] == phases[-1][1]["model"]["args"]
    assert raw["train"]["monitor"] == phases[-1][1]["train"]["monitor"]
    assert phases[-1][1]["model"]["init_from"] == "runs/x/phase6/best.keras"  # the chain's config untouched
    parse_config(raw)  # a valid experiment
