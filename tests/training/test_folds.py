"""K-fold cross-validation: ``data.fold`` splits (nested ``inner`` selection and the old ``outer`` one),
`aggregate_folds` arithmetic and bookkeeping, ``--folds``."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import TEST_SALT, run_medtf, sigkill_when
from tests.training.conftest import tiny_config


def _convert_folds(root: Path, cases: int, folds: int) -> Path:
    from medtf.synth.lgg_mri import generate_lgg_mri

    generate_lgg_mri(root / "src", cases=cases, seed=5, num_slices=4, size=32)
    out = root / "lgg"
    assert run_medtf("convert", "lgg-mri", "--input", root / "src", "--output", out, "--folds", folds, "--split",
                     "1", "--id-salt", TEST_SALT) == 0
    return out


@pytest.fixture(scope="module")
def lgg_folds3(tmp_path_factory) -> Path:
    """6 patients x 4 slices of 32x32 in fold-0 .. fold-2 (2 patients each, no test split)."""
    return _convert_folds(tmp_path_factory.mktemp("folds3"), 6, 3)


@pytest.fixture(scope="module")
def lgg_folds5(tmp_path_factory) -> Path:
    """5 patients x 4 slices of 32x32, one patient in each of fold-0 .. fold-4."""
    return _convert_folds(tmp_path_factory.mktemp("folds5"), 5, 5)


@pytest.fixture(scope="module")
def lgg_folds2(tmp_path_factory) -> Path:
    """4 patients x 4 slices of 32x32 in fold-0, fold-1."""
    return _convert_folds(tmp_path_factory.mktemp("folds2"), 4, 2)


def _fold_config(data_dir: Path, **data) -> dict:
    config = tiny_config(data_dir)
    config["data"].update(data)
    return config


# === data.fold: which patients train and validate ===

def _patients(data_dir, splits) -> list[str]:
    from medtf.data import make_dataset

    ds = make_dataset(data_dir, splits, batch_size=1, training=False, output="dict")
    return [p.decode() for batch in ds for p in batch["patient_id"].numpy()]


def test_outer_selection_validates_on_fold_k_and_trains_on_the_others(lgg_folds3):
    """``selection_fold: outer`` keeps the splits of before nested selection."""
    from medtf.data.manifest import read_manifest
    from medtf.training.inputs import build_datasets, split_names, steps_per_epoch

    splits = read_manifest(lgg_folds3)["splits"]
    everyone = {p for k in range(3) for p in splits[f"fold-{k}"]["patients"]}
    assert len(everyone) == 6
    for k in range(3):
        config = _fold_config(lgg_folds3, fold=k, selection_fold="outer")
        train_splits, val_split = split_names(config["data"])
        assert train_splits == [f"fold-{j}" for j in range(3) if j != k] and val_split == f"fold-{k}"
        train_patients, val_patients = set(_patients(lgg_folds3, train_splits)), set(_patients(lgg_folds3, val_split))
        assert val_patients == set(splits[f"fold-{k}"]["patients"]) and len(val_patients) == 2
        assert train_patients == everyone - val_patients and not train_patients & val_patients
        # What the engine trains on: the validation set is exactly fold k's examples, in order.
        _, val = build_datasets({**config["data"], "transforms": []})
        got = np.concatenate([x.numpy() for x, _ in val])
        from medtf.data import make_dataset

        want = np.concatenate([x.numpy() for x, _ in make_dataset(lgg_folds3, f"fold-{k}", batch_size=2,
                                                                   training=False)])
        assert got.shape == (splits[f"fold-{k}"]["num_examples"], 32, 32, 3) == (8, 32, 32, 3)
        np.testing.assert_array_equal(got, want)
        config["train"]["steps_per_epoch"] = None  # from the manifest: 16 training slices // batch 2
        assert steps_per_epoch(config["data"], config["train"]) == 8


def test_nested_selection_roles_are_disjoint_and_cover_every_fold(lgg_folds5):
    """K=5, rounds 0..4: train / selection / held-out folds are disjoint and cover the folds, by split name and by
    the patients in the manifest and in the records the datasets read; fold k is held out, fold (k+1) mod 5
    selects."""
    from medtf.data.manifest import read_manifest
    from medtf.training.inputs import fold_roles, split_names

    splits = read_manifest(lgg_folds5)["splits"]
    patients = {name: set(splits[name]["patients"]) for name in splits}
    everyone = set().union(*patients.values())
    assert len(everyone) == 5 and all(len(p) == 1 for p in patients.values())
    selections = []
    for k in range(5):
        data = _fold_config(lgg_folds5, fold=k)["data"]
        roles = fold_roles(data)
        assert roles.held_out == f"fold-{k}" and roles.selection == f"fold-{(k + 1) % 5}"
        assert split_names(data) == (roles.train, roles.selection) and len(roles.train) == 3
        names = [*roles.train, roles.selection, roles.held_out]
        assert sorted(names) == [f"fold-{j}" for j in range(5)]  # disjoint (no repeats) and complete
        train = set().union(*(patients[s] for s in roles.train))
        chooser, held_out = patients[roles.selection], patients[roles.held_out]
        assert not train & chooser and not train & held_out and not chooser & held_out
        assert train | chooser | held_out == everyone
        # What is really read: the records' patient ids, not only the split names.
        assert set(_patients(lgg_folds5, roles.train)) == train
        assert set(_patients(lgg_folds5, roles.selection)) == chooser
        selections.append(roles.selection)
    assert sorted(selections) == [f"fold-{j}" for j in range(5)]  # every fold selects exactly once


def test_inner_selection_validates_on_the_next_fold(lgg_folds3):
    """Default ``inner``: what validation (checkpoint, early stopping) reads is fold (k+1) mod 3, and training
    reads only the remaining fold."""
    from medtf.data import make_dataset
    from medtf.training.inputs import build_datasets, steps_per_epoch

    for k in range(3):
        config = _fold_config(lgg_folds3, fold=k)
        _, val = build_datasets({**config["data"], "transforms": []})
        got = np.concatenate([x.numpy() for x, _ in val])
        want = np.concatenate([x.numpy() for x, _ in make_dataset(lgg_folds3, f"fold-{(k + 1) % 3}", batch_size=2,
                                                                   training=False)])
        held = np.concatenate([x.numpy() for x, _ in make_dataset(lgg_folds3, f"fold-{k}", batch_size=2,
                                                                   training=False)])
        assert got.shape == want.shape == (8, 32, 32, 3)
        np.testing.assert_array_equal(got, want)
        assert not np.array_equal(got, held)
        config["train"]["steps_per_epoch"] = None  # one training fold: 8 slices // batch 2
        assert steps_per_epoch(config["data"], config["train"]) == 4


def test_inner_selection_refuses_two_folds(lgg_folds2, tmp_path, capsys):
    from medtf.training.config import ConfigError
    from medtf.training.experiment import parse_config
    from medtf.training.inputs import split_names

    with pytest.raises(ConfigError, match=r"data.fold=0 on .*: selection_fold 'inner' needs at least 3 folds .*"
                                          r"manifest has 2.*data.selection_fold: outer"):
        split_names(_fold_config(lgg_folds2, fold=0)["data"])
    assert split_names(_fold_config(lgg_folds2, fold=0, selection_fold="outer")["data"]) == (["fold-1"], "fold-0")
    with pytest.raises(ConfigError, match=r"data.selection_fold: unknown selection fold 'nested'"):
        parse_config(_fold_config(lgg_folds2, selection_fold="nested"), components=False)
    # medtf train --folds refuses before anything is written.
    path = tmp_path / "cv.yaml"
    path.write_text(yaml.safe_dump(_fold_config(lgg_folds2)))
    assert run_medtf("train", path, "--run-dir", tmp_path / "run", "--folds", 2) == 2
    assert "needs at least 3 folds" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_without_data_fold_the_named_splits_are_used(lgg_folds3):
    from medtf.training.inputs import split_names

    config = _fold_config(lgg_folds3, train_split=["fold-0", "fold-1"], val_split="fold-2")
    assert split_names(config["data"]) == (["fold-0", "fold-1"], "fold-2")
    assert split_names({"dir": str(lgg_folds3), "batch_size": 2}) == ("train", "val")


def test_bad_fold_settings_name_the_folder_and_its_splits(lgg_folds3, lgg_tiny):
    from medtf.training.config import ConfigError
    from medtf.training.inputs import split_names

    with pytest.raises(ConfigError, match=r"data.fold=3 is out of range: .*lgg has 3 folds .*fold-2"):
        split_names(_fold_config(lgg_folds3, fold=3)["data"])
    with pytest.raises(ConfigError, match="out of range"):
        split_names(_fold_config(lgg_folds3, fold=-1)["data"])
    with pytest.raises(ConfigError, match=r"data.folds=5, but .* has 3 folds"):
        split_names(_fold_config(lgg_folds3, fold=0, folds=5)["data"])
    assert split_names(_fold_config(lgg_folds3, fold=1, folds=3)["data"])[1] == "fold-2"
    with pytest.raises(ConfigError, match=r"data.fold: expected an integer or null, got True"):
        split_names(_fold_config(lgg_folds3, fold=True)["data"])
    with pytest.raises(ConfigError, match=rf"{lgg_tiny} is not a K-fold shard folder \(splits: \['train', 'val', "
                                          r"'test'\]\)"):
        split_names(_fold_config(lgg_tiny, fold=0)["data"])


# === aggregate_folds on fabricated fold directories ===

HISTORIES = {  # fold -> rows (epoch, val_dice, val_loss, dice); the best val_dice epoch is marked
    0: [(0, 0.40, 0.90, 0.30), (1, 0.50, 0.80, 0.35)],   # best: epoch 1
    1: [(0, 0.70, 0.60, 0.50), (1, 0.65, 0.55, 0.60)],   # best: epoch 0 (val_loss is lower at epoch 1)
    2: [(0, 0.60, 0.70, 0.40), (1, 0.60, 0.65, 0.45)],   # a tie: the first epoch (ModelCheckpoint keeps it)
}
EVAL_DICE = {0: 0.55, 1: 0.75, 2: 0.62}
EVAL_HD95 = {0: 4.0, 1: None, 2: 6.0}  # fold 1: HD95 undefined in every case (null in summary.json)


def _fake_fold(run_dir: Path, k: int, folds: int = 3, evaluated: bool = True,
               selection: str | None = "inner") -> Path:
    path = run_dir / f"fold_{k}"
    (path / "checkpoints").mkdir(parents=True)
    selection = {} if selection is None else {"selection_fold": selection}  # None: a config.yaml from before it
    (path / "config.yaml").write_text(yaml.safe_dump(
        {"data": {"dir": str(run_dir / "nowhere"), "batch_size": 2, "fold": k, "folds": folds, **selection},
         "model": {"name": "unet2d_small"}, "loss": {"name": "dice_focal"},
         "train": {"epochs": 2, "monitor": "val_dice", "mode": "max"}}))
    with open(path / "history.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "dice", "learning_rate", "val_dice", "val_loss"])
        for epoch, val_dice, val_loss, dice in HISTORIES[k]:
            writer.writerow([epoch, dice, 0.001, val_dice, val_loss])
    (path / "checkpoints" / "best.keras").write_bytes(b"")
    if evaluated:
        _fake_summary(run_dir, k)
    return path


def _fake_summary(run_dir: Path, k: int) -> None:
    out = run_dir / f"fold_{k}" / f"eval-fold-{k}"
    out.mkdir(exist_ok=True)
    metrics = {"dice": {"mean": EVAL_DICE[k], "sd": 0.1, "median": EVAL_DICE[k], "n": 2, "n_nan": 0},
               "hd95": {"mean": EVAL_HD95[k], "sd": None, "median": None, "n": 2, "n_nan": 0}}
    (out / "summary.json").write_text(json.dumps({"kind": "lgg-mri", "split": f"fold-{k}", "metrics": metrics,
                                                  "extra": {"dice_tumour_slices": EVAL_DICE[k] + 0.1,
                                                            "n_tumour_slices": 3 + k}, "notes": []}))


def test_aggregate_matches_hand_computed_mean_and_sample_sd(tmp_path):
    from medtf.training.folds import aggregate_folds

    for k in range(3):
        _fake_fold(tmp_path, k)
    report = aggregate_folds(tmp_path)
    assert report["folds"] == 3 and report["complete"] and report["missing"] == []
    assert [r["best_epoch"] for r in report["fold_status"]] == [1, 0, 0]
    # Inner selection: each fold chose on the next one, and the report says so.
    assert report["selection_fold"] == "inner"
    assert [r["selection_split"] for r in report["fold_status"]] == ["fold-1", "fold-2", "fold-0"]
    assert any("nested selection" in note for note in report["notes"])
    m = report["metrics"]
    assert m["history/val_dice"]["values"] == [0.5, 0.7, 0.6]
    assert m["history/val_dice"]["mean"] == pytest.approx(0.6, rel=1e-12)
    assert m["history/val_dice"]["sd"] == pytest.approx(0.1, rel=1e-12)  # sqrt((0.01 + 0.01 + 0) / (3 - 1))
    assert m["history/val_loss"]["values"] == [0.8, 0.6, 0.7]  # at the best val_dice epoch, not the lowest loss
    assert m["history/best_epoch"]["values"] == [1, 0, 0]
    assert "history/dice" not in m  # training metrics are not validation results
    assert m["eval/dice"]["values"] == [0.55, 0.75, 0.62]
    assert m["eval/dice"]["mean"] == pytest.approx(1.92 / 3, rel=1e-12)
    assert m["eval/dice"]["sd"] == pytest.approx(math.sqrt(((0.55 - 0.64) ** 2 + 0.11 ** 2 + 0.02 ** 2) / 2),
                                                 rel=1e-12)
    hd = m["eval/hd95"]
    assert hd["n"] == 2 and hd["n_nan"] == 1 and hd["mean"] == 5.0 and hd["sd"] == pytest.approx(math.sqrt(2))
    assert m["eval_extra/n_tumour_slices"]["values"] == [3, 4, 5] and m["eval_extra/n_tumour_slices"]["sd"] == 1.0
    saved = json.loads((tmp_path / "cv_report.json").read_text())
    assert saved["metrics"]["eval/hd95"]["values"] == [4.0, None, 6.0]  # NaN is written as null
    with open(tmp_path / "cv_report.csv", newline="") as f:
        rows = {r["metric"]: r for r in csv.DictReader(f)}
    assert [float(rows["history/val_dice"][f"fold_{k}"]) for k in range(3)] == [0.5, 0.7, 0.6]
    assert float(rows["history/val_dice"]["sd"]) == pytest.approx(0.1) and rows["history/val_dice"]["n"] == "3"


def test_a_cross_validation_from_before_nested_selection_is_reported_as_outer(tmp_path, capsys):
    """Fold configs without ``selection_fold`` (written before it existed) chose on the scored fold: said so."""
    from medtf.training.folds import aggregate_folds, format_report

    for k in range(3):
        _fake_fold(tmp_path, k, selection=None)
    report = aggregate_folds(tmp_path, write=False)
    assert report["selection_fold"] == "outer"
    assert [r["selection_split"] for r in report["fold_status"]] == ["fold-0", "fold-1", "fold-2"]
    assert "chose their checkpoint on the fold eval/* scores (optimistic)" in format_report(report)


def test_missing_unfinished_and_unevaluated_folds_are_reported(tmp_path, capsys):
    from medtf.training.folds import aggregate_folds

    for k in range(2):
        _fake_fold(tmp_path, k, folds=4)
    (tmp_path / "fold_1" / "backup").mkdir()  # interrupted: re-running resumes it
    _fake_fold(tmp_path, 2, folds=4, evaluated=False)
    report = aggregate_folds(tmp_path)  # fold_3 never started; K = 4 comes from data.folds
    status = {r["fold"]: (r["status"], r["detail"]) for r in report["fold_status"]}
    assert status[0] == ("ok", "")
    assert status[1][0] == "unfinished" and "backup/ present" in status[1][1]
    assert status[2][0] == "not_evaluated" and "eval-fold-2" in status[2][1]
    assert status[3] == ("missing", "no fold_3 directory")
    assert not report["complete"] and report["missing"] == [1, 2, 3]
    dice = report["metrics"]["history/val_dice"]
    assert dice["values"] == [0.5, None, 0.6, None] and dice["n"] == 2 and dice["missing"] == [1, 3]
    assert dice["mean"] == pytest.approx(0.55) and dice["sd"] == pytest.approx(math.sqrt(0.005))
    assert report["metrics"]["eval/dice"]["values"] == [0.55, None, None, None]
    assert report["metrics"]["eval/dice"]["n"] == 1 and report["metrics"]["eval/dice"]["sd"] is None

    capsys.readouterr()
    assert run_medtf("cv-report", tmp_path) == 1  # incomplete: a non-zero exit, the table still written
    out = capsys.readouterr().out
    assert "INCOMPLETE (folds [1, 2, 3] are not ok)" in out and "fold 3: missing: no fold_3 directory" in out
    assert "0.55 ± 0.07071" in out  # history/val_dice over the two folds that have it
    # A stale evaluation (older than the best checkpoint) does not count either.
    _fake_summary(tmp_path, 2)
    os.utime(tmp_path / "fold_2" / "eval-fold-2" / "summary.json", (1, 1))
    assert aggregate_folds(tmp_path, write=False)["fold_status"][2]["detail"].startswith("evaluation older")
    assert run_medtf("cv-report", tmp_path / "nothing-here") == 2


def test_more_folds_in_the_manifest_than_directories(tmp_path, lgg_folds3):
    """An array that ran only tasks 0-1 of a 3-fold manifest: fold 2 is missing, not silently dropped."""
    from medtf.training.folds import aggregate_folds

    for k in range(2):
        path = _fake_fold(tmp_path, k)
        config = yaml.safe_load((path / "config.yaml").read_text())
        config["data"] = {"dir": str(lgg_folds3), "batch_size": 2, "fold": k}  # as a SLURM array task: no folds
        (path / "config.yaml").write_text(yaml.safe_dump(config))
        _fake_summary(tmp_path, k)
    report = aggregate_folds(tmp_path)
    assert report["folds"] == 3 and report["missing"] == [2]
    assert report["metrics"]["eval/dice"]["values"] == [0.55, 0.75, None]


# === medtf train --folds, end to end ===

def _evaluate_loss(run_dir: Path, splits: list[str]) -> list[float]:
    """The compiled loss of ``run_dir``'s best checkpoint on each split, as validation reads it (one pass)."""
    import keras

    from medtf.tasks import get_task
    from medtf.training.experiment import load_experiment
    from medtf.training.inputs import build_datasets

    experiment = load_experiment(run_dir / "config.yaml")
    model = keras.saving.load_model(run_dir / "checkpoints" / "best.keras", compile=False)
    task = get_task(experiment.task)
    task.compile(model, keras.optimizers.SGD(), loss=experiment.loss.as_dict())
    losses = []
    for split in splits:
        data = experiment.data.replace(fold=None, folds=None, train_split=split, val_split=split)
        _, val = build_datasets(data, None, seed=experiment.data_seed, model_inputs=task.model_inputs(model))
        losses.append(float(model.evaluate(val, return_dict=True, verbose=0)["loss"]))
    return losses


def test_train_folds_end_to_end(tmp_path, lgg_folds3, capsys):
    """``--folds 3`` with nested selection: each fold's logged validation (what chose its best checkpoint) is the
    inner fold (k+1) mod 3, not the held-out fold k that its evaluation scores."""
    config = _fold_config(lgg_folds3)
    config["train"].update(epochs=1, steps_per_epoch=2, image_panels=False, log_every_n_steps=0, hparams=False)
    path = tmp_path / "cv.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"

    assert run_medtf("train", path, "--run-dir", run_dir, "--folds", 2) == 2
    assert "--folds=2, but" in capsys.readouterr().err and not run_dir.exists()

    assert run_medtf("train", path, "--run-dir", run_dir, "--folds", 3) == 0
    out = capsys.readouterr().out
    assert "fold 0/3: training in" in out and "on fold-2, choosing on fold-1, held out fold-0" in out
    report = json.loads((run_dir / "cv_report.json").read_text())
    assert report["folds"] == 3 and report["complete"] and "cross-validation" in out
    assert report["selection_fold"] == "inner"
    for name in ("history/val_dice", "history/val_loss", "eval/dice", "eval/hd95", "eval_extra/dice_tumour_slices"):
        assert report["metrics"][name]["n"] + report["metrics"][name]["n_nan"] == 3, name
    for k in range(3):
        fold = run_dir / f"fold_{k}"
        resolved = yaml.safe_load((fold / "config.yaml").read_text())
        assert resolved["data"]["fold"] == k and resolved["data"]["folds"] == 3
        assert resolved["data"]["selection_fold"] == "inner"
        assert report["fold_status"][k]["selection_split"] == f"fold-{(k + 1) % 3}"
        with open(fold / "history.csv", newline="") as f:
            (row,) = list(csv.DictReader(f))  # one epoch
        assert report["metrics"]["history/val_dice"]["values"][k] == float(row["val_dice"])
        # The loss that chose the checkpoint is the inner fold's, and not the held-out fold's.
        val_loss = float(row["val_loss"])
        inner, held_out = _evaluate_loss(fold, [f"fold-{(k + 1) % 3}", f"fold-{k}"])
        assert inner == pytest.approx(val_loss, rel=1e-5)
        assert abs(held_out - val_loss) > 1e-4 * val_loss  # 2 steps of training: close, yet 10x the tolerance apart
        summary = json.loads((fold / f"eval-fold-{k}" / "summary.json").read_text())
        assert summary["split"] == f"fold-{k}" and summary["n_cases"] == 2  # the held-out fold: two patients
        assert report["metrics"]["eval/dice"]["values"][k] == summary["metrics"]["dice"]["mean"]
    values = report["metrics"]["eval/dice"]["values"]
    assert report["metrics"]["eval/dice"]["mean"] == pytest.approx(np.mean(values), rel=1e-12)
    assert report["metrics"]["eval/dice"]["sd"] == pytest.approx(np.std(values, ddof=1), rel=1e-12)

    # Re-running skips the finished folds (no training, no evaluation): the files stay as they were.
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and not p.name.startswith("cv_")}
    assert run_medtf("train", path, "--run-dir", run_dir, "--folds", 3) == 0
    assert capsys.readouterr().out.count("finished earlier") == 3
    assert {p: p.stat().st_mtime_ns for p in before} == before


def _backup_epoch(meta: Path) -> int:
    try:
        return int(json.loads(meta.read_text())["epoch"])
    except (OSError, ValueError, KeyError):  # not there yet, or caught mid-write
        return -1


@pytest.mark.slow  # ~37 s; run resume is in make test (tests/training/test_resume.py), fold skipping in test_train_folds_end_to_end
def test_killed_cross_validation_resumes_the_interrupted_fold(tmp_path, lgg_folds2):
    """SIGKILL while fold 1 trains: the same command skips fold 0 and resumes fold 1 from its backup."""
    import subprocess
    import sys

    from medtf.training.folds import training_state

    epochs = 4
    config = _fold_config(lgg_folds2, selection_fold="outer")  # two folds: only outer selection
    config["train"].update(epochs=epochs, steps_per_epoch=25, image_panels=False, log_every_n_steps=0,
                           hparams=False)
    path = tmp_path / "cv.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    repo = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "medtf.cli.main", "train", str(path), "--run-dir", str(run_dir), "--folds", "2"]
    env = {**os.environ, "PYTHONPATH": str(repo), "TF_CPP_MIN_LOG_LEVEL": "2"}
    meta = run_dir / "fold_1" / "backup" / "training_metadata.json"

    with open(tmp_path / "first.log", "wb") as log:
        first = subprocess.Popen(command, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
        sigkill_when(first, lambda: _backup_epoch(meta) >= 1, 120, "fold 1 backed up no epoch",
                     lambda: (tmp_path / "first.log").read_text())
    assert training_state(run_dir / "fold_0") == (True, "")
    assert not training_state(run_dir / "fold_1")[0] and not (run_dir / "cv_report.json").exists()
    resume_at = _backup_epoch(meta)
    assert 1 <= resume_at < epochs

    second = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=180)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-3000:]
    assert "fold 0/2: finished earlier" in out and "lgg-mri fold-0" not in out  # neither retrained nor re-evaluated
    assert f"Epoch {resume_at + 1}/{epochs}" in out and f"Epoch 1/{epochs}" not in out
    with open(run_dir / "fold_1" / "history.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(epochs))
    report = json.loads((run_dir / "cv_report.json").read_text())
    assert report["complete"] and report["metrics"]["eval/dice"]["n"] == 2


def test_export_fingerprint_reads_the_run_s_training_folds():
    """An exported model's fingerprint describes the folds its run trained on: K-2 with inner selection, K-1 with
    outer or in a config.yaml written before nested selection (no selection_fold key)."""
    from medtf.export.fingerprint import training_splits

    manifest = {"splits": {f"fold-{j}": {} for j in range(5)}}
    assert training_splits(manifest, {"fold": 2, "selection_fold": "inner"}) == ["fold-0", "fold-1", "fold-4"]
    assert training_splits(manifest, {"fold": 2, "selection_fold": "outer"}) == ["fold-0", "fold-1", "fold-3",
                                                                                 "fold-4"]
    assert training_splits(manifest, {"fold": 2}) == ["fold-0", "fold-1", "fold-3", "fold-4"]


def test_slurm_array_refuses_inner_selection_on_two_folds(lgg_folds2, lgg_folds3, tmp_path, capsys):
    """`medtf slurm CONFIG --array` (task id -> data.fold) refuses at submission what every task would refuse."""
    for data_dir, selection, code in ((lgg_folds2, "inner", 2), (lgg_folds2, "outer", 0), (lgg_folds3, "inner", 0)):
        path = tmp_path / f"{data_dir.parent.name}-{selection}.yaml"
        path.write_text(yaml.safe_dump(_fold_config(data_dir, selection_fold=selection)))
        capsys.readouterr()
        assert run_medtf("slurm", path, "--array", "0-2", "--run-dir", tmp_path / "cv") == code
        out, err = capsys.readouterr()
        if code:
            assert "selection_fold 'inner' needs at least 3 folds" in err and "has 2" in err
        else:
            assert '--set +data.fold="${FOLD}"' in out


def test_choosers_select_on_the_inner_fold(lgg_folds3, lgg_folds2):
    """`medtf tune` / `medtf roulette` ask `check_selection_split`: with data.fold it is the round's selection fold."""
    from medtf.training.config import ConfigError
    from medtf.training.experiment import parse_config
    from medtf.training.selection import check_selection_split

    def chosen(data_dir, **data):
        return check_selection_split(parse_config(_fold_config(data_dir, **data), components=False), "medtf tune")

    assert [chosen(lgg_folds3, fold=k) for k in range(3)] == ["fold-1", "fold-2", "fold-0"]
    assert [chosen(lgg_folds3, fold=k, selection_fold="outer") for k in range(3)] == ["fold-0", "fold-1", "fold-2"]
    with pytest.raises(ConfigError, match="needs at least 3 folds"):
        chosen(lgg_folds2, fold=1)


def test_an_interrupted_fold_is_not_resumed_under_another_selection(lgg_folds3, tmp_path):
    """A fold started before nested selection (config.yaml without ``selection_fold``: outer) and interrupted is
    refused under today's default (inner), with the two ways out; nothing is trained or overwritten."""
    from medtf.training.experiment import ConfigError
    from medtf.training.folds import run_cross_validation

    fold = _fake_fold(tmp_path, 0, selection=None)
    (fold / "backup").mkdir()
    before = (fold / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"started with data.selection_fold outer .* resume with inner.*"
                                          r"--set data.selection_fold=outer.*delete"):
        run_cross_validation(_fold_config(lgg_folds3), tmp_path, evaluate=False, verbose=False)
    assert (fold / "config.yaml").read_text() == before and not (tmp_path / "fold_1").exists()
