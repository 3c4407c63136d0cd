"""The keras-hub report text tower: in-graph tokenisation against keras-hub, local presets, the CLIP model with it."""

from __future__ import annotations

import numpy as np
import pytest

TOKENS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]", "left", "right", "frontal", "lobe", "infarct", "acute",
          "no", "haemorrhage", "mass", ",", ".", "mm", "1", "2", "##4", "oedema", "cafe"]
SAMPLES = ["Acute infarct, LEFT frontal lobe.", "", "No haemorrhage. Zebra crossing 24 mm.",
           "left " * 40 + "right", "Oedema near the Café."]


def _tiny_text(**kw):
    return {"vocabulary": TOKENS, "sequence_length": 12, "num_layers": 1, "num_heads": 2, "hidden_dim": 8,
            "intermediate_dim": 16, **kw}


def test_in_graph_tokenisation_equals_keras_hub():
    """ReportTokenizer inside Dataset.map == keras-hub's BertTokenizer + [CLS]/[SEP] packing done in NumPy, and
    == keras-hub's own BertTextClassifierPreprocessor (truncation to L, padding mask, case and accents folded)."""
    import keras_hub
    import tensorflow as tf

    from medtf.models.text import ReportTokenizer

    L = 12
    layer = ReportTokenizer(TOKENS, sequence_length=L)
    ds = tf.data.Dataset.from_tensor_slices(SAMPLES).map(layer).batch(len(SAMPLES))
    graph = next(iter(ds))
    ref = keras_hub.models.BertTokenizer(vocabulary=TOKENS, lowercase=True, strip_accents=True)
    expected_ids, expected_mask = [], []
    for text in SAMPLES:
        pieces = [int(i) for i in np.asarray(ref(text))][: L - 2]
        row = [1] + pieces + [2]
        expected_mask.append([True] * len(row) + [False] * (L - len(row)))
        expected_ids.append(row + [0] * (L - len(row)))
    np.testing.assert_array_equal(graph["token_ids"].numpy(), expected_ids)
    np.testing.assert_array_equal(graph["padding_mask"].numpy(), expected_mask)
    assert graph["token_ids"].dtype == tf.int32 and graph["padding_mask"].dtype == tf.bool
    # Values the reference must produce, so the comparison can fail: unknown words, case, accents, truncation.
    assert expected_ids[0][:8] == [1, 10, 9, 14, 5, 7, 8, 15] and expected_ids[1][:3] == [1, 2, 0]
    assert 3 in expected_ids[2] and expected_ids[3][-1] == 2 and sum(expected_mask[3]) == L
    assert TOKENS.index("cafe") in expected_ids[4]
    hub = keras_hub.models.BertTextClassifierPreprocessor(ref, sequence_length=L)(tf.constant(SAMPLES))
    np.testing.assert_array_equal(graph["token_ids"].numpy(), hub["token_ids"].numpy())
    np.testing.assert_array_equal(graph["padding_mask"].numpy(), hub["padding_mask"].numpy())
    # Eager and graph agree, and the config round trip keeps the vocabulary.
    eager = ReportTokenizer.from_config(layer.get_config())(tf.constant(SAMPLES))
    np.testing.assert_array_equal(eager["token_ids"].numpy(), graph["token_ids"].numpy())


def test_local_preset_round_trip(tmp_path):
    """A preset written by save_to_preset (no network) loads as the text tower: same weights, same vocabulary,
    same features; the CLIP model saved as .keras reloads without the preset directory."""
    import keras
    import keras_hub
    import tensorflow as tf

    from medtf.models.clip import ImageReportEncoder
    from medtf.models.text.tower import backbone_sequence

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.DistilBertBackbone(vocabulary_size=len(TOKENS), num_layers=1, num_heads=2,
                                                   hidden_dim=8, intermediate_dim=16, max_sequence_length=12)
    tokenizer = keras_hub.models.DistilBertTokenizer(vocabulary=TOKENS, lowercase=True)
    preset = tmp_path / "preset"
    backbone.save_to_preset(str(preset))
    tokenizer.save_to_preset(str(preset))

    model = ImageReportEncoder(spatial_dims=3, in_channels=1, depth=2, base_filters=2, embed_dim=4,
                               text={"preset": str(preset), "sequence_length": 12, "trainable": False},
                               learn_temperature=True)
    assert model.tokenizer.vocabulary == TOKENS and not model.text_backbone.trainable
    for a, b in zip(backbone.get_weights(), model.text_backbone.get_weights()):
        np.testing.assert_array_equal(a, b)
    ids = model.tokenizer(tf.constant(SAMPLES[:2]))
    inputs = {"token_ids": ids["token_ids"], "padding_mask": tf.cast(ids["padding_mask"], tf.int32)}
    np.testing.assert_allclose(backbone(inputs).numpy(), backbone_sequence(
        model.text_backbone, inputs["token_ids"], inputs["padding_mask"]).numpy(), rtol=1e-6)

    images = tf.constant(np.random.default_rng(0).normal(size=(2, 4, 8, 8, 1)).astype("float32"))
    out = model({"image": images, **inputs}).numpy()
    assert out.shape == (2, 9)  # image 4 + text 4 + logit scale
    np.testing.assert_allclose(out[:, -1], 1 / 0.07, rtol=1e-5)
    np.testing.assert_allclose(model.text_tower(tf.constant(SAMPLES[:2])).numpy(), out[:, 4:8], rtol=1e-5)
    np.testing.assert_allclose(model.image_tower(images).numpy(), out[:, :4], rtol=1e-5)
    path = tmp_path / "clip.keras"
    model.save(path)
    (preset / "config.json").unlink()  # the checkpoint must not need the preset any more
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(loaded({"image": images, **inputs}).numpy(), out, rtol=1e-5, atol=1e-6)
    assert loaded.get_config()["text"]["preset"] is None and loaded.tokenizer.vocabulary == TOKENS


def test_missing_preset_is_named_not_downloaded(tmp_path):
    from medtf.models.text.tower import resolve_text

    with pytest.raises(FileNotFoundError, match="nowhere.*not a local keras-hub preset"):
        resolve_text({"preset": str(tmp_path / "nowhere")})
    with pytest.raises(ValueError, match="no vocabulary"):
        resolve_text({})
    with pytest.raises(ValueError, match="unknown key.*vocab_size"):
        resolve_text({"vocab_size": 3})
    with pytest.raises(ValueError, match="exceeds the backbone's max_sequence_length"):
        resolve_text({**_tiny_text(), "backbone": _backbone_config(max_len=8)})


def _backbone_config(max_len):
    import keras
    import keras_hub

    return keras.saving.serialize_keras_object(keras_hub.models.DistilBertBackbone(
        vocabulary_size=len(TOKENS), num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16,
        max_sequence_length=max_len))


def test_clip_with_text_tower_trains_one_step():
    """The contrastive task's tf.data mapping tokenises for the keras-hub tower and passes the class; one fit step
    moves the projection and the temperature but not a frozen backbone."""
    import keras
    import tensorflow as tf

    from medtf.models.clip import ImageReportEncoder
    from medtf.tasks import get_task

    task = get_task("contrastive")
    rng = np.random.default_rng(1)
    examples = {"image": rng.normal(size=(4, 4, 8, 8, 1)).astype("float32"),
                "report": np.array(SAMPLES[:4], dtype=object), "label": np.array([0, 1, 0, 1])}
    keras.utils.set_random_seed(0)
    model = ImageReportEncoder(spatial_dims=3, in_channels=1, depth=2, base_filters=2, embed_dim=4,
                               text=_tiny_text(trainable=False), learn_temperature=True, label_aware=True)
    task.compile(model, keras.optimizers.SGD(0.5), jit_compile=False)
    assert model.loss.label_aware and not model.text_backbone.trainable_weights
    ds = tf.data.Dataset.from_tensor_slices(examples).map(task.model_inputs(model)).batch(4)
    x, y = next(iter(ds))
    assert sorted(x) == ["image", "padding_mask", "token_ids"] and x["token_ids"].shape == (4, 12)
    np.testing.assert_array_equal(y.numpy()[:, 0], [0, 1, 0, 1])
    before = [w.numpy().copy() for w in model.text_backbone.weights]
    projection = model.get_layer("text_projection").kernel.numpy().copy()
    scale = float(model.get_layer("logit_scale").log_scale.numpy())
    model.fit(ds, epochs=1, verbose=0)
    for a, w in zip(before, model.text_backbone.weights):
        np.testing.assert_array_equal(a, w.numpy())
    assert np.abs(model.get_layer("text_projection").kernel.numpy() - projection).max() > 0
    assert float(model.get_layer("logit_scale").log_scale.numpy()) != scale


def test_attention_pooling_ignores_padding_and_round_trips(tmp_path):
    """``pooling: attention``: padding tokens get no weight (changing their states changes nothing), the pooled
    vector is a convex combination of the value projections of the real tokens, and the layer's own weights are
    trainable while a frozen backbone is not; the CLIP model saves and reloads with it."""
    import keras

    from medtf.models.clip import ImageReportEncoder
    from medtf.models.text.tower import TokenPooling

    pool = TokenPooling("attention", num_heads=2)
    rng = np.random.default_rng(0)
    sequence = rng.normal(size=(3, 6, 8)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0, 0], [1] * 6, [1, 0, 0, 0, 0, 0]], "int32")
    out = np.asarray(pool(sequence, mask))
    changed = sequence.copy()
    changed[mask == 0] = rng.normal(size=(int((mask == 0).sum()), 8)) * 100
    np.testing.assert_allclose(np.asarray(pool(changed, mask)), out, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(pool(changed, np.ones_like(mask))) - out).max() > 1e-3  # and they do count unmasked
    # one real token: attention weight 1 on it, so the output is that token's value through the output projection
    att = pool.attention
    value = np.einsum("h,hnk->nk", sequence[2, 0], att._value_dense.kernel.numpy()) + att._value_dense.bias.numpy()
    single = np.einsum("nk,nkh->h", value, att._output_dense.kernel.numpy()) + att._output_dense.bias.numpy()
    np.testing.assert_allclose(out[2], single, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="pooling_heads 3 must divide"):
        TokenPooling("attention", num_heads=3)(sequence, mask)
    with pytest.raises(ValueError, match="text pooling 'sum'"):
        TokenPooling("sum")

    model = ImageReportEncoder(spatial_dims=3, in_channels=1, depth=2, base_filters=2, embed_dim=4,
                               text=_tiny_text(trainable=False, pooling="attention", pooling_heads=2))
    assert not model.text_backbone.trainable_weights
    assert len(model.get_layer("text_pool").trainable_weights) == 9  # query + q/k/v/out kernels and biases
    inputs = {"image": rng.normal(size=(2, 4, 8, 8, 1)).astype("float32"),
              **{k: np.asarray(v) for k, v in model.tokenizer(np.array(SAMPLES[:2], dtype=object)).items()}}
    inputs["padding_mask"] = inputs["padding_mask"].astype("int32")
    path = tmp_path / "clip.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(loaded(inputs).numpy(), model(inputs).numpy(), rtol=1e-5, atol=1e-6)
    assert loaded.get_config()["text"]["pooling"] == "attention"


def test_attention_pooling_finds_the_one_token_the_mean_dilutes():
    """A frozen random tower, reports of 10 filler tokens plus one 'left' or 'right': with a fixed 1-unit linear
    read-out trained on top, attention pooling separates the two sides, mean pooling of the same states (the
    side is 1/11 of the mean, under the filler's variation) does clearly worse."""
    import keras

    from medtf.models.text.tower import TokenPooling, backbone_sequence, resolve_text, token_inputs

    rng = np.random.default_rng(0)
    filler = ["frontal", "lobe", "infarct", "acute", "no", "haemorrhage", "mass", "mm", "oedema", "cafe"]
    sides = rng.integers(0, 2, 256)
    texts = [" ".join([*rng.choice(filler, 10)[:int(p)], ("left", "right")[s], *rng.choice(filler, 10)[int(p):]])
             for s, p in zip(sides, rng.integers(0, 11, 256))]
    accuracy = {}
    for mode in ("mean", "attention"):
        keras.utils.set_random_seed(0)
        backbone, tokenizer, _ = resolve_text(_tiny_text(trainable=False, sequence_length=14, hidden_dim=8, dropout=0.0,
                                                         pooling=mode))
        token_ids, padding_mask = token_inputs()
        pooled = TokenPooling(mode, num_heads=2)(backbone_sequence(backbone, token_ids, padding_mask), padding_mask)
        logit = keras.layers.Dense(1)(pooled)
        model = keras.Model({"token_ids": token_ids, "padding_mask": padding_mask}, logit)
        model.compile(keras.optimizers.Adam(0.01), keras.losses.BinaryCrossentropy(from_logits=True))
        tokens = tokenizer(np.array(texts, dtype=object))
        x = {"token_ids": np.asarray(tokens["token_ids"]), "padding_mask": np.asarray(tokens["padding_mask"], "int32")}
        model.fit(x, sides[:, None].astype("float32"), epochs=100, batch_size=32, verbose=0)
        accuracy[mode] = float(np.mean((model.predict(x, verbose=0)[:, 0] > 0) == sides))
    assert accuracy["attention"] >= 0.95, accuracy
    assert accuracy["attention"] - accuracy["mean"] >= 0.1, accuracy
