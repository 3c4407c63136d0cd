"""model.init_from pairs layers by name (medtf.training.init_weights): a MIM run without nucleus tokens into a
nucleus classifier carries every block (pairing in network order stopped at the first nucleus layer), the report
names what was copied / skipped / missing / unused, and strict mode refuses a partial carry."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from medtf.models.vit import MaskedImageModel, NucleusClassifier
from medtf.training.init_weights import keyed_layers, load_initial_weights, write_report

TINY = dict(image_size=32, patch_size=8, num_channels=3, hidden_dim=16, num_layers=2, num_heads=2, mlp_dim=32,
            position_embedding="xywh")


@pytest.fixture(scope="module")
def plain_mim(tmp_path_factory):
    """A MIM checkpoint without nucleus tokens (pixel targets)."""
    keras.utils.set_random_seed(1)
    path = tmp_path_factory.mktemp("init") / "mim.keras"
    model = MaskedImageModel(**TINY, min_mask_patches=4)
    model.save(path)
    return path, {key: [w.copy() for w in layer.get_weights()] for key, layer in keyed_layers(model).items()}


def test_plain_mim_into_a_nucleus_model_carries_every_block_by_name(plain_mim):
    path, source = plain_mim
    keras.utils.set_random_seed(2)
    classifier = NucleusClassifier(**TINY, num_classes=3, max_nuclei=4)
    nucleus = {"backbone/nucleus_embedding", "backbone/nucleus_pad"}  # the weight layers of the nucleus tokens
    assert nucleus <= set(keyed_layers(classifier))  # the layers the source lacks sit before the blocks
    report = load_initial_weights(classifier, path, carry="backbone", strict=False)
    target = keyed_layers(classifier)
    for key, weights in source.items():
        if key.startswith("backbone/"):  # every backbone weight of the source, the blocks after the gap too
            for a, b in zip(target[key].get_weights(), weights):
                np.testing.assert_array_equal(a, b)
    assert "block1_mlp2" in report["copied"] and "encoder_norm" in report["copied"]
    present = {layer.name for key, layer in target.items() if key in nucleus}
    assert set(report["missing"]) == present and report["skipped"] == ["nucleus_head"]
    assert report["unused"] == ["mim_head"]
    assert f"missing in the source {len(present)}" in report["summary"]
    assert len(report["copied"]) == len(target) - len(present) - 1


def test_strict_refuses_a_partial_carry_and_names_the_layers(plain_mim):
    path, _ = plain_mim
    classifier = NucleusClassifier(**TINY, num_classes=3, max_nuclei=4)
    with pytest.raises(ValueError, match=r"init_from_strict: false") as err:
        load_initial_weights(classifier, path, carry="backbone")
    assert "nucleus_embedding: not in the source" in str(err.value) and "nucleus_head" not in str(err.value)
    # a shape mismatch inside the backbone (another width) is named too; nothing fitting is its own error
    wider = MaskedImageModel(**{**TINY, "mlp_dim": 48}, min_mask_patches=4)
    with pytest.raises(ValueError, match=r"block0_mlp1: Dense \[\(16, 48\), \(48,\)\] here"):
        load_initial_weights(wider, path)
    with pytest.raises(ValueError, match="no layer"):
        load_initial_weights(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), path, strict=False)


def test_same_architecture_strict_copies_all_and_the_report_is_written(plain_mim, tmp_path):
    path, source = plain_mim
    for _ in range(2):  # auto-named layers (the blocks' Dropout / the classifier's) shift Keras' name counters
        keras.layers.Dense(1)
    again = MaskedImageModel(**TINY, min_mask_patches=4)
    report = load_initial_weights(again, path)  # strict: every layer, head too (carry all)
    assert not report["skipped"] and not report["missing"] and not report["unused"]
    for key, layer in keyed_layers(again).items():
        for a, b in zip(layer.get_weights(), source[key]):
            np.testing.assert_array_equal(a, b)
    written = json.loads(write_report(report, tmp_path).read_text())
    assert written["copied"] == report["copied"] and written["summary"].startswith(f"init_from {path}")


def test_auto_generated_names_get_stable_keys():
    def build():
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2, name="out"),
                                 keras.layers.Dense(1)])

    first, second = build(), build()
    assert first.layers[0].name != second.layers[0].name  # Keras numbers them per process
    assert list(keyed_layers(first)) == list(keyed_layers(second)) == ["dense#0", "out", "dense#1"]
