"""The TL chain end to end through `medtf train` on tiny synthetic prostate / brain / lung shards, alone and
cross-validated (`--folds`), plus the leak guards of chain cross-validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medtf.data.manifest import FORMAT, FORMAT_VERSION
from tests.conftest import run_medtf
from tests.prostate_chain.conftest import chain_config, convert_all, write_config

PHASES = ["ds1-prostate", "ds2-brain-frozen", "ds2-brain-full", "ds3-lung-frozen", "ds3-lung-full",
          "ds4-prostate-frozen", "ds4-prostate-full"]


def _manifest(folder: Path, kind: str, splits: dict[str, list[str]]) -> Path:
    """A manifest as converters write it (only what the leak guard reads: splits and their hashed patients)."""
    folder.mkdir(parents=True)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "compression": None,
                "splits": {name: {"patients": pats, "num_patients": len(pats), "shards": []}
                           for name, pats in splits.items()}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_fold_plan_folds_the_target_folder_and_refuses_shared_patients(tmp_path):
    from medtf.training.config import ConfigError
    from medtf.training.cv_transfer import fold_transfer_experiment
    from medtf.training.experiment import parse_config

    folds = {"fold-0": ["p1", "p2"], "fold-1": ["p3", "p4"], "fold-2": ["p6", "p7"], "test": ["p5"]}
    prostate = _manifest(tmp_path / "prostate", "prostate-mpmri", folds)
    brain = _manifest(tmp_path / "brain", "image-folders", {"train": ["b1"], "val": ["b2"]})
    lung = _manifest(tmp_path / "lung", "lung-nodules", {"train": ["l1"], "val": ["l2"]})
    experiment = parse_config(chain_config(prostate, brain, lung))

    plan = fold_transfer_experiment(experiment, 1, 3)
    from medtf.training.inputs import fold_roles
    from medtf.training.transfer import scratch_config, transfer_phases

    phases = dict(transfer_phases(plan))
    assert [n for n in phases] == PHASES
    folded = {n for n, raw in phases.items() if raw["data"].get("fold") is not None}
    assert folded == {"ds1-prostate", "ds4-prostate-frozen", "ds4-prostate-full"}  # DS1 too: same patients
    assert {phases[n]["data"]["fold"] for n in folded} == {1} and plan.data.fold == 1
    assert phases["ds2-brain-full"]["data"].get("fold") is None
    # nested selection in every folded phase and in the scratch baseline: train fold-0, choose fold-2, hold out fold-1
    for data in [*(phases[n]["data"] for n in folded), scratch_config(plan)["data"]]:
        assert tuple(fold_roles(data)) == (["fold-0"], "fold-2", "fold-1")

    # a "brain" conversion that holds a held-out prostate patient (same hashing key): refused, named
    leaky = _manifest(tmp_path / "leaky", "image-folders", {"train": ["b1", "p3"], "val": ["b2"]})
    experiment = parse_config(chain_config(prostate, leaky, lung))
    fold_transfer_experiment(experiment, 0, 3)  # p3 is in fold-1: fine for fold 0
    with pytest.raises(ConfigError, match=r"ds2-brain-frozen.*1 patient\(s\) of the target's held-out fold-1"):
        fold_transfer_experiment(experiment, 1, 3)
    # the target's test patients may not be trained on either, in any fold
    test_leak = _manifest(tmp_path / "test_leak", "lung-nodules", {"train": ["l1", "p5"], "val": ["l2"]})
    with pytest.raises(ConfigError, match="ds3-lung-frozen"):
        fold_transfer_experiment(parse_config(chain_config(prostate, brain, test_leak)), 0, 3)
    # a validation-only overlap is not training: allowed
    val_only = _manifest(tmp_path / "val_only", "lung-nodules", {"train": ["l1"], "val": ["p1"]})
    fold_transfer_experiment(parse_config(chain_config(prostate, brain, val_only)), 0, 3)


def test_fold_plan_selection_is_one_setting_for_the_chain(tmp_path):
    """Every target phase chooses on the same fold; inner selection needs 3 folds, outer keeps the old split."""
    from medtf.training.config import ConfigError
    from medtf.training.cv_transfer import fold_transfer_experiment
    from medtf.training.experiment import parse_config
    from medtf.training.inputs import fold_roles
    from medtf.training.transfer import transfer_phases

    three = _manifest(tmp_path / "p3", "prostate-mpmri", {f"fold-{k}": [f"p{k}"] for k in range(3)})
    two = _manifest(tmp_path / "p2", "prostate-mpmri", {f"fold-{k}": [f"p{k}"] for k in range(2)})
    brain = _manifest(tmp_path / "brain", "image-folders", {"train": ["b1"], "val": ["b2"]})
    lung = _manifest(tmp_path / "lung", "lung-nodules", {"train": ["l1"], "val": ["l2"]})
    config = chain_config(three, brain, lung)
    config["transfer"]["phases"][-1].setdefault("data", {})["selection_fold"] = "outer"
    with pytest.raises(ConfigError, match=r"ds1-prostate: data.selection_fold=inner, but the chain's last phase "
                                          r"selects 'outer'"):
        fold_transfer_experiment(parse_config(config), 0, 3)
    with pytest.raises(ConfigError, match=r"fold 0 of .*p2: selection_fold 'inner' needs at least 3 folds"):
        fold_transfer_experiment(parse_config(chain_config(two, brain, lung)), 0, 2)
    config = chain_config(two, brain, lung)
    config["data"]["selection_fold"] = "outer"  # the old split: train on fold-0, choose and score on fold-1
    plan = fold_transfer_experiment(parse_config(config), 1, 2)
    assert tuple(fold_roles(dict(transfer_phases(plan))["ds4-prostate-full"]["data"])) == (["fold-0"], "fold-1",
                                                                                             "fold-1")


def test_scratch_metrics_are_per_fold_differences(tmp_path):
    from medtf.training.cv_transfer import add_scratch_metrics

    for k, auc in enumerate((0.6, 0.7, None)):
        if auc is not None:
            out = tmp_path / f"fold_{k}" / "scratch" / f"eval-fold-{k}"
            out.mkdir(parents=True)
            (out / "summary.json").write_text(json.dumps({"split": f"fold-{k}", "metrics": {"auc": {"value": auc}}}))
    report = {"folds": 3, "metrics": {"eval/auc": {"values": [0.8, 0.75, 0.9]}}}
    report = add_scratch_metrics(report, tmp_path)
    assert report["metrics"]["scratch/eval/auc"]["values"] == [0.6, 0.7, None]
    gain = report["metrics"]["gain/eval/auc"]
    assert gain["values"] == pytest.approx([0.2, 0.05, None])
    assert gain["mean"] == pytest.approx(0.125) and gain["n"] == 2 and gain["missing"] == [2]
    # 95% t interval with n=2: mean +- 12.706 * sd / sqrt(2)
    import numpy as np
    half = 12.7062047 * np.std([0.2, 0.05], ddof=1) / np.sqrt(2)
    assert gain["ci_low"] == pytest.approx(0.125 - half, rel=1e-6)


@pytest.mark.slow
def test_chain_end_to_end_through_medtf_train(chain_sources, tmp_path):
    dirs = convert_all(chain_sources, tmp_path / "shards", ["--split", "0.5,0.25,0.25"])
    config = write_config(chain_config(dirs["prostate"], dirs["brain"], dirs["lung"]), tmp_path / "chain.yaml")
    run = tmp_path / "run"
    assert run_medtf("train", config, "--run-dir", run, "--quiet") == 0
    summary = json.loads((run / "transfer.json").read_text())
    assert [p["name"] for p in summary["phases"]] == PHASES
    assert [Path(p["data_dir"]).name for p in summary["phases"]] == ["prostate", "brain", "brain", "lung", "lung",
                                                                     "prostate", "prostate"]
    assert summary["scratch"]["init_from"] is None and "gain_over_scratch" in summary
    for previous, phase in zip(summary["phases"], summary["phases"][1:]):
        assert phase["init_from"] == str(Path(previous["run_dir"]) / "checkpoints" / "best.keras")
    assert (run / "history.csv").read_bytes() == (Path(summary["final"]) / "history.csv").read_bytes()
    # the final model evaluates like any run (and with TTA)
    assert run_medtf("evaluate", run, "--split", "test", "--tta", "--quiet") == 0
    assert "auc" in json.loads((run / "eval-test" / "summary.json").read_text())["metrics"]


@pytest.mark.slow
def test_chain_cross_validation_reports_chain_scratch_and_gain(chain_sources, tmp_path):
    dirs = convert_all(chain_sources, tmp_path / "shards", ["--folds", "2"])
    config = chain_config(dirs["prostate"], dirs["brain"], dirs["lung"])
    config["data"]["selection_fold"] = "outer"  # two folds of 10 patients: no room for an inner fold
    config = write_config(config, tmp_path / "chain.yaml")
    run = tmp_path / "cv"
    assert run_medtf("train", config, "--run-dir", run, "--folds", "2", "--quiet") == 0
    report = json.loads((run / "cv_report.json").read_text())
    assert report["complete"] and report["folds"] == 2 and report["task"] == "classification"
    metrics = report["metrics"]
    for name in ("eval/auc", "scratch/eval/auc", "gain/eval/auc"):
        assert name in metrics and {"mean", "sd", "ci_low", "ci_high", "n"} <= set(metrics[name])
    for k in range(2):
        chain = json.loads((run / f"fold_{k}" / f"eval-fold-{k}" / "summary.json").read_text())
        scratch = json.loads((run / f"fold_{k}" / "scratch" / f"eval-fold-{k}" / "summary.json").read_text())
        assert chain["split"] == scratch["split"] == f"fold-{k}"
        a, b = chain["metrics"]["auc"]["value"], scratch["metrics"]["auc"]["value"]
        if a is not None and b is not None:
            assert metrics["gain/eval/auc"]["values"][k] == pytest.approx(a - b)
        # DS1 and DS4 trained with fold k held out
        for phase in ("01-ds1-prostate", "07-ds4-prostate-full"):
            import yaml
            resolved = yaml.safe_load((run / f"fold_{k}" / "phases" / phase / "config.yaml").read_text())
            assert resolved["data"]["fold"] == k
    # `medtf cv-report` re-reads the folds and keeps the chain's scratch and gain rows
    (run / "cv_report.json").unlink()
    assert run_medtf("cv-report", run) == 0
    again = json.loads((run / "cv_report.json").read_text())["metrics"]
    assert again["gain/eval/auc"]["values"] == metrics["gain/eval/auc"]["values"]
    # re-running trains nothing again
    stamp = (run / "fold_1" / "history.csv").stat().st_mtime_ns
    assert run_medtf("train", config, "--run-dir", run, "--folds", "2", "--quiet") == 0
    assert (run / "fold_1" / "history.csv").stat().st_mtime_ns == stamp


def test_a_fold_of_a_chain_as_an_array_task_is_planned_and_guarded(tmp_path, capsys):
    """`medtf train CHAIN --set +data.fold=k` (what a SLURM array task runs) applies the same leak guard as
    `--folds` before anything trains (exit 2, the phase named)."""
    folds = {"fold-0": ["p1", "p2"], "fold-1": ["p3", "p4"], "fold-2": ["p5", "p6"]}
    prostate = _manifest(tmp_path / "prostate", "prostate-mpmri", folds)
    leaky = _manifest(tmp_path / "brain", "image-folders", {"train": ["b1", "p3"], "val": ["b2"]})
    lung = _manifest(tmp_path / "lung", "lung-nodules", {"train": ["l1"], "val": ["l2"]})
    config = write_config(chain_config(prostate, leaky, lung), tmp_path / "chain.yaml")
    assert run_medtf("train", config, "--run-dir", tmp_path / "run", "--set", "+data.fold=1") == 2
    assert "ds2-brain-frozen" in capsys.readouterr().err and not (tmp_path / "run" / "phases").exists()
