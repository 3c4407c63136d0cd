"""Model roulette: the argmax of the recorded validation scores is kept, the test split is refused (also hidden among
the training splits or as patients under another split's name), work is split across tasks and continues after a
kill, `medtf train --init-from` starts from the winner's weights, and per cross-validation round it scores on the
round's inner selection fold only and refuses held-out-fold / test patients."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.conftest import run_medtf

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = REPO / "experiments/lgg_classifier2d.yaml"


def _tiny(lgg_tiny):
    return ["--set", f"data.dir={lgg_tiny}", "--set", "data.batch_size=4", "--set", "model.args.depth=2",
            "--set", "model.args.base_filters=4"]


def test_roulette_keeps_the_argmax_of_its_scores_and_train_starts_from_it(lgg_tiny, tmp_path):
    out = tmp_path / "roulette"
    # Two tasks (as a SLURM array would run them), then the merge.
    for index in (1, 0):
        assert run_medtf("roulette", EXPERIMENT, *_tiny(lgg_tiny), "--candidates", 4, "--out", out,
                         "--metric", "val_loss", "--num-tasks", 2, "--task-index", index, "--quiet") == 0
    assert sorted(p.name for p in (out / "candidates").glob("*.json")) == [f"seed-{s}.json" for s in range(4)]
    assert run_medtf("roulette", EXPERIMENT, *_tiny(lgg_tiny), "--candidates", 4, "--out", out, "--merge",
                     "--quiet") == 0
    summary = json.loads((out / "roulette.json").read_text())
    scores = [s["score"] for s in summary["scores"]]
    assert summary["metric"] == "loss" and summary["mode"] == "min" and summary["split"] == "val"
    assert len(set(scores)) == 4                       # the seeds give different initialisations
    assert summary["best"]["seed"] == int(np.argmin(scores))
    assert sorted(p.name for p in (out / "candidates").glob("*.keras")) == [f"seed-{summary['best']['seed']}.keras"]

    # The kept weights reproduce the recorded score on the validation split.
    from medtf.tasks import get_task
    from medtf.training.experiment import load_experiment
    from medtf.training.inputs import build_datasets

    experiment = load_experiment(EXPERIMENT, [a for a in _tiny(lgg_tiny) if a != "--set"])
    best = keras.saving.load_model(out / "best.keras", compile=False)
    task = get_task("classification")
    task.compile(best, keras.optimizers.Adam())
    _, val = build_datasets(experiment.data, None, seed=0, model_inputs=task.model_inputs(best))
    assert best.evaluate(val, return_dict=True, verbose=0)["loss"] == pytest.approx(summary["best"]["score"],
                                                                                      rel=1e-5)

    # `medtf train --init-from` starts there: an epoch of zero learning rate keeps the winner's weights.
    run = tmp_path / "run"
    assert run_medtf("train", EXPERIMENT, *_tiny(lgg_tiny), "--set", "train.epochs=1",
                     "--set", "+train.steps_per_epoch=1", "--set", "optimizer.learning_rate=1e-12",
                     "--set", "data.transforms=[]", "--init-from", out / "best.keras", "--run-dir", run,
                     "--quiet") == 0
    trained = keras.saving.load_model(run / "checkpoints" / "last.keras", compile=False)
    conv = [w for w in trained.weights if "conv" in w.path and "kernel" in w.path][0]
    start = [w for w in best.weights if w.path == conv.path][0]
    np.testing.assert_allclose(np.asarray(conv), np.asarray(start), atol=1e-6)


def test_roulette_refuses_a_test_split_and_reports_missing_candidates(lgg_tiny, tmp_path, capsys):
    assert run_medtf("roulette", EXPERIMENT, *_tiny(lgg_tiny), "--set", "+data.val_split=test", "--candidates", 2,
                     "--out", tmp_path / "r") == 2
    assert "refuses to select on 'test'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert run_medtf("roulette", EXPERIMENT, *_tiny(lgg_tiny), "--candidates", 2, "--out", tmp_path / "r2",
                     "--merge") == 2
    assert "2 of 2 candidates are not scored yet" in capsys.readouterr().err


def test_roulette_refuses_a_test_split_among_the_training_splits(lgg_tiny, tmp_path, capsys):
    # Warm-up would train on it: the same guard as `medtf tune` (medtf.training.selection).
    assert run_medtf("roulette", EXPERIMENT, *_tiny(lgg_tiny), "--set", "+data.train_split=[train,test]",
                     "--candidates", 2, "--warmup-steps", 1, "--out", tmp_path / "r") == 2
    assert "refuses data.train_split ['train', 'test']: it contains the test split" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def _manifest_copy(src: Path, dst: Path, move: dict[str, str]) -> Path:
    """``dst`` with ``src``'s manifest (the guards read only the manifest), one patient of split A also in B."""
    manifest = json.loads((src / "manifest.json").read_text())
    for a, b in move.items():
        manifest["splits"][b]["patients"].append(manifest["splits"][a]["patients"][0])
    dst.mkdir()
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_roulette_refuses_test_patients_under_another_split_name(lgg_tiny, tmp_path, capsys):
    data = _manifest_copy(lgg_tiny, tmp_path / "val_holds_test", {"test": "val"})
    args = ["roulette", EXPERIMENT, *_tiny(lgg_tiny), "--set", f"data.dir={data}", "--candidates", 2]
    assert run_medtf(*args, "--out", tmp_path / "r") == 2
    assert "validation split 'val' holds 1 patient(s) of the test split" in capsys.readouterr().err
    data = _manifest_copy(lgg_tiny, tmp_path / "train_holds_val", {"val": "train"})
    args = ["roulette", EXPERIMENT, *_tiny(lgg_tiny), "--set", f"data.dir={data}", "--candidates", 2]
    assert run_medtf(*args, "--warmup-steps", 1, "--out", tmp_path / "r") == 2
    assert "warm-up training splits ['train'] hold 1 patient(s) of the validation split" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def lgg_folds(tmp_path_factory) -> dict[str, Path]:
    """8 tiny patients: 2 test + 3 folds of 2 (``folded``), and the same patients converted whole as ``train``
    (``whole``, same ID salt: its hashed patients are the folded set's)."""
    from medtf.synth.lgg_mri import generate_lgg_mri

    from tests.conftest import TEST_SALT

    root = tmp_path_factory.mktemp("roulette_folds")
    generate_lgg_mri(root / "src", cases=8, seed=11, num_slices=4, size=32)
    out = {"folded": root / "folded", "whole": root / "whole"}
    assert run_medtf("convert", "lgg-mri", "--input", root / "src", "--output", out["folded"], "--folds", 3,
                     "--split", "0.75,0,0.25", "--id-salt", TEST_SALT) == 0
    assert run_medtf("convert", "lgg-mri", "--input", root / "src", "--output", out["whole"], "--split", "1,0,0",
                     "--id-salt", TEST_SALT) == 0
    return out


def test_roulette_on_a_fold_scores_its_inner_fold_only(lgg_folds, tmp_path, capsys):
    """``--fold 1``: scored on the inner fold-2 (what `medtf train` of fold 1 chooses its checkpoint on), never on
    the held-out fold-1."""
    from medtf.data.manifest import read_manifest
    from medtf.tasks import get_task
    from medtf.training.experiment import load_experiment
    from medtf.training.inputs import build_datasets

    folded, out = lgg_folds["folded"], tmp_path / "fold1"
    splits = read_manifest(folded)["splits"]
    assert sorted(splits) == ["fold-0", "fold-1", "fold-2", "test"] and all(splits[s]["patients"] for s in splits)
    tiny = _tiny(folded)
    assert run_medtf("roulette", EXPERIMENT, *tiny, "--fold", 1, "--candidates", 1, "--metric", "val_loss",
                     "--out", out, "--quiet") == 0
    assert "--set +data.fold=1 --init-from" in capsys.readouterr().out
    summary = json.loads((out / "roulette.json").read_text())
    assert summary["split"] == "fold-2" and summary["best"]["seed"] == 0

    # The recorded score is the candidate's binary cross-entropy on fold-2 (NumPy), not on the held-out fold-1.
    model = keras.saving.load_model(out / "best.keras", compile=False)

    def loss(split: str) -> float:
        experiment = load_experiment(EXPERIMENT, [a for a in tiny if a != "--set"] + [f"+data.val_split={split}",
                                                                                "+data.train_split=fold-0"])
        _, val = build_datasets(experiment.data, None, seed=0,
                                model_inputs=get_task("classification").model_inputs(model))
        batches = list(val.as_numpy_iterator())
        y = np.concatenate([b[1] for b in batches]).astype(np.float64)
        p = np.clip(np.asarray(model(np.concatenate([b[0] for b in batches]), training=False), np.float64),
                    1e-7, 1 - 1e-7)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    score = summary["best"]["score"]
    assert loss("fold-2") == pytest.approx(score, rel=1e-6)
    assert abs(loss("fold-1") - score) > 1e-5 * score  # untrained: ~ln 2 on both folds, yet 10x the tolerance apart

    # One folder holds one round: another round's roulette or merge into it is refused, naming the record.
    assert run_medtf("roulette", EXPERIMENT, *tiny, "--fold", 0, "--candidates", 1, "--metric", "val_loss",
                     "--out", out) == 2
    assert "scored with {'metric': 'loss', 'mode': 'min', 'split': 'fold-2'" in capsys.readouterr().err
    assert run_medtf("roulette", EXPERIMENT, *tiny, "--fold", 0, "--candidates", 1, "--out", out, "--merge") == 2
    assert "scored on 'fold-2', but this roulette scores on 'fold-1'" in capsys.readouterr().err


def test_roulette_fold_splits_inner_and_outer(lgg_folds, tmp_path):
    """`check_split` per round: inner scores on fold (k+1) mod 3 and refuses held-out patients hidden in the
    scoring or warm-up folds; outer scores on fold k itself (the old choice)."""
    from medtf.training.config import ConfigError
    from medtf.training.experiment import load_experiment
    from medtf.training.roulette import check_split

    def experiment(data_dir, k, *extra):
        return load_experiment(EXPERIMENT, [f"data.dir={data_dir}", f"+data.fold={k}", *extra])

    folded = lgg_folds["folded"]
    assert [check_split(experiment(folded, k), 1) for k in range(3)] == ["fold-1", "fold-2", "fold-0"]
    outer = [check_split(experiment(folded, k, "data.selection_fold=outer"), 1) for k in range(3)]
    assert outer == ["fold-0", "fold-1", "fold-2"]
    # A held-out (fold-0) patient also listed in fold-1 (round 0's scoring fold): refused, with or without warm-up.
    data = _manifest_copy(folded, tmp_path / "inner_holds_held_out", {"fold-0": "fold-1"})
    with pytest.raises(ConfigError, match=r"splits \['fold-1'\] hold 1 patient\(s\) of the held-out fold 'fold-0'"):
        check_split(experiment(data, 0), 0)
    # ... listed in fold-2 (round 0's training fold): refused for a warm-up, which trains on it; untrained, allowed.
    data = _manifest_copy(folded, tmp_path / "train_holds_held_out", {"fold-0": "fold-2"})
    with pytest.raises(ConfigError, match=r"\['fold-1', 'fold-2'\] hold 1 patient\(s\) of the held-out fold"):
        check_split(experiment(data, 0), 1)
    assert check_split(experiment(data, 0), 0) == "fold-1"


def test_roulette_on_a_fold_refuses_held_out_and_test_patients(lgg_folds, tmp_path, capsys):
    folded = lgg_folds["folded"]
    # A test patient inside fold-1: scoring on it (round 0), or warming up on it (round 2), is refused.
    data = _manifest_copy(folded, tmp_path / "fold_holds_test", {"test": "fold-1"})
    base = ["roulette", EXPERIMENT, "--set", f"data.dir={data}", "--candidates", 2, "--out", tmp_path / "r"]
    assert run_medtf(*base, "--fold", 0) == 2
    assert "validation split 'fold-1' holds 1 patient(s) of the test split" in capsys.readouterr().err
    assert run_medtf(*base, "--fold", 2, "--warmup-steps", 1) == 2
    assert "warm-up training splits ['fold-1'] hold 1 patient(s)" in capsys.readouterr().err

    # A transfer chain for fold 0 whose first phase trains on the same patients converted whole: refused as
    # `medtf train CHAIN --set +data.fold=0` refuses it (medtf.training.cv_transfer's fold planning).
    import yaml

    config = yaml.safe_load(EXPERIMENT.read_text())
    config["data"]["dir"] = str(folded)
    config["transfer"] = {"phases": [{"name": "whole", "data": {"dir": str(lgg_folds["whole"])}},
                                     {"name": "target"}]}
    chain = tmp_path / "chain.yaml"
    chain.write_text(yaml.safe_dump(config))
    assert run_medtf("roulette", chain, "--fold", 0, "--candidates", 2, "--out", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert "transfer phase whole: its training data" in err and "held-out fold-0 or test split" in err
    assert not (tmp_path / "r").exists()
