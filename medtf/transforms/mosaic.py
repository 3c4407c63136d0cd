"""Overlapping crops of H&E tiles: a random crop from 2 x 2 neighbouring tiles of one source image, in-graph.

The nucleus paper trains on random 448 px crops spanning 2 x 2 neighbouring 448 px tiles, so a nucleus cut by
a tile border is seen whole in other crops. `mosaic_crop` does this on a *group*: every tile of one source image
stacked (``medtf.data.mosaic`` groups the tiles of ``nuclei-he`` shards by source), each with its
``tile_origin`` (source pixels) and ``scale`` (tile pixels per source pixel, the converter's ``--resize``):

1. Tiles sit at ``round(tile_origin * scale)`` on a grid of distinct row / column positions. An *anchor* is a tile
   whose right, lower and lower-right neighbours exist and overlap or touch it (step <= tile size); one is drawn
   uniformly. The 2 x 2 mosaic is assembled from the four: pixels by concatenation (overlaps hold the same
   source pixels), instance maps by maximum (a nucleus the converter removed from one tile by its border rule
   keeps the part another tile holds), boxes as the union per instance id of the four tiles' boxes moved to the
   mosaic, classes per instance id.
2. A ``size`` crop at a uniformly drawn position inside the mosaic (`medtf.transforms.geometry.crop`: image and
   instance map sliced exactly, boxes shifted, clipped to the crop, empty ones dropped with their class / id).
3. A nucleus whose visible pixels in the crop are less than ``min_visible`` of its pixels in the mosaic is dropped
   from the boxes and zeroed in the instance map (its RGB pixels stay), as the converter's ``--min-visible``;
   ``min_visible=0`` keeps every box that overlaps the crop.

Sources without a 2 x 2 neighbourhood (a single tile: PanNuke, or an image only one tile high or wide) fall back
to a ``size`` crop of one randomly drawn tile (documented fallback; the data-level stage refuses data sets where
no source has neighbours). Tiles cut by the converter with ``--min-visible > 0`` lose the removed parts of border
nuclei in that tile; convert with ``--min-visible 0`` to let the mosaic decide alone.

Every draw comes from ``tf.random.stateless_*`` with the given seed: one seed, one crop, eagerly or in
``Dataset.map``.
"""

from __future__ import annotations

import tensorflow as tf

from medtf.transforms.geometry import ALIGNED_KEYS, crop

__all__ = ["mosaic_crop"]

_TILE_KEYS = ("image", "instances", "boxes", "tile_origin", "scale", *ALIGNED_KEYS)


def _grid(positions):
    """Tile index ``(rows, cols)`` of every distinct (y, x) position (-1: none) and the sorted positions."""
    ys, _ = tf.unique(tf.sort(positions[:, 0]))
    xs, _ = tf.unique(tf.sort(positions[:, 1]))
    at = tf.stack([tf.searchsorted(ys, positions[:, 0]), tf.searchsorted(xs, positions[:, 1])], 1)
    n = tf.shape(positions)[0]
    grid = tf.tensor_scatter_nd_max(tf.fill([tf.size(ys), tf.size(xs)], -1), at, tf.range(n))
    return grid, ys, xs


def _choose(grid, ys, xs, n, th, tw, seed):
    """``(tl, tr, bl, br, dy, dx)``: the four tiles of a random anchor and the steps to its neighbours; a single
    random tile (steps 0) when no tile has a 2 x 2 neighbourhood."""
    u = tf.random.stateless_uniform([], seed, 0.0, 1.0)
    dy, dx = ys[1:] - ys[:-1], xs[1:] - xs[:-1]
    valid = (grid[:-1, :-1] >= 0) & (grid[1:, :-1] >= 0) & (grid[:-1, 1:] >= 0) & (grid[1:, 1:] >= 0)
    valid &= (dy <= th)[:, None] & (dx <= tw)[None, :]  # neighbours that overlap or touch: no gap to fill
    anchors = tf.cast(tf.where(valid), tf.int32)
    count = tf.shape(anchors)[0]

    def mosaic():
        r, c = tf.unstack(anchors[tf.minimum(tf.cast(u * tf.cast(count, tf.float32), tf.int32), count - 1)])
        return grid[r, c], grid[r, c + 1], grid[r + 1, c], grid[r + 1, c + 1], dy[r], dx[c]

    def single():  # any tile (several may share a position: PanNuke tiles all start at (0, 0))
        t = tf.minimum(tf.cast(u * tf.cast(n, tf.float32), tf.int32), n - 1)
        return t, t, t, t, tf.constant(0), tf.constant(0)

    return tf.cond(count > 0, mosaic, single)


def _merge_boxes(group, four, offsets):
    """Boxes of the four tiles moved to the mosaic, merged per instance id (union); ids ascending."""
    boxes = tf.concat([tf.cast(tf.gather(group["boxes"], t), tf.float32)
                       + tf.cast(tf.tile(o, [2]), tf.float32) for t, o in zip(four, offsets)], 0)
    ids = tf.concat([tf.gather(group["instance_ids"], t) for t in four], 0)
    classes = tf.concat([tf.gather(group["classes"], t) for t in four], 0)
    real = ids >= 0  # padded_batch fills missing rows with -1
    boxes, ids, classes = tf.boolean_mask(boxes, real), tf.boolean_mask(ids, real), tf.boolean_mask(classes, real)
    segments = tf.reduce_max(tf.concat([ids, [0]], 0)) + 1
    lo = tf.math.unsorted_segment_min(boxes[:, :2], ids, segments)
    hi = tf.math.unsorted_segment_max(boxes[:, 2:], ids, segments)
    cls = tf.math.unsorted_segment_max(classes, ids, segments)
    present = tf.math.unsorted_segment_max(tf.ones_like(ids), ids, segments) > 0
    unique = tf.cast(tf.where(present)[:, 0], tf.int32)
    return tf.gather(tf.concat([lo, hi], 1), unique), tf.gather(cls, unique), unique


# Graph ops only (tf.cond, no Python branches on tensors): AutoGraph would spend seconds converting this and the
# geometry helpers at every trace for nothing.
@tf.autograph.experimental.do_not_convert
def mosaic_crop(group: dict, seed, size, min_visible: float = 0.5) -> dict:
    """A ``size`` crop from 2 x 2 neighbouring tiles of one source image (see the module docstring).

    Args:
        group: the tiles of one source, stacked: ``image (n, h, w, C)``, ``instances (n, h, w, 1)`` int,
            ``boxes (n, K, 4)`` ``[ymin, xmin, ymax, xmax]`` tile pixels (max exclusive), ``classes`` /
            ``instance_ids (n, K)`` (-1: padding rows), ``tile_origin (n, 2)``, ``scale (n,)``; other keys
            ``(n, ...)`` are taken from the anchor tile.
        seed: ``(2,)`` int stateless seed.
        size: crop ``(height, width)`` (or one int), at most ``h + step`` (the mosaic's extent).
        min_visible: in [0, 1], see the module docstring.

    Returns:
        One tile example: ``image (size, C)``, ``instances (size, 1)``, ``boxes (N, 4)`` float32, ``classes``,
        ``instance_ids (N,)`` int32, ``tile_origin`` of the crop (source pixels), the anchor's other keys.

    Example:
        >>> crop = mosaic_crop(group, tf.constant([1, 2]), 128)   # group: 2 x 2 or more tiles of 128 px
        >>> crop["image"].shape
        TensorShape([128, 128, 3])
    """
    size = [int(size), int(size)] if isinstance(size, int) else [int(s) for s in size]
    if not 0.0 <= float(min_visible) <= 1.0:
        raise ValueError(f"min_visible must be in [0, 1], got {min_visible}")
    missing = [k for k in _TILE_KEYS if k not in group]
    if missing:
        raise ValueError(f"mosaic_crop needs the tile keys {missing} (a nuclei-he group of tiles)")
    image, instances = group["image"], tf.cast(group["instances"], tf.int32)
    th, tw = tf.shape(image)[1], tf.shape(image)[2]
    scale = tf.reshape(tf.cast(group["scale"], tf.float32), [-1, 1])
    positions = tf.cast(tf.round(tf.cast(group["tile_origin"], tf.float32) * scale), tf.int32)
    grid, ys, xs = _grid(positions)
    tl, tr, bl, br, dy, dx = _choose(grid, ys, xs, tf.shape(image)[0], th, tw,
                                     tf.random.fold_in(seed, 1))
    height, width = th + dy, tw + dx

    def place(x, t, oy, ox):  # one tile padded into the mosaic
        return tf.pad(x[t], [[oy, height - th - oy], [ox, width - tw - ox], [0, 0]])

    top = tf.concat([image[tl], image[tr][:, tw - dx:]], 1)
    bottom = tf.concat([image[bl], image[br][:, tw - dx:]], 1)
    four, offsets = (tl, tr, bl, br), [tf.stack(o) for o in ((0, 0), (0, dx), (dy, 0), (dy, dx))]
    inst = tf.reduce_max(tf.stack([place(instances, t, o[0], o[1]) for t, o in zip(four, offsets)]), 0)
    boxes, classes, ids = _merge_boxes(group, four, offsets)
    checks = [tf.debugging.assert_greater_equal(
        tf.stack([height, width]), tf.constant(size), message=f"mosaic_crop: crop {size} larger than the mosaic")]
    with tf.control_dependencies(checks):
        mosaic = {"image": tf.concat([top, bottom[th - dy:]], 0), "instances": inst, "boxes": boxes,
                  "classes": classes, "instance_ids": ids}
    draw = tf.random.stateless_uniform([2], tf.random.fold_in(seed, 2), 0.0, 1.0)
    room = tf.stack([height - size[0], width - size[1]]) + 1
    begin = tf.minimum(tf.cast(draw * tf.cast(room, tf.float32), tf.int32), room - 1)
    out = crop(mosaic, 2, tf.unstack(begin), size)
    out = _drop_hidden(out, inst, float(min_visible))
    origin = tf.cast(group["tile_origin"][tl], tf.float32) + tf.cast(begin, tf.float32) / scale[tl]
    out["tile_origin"] = tf.cast(tf.round(origin), group["tile_origin"].dtype)
    out["scale"] = group["scale"][tl]
    for key, value in group.items():
        if key not in out and key not in _TILE_KEYS:
            out[key] = value[tl]
    return out


def _drop_hidden(out: dict, mosaic_instances, min_visible: float) -> dict:
    """Drop nuclei with less than ``min_visible`` of their mosaic pixels inside the crop (boxes and map)."""
    ids = out["instance_ids"]
    segments = tf.maximum(tf.reduce_max(mosaic_instances), tf.reduce_max(tf.concat([ids, [0]], 0))) + 1
    total = tf.math.bincount(tf.reshape(mosaic_instances, [-1]), minlength=segments, maxlength=segments)
    seen = tf.math.bincount(tf.reshape(out["instances"], [-1]), minlength=segments, maxlength=segments)
    ratio = tf.cast(tf.gather(seen, ids), tf.float32) / tf.cast(tf.maximum(tf.gather(total, ids), 1), tf.float32)
    keep = ratio >= min_visible
    result = dict(out)
    for key in ("boxes", *ALIGNED_KEYS):
        result[key] = tf.boolean_mask(out[key], keep)
    dropped = tf.scatter_nd(tf.boolean_mask(ids, ~keep)[:, None], tf.ones_like(tf.boolean_mask(ids, ~keep)),
                            [segments])
    result["instances"] = tf.where(tf.gather(dropped, out["instances"]) > 0, 0, out["instances"])
    return result
