"""``data.mosaic``: training on overlapping crops from 2 x 2 neighbouring tiles of ``nuclei-he`` shards.

The converter (``medtf convert nuclei-he --tile-size T [--tile-overlap O] [--resize S]``) cuts each big image
(CoNSeP) into tiles written one after another, each with ``tile_origin`` (source pixels), ``scale`` and an
``example_id`` ``<case hash>-<index>``: the case hash names the source image. This stage regroups them:

1. ``tile_counts``: one pass over the split's files reading only the ids gives the tiles per source;
2. ``group_tiles``: ``group_by_window`` keyed by source emits a source's tiles stacked (``padded_batch``) as soon
   as all of them arrived (so only the sources being read are held);
3. after the groups are shuffled (a few at a time: a group holds a whole image) and repeated, ``crops`` draws
   as many crops from each group as it has tiles (an epoch keeps its number of examples), each by
   `medtf.transforms.mosaic.mosaic_crop` with a seed from a stateless stream, and shuffles the crops.

The crops then go through the experiment's transforms and ``patch_size`` like tiles. Settings::

    data:
      mosaic: {size: null, min_visible: 0.5}   # size null: the tile size of the shards (S, or T without resize)

Whole-image data (PanNuke, or nuclei-he converted without ``--tile-size``) has no neighbouring tiles: the stage
refuses it with the fix named (drop ``data.mosaic``: ``patch_size`` crops single tiles). A source image only one
tile high or wide gets single-tile crops (`medtf.transforms.mosaic`).
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
GROUP_SHUFFLE = 4  # groups in the shuffle buffer: each holds a whole source image (CoNSeP 448 px tiles: ~80 MB)
KEYS = ("size", "min_visible")


def settings(mosaic: Mapping | None, manifest: Mapping, data_dir) -> dict | None:
    """``{"size": [h, w], "min_visible": float}`` from ``data.mosaic`` and the manifest, or None when off.

    Raises:
        ValueError: another data kind, unknown keys, a bad value, or shards without neighbouring tiles.
    """
    if mosaic is None or mosaic is False:
        return None
    mosaic = {} if mosaic is True else dict(mosaic)
    unknown = sorted(set(mosaic) - set(KEYS))
    if unknown:
        raise ValueError(f"data.mosaic.{unknown[0]}: unknown key; mosaic takes {', '.join(KEYS)}")
    if manifest.get("kind") != "nuclei-he":
        raise ValueError(f"data.mosaic: {data_dir} holds {manifest.get('kind')!r} shards; overlapping crops need "
                         f"nuclei-he tiles")
    options = manifest.get("options") or {}
    tile = int(options.get("resize") or options.get("tile_size") or 0)
    if not options.get("tile_size"):
        raise ValueError(f"data.mosaic: {data_dir} holds whole images (nuclei-he converted without --tile-size, "
                         f"e.g. PanNuke): no tile has neighbours to crop across. Drop data.mosaic (data.patch_size "
                         f"crops single tiles) or convert big images with --tile-size")
    size = mosaic.get("size") or tile
    size = [int(size)] * 2 if isinstance(size, (int, float)) else [int(s) for s in size]
    min_visible = float(mosaic.get("min_visible", 0.5))
    if len(size) != 2 or min(size) < 1 or not 0.0 <= min_visible <= 1.0:
        raise ValueError(f"data.mosaic: size must be one or two positive ints and min_visible in [0, 1], got "
                         f"{mosaic}")
    return {"size": size, "min_visible": min_visible}


def source_key(example_id: tf.Tensor) -> tf.Tensor:
    """``<case hash>-<index>`` -> ``<case hash>``: the source image of a tile."""
    return tf.strings.regex_replace(example_id, r"-[0-9]+$", "")


def tile_counts(files, compression: str = "") -> dict[bytes, int]:
    """Tiles per source image in ``files`` (reads only each record's ``example_id``)."""
    spec = {"example_id": tf.io.FixedLenFeature([], tf.string)}
    ids = tf.data.TFRecordDataset(list(files), compression_type=compression or "").map(
        lambda r: source_key(tf.io.parse_single_example(r, spec)["example_id"]), num_parallel_calls=AUTOTUNE)
    counts = Counter()
    for batch in ids.batch(4096):
        counts.update(batch.numpy().tolist())
    return dict(counts)


def group_tiles(dataset: tf.data.Dataset, counts: Mapping[bytes, int]) -> tf.data.Dataset:
    """Parsed tiles -> one element per source image, its tiles stacked (boxes padded, classes / ids with -1)."""
    from medtf.data.pipeline import _padding_values

    if not counts:
        raise ValueError("data.mosaic: the split has no tiles")
    keys = list(counts)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.range(len(keys), dtype=tf.int64)), -1)
    sizes = tf.constant([int(counts[k]) for k in keys], tf.int64)
    largest = max(int(v) for v in counts.values())
    padding = _padding_values(dataset.element_spec)

    def key_fn(example):  # a source not counted (cannot happen for the same files) gets its own window 0
        return tf.maximum(table.lookup(source_key(example["example_id"])), 0)

    return dataset.group_by_window(key_fn, lambda _, window: window.padded_batch(largest, padding_values=padding),
                                   window_size_func=lambda key: tf.gather(sizes, key))


def crops(groups: tf.data.Dataset, mosaic: Mapping, *, seed: int | None, shuffle_buffer: int,
          deterministic: bool) -> tf.data.Dataset:
    """Each group -> as many ``mosaic_crop`` crops as it has tiles, seeded per crop, shuffled."""
    from medtf.transforms.mosaic import mosaic_crop

    copies = groups.flat_map(lambda g: tf.data.Dataset.from_tensors(g).repeat(tf.shape(g["image"], tf.int64)[0]))
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    out = tf.data.Dataset.zip((copies, seeds)).map(
        lambda g, s: mosaic_crop(g, s, mosaic["size"], mosaic["min_visible"]), num_parallel_calls=AUTOTUNE,
        deterministic=deterministic)
    return out.shuffle(shuffle_buffer, seed=None if seed is None else seed + 1, reshuffle_each_iteration=True)
