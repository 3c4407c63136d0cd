"""Nucleus classifier export + predict: pixel-edge outlines vs pixel counts, box files and their errors, and one
`medtf export` -> fresh-process reload -> `medtf predict` (boxes, instance map, run directory) on a tiny ViT whose
probabilities are recomputed with the Keras model."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtf.io import InputError
from medtf.tasks.nucleus_predict import _area, instance_polygon, read_boxes, read_instances, window_starts
from tests.conftest import run_medtf

REPO = Path(__file__).resolve().parents[2]


def test_instance_polygon_encloses_exactly_the_pixels():
    mask = np.zeros((8, 9), bool)
    mask[1:6, 2:4] = True  # an L: 5 x 2 column + 2 x 4 foot
    mask[4:6, 4:8] = True
    ring = instance_polygon(mask)
    assert ring[0] == ring[-1] and _area(ring) == mask.sum() == 18
    xs, ys = np.array(ring).T
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == (2, 1, 8, 6)  # = the box [1, 2, 6, 8] as x/y corners
    assert len(ring) == 7  # 6 corners of an L (collinear corners dropped) + closing point
    holed = np.ones((5, 5), bool)
    holed[2, 2] = False
    assert _area(instance_polygon(holed)) == 25  # the outer outline; the hole is not subtracted
    parts = np.zeros((6, 10), bool)
    parts[0:2, 0:2], parts[2:6, 5:9], parts[1, 3] = True, True, True
    assert _area(instance_polygon(parts)) == 16  # the largest part
    diagonal = np.eye(3, dtype=bool)  # parts touching at a corner: a closed ring all the same
    ring = instance_polygon(diagonal)
    assert ring[0] == ring[-1] and _area(ring) == 1


def test_read_boxes_forms_and_errors(tmp_path):
    csv_file = tmp_path / "b.csv"
    csv_file.write_text("id,ymin,xmin,ymax,xmax\n7,1,2,3,5\n9,0,0,10,12\n")
    ids, boxes = read_boxes(csv_file, 10, 12)
    assert ids == ["7", "9"] and boxes.tolist() == [[1, 2, 3, 5], [0, 0, 10, 12]]
    as_json = tmp_path / "b.json"
    as_json.write_text(json.dumps({"boxes": [[1, 2, 3, 5], {"id": "a", "ymin": 2, "xmin": 2, "ymax": 4,
                                                            "xmax": 4}]}))
    ids, boxes = read_boxes(as_json, 10, 12)
    assert ids == ["1", "a"] and boxes.tolist() == [[1, 2, 3, 5], [2, 2, 4, 4]]
    cases = {"ymin,xmin,ymax,xmax\n1,2,3,13\n": r"box 1 \(row 1\) \[1.0, 2.0, 3.0, 13.0\] is outside the image "
                                                r"\(10 x 12",
             "ymin,xmin,ymax,xmax\n-1,2,3,5\n": "outside the image",
             "ymin,xmin,ymax,xmax\n3,2,1,5\n": "empty or inverted",
             "ymin,xmin,ymax,xmax\n1,2,x,5\n": "not 4 numbers",
             "y0,x0,y1,x1\n1,2,3,5\n": r"lacks the columns \['ymin', 'xmin', 'ymax', 'xmax'\]",
             "": "boxes file is empty", "ymin,xmin,ymax,xmax\n": "no boxes in the file"}
    for i, (text, message) in enumerate(cases.items()):
        bad = tmp_path / f"bad{i}.csv"
        bad.write_text(text)
        with pytest.raises(InputError, match=message) as info:
            read_boxes(bad, 10, 12)
        assert info.value.path == str(bad)  # the error names the file
    with pytest.raises(InputError, match="does not exist"):
        read_boxes(tmp_path / "missing.csv", 10, 12)
    np.save(tmp_path / "m.npy", np.zeros((10, 12), np.int32))
    with pytest.raises(InputError, match="no nuclei"):
        read_instances(tmp_path / "m.npy", 10, 12)
    with pytest.raises(InputError, match="instance map is 10 x 12, the tile 10 x 13"):
        read_instances(tmp_path / "m.npy", 10, 13)
    assert window_starts(48, 32).tolist() == [0, 16] and window_starts(32, 32).tolist() == [0]


# === Export + predict on a tiny model ===

@pytest.fixture(scope="module")
def nucleus_run(tmp_path_factory):
    import keras
    import yaml

    from medtf.models.vit import NucleusClassifier

    keras.utils.set_random_seed(0)
    run = tmp_path_factory.mktemp("nucleus_run")
    model = NucleusClassifier(num_classes=3, max_nuclei=8, image_size=32, patch_size=8, hidden_dim=16, num_layers=1,
                              num_heads=2, mlp_dim=32, name="tiny_nuclei")
    (run / "checkpoints").mkdir()
    model.save(run / "checkpoints" / "best.keras")
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "nucleus_classification",
                                                     "data": {"kind": "nuclei-he"}, "model": {"name": "tiny"}}))
    return run, model


def _expected(model, tile, boxes, alone=False):
    """Probabilities of each box in its nearest 32 px window of a 48 x 40 tile (starts 0 / 16 and 0 / 8), with
    every box overlapping that window in the same call (or ``alone``); one batched model call."""
    boxes = np.asarray(boxes, np.float32)
    crops, local, counts = [], np.zeros((len(boxes), model.max_nuclei, 4), np.float32), []
    for i, box in enumerate(boxes):
        cy, cx = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        y0 = min((0, 16), key=lambda s: abs(s + 16 - cy))
        x0 = min((0, 8), key=lambda s: abs(s + 16 - cx))
        near = [b for b in boxes if b[0] < y0 + 32 and b[2] > y0 and b[1] < x0 + 32 and b[3] > x0]
        near = [box] if alone else [box] + [b for b in near if not np.array_equal(b, box)]
        local[i, :len(near)] = np.clip(np.array(near) - [y0, x0, y0, x0], 0, 32)
        crops.append(tile[y0:y0 + 32, x0:x0 + 32] / np.float32(255))
        counts.append(len(near))
    p = model({"images": np.stack(crops), "boxes": local, "num_boxes": np.array(counts)}, training=False)
    return np.asarray(p)[:, 0]


def test_export_and_predict_boxes_and_instances(nucleus_run, tmp_path):
    """The one default-tier end-to-end test of nucleus export + predict: export, two predicts through the CLI."""
    run, model = nucleus_run
    assert run_medtf("export", run, "--output", tmp_path / "export") == 0
    exported = tmp_path / "export" / "tiny" / "1"
    meta = json.loads((exported / "medtf.json").read_text())
    assert meta["task"] == "nucleus_classification" and meta["max_nuclei"] == 8 and meta["image_size"] == [32, 32]
    assert meta["class_names"] == ["class_0", "class_1", "class_2"]

    rng = np.random.default_rng(1)
    # A 48 x 40 tile (windows at y 0/16, x 0/8) with 6 boxes.
    tile = rng.integers(0, 256, (48, 40, 3)).astype(np.uint8)
    Image.fromarray(tile).save(tmp_path / "tile.png")
    tile_boxes = [[1, 1, 6, 7], [2, 20, 9, 30], [40, 2, 47, 9], [30, 30, 38, 39], [20, 15, 26, 22], [3, 3, 5, 6]]
    with open(tmp_path / "boxes.csv", "w") as f:
        f.write("id,ymin,xmin,ymax,xmax\n" + "".join(f"n{i},{','.join(map(str, b))}\n"
                                                      for i, b in enumerate(tile_boxes)))
    out = tmp_path / "pred"
    assert run_medtf("predict", exported, "--input", tmp_path / "tile.png", "--boxes", tmp_path / "boxes.csv",
                     "--output", out) == 0
    rows = list(csv.DictReader(open(out / "nuclei.csv")))
    expected = _expected(model, tile.astype(np.float32), tile_boxes)
    got = np.array([[float(r[f"p_class_{k}"]) for k in range(3)] for r in rows])
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert [r["id"] for r in rows] == [f"n{i}" for i in range(6)]
    import tensorflow as tf

    from medtf.tasks.nucleus_predict import classify_tile

    served = tf.saved_model.load(str(exported)).signatures["classify_all"]
    one_slot = classify_tile(served, tile.astype(np.float32), np.array(tile_boxes, np.float32), (32, 32), 1)
    np.testing.assert_allclose(one_slot, _expected(model, tile.astype(np.float32), tile_boxes, alone=True),
                               atol=2e-6)  # one nucleus per call: no context
    assert [r["class"] for r in rows] == [f"class_{k}" for k in expected.argmax(1)]
    geo = json.loads((out / "nuclei.geojson").read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == 6
    for feature, box, p in zip(geo["features"], tile_boxes, expected):
        assert feature["geometry"]["type"] == "Polygon"
        ymin, xmin, ymax, xmax = box
        assert feature["geometry"]["coordinates"] == [[[xmin, ymin], [xmax, ymin], [xmax, ymax], [xmin, ymax],
                                                       [xmin, ymin]]]
        props = feature["properties"]
        assert props["objectType"] == "detection" and props["classification"]["name"] == f"class_{p.argmax()}"
        assert len(props["classification"]["color"]) == 3
        np.testing.assert_allclose([props["probabilities"][f"class_{k}"] for k in range(3)], p, atol=1e-6)
    overlay = np.asarray(Image.open(out / "overlay.png"))
    assert overlay.shape == (48, 40, 3)
    colour = geo["features"][3]["properties"]["classification"]["color"]
    assert overlay[30, 35].tolist() == colour and overlay[33, 35].tolist() == tile[33, 35].tolist()  # edge / inside

    # The same nuclei from an instance map (contexts differ: box n5 is not in it).
    labels = np.zeros((48, 40), np.int32)
    for i, (ymin, xmin, ymax, xmax) in enumerate(tile_boxes[:5]):
        labels[ymin:ymax, xmin:xmax] = i + 1
    labels[1, 1] = 0  # a notched corner: the outline follows the pixels, the box does not change
    np.save(tmp_path / "instances.npy", labels)
    out2 = tmp_path / "pred_instances"
    assert run_medtf("predict", exported, "--input", tmp_path / "tile.png", "--instances", tmp_path / "instances.npy",
                     "--output", out2) == 0
    rows = list(csv.DictReader(open(out2 / "nuclei.csv")))
    assert [r["id"] for r in rows] == ["1", "2", "3", "4", "5"]
    got = np.array([[float(r[f"p_class_{k}"]) for k in range(3)] for r in rows])
    np.testing.assert_allclose(got, _expected(model, tile.astype(np.float32), tile_boxes[:5]), atol=2e-6)
    ring = json.loads((out2 / "nuclei.geojson").read_text())["features"][0]["geometry"]["coordinates"][0]
    assert _area(ring) == (labels == 1).sum() == 29 and [1, 2] in ring and [2, 1] in ring
    assert run_medtf("predict", exported, "--input", tmp_path / "tile.png", "--boxes", tmp_path / "missing.csv",
                     "--output", tmp_path / "bad") == 2


@pytest.mark.slow
def test_export_reloads_in_a_fresh_process_and_predict_takes_a_run_directory(nucleus_run, tmp_path):
    """serving_default (images, boxes, num_boxes) in a new Python process = the Keras model; medtf predict RUN_DIR
    exports the run on the fly and gives the exported model's probabilities."""
    run, model = nucleus_run
    assert run_medtf("export", run, "--output", tmp_path / "export") == 0
    exported = tmp_path / "export" / "tiny" / "1"
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    boxes = np.array([[[2, 3, 9, 12], [10, 10, 20, 30], [0, 0, 32, 32]], [[5, 5, 6, 6], [0, 0, 0, 0],
                                                                          [0, 0, 0, 0]]], np.float32)
    counts = np.array([3, 1], np.int32)
    np.save(tmp_path / "x.npy", image)
    np.save(tmp_path / "b.npy", boxes)
    code = (f"import json, numpy as np, tensorflow as tf; m = tf.saved_model.load({str(exported)!r}); "
            f"s = m.signatures['serving_default']; p = s(images=tf.constant(np.load({str(tmp_path / 'x.npy')!r})), "
            f"boxes=tf.constant(np.load({str(tmp_path / 'b.npy')!r})), num_boxes=tf.constant([3, 1]))"
            f"['probabilities'].numpy(); print(json.dumps(p.tolist()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    served = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    padded = np.concatenate([boxes, np.zeros((2, 5, 4), np.float32)], 1)
    direct = np.asarray(model({"images": image / np.float32(255), "boxes": padded, "num_boxes": counts}))
    assert served.shape == (2, 3, 3)
    np.testing.assert_allclose(served[0], direct[0, :3], atol=1e-5)
    np.testing.assert_allclose(served[1, :1], direct[1, :1], atol=1e-5)

    tile = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    Image.fromarray(tile).save(tmp_path / "tile.png")
    (tmp_path / "boxes.json").write_text(json.dumps([[2, 3, 9, 12], [10, 10, 20, 30]]))
    for source in (exported, run):
        assert run_medtf("predict", source, "--input", tmp_path / "tile.png", "--boxes", tmp_path / "boxes.json",
                         "--output", tmp_path / source.name) == 0
    first, second = (list(csv.DictReader(open(tmp_path / name / "nuclei.csv"))) for name in ("1", run.name))
    assert first == second and len(first) == 2
    # Class names come from the training shards' manifest (--data-dir: the run's config names none).
    from medtf.synth.nuclei_he import generate_nuclei_he
    from tests.conftest import TEST_SALT

    generate_nuclei_he(tmp_path / "src", cases=2, seed=2, tile_size=32, consep_images=0)
    assert run_medtf("convert", "nuclei-he", "--input", tmp_path / "src" / "pannuke", "--output", tmp_path / "shards",
                     "--id-salt", TEST_SALT, "--split", "1,0,0", "--quiet") == 0
    small = tmp_path / "three_classes"  # the shards list 5 classes, this model has 3: generic names
    assert run_medtf("export", run, "--output", small, "--data-dir", tmp_path / "shards") == 0
    assert json.loads((small / "tiny" / "1" / "medtf.json").read_text())["class_names"] == ["class_0", "class_1",
                                                                                             "class_2"]
    import shutil

    from medtf.models.vit import NucleusClassifier

    five = tmp_path / "run5"
    shutil.copytree(run, five, ignore=shutil.ignore_patterns("export"))
    NucleusClassifier(num_classes=5, max_nuclei=8, image_size=32, patch_size=8, hidden_dim=16, num_layers=1,
                      num_heads=2, mlp_dim=32).save(five / "checkpoints" / "best.keras")
    assert run_medtf("export", five, "--output", tmp_path / "five", "--data-dir", tmp_path / "shards") == 0
    assert json.loads((tmp_path / "five" / "tiny" / "1" / "medtf.json").read_text())["class_names"] == [
        "neoplastic", "inflammatory", "connective", "dead", "epithelial"]
    direct = np.asarray(model({"images": tile[None] / np.float32(255), "boxes": np.pad(
        np.array([[[2, 3, 9, 12], [10, 10, 20, 30]]], np.float32), [(0, 0), (0, 6), (0, 0)]),
        "num_boxes": np.array([2])}))[0, :2]
    np.testing.assert_allclose([[float(r[f"p_class_{k}"]) for k in range(3)] for r in first], direct, atol=2e-6)
