"""VGG-ELU (issue #14): shape table 2D/3D, harness (config round trip, .keras save/load, mixed precision),
freezing by block (trainable counts, frozen weights and batch-norm statistics bitwise unchanged by fit),
bad arguments, and the prostate experiment end to end through `medtf train`."""

from __future__ import annotations

import csv
from pathlib import Path

import keras
import numpy as np
import pytest

from medtf.models import VGGBackbone, VGGClassifier, freeze, get_model, list_models, trainable_counts, unfreeze
from medtf.models.freeze import block_names, leaf_layers
from medtf.models.registry import model_constructor
from tests.conftest import TEST_SALT, run_medtf
from tests.models.harness import run_model_tests

REPO = Path(__file__).resolve().parents[2]
TINY = dict(in_channels=3, base_filters=4, dense_units=(8, 6, 4))

# (spatial_dims, spatial size, pool, conv_per_block, conv1x1, num_classes) -> output (B, num_classes)
SHAPE_CASES = [
    (2, (65, 65), "flatten", 1, False, 1),
    (2, (33, 20), "flatten", 2, True, 3),
    (2, (17, 23), "avg", 1, True, 1),
    (3, (8, 16, 12), "flatten", 1, False, 2),
    (3, (9, 11, 10), "max", 1, True, 1),
]


@pytest.mark.parametrize("spatial_dims,size,pool,conv_per_block,conv1x1,num_classes", SHAPE_CASES)
def test_output_shape_table(spatial_dims, size, pool, conv_per_block, conv1x1, num_classes):
    model = VGGClassifier(spatial_dims=spatial_dims, num_classes=num_classes, pool=pool,
                          conv_per_block=conv_per_block, conv1x1=conv1x1,
                          input_shape=size if pool == "flatten" else None, **TINY)
    x = np.random.default_rng(0).normal(size=(2, *size, 3)).astype("float32")
    y = np.asarray(model(x, training=False))
    assert y.shape == (2, num_classes) and y.dtype == np.float32
    if num_classes > 1:
        np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)  # softmax
    assert ((y > 0) & (y < 1)).all()
    features = model.backbone(x, training=False)
    assert tuple(features.shape) == (2, *[s // 8 for s in size], 16)  # 3 pools (floor), 4 -> 8 -> 16 filters
    convs = [layer for layer in leaf_layers(model) if "_conv" in layer.name]
    assert len(convs) == 3 * (conv_per_block + conv1x1)


def test_block_layout_and_names():
    model = VGGClassifier(input_shape=(65, 65), conv_per_block=2, conv1x1=True, **TINY)
    assert block_names(model) == ["block1", "block2", "block3", "flatten", "fc1", "fc2", "fc3", "head", "output"]
    assert model.block_names == ["block1", "block2", "block3", "fc1", "fc2", "fc3", "head"]
    names = [layer.name for layer in leaf_layers(model) if layer.name.startswith("block1")]
    assert names == ["block1_conv1", "block1_bn1", "block1_act1", "block1_conv2", "block1_bn2", "block1_act2",
                     "block1_conv1x1", "block1_bn1x1", "block1_act1x1", "block1_dropout", "block1_pool"]
    filters = [model.backbone.get_layer(f"block{b}_conv1").filters for b in (1, 2, 3)]
    assert filters == [4, 8, 16]  # doubling per block
    assert model.backbone.get_layer("block2_act1").get_config()["activation"] == "elu"
    assert model.get_layer("fc1_act").get_config()["activation"] == "elu"


def test_vgg2d_harness(tmp_path):
    run_model_tests(VGGClassifier, dict(spatial_dims=2, num_classes=1, input_shape=(33, 33), **TINY),
                    (2, 33, 33, 3), tmp_path, expected_output_shape=(2, 1))


def test_vgg3d_harness(tmp_path):
    run_model_tests(VGGClassifier, dict(spatial_dims=3, num_classes=2, pool="avg", **TINY),
                    (1, 8, 16, 16, 3), tmp_path, expected_output_shape=(1, 2), run_predict=False)


def test_backbone_harness_and_config(tmp_path):
    model = run_model_tests(VGGBackbone, dict(spatial_dims=2, in_channels=2, base_filters=4, input_shape=(16, 24)),
                            (2, 16, 24, 2), tmp_path, expected_output_shape=(2, 2, 3, 16), mixed_precision=False)
    assert model.get_config()["input_shape"] == [16, 24] and model.block_names == ["block1", "block2", "block3"]


def test_registered_variants():
    assert {"vgg_elu", "vgg_elu_small", "vgg_elu3d_small"} <= set(list_models())
    assert model_constructor("vgg_elu") is VGGClassifier
    big = get_model("vgg_elu", in_channels=3, num_classes=1)
    assert big.get_config()["base_filters"] == 32 and big.get_config()["dense_units"] == [512, 256, 128]
    assert big(np.zeros((1, 65, 65, 3), "float32")).shape == (1, 1)
    small = get_model("vgg_elu_small", in_channels=1, num_classes=2, input_shape=[33, 33])
    assert small(np.zeros((2, 33, 33, 1), "float32")).shape == (2, 2)
    vol = get_model("vgg_elu3d_small", in_channels=1, num_classes=1)
    assert vol(np.zeros((1, 8, 24, 20, 1), "float32")).shape == (1, 1)


@pytest.mark.parametrize("kwargs,match", [
    (dict(spatial_dims=1), "spatial_dims"),
    (dict(pool="flatten", input_shape=None), "static input_shape"),
    (dict(input_shape=(65, None)), "static input_shape"),
    (dict(input_shape=(6, 65)), "too small"),
    (dict(input_shape=(65,)), "2 spatial axes"),
    (dict(num_classes=0), "num_classes"),
    (dict(norm="group"), "norm"),
    (dict(dropout=1.0), "dropout"),
    (dict(dense_dropout=-0.1), "dense_dropout"),
    (dict(pool="sum"), "pool"),
])
def test_bad_arguments_raise(kwargs, match):
    args = {**dict(spatial_dims=2, in_channels=3, input_shape=(65, 65)), **kwargs}
    with pytest.raises(ValueError, match=match):
        VGGClassifier(**args)


# === Freezing ===

def _expected_counts(in_channels=3, filters=(4, 8, 16), units=(8, 6, 4), flat=4 * 4 * 16, classes=1):
    """Trainable parameters per block by hand: conv (no bias) + batch norm gamma/beta; dense kernel + bias."""
    counts, c = {}, in_channels
    for b, f in enumerate(filters, start=1):
        counts[f"block{b}"] = 3 * 3 * c * f + 2 * f
        c = f
    n = flat
    for k, u in enumerate(units, start=1):
        counts[f"fc{k}"] = n * u + u
        n = u
    counts["head"] = n * classes + classes
    return counts


def _model(**kwargs):
    keras.utils.set_random_seed(3)
    return VGGClassifier(spatial_dims=2, num_classes=1, input_shape=(33, 33), **{**TINY, **kwargs})


def test_trainable_counts_per_block():
    model = _model()
    expected = _expected_counts()
    counts = trainable_counts(model)
    assert {k: v for k, v in counts.items() if v} == expected
    assert sum(expected.values()) == sum(int(np.prod(w.shape)) for w in model.trainable_weights)

    assert freeze(model, blocks=["block1", "block2"])[:3] == ["block1_conv1", "block1_bn1", "block1_act1"]
    counts = trainable_counts(model)
    assert counts["block1"] == counts["block2"] == 0 and counts["block3"] == expected["block3"]
    assert model.backbone.get_layer("block2_bn1").trainable is False

    unfreeze(model)
    frozen = freeze(model, up_to="block3")  # a block name: through its last layer (the pool)
    assert frozen[-1] == "block3_pool" and "flatten" not in frozen
    counts = trainable_counts(model)
    assert [counts[b] for b in ("block1", "block2", "block3")] == [0, 0, 0]
    assert [counts[b] for b in ("fc1", "fc2", "fc3", "head")] == [expected[b] for b in ("fc1", "fc2", "fc3", "head")]

    unfreeze(model)
    assert freeze(model, up_to="fc1_dense")[-1] == "fc1_dense" and trainable_counts(model)["fc1"] == 0
    assert trainable_counts(model)["fc2"] == expected["fc2"]
    unfreeze(model, blocks=["fc1"])
    assert trainable_counts(model)["fc1"] == expected["fc1"] and trainable_counts(model)["block1"] == 0


@pytest.mark.parametrize("kwargs,match", [(dict(blocks=["block9"]), "unknown block"),
                                          (dict(up_to="nope"), "neither a layer nor a block"),
                                          (dict(), "exactly one"),
                                          (dict(blocks=["block1"], up_to="fc1"), "exactly one")])
def test_freeze_bad_selection_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        freeze(_model(), **kwargs)


def _fit_steps(model, steps=3):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(8 * steps, 33, 33, 3)).astype("float32")  # far from BN's initial stats
    y = (rng.random((8 * steps, 1)) < 0.5).astype("float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)


def _weights_by_block(model):
    return {layer.name: [keras.ops.convert_to_numpy(w) for w in layer.weights]
            for layer in leaf_layers(model) if layer.weights}


def test_frozen_weights_and_batchnorm_stats_bitwise_unchanged_by_fit():
    model = _model()
    freeze(model, blocks=["block1", "block2"])
    before = _weights_by_block(model)
    _fit_steps(model)
    after = _weights_by_block(model)
    for name, weights in before.items():
        same = all(np.array_equal(a, b) for a, b in zip(weights, after[name]))
        if name.startswith(("block1", "block2")):
            assert same, f"frozen layer {name} changed"  # kernels, gamma/beta and moving mean/variance
        elif name.startswith(("block3_conv", "fc", "head")):
            assert not same, f"trainable layer {name} did not change"
    # The unfrozen block's batch norm did update its moving statistics (so the frozen check above can fail).
    bn3 = model.backbone.get_layer("block3_bn1")
    assert not np.array_equal(keras.ops.convert_to_numpy(bn3.moving_mean), before["block3_bn1"][2])


def test_frozen_batchnorm_runs_in_inference_mode():
    model = _model()
    freeze(model, blocks=["block1"])
    bn = model.backbone.get_layer("block1_bn1")
    x = np.random.default_rng(1).normal(5.0, 2.0, size=(4, 33, 33, 4)).astype("float32")
    # training=True on a frozen BN normalises with the moving statistics (here mean 0, var 1: almost identity).
    mean, variance = keras.ops.convert_to_numpy(bn.moving_mean), keras.ops.convert_to_numpy(bn.moving_variance)
    expected = (x - mean) / np.sqrt(variance + bn.epsilon)
    np.testing.assert_allclose(np.asarray(bn(x, training=True)), expected, rtol=1e-5, atol=1e-5)
    unfreeze(model)
    batch_stats = np.asarray(bn(x, training=True))
    assert abs(float(batch_stats.mean())) < 1e-3  # trainable: normalised by the batch's own statistics


# === End to end: the prostate experiment through `medtf train` ===

@pytest.fixture(scope="module")
def prostate_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("prostate_vgg")
    src, out = root / "src", root / "shards"
    assert run_medtf("synth", "prostate-mpmri", "--out", src, "--cases", 6, "--seed", 4) == 0
    assert run_medtf("convert", "prostate-mpmri", "--input", src, "--output", out, "--id-salt", TEST_SALT,
                     "--split", "0.5,0.25,0.25", "--no-alignment-pngs", "--quiet") == 0
    return out


@pytest.mark.slow
def test_prostate_vgg_elu_experiment_trains(prostate_shards, tmp_path):
    run = tmp_path / "run"
    assert run_medtf("train", REPO / "experiments/prostate_vgg_elu.yaml", "--run-dir", run,
                     "--set", f"data.dir={prostate_shards}", "--set", "data.batch_size=2", "--quiet") == 0
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert len(rows) == 2 and {"loss", "auc", "val_loss", "val_auc"} <= set(rows[0])
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    model = keras.saving.load_model(run / "checkpoints" / "best.keras")
    assert isinstance(model, VGGClassifier) and model.get_config()["input_shape"] == [65, 65]
    assert model(np.zeros((1, 65, 65, 3), "float32")).shape == (1, 1)
