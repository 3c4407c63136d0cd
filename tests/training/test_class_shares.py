"""Class imbalance in classification experiments: ``data.class_balance`` reaches the training pipeline, and the
class shares `medtf train` reports match a count over the shards (no balance, oversample, augmentation factor)
and what the training stream actually yields."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from medtf.data.decoder import make_decoder
from medtf.data.manifest import read_manifest, shard_paths
from medtf.data.schema import get_schema
from medtf.training.class_shares import class_share_report
from medtf.training.config import ConfigError, load_config
from medtf.training.experiment import DataConfig
from tests.conftest import run_medtf

REPO = Path(__file__).resolve().parents[2]
OVERSAMPLE = {"method": "oversample", "weights": {0: 1, 1: 1}}
FACTOR = {"method": "augmentation_factor", "factor": 3, "minority": 1}


def _count(data_dir: Path, split: str = "train") -> dict[int, int]:
    """Labels of a split counted by decoding every stored example (independent of the report's reader)."""
    manifest = read_manifest(data_dir)
    files = [str(p) for p in shard_paths(data_dir, manifest, split)]
    ds = tf.data.TFRecordDataset(files, compression_type=manifest["compression"] or "")
    labels = [int(np.asarray(e["label"]).ravel()[0]) for e in
              ds.map(make_decoder(get_schema(manifest["kind"]))).as_numpy_iterator()]
    return {c: labels.count(c) for c in sorted(set(labels))}


def _stream_shares(data: DataConfig, n: int) -> dict[int, float]:
    """Label shares of the first ``n`` training examples exactly as `medtf train` builds the training set."""
    from medtf.tasks import get_task
    from medtf.training.inputs import build_datasets

    train_ds, _ = build_datasets(data.replace(batch_size=1), seed=0,
                                 model_inputs=get_task("classification").model_inputs())
    labels = [int(y.ravel()[0]) for _, y in train_ds.take(n).as_numpy_iterator()]
    return {c: labels.count(c) / n for c in sorted(set(labels))}


def test_reported_shares_match_the_shards_and_the_stream(lgg_tiny):
    counts = _count(lgg_tiny)
    assert set(counts) == {0, 1} and counts[0] != counts[1]  # imbalanced, both classes present
    n0, n1 = counts[0], counts[1]
    epoch = n0 + n1
    expected = {None: {0: n0 / epoch, 1: n1 / epoch}, "oversample": {0: 0.5, 1: 0.5},
                "augmentation_factor": {0: n0 / (n0 + 3 * n1), 1: 3 * n1 / (n0 + 3 * n1)}}
    for balance in (None, OVERSAMPLE, FACTOR):
        data = DataConfig.from_dict({"dir": str(lgg_tiny), "batch_size": 2, "class_balance": balance}, "data")
        report = class_share_report(data)
        method = balance and balance["method"]
        assert report["method"] == method and report["splits"] == ["train"]
        assert report["stored"] == {str(c): n for c, n in counts.items()} and report["unlabelled"] == 0
        assert report["stored_shares"] == pytest.approx({"0": n0 / epoch, "1": n1 / epoch})
        assert report["training_shares"] == pytest.approx({str(c): s for c, s in expected[method].items()})
        # What training reads: whole epochs give the exact shares, oversampling a seeded random mix.
        if method == "oversample":
            seen = _stream_shares(data, 400)
            assert seen[1] == pytest.approx(0.5, abs=0.07)
        else:
            per_epoch = epoch if balance is None else n0 + 3 * n1
            seen = _stream_shares(data, 5 * per_epoch)
            assert seen == pytest.approx(expected[method], abs=1e-9)


def test_an_epoch_holds_the_minority_factor_times(lgg_tiny):
    """``augmentation_factor`` enlarges the epoch (each minority example ``factor`` times, as the thesis enlarged
    its training set); without balance or with oversampling an epoch is the stored examples."""
    from medtf.training.inputs import steps_per_epoch

    counts = _count(lgg_tiny)
    n0, n1 = counts[0], counts[1]
    for balance, examples in ((None, n0 + n1), (OVERSAMPLE, n0 + n1), (FACTOR, n0 + 3 * n1),
                              ({**FACTOR, "minority": 0}, 3 * n0 + n1)):
        data = DataConfig.from_dict({"dir": str(lgg_tiny), "batch_size": 1, "class_balance": balance}, "data")
        assert steps_per_epoch(data) == examples
        # what the training stream yields per pass of the shards, counted (batch 1: one example per step)
        if balance is not None and balance["method"] == "augmentation_factor":
            seen = _stream_shares(data, 5 * examples)
            minority = int(balance["minority"])
            assert seen[minority] == pytest.approx(3 * counts[minority] / examples, abs=1e-9)
    assert steps_per_epoch(DataConfig.from_dict({"dir": str(lgg_tiny), "batch_size": 2, "class_balance": FACTOR},
                                                "data"), {"steps_per_epoch": 7}) == 7  # given: used as is


def test_class_balance_config_errors_name_the_key(lgg_tiny):
    with pytest.raises(ConfigError, match="data.class_balance"):
        DataConfig.from_dict({"dir": str(lgg_tiny), "batch_size": 2, "class_balance": {"method": "smote"}}, "data")
    with pytest.raises(ConfigError, match="data.class_balance.*factor"):
        DataConfig.from_dict({"dir": str(lgg_tiny), "batch_size": 2,
                              "class_balance": {"method": "augmentation_factor", "minority": 1}}, "data")
    # The experiments name the option (commented alternatives) and parse with it set.
    for name in ("prostate_vgg_elu.yaml", "lgg_classifier2d.yaml"):
        text = (REPO / "experiments" / name).read_text()
        assert "# class_balance: {method: augmentation_factor" in text
        assert "# class_balance: {method: oversample" in text
        config = load_config(REPO / "experiments" / name,
                             [f"data.dir={lgg_tiny}", "data.class_balance={method: oversample, weights: {0: 1, 1: 1}}"])
        assert DataConfig.from_dict(config["data"], "data").class_balance["method"] == "oversample"


@pytest.mark.slow
def test_medtf_train_prints_and_writes_the_shares(lgg_tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_medtf("train", REPO / "experiments/lgg_classifier2d.yaml", "--run-dir", run,
                     "--set", f"data.dir={lgg_tiny}", "--set", "train.epochs=1", "--set", "+train.steps_per_epoch=1",
                     "--set", "data.batch_size=2", "--set", f"data.class_balance={json.dumps(FACTOR)}",
                     "--quiet") == 0
    out = capsys.readouterr().out
    counts = _count(lgg_tiny)
    n0, n1 = counts[0], counts[1]
    report = json.loads((run / "class_shares.json").read_text())
    assert report["training_shares"] == pytest.approx({"0": n0 / (n0 + 3 * n1), "1": 3 * n1 / (n0 + 3 * n1)})
    line = [l for l in out.splitlines() if l.startswith("class shares seen in training (augmentation_factor)")]
    assert len(line) == 1 and f"1 {100 * 3 * n1 / (n0 + 3 * n1):.1f}%" in line[0] and f"1 {n1} (" in line[0]
