"""Masked image modeling inputs, in-graph and stateless: BEiT blockwise masks, patch targets, per-example seeds.

Everything here is TensorFlow that runs inside ``Dataset.map`` with ``tf.random.stateless_*`` draws, so one seed
gives one mask eagerly and in a pipeline, on every worker.

Reference: Bao et al., "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022 (``masking_generator.py``);
He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (normalised pixel targets).
"""

from __future__ import annotations

import math

import tensorflow as tf

_HASH_BUCKETS = 2**31 - 1


def num_masking_patches(num_patches: int, mask_ratio: float) -> int:
    """Patches a mask covers: ``round(mask_ratio * num_patches)``, at least 1 (e.g. 0.4 of 196 -> 78)."""
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    return max(1, int(round(mask_ratio * num_patches)))


@tf.autograph.experimental.do_not_convert  # an explicit tf.while_loop: nothing for autograph to rewrite
def blockwise_mask(seed, grid, num_masked: int, min_block: int = 16, max_block: int | None = None,
                   min_aspect: float = 0.3, max_aspect: float | None = None, max_attempts: int = 10,
                   return_blocks: bool = False):
    """BEiT's blockwise mask of a ``grid = (rows, cols)`` patch grid: ``(rows, cols)`` int32, 1 = masked.

    Rectangles are added until ``num_masked`` patches are covered: each draws an area uniformly in
    ``[min_block, min(max_block, still missing)]`` and a log-uniform aspect ratio (rows / cols) in
    ``[min_aspect, max_aspect]`` (default ``1 / min_aspect``), and is kept only when it fits strictly inside the
    grid and adds between 1 and "still missing" new patches, so the count never exceeds ``num_masked``. After
    ``max_attempts`` rejections in a row the mask stays short, as in BEiT.

    ``seed``: a ``(2,)`` int tensor (`example_seed`). ``return_blocks``: also ``(K, 4)`` int32
    ``[top, left, height, width]`` of the K kept rectangles, in drawing order.

    Example:
        >>> mask = blockwise_mask(tf.constant([1, 2]), (14, 14), num_masked=78)   # ~40 % of ViT-B/16's 196
    """
    rows, cols = int(grid[0]), int(grid[1])
    max_block = num_masked if max_block is None else int(max_block)
    log_lo, log_hi = math.log(min_aspect), math.log(max_aspect if max_aspect else 1.0 / min_aspect)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    r = tf.range(rows)[:, None]
    c = tf.range(cols)[None, :]
    max_iterations = (num_masked + 1) * max_attempts  # a bound only: every accepted block adds >= 1 patch

    def attempt(i, mask, count, fails, blocks, kept):
        u = tf.random.stateless_uniform([4], seed=tf.random.fold_in(seed, i), dtype=tf.float32)
        limit = tf.cast(tf.minimum(num_masked - count, max_block), tf.float32)
        area = min_block + u[0] * (limit - min_block)  # random.uniform(a, b) also for b < a, as BEiT
        aspect = tf.exp(log_lo + u[1] * (log_hi - log_lo))
        h = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
        w = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
        fits = (h >= 1) & (w >= 1) & (h < rows) & (w < cols)
        top = tf.minimum(tf.cast(u[2] * tf.cast(rows - h + 1, tf.float32), tf.int32), rows - h)
        left = tf.minimum(tf.cast(u[3] * tf.cast(cols - w + 1, tf.float32), tf.int32), cols - w)
        block = tf.cast((r >= top) & (r < top + h) & (c >= left) & (c < left + w), tf.int32)
        delta = tf.reduce_sum(block * (1 - mask))
        accept = fits & (delta > 0) & (tf.cast(delta, tf.float32) <= limit)
        mask = tf.where(accept, tf.maximum(mask, block), mask)
        slot = tf.where(accept, kept, num_masked)  # rejected draws go to a spare last row
        blocks = tf.tensor_scatter_nd_update(blocks, [[slot]], [tf.stack([top, left, h, w])])
        return (i + 1, mask, count + tf.where(accept, delta, 0), tf.where(accept, 0, fails + 1), blocks,
                kept + tf.cast(accept, tf.int32))

    def going(i, mask, count, fails, blocks, kept):
        return (count < num_masked) & (fails < max_attempts) & (i < max_iterations)

    start = (tf.constant(0, tf.int32), tf.zeros([rows, cols], tf.int32), tf.constant(0, tf.int32),
             tf.constant(0, tf.int32), tf.zeros([num_masked + 1, 4], tf.int32), tf.constant(0, tf.int32))
    _, mask, _, _, blocks, kept = tf.while_loop(going, attempt, start)
    return (mask, blocks[:kept]) if return_blocks else mask


def patchify(image, patch_size: int):
    """``(H, W, C)`` -> ``(N, P * P * C)``: non-overlapping patches in row-major order (the order of the ViT's
    patch tokens), each flattened row by row with channels last."""
    image = tf.convert_to_tensor(image)
    h, w, c = image.shape[0] // patch_size, image.shape[1] // patch_size, image.shape[2]
    x = tf.reshape(image, [h, patch_size, w, patch_size, c])
    return tf.reshape(tf.transpose(x, [0, 2, 1, 3, 4]), [h * w, patch_size * patch_size * c])


def normalize_patches(patches, epsilon: float = 1e-6):
    """Each patch to zero mean, unit variance over its pixels (MAE's ``norm_pix_loss`` target)."""
    mean, var = tf.nn.moments(patches, axes=[-1], keepdims=True)
    return (patches - mean) / tf.sqrt(var + epsilon)


def example_seed(example: dict, salt: int = 0):
    """A ``(2,)`` int64 seed from the example itself: hashes of its ``example_id`` (when present) and of its image.

    The same example always gets the same mask (evaluation is reproducible), and an augmented image (a seeded
    ``random_patch`` crop, a flip) hashes differently, so training sees new masks each epoch, still reproducibly.
    """
    image_hash = tf.strings.to_hash_bucket_fast(tf.io.serialize_tensor(example["image"]), _HASH_BUCKETS)
    if "example_id" in example:
        ident = example["example_id"]
        ident = ident if ident.dtype == tf.string else tf.strings.as_string(ident)
        ident = tf.strings.reduce_join(tf.reshape(ident, [-1]), separator="/")
    else:
        ident = tf.constant("")
    id_hash = tf.strings.to_hash_bucket_fast(ident, _HASH_BUCKETS)
    return tf.random.fold_in(tf.stack([id_hash, image_hash]), salt)


def instance_targets(tokens, boxes, num_boxes, mask, image_size):
    """L_inst targets of the nucleus boxes: ``(ids (B, M, 4) int32, counted (B, M) float32)``.

    Args:
        tokens: the token grid ``(B, th, tw)`` int32 (one visual token per ``H / th x W / tw`` pixel cell; from
            the tokenizer or whatever target provider the task uses).
        boxes: ``(B, M, 4)`` ``[ymin, xmin, ymax, xmax]`` in image pixels, max exclusive.
        num_boxes: ``(B,)`` real rows of ``boxes`` (the rest is padding).
        mask: the masked grid patches ``(B, gh, gw)`` (1 = masked; the ViT's patch grid, may differ from the
            token grid).
        image_size: ``(H, W)`` in pixels.

    The 4 tokens of a nucleus are its box resampled to 2 x 2 token cells: the token cell holding the centre of
    each quadrant of the box (top-left, top-right, bottom-left, bottom-right), i.e. nearest-neighbour sampling of
    the token grid at ``(ymin + h/4 or 3h/4, xmin + w/4 or 3w/4)``. Nearest, not bilinear, because token ids are
    categories: they cannot be averaged. A box smaller than a token cell gets 4 copies of the token it lies in;
    a large box gets 4 distinct samples of its content.

    A nucleus counts (``counted = 1``) when it is real and its box overlaps at least one masked patch by a
    positive area (the paper: "for every nucleus that intersects a masked patch"); others give no L_inst term.

    Example:
        >>> ids, counted = instance_targets(tokens, boxes, num_boxes, mask, (448, 448))
    """
    tokens = tf.convert_to_tensor(tokens)
    boxes = tf.cast(boxes, tf.float32)
    height, width = float(image_size[0]), float(image_size[1])
    th, tw = tokens.shape[-2], tokens.shape[-1]
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)  # (B, M)
    qy = tf.stack([ymin + 0.25 * (ymax - ymin), ymin + 0.75 * (ymax - ymin)], axis=-1)  # (B, M, 2)
    qx = tf.stack([xmin + 0.25 * (xmax - xmin), xmin + 0.75 * (xmax - xmin)], axis=-1)
    rows = tf.clip_by_value(tf.cast(tf.floor(qy * th / height), tf.int32), 0, th - 1)
    cols = tf.clip_by_value(tf.cast(tf.floor(qx * tw / width), tf.int32), 0, tw - 1)
    cells = tf.reshape(rows[..., :, None] * tw + cols[..., None, :], [tf.shape(boxes)[0], -1])  # (B, M * 4)
    flat = tf.reshape(tf.cast(tokens, tf.int32), [tf.shape(boxes)[0], th * tw])
    ids = tf.reshape(tf.gather(flat, cells, batch_dims=1), tf.concat([tf.shape(ymin), [4]], 0))

    mask = tf.cast(tf.convert_to_tensor(mask), tf.float32)
    gh, gw = mask.shape[-2], mask.shape[-1]
    ph, pw = height / gh, width / gw

    def overlaps(lo, hi, n, size):  # (B, M) intervals x n cells of `size` px -> (B, M, n): positive overlap
        start = tf.range(n, dtype=tf.float32) * size
        return tf.cast((lo[..., None] < start + size) & (hi[..., None] > start), tf.float32)

    hit = tf.einsum("bmr,brc,bmc->bm", overlaps(ymin, ymax, gh, ph), mask, overlaps(xmin, xmax, gw, pw))
    real = tf.range(tf.shape(boxes)[1])[None, :] < tf.reshape(tf.cast(num_boxes, tf.int32), [-1, 1])
    return ids, tf.cast(real & (hit > 0), tf.float32)
