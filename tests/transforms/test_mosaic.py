"""Overlapping crops from 2 x 2 neighbouring tiles (medtf.transforms.mosaic) on hand-made tiles of a known source
image: the crop equals the source region pixel for pixel, boxes are the source boxes shifted and clipped exactly,
nuclei below the visible share are dropped, one seed gives one crop (eager = Dataset.map), zero-box crops work."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from medtf.transforms.mosaic import mosaic_crop

TILE, STEP, SIDE = 16, 12, 40  # a 3 x 3 grid of 16 px tiles every 12 px (4 px overlap) covers 40 x 40


def _source(seed=0, nuclei=14):
    """RGB (SIDE, SIDE, 3) and an instance map of rectangles, ids 1..n (some cross the tile borders)."""
    rng = np.random.default_rng(seed)
    image = rng.random((SIDE, SIDE, 3), dtype=np.float32)
    inst = np.zeros((SIDE, SIDE), np.int32)
    for i in range(1, nuclei + 1):
        y, x = rng.integers(0, SIDE - 3, 2)
        h, w = rng.integers(2, 7, 2)
        inst[y:y + h, x:x + w] = i
    return image, inst


def _tight(inst, ids):
    out = []
    for i in ids:
        ys, xs = np.nonzero(inst == i)
        out.append([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
    return np.array(out, np.float32).reshape(-1, 4)


def _group(image, inst, origins, k=40):
    """The tiles at ``origins`` stacked as medtf.data.mosaic groups them (boxes padded to k rows, ids -1)."""
    tiles = {"image": [], "instances": [], "boxes": [], "classes": [], "instance_ids": []}
    for y, x in origins:
        sub = inst[y:y + TILE, x:x + TILE]
        ids = np.unique(sub[sub > 0])
        boxes = np.zeros((k, 4), np.float32)
        boxes[:len(ids)] = _tight(sub, ids)
        pad = np.full(k, -1, np.int32)
        tiles["image"].append(image[y:y + TILE, x:x + TILE])
        tiles["instances"].append(sub[..., None])
        tiles["boxes"].append(boxes)
        tiles["classes"].append(np.where(np.arange(k) < len(ids), np.resize(ids % 3 + 1, k), pad))
        tiles["instance_ids"].append(np.where(np.arange(k) < len(ids), np.resize(ids, k), pad))
    group = {key: tf.constant(np.stack(v)) for key, v in tiles.items()}
    group["tile_origin"] = tf.constant(np.array(origins, np.int64))
    group["scale"] = tf.ones([len(origins)])
    group["example_id"] = tf.constant([f"t{y}-{x}" for y, x in origins])
    return group


GRID = [(y, x) for y in (0, STEP, 2 * STEP) for x in (0, STEP, 2 * STEP)]


def _expected(inst, anchor, begin, size, min_visible):
    """The nuclei of the anchor's 2 x 2 mosaic overlapping the crop: their boxes in the mosaic shifted and
    clipped to the crop, those with less than min_visible of their mosaic pixels in the crop dropped."""
    (ay, ax), (y, x) = anchor, begin
    mosaic = np.zeros_like(inst)
    mosaic[ay:ay + TILE + STEP, ax:ax + TILE + STEP] = inst[ay:ay + TILE + STEP, ax:ax + TILE + STEP]
    window = mosaic[y:y + size, x:x + size]
    ids = np.array([i for i in np.unique(mosaic[mosaic > 0])
                    if (window == i).sum() >= min_visible * (mosaic == i).sum()], np.int64)
    boxes = _tight(mosaic, ids) - np.array([y, x, y, x], np.float32)
    boxes = np.clip(boxes, 0, size)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return ids[keep], boxes[keep]


@pytest.mark.parametrize("min_visible", [0.0, 0.5])
def test_crop_equals_the_source_and_boxes_are_shifted_and_clipped_exactly(min_visible):
    image, inst = _source()
    group = _group(image, inst, GRID)
    begins = set()
    for s in range(6):
        out = mosaic_crop(group, tf.constant([s, 7]), TILE, min_visible=min_visible)
        y, x = (int(v) for v in out["tile_origin"].numpy())  # scale 1: the crop's origin in the source
        begins.add((y, x))
        assert out["image"].shape == (TILE, TILE, 3)
        np.testing.assert_array_equal(out["image"].numpy(), image[y:y + TILE, x:x + TILE])
        anchor = [int(v) for v in out["example_id"].numpy().decode()[1:].split("-")]  # the anchor tile's id
        assert anchor[0] <= y <= anchor[0] + STEP and anchor[1] <= x <= anchor[1] + STEP
        ids, boxes = _expected(inst, anchor, (y, x), TILE, min_visible)
        np.testing.assert_array_equal(out["instance_ids"].numpy(), ids)
        np.testing.assert_array_equal(out["boxes"].numpy(), boxes)
        np.testing.assert_array_equal(out["classes"].numpy(), ids % 3 + 1)
        for (y0, x0, y1, x1) in boxes.astype(int):  # every box's pixels are the source's
            np.testing.assert_array_equal(out["image"].numpy()[y0:y1, x0:x1], image[y + y0:y + y1, x + x0:x + x1])
        window = inst[y:y + TILE, x:x + TILE]  # the map keeps the kept nuclei only
        np.testing.assert_array_equal(out["instances"].numpy()[..., 0], np.where(np.isin(window, ids), window, 0))
    assert len(begins) >= 4  # positions vary with the seed, inside the whole 2 x 2 mosaics (not tile-aligned)
    assert any(y % STEP or x % STEP for y, x in begins)


def test_one_seed_one_crop_eager_and_in_dataset_map():
    image, inst = _source(1)
    group = _group(image, inst, GRID)
    seeds = tf.constant([[3, 1], [3, 1]])
    eager = [mosaic_crop(group, s, [16, 12], min_visible=0.5) for s in seeds]
    mapped = list(tf.data.Dataset.from_tensor_slices(seeds[:1]).map(lambda s: mosaic_crop(group, s, [16, 12], .5)))
    for a, b in zip(eager, mapped):
        for key in ("image", "instances", "boxes", "instance_ids", "tile_origin", "example_id"):
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
    np.testing.assert_array_equal(eager[0]["image"].numpy(), eager[1]["image"].numpy())
    assert mapped[0]["image"].shape == (16, 12, 3)  # static through Dataset.map


def test_zero_box_crops_and_a_single_tile_fallback():
    image, inst = _source(2)
    empty = np.zeros_like(inst)
    out = mosaic_crop(_group(image, empty, GRID), tf.constant([1, 1]), TILE)
    assert out["boxes"].shape == (0, 4) and out["classes"].shape == (0,) and not out["instances"].numpy().any()
    group = _group(image, inst, [(0, 0)])  # a lone tile (PanNuke): a crop of it
    out = mosaic_crop(group, tf.constant([5, 2]), 10, min_visible=0.0)
    y, x = (int(v) for v in out["tile_origin"].numpy())
    assert 0 <= y <= 6 and 0 <= x <= 6
    np.testing.assert_array_equal(out["image"].numpy(), image[y:y + 10, x:x + 10])
    with pytest.raises(tf.errors.InvalidArgumentError, match="larger than the mosaic"):
        mosaic_crop(group, tf.constant([5, 2]), TILE + 1)
