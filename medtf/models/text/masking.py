"""BERT masking of one packed report, in-graph and stateless (runs inside ``Dataset.map``).

Of the real text tokens (not [PAD] / [CLS] / [SEP]) exactly ``max(1, round(rate * n))`` (at most ``max_masked``)
are chosen, by the smallest of ``n`` stateless uniform draws; each chosen token becomes [MASK] with probability
0.8, a random non-special token with 0.1, and stays with 0.1 (Devlin et al. 2019). The seed comes from the example
(`report_seed`: its id and text), so an example gets the same mask every epoch and in every evaluation, unless the
training transforms include `RemaskTokens` (``data.transforms: [{name: remask_tokens}]``): then each training
example carries the input pipeline's own per-example, per-epoch seed (``mask_seed``) and gets a new mask each time
it is seen (RoBERTa's dynamic masking), reproducibly for a seeded run; validation keeps its fixed masks.
"""

from __future__ import annotations

import tensorflow as tf

from medtf.transforms.base import as_seed, register_transform

_HASH_BUCKETS = 2**31 - 1


def report_seed(example: dict, salt: int = 0):
    """A ``(2,)`` int64 seed: the example's ``mask_seed`` (set by `RemaskTokens`), else hashes of its
    ``example_id`` (when present) and ``report``; ``salt`` folded in."""
    if "mask_seed" in example:
        return tf.random.fold_in(tf.cast(example["mask_seed"], tf.int64), salt)
    ident = example.get("example_id", tf.constant(""))
    ident = ident if ident.dtype == tf.string else tf.strings.as_string(ident)
    ident = tf.strings.reduce_join(tf.reshape(ident, [-1]), separator="/")
    text = tf.reshape(example["report"], [])
    return tf.random.fold_in(tf.stack([tf.strings.to_hash_bucket_fast(ident, _HASH_BUCKETS),
                                       tf.strings.to_hash_bucket_fast(text, _HASH_BUCKETS)]), salt)


def mask_tokens(token_ids, padding_mask, seed, *, rate: float, max_masked: int, mask_id: int, vocabulary_size: int,
                special_ids=(0, 1, 2), first_random_id: int = 5, mask_token_rate: float = 0.8,
                random_token_rate: float = 0.1):
    """Mask one sequence ``token_ids (L,)``.

    Returns:
        ``(masked_ids (L,) int32, positions (M,) int32, targets (M,) int32, weights (M,) float32)`` with
        ``M = max_masked``: the chosen positions, their original ids and 1.0 for each chosen slot (0.0 for the
        padding slots that follow, whose positions / targets are 0).
    """
    token_ids = tf.cast(token_ids, tf.int32)
    length = tf.shape(token_ids)[0]
    candidate = tf.cast(padding_mask, tf.bool)
    for special in special_ids:
        candidate &= token_ids != special
    n = tf.reduce_sum(tf.cast(candidate, tf.int32))
    count = tf.minimum(tf.maximum(tf.cast(tf.round(rate * tf.cast(n, tf.float32)), tf.int32), tf.minimum(n, 1)),
                       max_masked)
    draws = tf.random.stateless_uniform([length], seed)
    # The `count` candidates with the smallest draws; non-candidates sort last.
    order = tf.argsort(tf.where(candidate, draws, 2.0), stable=True)
    k = tf.minimum(length, max_masked)
    chosen = order[:k]
    weights = tf.cast(tf.range(k) < count, tf.float32)
    positions = tf.where(weights > 0, chosen, 0)
    targets = tf.where(weights > 0, tf.gather(token_ids, chosen), 0)

    how = tf.random.stateless_uniform([k], tf.random.fold_in(seed, 1))
    random_ids = tf.random.stateless_uniform([k], tf.random.fold_in(seed, 2), minval=first_random_id,
                                             maxval=vocabulary_size, dtype=tf.int32)
    replacement = tf.where(how < mask_token_rate, mask_id,
                           tf.where(how < mask_token_rate + random_token_rate, random_ids, targets))
    selected = tf.where(weights > 0)  # (count, 1) slots
    masked = tf.tensor_scatter_nd_update(token_ids, tf.gather(positions, selected[:, 0])[:, None],
                                         tf.gather(replacement, selected[:, 0]))
    pad = max_masked - k
    return (masked, tf.pad(positions, [[0, pad]]), tf.pad(targets, [[0, pad]]), tf.pad(weights, [[0, pad]]))


@register_transform("remask_tokens")
class RemaskTokens:
    """Training transform of the masked_lm task: keeps the example's augmentation seed as ``mask_seed`` so its
    report gets a new BERT mask each epoch (see the module docstring). Touches no image or label."""

    def __call__(self, example, seed):
        return {**example, "mask_seed": tf.cast(as_seed(seed), tf.int64)}
