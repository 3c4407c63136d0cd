"""Geometry helpers shared by the spatial transforms: coordinate grids, the gather-based resampler, boxes.

Coordinates are float32 voxel indices of the *input* (voxel ``i`` covers ``[i, i + 1)`` in the box convention,
its centre is index ``i``). `resample` reads a channels-last array at such coordinates with one ``tf.gather`` per
neighbour (bilinear in 2D, trilinear in 3D) or the nearest neighbour; every transform that resamples (affine,
elastic, resize) builds coordinates and calls it, so 2D and 3D share one code path. Affine and elastic go through
`warp_example`, which runs coordinates, field and reads of image and labels as one XLA computation.
"""

from __future__ import annotations

import os

import tensorflow as tf

from medtf.transforms.base import LABEL_KEYS

ALIGNED_KEYS = ("classes", "instance_ids")  # per-box keys filtered together with ``boxes``


def per_axis(value, rank: int, name: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * rank
    if len(values) != rank:
        raise ValueError(f"{name} needs {rank} values for a {rank}D image, got {value!r}")
    return values


def value_range(value, name: str) -> tuple[float, float]:
    """``r`` -> ``(-r, r)``; ``(lo, hi)`` -> itself."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] > value[1]:
            raise ValueError(f"{name} must be a number or a (lo, hi) pair, got {value!r}")
        return float(value[0]), float(value[1])
    return -abs(float(value)), abs(float(value))


def uniform(seed, shape, lo, hi):
    return tf.random.stateless_uniform(shape, seed, lo, hi, dtype=tf.float32)


def spatial_shape(image: tf.Tensor, rank: int) -> list:
    """Spatial sizes: Python ints where static, scalar int32 tensors otherwise."""
    dynamic = tf.shape(image)
    return [image.shape[i] if image.shape[i] is not None else dynamic[i] for i in range(rank)]


def map_arrays(example: dict, rank: int, image_fn, label_fn) -> dict:
    """Apply ``image_fn`` to ``image`` and ``label_fn`` to each label key as ``(*spatial, C)`` tensors."""
    out = dict(example)
    out["image"] = image_fn(example["image"])
    for key in LABEL_KEYS:
        if key in example:
            label = example[key]
            squeeze = label.shape.rank == rank
            label = label_fn(label[..., None] if squeeze else label)
            out[key] = label[..., 0] if squeeze else label
    return out


def set_boxes(example: dict, boxes: tf.Tensor, size) -> dict:
    """Clip ``boxes`` (float32, pixels) to ``[0, size)``, drop empty ones and the aligned per-box keys."""
    hi = tf.cast(tf.stack([size[0], size[1], size[0], size[1]]), tf.float32)
    boxes = tf.clip_by_value(boxes, 0.0, hi)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    out = dict(example)
    out["boxes"] = tf.cast(tf.boolean_mask(boxes, keep), example["boxes"].dtype)
    for key in ALIGNED_KEYS:
        if key in example:
            out[key] = tf.boolean_mask(example[key], keep)
    return out


def get_boxes(example: dict, rank: int):
    if "boxes" not in example:
        return None
    if rank != 2:
        raise ValueError("boxes are supported for 2D images only")
    return tf.cast(example["boxes"], tf.float32)


def moved_keys(example: dict) -> list[str]:
    return [k for k in ("image", *LABEL_KEYS, "boxes", *ALIGNED_KEYS) if k in example]


def maybe_apply(example: dict, seed, prob: float, fn) -> dict:
    """``fn(example)`` with probability ``prob`` (a graph ``tf.cond`` over the keys the transform moves)."""
    if prob >= 1.0:
        return fn(example)
    keys = moved_keys(example)
    sub = {k: example[k] for k in keys}
    apply = uniform(tf.random.fold_in(seed, 99), [], 0.0, 1.0) < prob
    moved = tf.cond(apply, lambda: {k: fn(dict(sub))[k] for k in keys}, lambda: dict(sub))
    return {**example, **moved}


def boxes_from_instances(instances: tf.Tensor, instance_ids: tf.Tensor) -> tf.Tensor:
    """Tight ``(N, 4)`` float32 boxes ``[ymin, xmin, ymax, xmax]`` (max exclusive) of each id in an instance map.

    Args:
        instances: ``(H, W)`` or ``(H, W, 1)`` integer instance map, 0 = background.
        instance_ids: ``(N,)`` ids to box; an id absent from the map gets an empty box (``max <= min``).
    """
    ids = tf.reshape(tf.cast(instances, tf.int32), [-1])
    height, width = tf.shape(instances)[0], tf.shape(instances)[1]
    yy, xx = tf.meshgrid(tf.range(height), tf.range(width), indexing="ij")
    n = tf.maximum(tf.reduce_max(ids), tf.reduce_max(tf.concat([instance_ids, [0]], 0))) + 1
    yy, xx = tf.reshape(yy, [-1]), tf.reshape(xx, [-1])
    lo = [tf.math.unsorted_segment_min(c, ids, n) for c in (yy, xx)]
    hi = [tf.math.unsorted_segment_max(c, ids, n) + 1 for c in (yy, xx)]
    boxes = tf.stack([lo[0], lo[1], hi[0], hi[1]], axis=1)
    boxes = tf.gather(boxes, tf.cast(instance_ids, tf.int32))
    return tf.cast(tf.maximum(boxes, -1), tf.float32)


# ----------------------------------------------------------------------------------------------- sampler
def resample(x: tf.Tensor, coords: list, *, linear: bool, fill=None, fixed=()) -> tf.Tensor:
    """Read ``x`` ``(*spatial, C)`` at float32 index coordinates ``coords`` (one broadcastable tensor per axis).

    ``linear`` gives bi/trilinear interpolation (one gather per corner on flat indices, then nested lerps), else
    nearest. ``fill=None`` clamps at the border; a number pads with it (points more than one voxel outside read
    ``fill``). ``fixed``: axes whose coordinates are known to be whole voxel indices inside the input (the axis a
    rotation in the other two axes leaves alone); they are read without interpolating, which is what interpolation
    gives there, with half the reads per fixed axis. Returns ``(*out_spatial, C)``: float32 when linear, ``x.dtype``
    when nearest. Every op has two operands and no constant chains, so graph rewrites cannot re-associate it: eager
    and `Dataset.map` agree bitwise.
    """
    rank = len(coords)
    if linear and x.dtype != tf.float32:
        x = tf.cast(x, tf.float32)
    in_size = [tf.cast(n, tf.float32) for n in tf.unstack(tf.shape(x)[:rank])]
    if fill is None:
        coords = [c if k in fixed else tf.clip_by_value(c, 0.0, n - 1.0) for k, (c, n) in enumerate(zip(coords, in_size))]
    else:
        x = tf.pad(x, [[1, 1]] * rank + [[0, 0]], constant_values=tf.cast(fill, x.dtype))
        coords = [c + 1.0 if k in fixed else tf.clip_by_value(c, -1.0, n) + 1.0
                  for k, (c, n) in enumerate(zip(coords, in_size))]
    size = tf.shape(x)[:rank]
    channels = x.shape[rank] if x.shape[rank] is not None else tf.shape(x)[rank]
    flat = tf.reshape(x, [-1, channels])
    strides = [tf.reduce_prod(size[k + 1:]) for k in range(rank)]
    out_shape, static = tf.shape(coords[0]), coords[0].shape
    for c in coords[1:]:
        out_shape = tf.broadcast_dynamic_shape(out_shape, tf.shape(c))
        static = tf.broadcast_static_shape(static, c.shape)
    static = static.concatenate([x.shape[rank]])
    full_shape = tf.concat([out_shape, [channels]], 0)

    def read(index):  # one gather of flat indices: much faster than gathering a stacked (corners, ...) index
        return tf.reshape(tf.gather(flat, tf.reshape(tf.broadcast_to(index, out_shape), [-1])), full_shape)

    if not linear:
        index = sum(tf.cast(c if k in fixed else tf.floor(c + 0.5), tf.int32) * strides[k]
                    for k, c in enumerate(coords))
        return tf.ensure_shape(read(index), static)
    top = [tf.cast(tf.maximum(size[k] - 2, 0), tf.float32) for k in range(rank)]
    lo = [c if k in fixed else tf.clip_by_value(tf.floor(c), 0.0, top[k]) for k, c in enumerate(coords)]
    moving = [k for k in range(rank) if k not in fixed]
    frac = {k: (coords[k] - lo[k])[..., None] for k in moving}
    base = sum(tf.cast(f, tf.int32) * strides[k] for k, f in enumerate(lo))
    steps = {k: strides[k] * tf.minimum(size[k] - 1, 1) for k in moving}  # 0 on a size-1 axis
    values = []
    for corner in range(2 ** len(moving)):  # the last moving axis is the fastest-varying bit of ``corner``
        step = sum(steps[k] for i, k in enumerate(moving) if (corner >> (len(moving) - 1 - i)) & 1)
        values.append(read(base + step if corner else base))
    for k in reversed(moving):  # lerp pairs along the last remaining axis
        values = [a + frac[k] * (b - a) for a, b in zip(values[0::2], values[1::2])]
    return tf.ensure_shape(values[0], static)


def resample_example(example: dict, rank: int, coords: list, *, linear: bool, fill, label_fill) -> dict:
    """Resample image (``linear``, ``fill``) and labels (nearest, ``label_fill``) at the same coordinates."""

    def image_fn(x):
        out = resample(x, coords, linear=linear, fill=fill)
        if x.dtype.is_integer:
            out = tf.round(out)
        return tf.cast(out, x.dtype) if out.dtype != x.dtype else out

    return map_arrays(example, rank, image_fn, lambda y: resample(y, coords, linear=False, fill=label_fill))


# ----------------------------------------------------------------------------------------------- warps (XLA)
# `warp_example` runs the whole warp of one example (coordinates, displacement field, image and label reads) as one
# XLA computation: XLA fuses the coordinate math, the gathers and the lerps into loops over the output voxels, where
# the graph runs ~40 full-size ops and its gather kernel pays a memcpy call per element (random_affine at 128^3:
# ~50 ms of CPU instead of ~200; random_elastic ~60 instead of ~240). XLA compiles once per input shape (~0.3 s).
# ``MEDTF_XLA_WARP=0`` runs the same code as a plain graph function (same values up to float round-off).
XLA_WARP = os.environ.get("MEDTF_XLA_WARP", "1").strip().lower() not in ("0", "false", "no", "off")


def cubic_weights(n, g: int) -> tf.Tensor:
    """``(n, g)`` float32 matrix of `tf.image.resize` bicubic interpolation from ``g`` to ``n`` points.

    Resizing is linear, so resizing the identity basis gives its matrix: ``resize(v) = cubic_weights @ v`` along
    one axis, and a 2D/3D bicubic resize is the product of one such matrix per axis.
    """
    basis = tf.eye(g)[:, None, :]  # (g, 1, g): g points along the resized axis, one channel per basis vector
    return tf.image.resize(basis, tf.stack([n, 1]), "bicubic")[:, 0, :]


def upsample(field: tf.Tensor, weights: list) -> tf.Tensor:
    """Bicubic resize of a coarse ``(*grid, C)`` field to ``(*shape, C)``, one matrix per axis (`cubic_weights`)."""
    for axis in reversed(range(len(weights))):  # the last axis first: the full-size product comes last
        field = _contract(field, weights[axis], axis)
    return field


def _contract(field: tf.Tensor, weight: tf.Tensor, axis: int) -> tf.Tensor:
    """``field`` with its spatial ``axis`` replaced by ``weight @ field`` along it."""
    rank = field.shape.rank
    perm = [axis] + [a for a in range(rank) if a != axis]
    moved = tf.transpose(field, perm) if axis else field
    shape = tf.shape(moved)
    out = tf.matmul(weight, tf.reshape(moved, [shape[0], -1]))
    out = tf.reshape(out, tf.concat([[tf.shape(weight)[0]], shape[1:]], 0))
    return tf.transpose(out, [perm.index(a) for a in range(rank)]) if axis else out


def _warp(image, labels, params, *, rank, kind, linear, fill, label_fill, fixed):
    """Warp ``image`` ``(*S, C)`` and ``labels`` (each ``(*S, C_l)``) onto the input grid ``S``.

    ``kind="affine"``: ``params = (inverse, offset)``, input coordinates ``inverse @ p + offset``;
    ``kind="field"``: ``params = (coarse, weights)``, input coordinates ``p + upsample(coarse, weights)``.
    """
    image = tf.ensure_shape(image, [None] * (rank + 1))  # shapes are relaxed between calls (reduce_retracing)
    labels = [tf.ensure_shape(y, [None] * (rank + 1)) for y in labels]
    shape = tf.unstack(tf.shape(image)[:rank])
    if kind == "affine":
        coords = grid_coords(shape, rank, *params)
    else:
        coarse, weights = params
        field = upsample(coarse, list(weights))
        coords = [axis_grid(n, rank, k) + field[..., k] for k, n in enumerate(shape)]
    coords = [axis_grid(n, rank, k) if k in fixed else c for k, (c, n) in enumerate(zip(coords, shape))]
    out = resample(image, coords, linear=linear, fill=fill, fixed=fixed)
    if linear and image.dtype.is_integer:
        out = tf.round(out)
    out = tf.cast(out, image.dtype) if out.dtype != image.dtype else out
    return out, [resample(y, coords, linear=False, fill=label_fill, fixed=fixed) for y in labels]


_WARP_XLA = tf.function(_warp, jit_compile=True, reduce_retracing=True)
_WARP_GRAPH = tf.function(_warp, reduce_retracing=True)


def warp_example(example: dict, rank: int, *, linear: bool, fill, label_fill, inverse=None, offset=None,
                 coarse=None, fixed=(), xla: bool | None = None) -> dict:
    """Warp ``image`` (``linear`` or nearest, ``fill``) and the label keys (nearest, ``label_fill``) of ``example``.

    Give ``inverse`` ``(rank, rank)`` and ``offset`` ``(rank,)`` for an affine map (input coordinates
    ``inverse @ p + offset`` of each output voxel ``p``), or ``coarse`` ``(*grid, rank)`` for a displacement field
    bicubically upsampled to the image (`upsample`). ``fixed``: axes the map leaves alone (see `resample`).
    Output shapes, dtypes and values are those of `resample_example` at the same coordinates (up to float
    round-off). ``xla`` (default ``XLA_WARP``): one XLA computation, else a graph function.
    """
    image = example["image"]
    keys = [k for k in LABEL_KEYS if k in example]
    labels = [example[k][..., None] if example[k].shape.rank == rank else example[k] for k in keys]
    if coarse is not None:
        shape = spatial_shape(image, rank)
        weights = tuple(cubic_weights(n, coarse.shape[k]) for k, n in enumerate(shape))
        kind, params = "field", (coarse, weights)
    else:
        kind, params = "affine", (inverse, offset)
    warp = _WARP_XLA if (XLA_WARP if xla is None else xla) else _WARP_GRAPH
    out_image, out_labels = warp(image, labels, params, rank=rank, kind=kind, linear=linear, fill=fill,
                                 label_fill=label_fill, fixed=tuple(fixed))
    out = dict(example)
    out["image"] = tf.ensure_shape(out_image, image.shape)
    for key, label, y in zip(keys, labels, out_labels):
        y = tf.ensure_shape(y, label.shape)
        out[key] = y[..., 0] if example[key].shape.rank == rank else y
    return out


def axis_grid(n, rank: int, axis: int) -> tf.Tensor:
    """``range(n)`` as float32, shaped to broadcast along ``axis`` of a ``rank``-D grid."""
    shape = [1] * rank
    shape[axis] = -1
    return tf.reshape(tf.range(tf.cast(n, tf.float32)), shape)


def is_linear(name: str) -> bool:
    if name not in ("linear", "nearest"):
        raise ValueError(f"image_interpolation must be 'linear' or 'nearest', got {name!r}")
    return name == "linear"


def rotation_matrix(rank: int, angles: tf.Tensor) -> tf.Tensor:
    """Rotation from radians: one angle in 2D, angles about axes 0, 1, 2 in 3D (applied in that order)."""
    planes = [(0, 1)] if rank == 2 else [(1, 2), (0, 2), (0, 1)]
    matrix = tf.eye(rank)
    for i, (a, b) in enumerate(planes):
        c, s = tf.cos(angles[i]), tf.sin(angles[i])
        rot = tf.tensor_scatter_nd_update(tf.eye(rank), [[a, a], [a, b], [b, a], [b, b]], tf.stack([c, -s, s, c]))
        matrix = tf.matmul(rot, matrix)
    return matrix


def grid_coords(shape: list, rank: int, inverse: tf.Tensor, offset: tf.Tensor) -> list:
    """Input coordinates ``inverse @ p + offset`` of every output voxel ``p``, one float32 tensor per axis.

    The leading axes go through one small matmul over the ``shape[:-1]`` grid and the last axis is added last: a
    single two-operand add per voxel, which graph rewrites cannot re-associate (a chain of broadcast adds gave
    results differing by 1 ulp between eager and `Dataset.map`).
    """
    lead = tf.meshgrid(*[tf.range(tf.cast(n, tf.float32)) for n in shape[:-1]], indexing="ij")
    points = tf.stack([tf.reshape(g, [-1]) for g in lead] + [tf.ones_like(tf.reshape(lead[0], [-1]))], axis=1)
    weights = tf.concat([inverse[:, :-1], offset[:, None]], axis=1)  # (rank, rank)
    partial = tf.matmul(points, weights, transpose_b=True)  # (prod(shape[:-1]), rank)
    last = tf.range(tf.cast(shape[-1], tf.float32))
    return [tf.reshape(partial[:, k], [*shape[:-1], 1]) + inverse[k, -1] * last for k in range(rank)]


def shift_boxes(example: dict, out: dict, rank: int, begin, scale, size) -> dict:
    """Boxes of ``example`` moved to ``(b - begin) / scale`` (per axis), clipped to ``size``, empties dropped."""
    boxes = get_boxes(example, rank)
    if boxes is None:
        return out
    begin = tf.cast(tf.stack(begin), tf.float32)
    scale = tf.cast(tf.stack(scale), tf.float32)
    return set_boxes(out, (boxes - tf.tile(begin, [2])) / tf.tile(scale, [2]), size)


def pad_to_size(example: dict, rank: int, size: list[int], pad_value=None) -> dict:
    """Pad every spatial axis shorter than ``size`` (centred): image with ``pad_value`` (None: its per-channel
    minimum), labels with 0; boxes shifted. A no-op (same tensors) when the static shape is already large enough."""
    shape = spatial_shape(example["image"], rank)
    if all(isinstance(n, int) and n >= s for n, s in zip(shape, size)):
        return example
    total = [tf.maximum(s - n, 0) for n, s in zip(shape, size)]
    before = [t // 2 for t in total]
    paddings = [[b, t - b] for b, t in zip(before, total)]

    def pad_label(x):
        return tf.pad(x, paddings + [[0, 0]] * (x.shape.rank - rank))

    def pad_image(x):
        if pad_value is not None:
            return tf.pad(x, paddings + [[0, 0]], constant_values=tf.cast(pad_value, x.dtype))
        fill = tf.reduce_min(x, axis=list(range(rank)))  # (C,)
        inside = tf.pad(tf.ones(tf.shape(x)[:rank], tf.bool), paddings, constant_values=False)
        return tf.where(inside[..., None], tf.pad(x, paddings + [[0, 0]]), fill)

    out = map_arrays(example, rank, pad_image, pad_label)
    new_shape = [n + t for n, t in zip(shape, total)]
    return shift_boxes(example, out, rank, [-b for b in before], [1] * rank, new_shape)


def crop(example: dict, rank: int, begin: list, size: list[int]) -> dict:
    """Exact crop ``[begin, begin + size)`` of image and labels (static ``size``); boxes shifted and clipped."""

    def slice_(x):
        tail = [d if d is not None else -1 for d in x.shape[rank:]]
        start = tf.concat([tf.cast(tf.stack(begin), tf.int32), tf.zeros([len(tail)], tf.int32)], 0)
        return tf.slice(x, start, list(size) + tail)

    out = map_arrays(example, rank, slice_, slice_)
    return shift_boxes(example, out, rank, begin, [1] * rank, size)
