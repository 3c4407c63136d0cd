"""Transfer learning (medtf.training.transfer): weights carried between builds, frozen blocks unchanged by a
phase, a resumable chain of phases through `medtf train`, with the scratch baseline beside it."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from tests.conftest import run_medtf

REPO = Path(__file__).resolve().parents[2]


def _classifier(num_classes=1, seed=0):
    from medtf.models import get_model

    keras.utils.set_random_seed(seed)
    return get_model("unet_classifier2d_small", in_channels=3, num_classes=num_classes, depth=2, base_filters=4)


def _weights(model):
    from medtf.models.freeze import leaf_layers

    return [[w.copy() for w in layer.get_weights()] for layer in leaf_layers(model) if layer.weights]


def test_carry_all_backbone_and_a_different_head(tmp_path):
    from medtf.training.transfer import load_initial_weights

    source = _classifier(seed=1)
    path = tmp_path / "source.keras"
    source.save(path)
    src = _weights(source)

    target = _classifier(seed=2)  # another build: other auto-generated names, other initial values
    done = load_initial_weights(target, path, carry="all")
    assert not done["skipped"]
    for i, ws in enumerate(_weights(target)):
        for a, b in zip(ws, src[i]):
            np.testing.assert_array_equal(a, b)

    target = _classifier(seed=3)
    head_before = _weights(target)[-1]
    done = load_initial_weights(target, path, carry="backbone")
    assert done["skipped"] == [target.get_layer("logits").name]
    after = _weights(target)
    np.testing.assert_array_equal(after[-1][0], head_before[0])  # the head keeps its initialisation
    np.testing.assert_array_equal(after[0][0], src[0][0])

    three = _classifier(num_classes=3, seed=4)  # another class count: the head cannot carry over, the rest does
    done = load_initial_weights(three, path, carry="all")
    assert done["skipped"] == [three.get_layer("logits").name] and len(done["copied"]) == len(src) - 1

    other = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Dense(5)])
    with pytest.raises(ValueError, match="no layer"):
        load_initial_weights(other, path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_initial_weights(target, tmp_path / "missing")


def test_phase_config_errors_name_the_phase(lgg_tiny):
    from medtf.training.config import ConfigError, load_config
    from medtf.training.experiment import parse_config

    raw = load_config(REPO / "experiments/lgg_classifier2d.yaml", [f"data.dir={lgg_tiny}"])
    bad = {**raw, "transfer": {"phases": [{"name": "a"}, {"name": "b", "model": {"carry": "head"}}]}}
    with pytest.raises(ConfigError, match=r"transfer.phases\[1\] \(b\): model.carry"):
        parse_config(bad)
    with pytest.raises(ConfigError, match="overrides only"):
        parse_config({**raw, "transfer": {"phases": [{"name": "a", "epochs": 3}]}})
    with pytest.raises(ConfigError, match="not both"):
        parse_config({**raw, "model": {**raw["model"], "freeze_blocks": ["enc0"], "freeze_up_to": "enc1"}})


def test_chain_of_phases_freezes_carries_and_resumes(lgg_tiny, tmp_path):
    import keras

    from medtf.models.freeze import leaf_layers

    config = yaml.safe_load((REPO / "experiments/lgg_classifier2d.yaml").read_text())
    config["data"].update(dir=str(lgg_tiny), batch_size=4)
    config["model"]["args"].update(depth=2, base_filters=4)
    config["train"] = {"epochs": 1, "steps_per_epoch": 3, "log_every_n_steps": 0, "image_panels": False}
    config["transfer"] = {"compare_scratch": True, "phases": [
        {"name": "source"},
        {"name": "frozen", "model": {"freeze_up_to": "enc0", "carry": "backbone"},
         "optimizer": {"learning_rate": 0.01}},
        {"name": "full", "optimizer": {"learning_rate": 1.0e-4}},
    ]}
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    assert run_medtf("train", path, "--run-dir", run, "--quiet") == 0

    summary = json.loads((run / "transfer.json").read_text())
    assert [p["name"] for p in summary["phases"]] == ["source", "frozen", "full"]
    assert summary["scratch"]["init_from"] is None and summary["phases"][0]["init_from"] is None
    phase_dirs = [Path(p["run_dir"]) for p in summary["phases"]]
    assert summary["phases"][1]["init_from"] == str(phase_dirs[0] / "checkpoints" / "best.keras")
    assert summary["phases"][2]["init_from"] == str(phase_dirs[1] / "checkpoints" / "best.keras")
    assert summary["gain_over_scratch"] == pytest.approx(summary["phases"][-1]["best"] - summary["scratch"]["best"])

    def load(d):
        layers = leaf_layers(keras.saving.load_model(d / "checkpoints" / "last.keras", compile=False))
        return dict(enumerate(layer for layer in layers if layer.weights))

    source, frozen, full = (load(d) for d in phase_dirs)
    for i, layer in frozen.items():
        if not layer.weights:
            continue
        same = all(np.array_equal(a, b) for a, b in zip(layer.get_weights(), source[i].get_weights()))
        if layer.name.startswith("enc0"):  # frozen: bitwise the source phase's weights, BN statistics included
            assert same, layer.name
        elif layer.name.startswith("enc1_conv"):
            assert not same, layer.name  # trained
    resolved = yaml.safe_load((phase_dirs[1] / "config.yaml").read_text())
    assert resolved["model"]["freeze_up_to"] == "enc0" and "transfer" not in resolved
    # the final phase unfroze everything (the phase merges into the experiment, not into the previous phase)
    assert not any(np.array_equal(a, b) for a, b in zip(full[0].get_weights()[:1], frozen[0].get_weights()[:1]))
    # RUN_DIR holds the final model, so evaluate/export RUN_DIR use it
    assert (run / "checkpoints" / "best.keras").read_bytes() == (phase_dirs[2] / "checkpoints" /
                                                                  "best.keras").read_bytes()

    # Re-running the command runs nothing again; a phase without its marker (killed) runs again, alone.
    stamps = {d: (d / "history.csv").stat().st_mtime_ns for d in phase_dirs}
    (phase_dirs[2] / "phase.json").unlink()
    assert run_medtf("train", path, "--run-dir", run, "--quiet") == 0
    assert all((d / "history.csv").stat().st_mtime_ns == stamps[d] for d in phase_dirs[:2])
    assert (phase_dirs[2] / "phase.json").is_file()


def _finished_phase(folder: Path, name: str, best: float) -> None:
    """A phase that finished before (its marker, history and checkpoint folder): the chain does not train it
    again, so the gate is checked on its recorded score in milliseconds."""
    folder.mkdir(parents=True)
    (folder / "checkpoints").mkdir()
    (folder / "history.csv").write_text(f"epoch,val_auc\n0,{best}\n")
    (folder / "config.yaml").write_text("task: classification\n")
    (folder / "phase.json").write_text(json.dumps({
        "name": name, "run_dir": str(folder), "init_from": None, "freeze_blocks": [], "freeze_up_to": None,
        "data_dir": "x", "monitor": "val_auc", "mode": "max", "best": best, "epochs": 1}))


def test_a_source_phase_below_its_gate_stops_the_chain(lgg_tiny, tmp_path, capsys):
    from medtf.training.config import ConfigError, load_config
    from medtf.training.experiment import parse_config
    from medtf.training.transfer import TransferGateError, run_transfer

    raw = load_config(REPO / "experiments/lgg_classifier2d.yaml", [f"data.dir={lgg_tiny}"])

    def chain(gate):
        return {**raw, "transfer": {"phases": [{"name": "source", "min_val_metric": gate}, {"name": "target"}]}}

    run = tmp_path / "run"
    _finished_phase(run / "phases" / "01-source", "source", best=0.55)
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(chain(0.8)))
    assert run_medtf("train", path, "--run-dir", run, "--quiet") == 2  # a user error, not a bug
    err = capsys.readouterr().err
    assert "transfer.phases[0] (source): best val_auc 0.5500 < min_val_metric 0.8" in err
    assert str(run / "phases" / "01-source" / "history.csv") in err
    summary = json.loads((run / "transfer.json").read_text())
    assert summary["stopped"] == "source" and summary["final"] is None
    assert summary["phases"][0]["best"] == 0.55 and summary["phases"][0]["passed"] is False
    assert not (run / "phases" / "02-target").exists()  # nothing was trained from the unlearned phase
    with pytest.raises(TransferGateError):  # resuming does not slip past the gate
        run_transfer(parse_config(chain(0.8)), run)

    _finished_phase(run / "phases" / "02-target", "target", best=0.9)
    summary = run_transfer(parse_config(chain(0.55)), run)  # the gate is inclusive
    assert [p["passed"] for p in summary["phases"]] == [True, None] and "stopped" not in summary
    assert [p["min_val_metric"] for p in summary["phases"]] == [0.55, None]
    assert json.loads((run / "transfer.json").read_text())["final"] == str(run / "phases" / "02-target")

    with pytest.raises(ConfigError, match=r"transfer.phases\[0\].min_val_metric: a number"):
        parse_config(chain("high"))
    lossy = chain(0.5)
    lossy["transfer"]["phases"][0]["train"] = {"monitor": "val_loss", "mode": "min"}
    with pytest.raises(ConfigError, match=r"min_val_metric: needs a monitor that is maximised.*val_loss"):
        parse_config(lossy)
