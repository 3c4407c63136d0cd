"""Image-only warm-up (medtf.tasks.clip_warmup, train.warmup_image_epochs): the report tower's weights are bitwise
unchanged during the warm-up epochs and change after; a frozen backbone (text.trainable false) stays frozen."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medtf.models.clip import ImageReportEncoder
from medtf.tasks.clip_warmup import ImageWarmup, text_tower_layers
from medtf.tasks.contrastive import ClipLoss

TOKENS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"] + [f"w{i}" for i in range(12)]


def _model(trainable=True, hub=True):
    keras.utils.set_random_seed(0)
    if not hub:  # hashed bag-of-words report tower, 2D one-level encoder: the same mechanism, faster traces
        return ImageReportEncoder(spatial_dims=2, in_channels=1, depth=1, base_filters=2, embed_dim=4, text_bins=32,
                                  text_dim=4, learn_temperature=True)
    text = {"vocabulary": TOKENS, "sequence_length": 6, "num_layers": 1, "num_heads": 2, "hidden_dim": 8,
            "intermediate_dim": 16, "dropout": 0.0, "trainable": trainable}
    return ImageReportEncoder(spatial_dims=3, in_channels=1, depth=2, base_filters=2, embed_dim=4, text=text,
                              learn_temperature=True)


def _data(hub, n=4):
    rng = np.random.default_rng(0)
    x = {"image": rng.normal(size=(n, 4, 8, 8, 1)[1 - hub:]).astype("float32")}  # hub: 3D, else 2D
    if hub:
        x.update(token_ids=rng.integers(5, len(TOKENS), size=(n, 6)).astype("int32"),
                 padding_mask=np.ones((n, 6), "int32"))
    else:
        x["report"] = np.array(["left frontal infarct", "no acute abnormality", "right parietal mass", "oedema"])
    return x, np.full((n, 1), -1.0, "float32")


class _Snapshots(keras.callbacks.Callback):
    """Weights of the text tower, the image projection and the trainable flags at each epoch's end."""

    def __init__(self):
        super().__init__()
        self.text, self.image, self.flags = [], [], []

    def on_epoch_end(self, epoch, logs=None):
        layers = text_tower_layers(self.model)
        self.text.append({f"{l.name}/{i}": np.array(w) for l in layers for i, w in enumerate(l.get_weights())})
        self.image.append(np.array(self.model.get_layer("image_projection").get_weights()[0]))
        self.flags.append({l.name: l.trainable for l in layers})


def _fit(model, warmup, epochs=2):
    # AdamW with weight decay: a decayed frozen weight would show up as changed.
    model.compile(optimizer=keras.optimizers.AdamW(1e-2, weight_decay=0.1), loss=ClipLoss())
    x, y = _data(getattr(model, "tokenizer", None) is not None)
    initial = {f"{l.name}/{i}": np.array(w) for l in text_tower_layers(model) for i, w in enumerate(l.get_weights())}
    snaps = _Snapshots()
    snaps.image.append(np.array(model.get_layer("image_projection").get_weights()[0]))  # before training
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)  # one step per epoch (strings: not via NumPy)
    model.fit(data, epochs=epochs, verbose=0, callbacks=[ImageWarmup(warmup), snaps])
    return initial, snaps


@pytest.mark.parametrize("hub", [False, pytest.param(True, marks=pytest.mark.slow)])  # keras-hub: ~25 s
def test_text_tower_bitwise_frozen_during_warmup_then_trains(hub):
    model = _model(hub=hub)
    initial, snaps = _fit(model, warmup=1)
    tower = "text_backbone" if hub else "text/"
    assert set(initial) and any(k.startswith(tower) for k in initial)
    # Warm-up epoch: every report-tower weight bitwise unchanged (AdamW decays trainable weights only), the image
    # tower moves.
    for key, value in initial.items():
        np.testing.assert_array_equal(snaps.text[0][key], value, err_msg=key)
    assert not any(snaps.flags[0].values())
    assert np.abs(snaps.image[1] - snaps.image[0]).max() > 0
    # Epoch 1: backbone and projection train again (the optimizer was built with their slots).
    moved = {k for k, v in initial.items() if np.abs(snaps.text[1][k] - v).max() > 0}
    assert any(k.startswith(tower) for k in moved) and any(k.startswith("text_projection") for k in moved)
    assert all(snaps.flags[1].values()) and all(layer.trainable for layer in text_tower_layers(model))


@pytest.mark.slow  # ~15 s: a second tiny CLIP fit
def test_frozen_backbone_stays_frozen_after_warmup():
    model = _model(trainable=False)
    initial, snaps = _fit(model, warmup=1)
    backbone = {k for k in initial if k.startswith("text_backbone")}
    for key in backbone:
        np.testing.assert_array_equal(snaps.text[1][key], initial[key], err_msg=key)
    assert np.abs(snaps.text[1]["text_projection/0"] - initial["text_projection/0"]).max() > 0
    np.testing.assert_array_equal(snaps.text[0]["text_projection/0"], initial["text_projection/0"])
    assert snaps.flags[1] == {"text_projection": True, "text_backbone": False}


def test_warmup_config():
    from medtf.tasks import get_task
    from medtf.training.config import ConfigError
    from medtf.training.experiment import parse_config

    raw = {"task": "contrastive", "data": {"dir": "/tmp/none", "kind": "mri-reports", "batch_size": 2},
           "model": {"name": "clip_unet3d_small"}, "train": {"epochs": 3, "warmup_image_epochs": 1}}
    experiment = parse_config(raw)
    task = get_task("contrastive").configure(experiment)
    model = _model(hub=False)
    model.compile(optimizer="adam", loss=ClipLoss())
    (warmup,) = [c for c in task.callbacks(model, None) if isinstance(c, ImageWarmup)]
    assert warmup.epochs == 1
    with pytest.raises(ConfigError, match="warmup_image_epochs"):
        parse_config({**raw, "train": {"epochs": 1, "warmup_image_epochs": 1}})
    with pytest.raises(ConfigError, match="warmup_image_epochs"):
        parse_config({**raw, "task": "segmentation", "model": {"name": "unet2d_small"}})
    with pytest.raises(ValueError, match="no report tower"):
        text_tower_layers(keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]))
