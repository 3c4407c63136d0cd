"""medtf.evaluation.retrieval against brute-force NumPy: ranks, recall@k, top-k, zero-shot on a hand-made 2-class
case, the linear probe, the ``evaluate`` experiment section."""

from __future__ import annotations

import numpy as np
import pytest

from medtf.evaluation import retrieval


def _unit(rng, n, e=8):
    x = rng.normal(size=(n, e))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_ranks(image, text):
    """Rank of the own pair by sorting every row / column (position of the own index in the descending order)."""
    s = image @ text.T
    i2t = [1 + list(np.argsort(-s[i])).index(i) for i in range(len(s))]
    t2i = [1 + list(np.argsort(-s[:, j])).index(j) for j in range(len(s))]
    return np.asarray(i2t), np.asarray(t2i)


@pytest.mark.parametrize("n", [1, 7, 30])
def test_retrieval_metrics_equal_brute_force(n):
    rng = np.random.default_rng(n)
    image, text = _unit(rng, n), _unit(rng, n)
    text[: n // 2] = image[: n // 2] + 0.1 * text[: n // 2]  # half the pairs close: ranks spread from 1 upwards
    i2t, t2i = _brute_ranks(image, text)
    got_i2t, got_t2i = retrieval.own_ranks(image @ text.T)
    np.testing.assert_array_equal(got_i2t, i2t)
    np.testing.assert_array_equal(got_t2i, t2i)
    if n == 30:
        assert not np.array_equal(i2t, t2i)  # the two directions differ: a transposed matrix would show
    m = retrieval.retrieval_metrics(image @ text.T)
    for name, ranks in (("image_to_report", i2t), ("report_to_image", t2i)):
        for k in (1, 5, 10):
            assert m[f"{name}_recall_at_{k}"] == pytest.approx(np.mean(ranks <= k))
        assert m[f"{name}_median_rank"] == pytest.approx(np.median(ranks))
        assert m[f"{name}_mean_rank"] == pytest.approx(np.mean(ranks))


def test_rank_table_and_top_k():
    rng = np.random.default_rng(0)
    image, text = _unit(rng, 5), _unit(rng, 5)
    s = image @ text.T
    rows = retrieval.rank_table([f"id{i}" for i in range(5)], s)
    assert [r["nearest_report_id"] for r in rows] == [f"id{j}" for j in s.argmax(axis=1)]
    assert [r["own_similarity"] for r in rows] == pytest.approx(np.diag(s), abs=1e-6)
    assert set(rows[0]) == {"example_id", "image_to_report_rank", "report_to_image_rank", "own_similarity",
                            "nearest_report_id", "nearest_report_similarity"}
    order, scores = retrieval.top_k(image[2], text, k=3)
    np.testing.assert_array_equal(order[0], np.argsort(-s[2])[:3])
    np.testing.assert_allclose(scores[0], np.sort(s[2])[::-1][:3])
    with pytest.raises(ValueError, match="square"):
        retrieval.own_ranks(s[:3])


def test_zero_shot_hand_made_two_classes():
    # Prompts along x ("normal") and y ("infarct"); images tilted towards one or the other.
    prompts = np.array([[1.0, 0.0], [0.0, 1.0]])
    angle = np.deg2rad([10, 30, 80, 60, 40])  # cos with x: .98 .87 .17 .5 .77; with y: .17 .5 .98 .87 .64
    images = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    labels = np.array([0, 0, 1, 1, 1])        # the last one (40 deg, nearer x) is misclassified
    zs = retrieval.zero_shot(images, prompts, labels, scale=10.0)
    np.testing.assert_array_equal(zs["predicted"], [0, 0, 1, 1, 0])
    assert zs["accuracy"] == pytest.approx(0.8)
    assert zs["per_class_recall"] == pytest.approx([1.0, 2 / 3])
    assert zs["confusion_matrix"] == [[2, 0], [1, 2]]
    p = np.exp(10 * images @ prompts.T)
    np.testing.assert_allclose(zs["probabilities"], p / p.sum(1, keepdims=True), rtol=1e-12)
    # A class without a prompt (label 4) is left out and counted.
    assert retrieval.zero_shot(images, prompts, [0, 0, 1, 1, -1])["excluded"] == 1
    assert retrieval.prompt_classes({"normal": "no abnormality", "infarct": "acute infarct"},
                                    ["infarct", "tumor", "hemorrhage", "normal", "others"]) == \
        (["no abnormality", "acute infarct"], [3, 0])
    np.testing.assert_array_equal(retrieval.relabel([3, 0, 1, 3], [3, 0]), [0, 1, -1, 0])
    with pytest.raises(ValueError, match="'edema' is not one of"):
        retrieval.prompt_classes({"edema": "x", "normal": "y"}, ["normal", "infarct"])


def test_prompt_ensemble_is_the_renormalised_mean():
    # a fake text tower: each prompt a fixed unit vector
    table = {"a": [1.0, 0.0, 0.0], "b": [0.0, 1.0, 0.0], "c": [0.0, 0.6, 0.8]}

    def embed(texts):
        return np.array([table[t] for t in texts])

    got = retrieval.class_prompt_embeddings(embed, ["a", ["b", "c"]])
    mean = (np.array(table["b"]) + np.array(table["c"])) / 2
    np.testing.assert_allclose(got, [table["a"], mean / np.linalg.norm(mean)], rtol=1e-12)
    # an image between the ensemble's two wordings: nearer the class embedding than either prompt alone
    image = np.array([[0.0, 0.8, 0.6]]) / 1.0
    assert (image @ got.T)[0, 1] > max(image @ np.array(table["b"]), image @ np.array(table["c"]))
    assert retrieval.prompt_classes({"normal": ["no lesion", "normal"], "infarct": "acute infarct"},
                                    ["normal", "infarct"]) == ([["no lesion", "normal"], "acute infarct"], [0, 1])
    assert retrieval.expand_prompt("{acute|recent} infarct, {left|right} lobe {x}") == [
        "acute infarct, left lobe {x}", "acute infarct, right lobe {x}", "recent infarct, left lobe {x}",
        "recent infarct, right lobe {x}"]
    assert retrieval.prompt_classes({"normal": "normal", "infarct": ["{left|right} infarct", "DWI bright"]},
                                    ["normal", "infarct"])[0] == ["normal", ["left infarct", "right infarct",
                                                                             "DWI bright"]]
    for bad in ([], ["ok", ""], 3):
        with pytest.raises(ValueError, match="prompts.normal"):
            retrieval.prompt_classes({"normal": bad, "infarct": "acute infarct"}, ["normal", "infarct"])


def test_linear_probe_separable_and_refusal():
    rng = np.random.default_rng(1)
    centres = np.array([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0]])
    train_y, test_y = np.repeat([0, 1, 2], 10), np.array([0, 1, 2, 2, 5])  # class 5 unseen in training
    train_x = centres[train_y] + rng.normal(scale=0.3, size=(30, 3))
    test_x = np.concatenate([centres[[0, 1, 2, 2]], centres[:1]])
    probe = retrieval.linear_probe(train_x, train_y, test_x, test_y)
    assert probe["accuracy"] == 1.0 and probe["excluded"] == 1 and probe["classes"] == [0, 1, 2]
    assert probe["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 2]]
    with pytest.raises(ValueError, match="1 class"):
        retrieval.linear_probe(train_x, np.zeros(30), test_x, test_y)


def test_evaluate_section_parsed_and_refused():
    from medtf.training.config import ConfigError
    from medtf.training.experiment import parse_config

    base = {"task": "contrastive", "data": {"dir": "/nonexistent", "batch_size": 2},
            "model": {"name": "clip_unet3d_small"}}
    prompts = {"normal": "no acute intracranial abnormality", "infarct": ["acute infarct", "restricted diffusion"]}
    config = parse_config({**base, "evaluate": {"zero_shot": {"prompts": prompts}, "linear_probe": {"c": 0.5}}},
                          components=False)
    assert config.evaluate == {"zero_shot": {"prompts": prompts}, "linear_probe": {"c": 0.5}}
    assert parse_config(config.as_dict(), components=False).evaluate == config.evaluate  # config.yaml round trip
    assert "evaluate" not in parse_config(base, components=False).as_dict()
    for bad, match in (({"zero_shot": {"prompts": {"normal": ""}}}, "non-empty"),
                       ({"zero_shot": {"prompts": {"normal": [], "infarct": "x"}}}, "non-empty"),
                       ({"zero_shot": {"prompts": {"normal": "x"}}}, "at least 2"),
                       ({"zero_shot": ["x"]}, "evaluate.zero_shot"), ({"linear_probe": "yes"}, "linear_probe"),
                       ({"retrieval": True}, "unknown setting")):
        with pytest.raises(ConfigError, match=match):
            parse_config({**base, "evaluate": bad}, components=False)
    with pytest.raises(ConfigError, match="task contrastive"):
        parse_config({**base, "task": "classification", "evaluate": {"linear_probe": False}}, components=False)


def test_heatmap_range():
    img = retrieval.heatmap(np.array([[0.0, 1.0], [0.5, 0.25]]), cell=2)
    assert img.shape == (4, 4, 3) and img.dtype == np.uint8
    assert img[0, 0].tolist() == [0, 0, 255] and img[0, 2].tolist() == [255, 0, 0]
