"""experiments/brain_clip.yaml's augmentation (issue #16 item 3: affine, elastic, intensity from medtf.transforms,
each with p 0.5) reaches the contrastive training pipeline: images change, reports and labels do not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from medtf.training.config import load_config
from medtf.training.experiment import parse_config
from tests.reports.conftest import reports_source  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]


def _experiment(shards="/tmp/unused", *extra):
    return parse_config(load_config(REPO / "experiments/brain_clip.yaml", [f"data.dir={shards}", *extra]))


def test_brain_clip_augmentation_config():
    """The study's three augmentations, each p 0.5, in the experiment the contrastive task trains with (what the
    slow tests below apply)."""
    from medtf.transforms import build_transforms
    from medtf.training.inputs import training_transforms

    data = _experiment().data
    assert [t["name"] for t in data.transforms] == ["random_affine", "random_elastic", "gaussian_noise"]
    assert [t["prob"] for t in data.transforms] == [0.5, 0.5, 0.5]
    built = training_transforms(data)
    assert [type(t).__name__ for t in built.transforms] == [type(t).__name__ for t in
                                                            build_transforms(data.transforms).transforms]
    assert all(t.prob == 0.5 for t in built.transforms)


@pytest.mark.slow  # ~20-40 s on the shared box: three 3D transforms traced in Dataset.map
def test_each_brain_clip_augmentation_applies_with_p_half():
    from medtf.transforms import build_transforms

    data = _experiment().data
    rng = np.random.default_rng(0)
    example = {"image": tf.constant(rng.normal(size=(4, 12, 12, 3)).astype("float32")),
               "report": tf.constant("Acute infarct, left frontal lobe."), "label": tf.constant(1, tf.int64)}
    seeds = 24
    for config in data.transforms:
        assert config["prob"] == 0.5
        transform = build_transforms([config])
        out = tf.data.Dataset.range(seeds).map(  # inside Dataset.map, one seed per example, as in training
            lambda i: transform(example, tf.stack([i, 7]))).batch(seeds).get_single_element()
        changed = np.abs(out["image"].numpy() - example["image"].numpy()[None]).reshape(seeds, -1).max(axis=1) > 0
        # Binomial(24, 0.5): outside [5, 19] with probability < 0.2 %; p 1.0 or 0.0 would fail.
        assert 5 <= changed.sum() <= 19, (config["name"], changed.sum())
        assert (out["report"].numpy() == b"Acute infarct, left frontal lobe.").all()
        assert (out["label"].numpy() == 1).all() and out["image"].shape[1:] == example["image"].shape


@pytest.mark.slow  # ~20 s: convert + two training pipelines with 3D elastic
def test_brain_clip_training_pipeline_augments_the_images(reports_source, tmp_path):  # noqa: F811
    """The training split through `build_datasets` with the experiment's transforms vs with none (same seed, same
    order: the reports match one to one): images differ, reports equal."""
    from tests.reports.conftest import convert_reports
    from medtf.tasks import get_task
    from medtf.training.inputs import build_datasets

    shards = tmp_path / "shards"
    assert convert_reports(reports_source, shards) == 0
    data = _experiment(shards, "data.batch_size=2").data
    to_model = get_task("contrastive").model_inputs()  # raw report strings (no tokenizer): the pairing is visible
    batches = {}
    for name, cfg in (("augmented", data), ("plain", data.replace(transforms=[]))):
        train, _ = build_datasets(cfg, seed=0, model_inputs=to_model)
        batches[name] = [x for x, _ in train.take(3)]
    diffs = []
    for aug, plain in zip(batches["augmented"], batches["plain"]):
        assert (aug["report"].numpy() == plain["report"].numpy()).all()
        diffs += list(np.abs(aug["image"].numpy() - plain["image"].numpy()).reshape(2, -1).max(axis=1))
    assert max(diffs) > 1e-3, diffs
