"""Token targets of masked image modelling from a trained tokenizer: the experiment's ``targets`` section.

    task: masked_modeling
    model: {name: mim_vit_tiny, args: {target: tokens, vocab_size: 128, patch_size: 8, ...}}
    targets:
      tokenizer: runs/tokenizer      # a `medtf train` tokenizer run (checkpoints/best.keras) or its export
      cache: false                   # false: tokenize every (augmented) view in the input pipeline
                                     # true: tokenize each stored tile once before training, then look it up

Without ``targets`` the task keeps reading a ``tokens`` field from the examples. The tokenizer is frozen: it runs in
inference mode inside the ``Dataset.map`` that builds the masks, so the tokens always belong to the exact image the
ViT sees (after crops and flips). ``cache: true`` spends one pass over the training and validation tiles instead of
one tokenizer forward per example and epoch (the paper-size tokenizer costs about as much as the ViT), and is
therefore only allowed when training sees the stored tiles unchanged (``data.transforms: []``, ``data.patch_size``
and ``data.val_patch_size`` null). The tokenizer must have been trained on the same data kind with the same
``data.preprocess``: it is fed the images as normalised for the ViT.

This module imports no TensorFlow at import time (config parsing uses `TargetsConfig`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from medtf.training.hyperparams import Config


@dataclass
class TargetsConfig(Config):
    """``tokenizer``: a tokenizer run directory or exported model (stored absolute); ``cache``: see the module."""

    tokenizer: str
    cache: bool = False

    def __post_init__(self):
        self.tokenizer = os.path.abspath(os.path.expanduser(self.tokenizer))


def parse_targets(raw: Any, key: str = "targets") -> TargetsConfig | None:
    """The ``targets`` section (null: none), unknown keys and wrong types named as `ConfigError`."""
    return None if raw is None else TargetsConfig.from_dict(raw, key)


@dataclass
class Tokenizer:
    """A loaded, frozen tokenizer: ``encode(images (B, H, W, C) normalised float32) -> (B, H/R, W/R) int32``."""

    path: str
    kind: str
    preprocess: list
    patch_size: int
    num_codes: int
    encode: Callable
    keep: Any = None  # the loaded SavedModel, kept alive as long as `encode` is used


def load_tokenizer(path) -> Tokenizer:
    """A tokenizer run directory (its ``checkpoints/best.keras``) or a SavedModel written by ``medtf export``."""
    import tensorflow as tf

    path = Path(path)
    if (path / "config.yaml").is_file():
        from medtf.export.saved_model import load_checkpoint, read_run
        from medtf.models.tokenizer import tokenizer_encoder

        data = read_run(path)["data"]
        ckpt = path / "checkpoints" / "best.keras"
        if not ckpt.is_file():
            raise ValueError(f"targets.tokenizer {path}: a run directory without checkpoints/best.keras "
                             f"(has the tokenizer finished an epoch?)")
        model = load_checkpoint(ckpt)
        if not hasattr(model, "num_codes"):
            raise ValueError(f"targets.tokenizer {ckpt}: {type(model).__name__} is not a tokenizer (task 'tokenizer')")
        encoder = tokenizer_encoder(model)
        return Tokenizer(str(path), data["kind"], list(data.get("preprocess") or []), model.patch_size,
                         model.num_codes, lambda x: tf.cast(encoder(x, training=False), tf.int32), encoder)
    from medtf.export.layout import METADATA_FILE, resolve_model_dir

    try:
        model_dir = resolve_model_dir(path)
        meta = json.loads((model_dir / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"targets.tokenizer {path}: neither a tokenizer run directory (config.yaml) nor an exported "
                         f"tokenizer (medtf.json): {exc}") from None
    if meta.get("task") != "tokenizer" or "tokenize_inputs" not in meta.get("signatures", {}):
        raise ValueError(f"targets.tokenizer {model_dir}: an exported {meta.get('task')!r} model, not a tokenizer")
    loaded = tf.saved_model.load(str(model_dir))
    fn = loaded.signatures["tokenize_inputs"]
    return Tokenizer(str(model_dir), meta["kind"], list(meta.get("preprocess") or []), int(meta["patch_size"]),
                     int(meta["num_codes"]), lambda x: fn(images=x)["tokens"], loaded)


def check_compatible(tokenizer: Tokenizer, model, data) -> None:
    """The tokenizer's grid, vocabulary and normalisation must be the masked image model's and the data's."""
    where = f"targets.tokenizer {tokenizer.path}"
    if getattr(model, "target", None) != "tokens":
        raise ValueError(f"{where}: token targets need model.args.target: tokens (the model predicts "
                         f"{getattr(model, 'target', None)!r})")
    if tokenizer.patch_size != model.patch_size:
        raise ValueError(f"{where}: one token per {tokenizer.patch_size} px, the ViT's patch_size is "
                         f"{model.patch_size}: train the tokenizer with model.args.patch_size: {model.patch_size}")
    if tokenizer.num_codes > model.vocab_size:
        raise ValueError(f"{where}: {tokenizer.num_codes} codes do not fit model.args.vocab_size "
                         f"{model.vocab_size}; set vocab_size: {tokenizer.num_codes}")
    if tokenizer.kind != data.kind or list(tokenizer.preprocess) != list(data.preprocess):
        raise ValueError(f"{where}: trained on {tokenizer.kind} with data.preprocess {tokenizer.preprocess}, this "
                         f"run normalises {data.kind} with {list(data.preprocess)}: the tokens would not match")


def _id_key(example):
    import tensorflow as tf

    return tf.strings.reduce_join(tf.reshape(tf.strings.as_string(example["example_id"])
                                             if example["example_id"].dtype != tf.string else example["example_id"],
                                             [-1]), separator="/")


def _cache(tokenizer: Tokenizer, data) -> Callable:
    """One tokenizer pass over the training and validation tiles -> ``(example, image) -> tokens`` by lookup."""
    import numpy as np
    import tensorflow as tf

    from medtf.data import make_dataset
    from medtf.training.inputs import build_preprocess

    # data.mosaic crops carry their anchor tile's example_id: a lookup would give that tile's tokens
    if data.transforms or data.patch_size is not None or data.val_patch_size is not None or data.mosaic:
        raise ValueError("targets.cache: true tokenizes each stored tile once, so training must see the tiles as "
                         f"stored: data.transforms [], data.patch_size / val_patch_size null and no data.mosaic "
                         f"(got {data.transforms}, {data.patch_size}, {data.val_patch_size}, {data.mosaic}); use "
                         f"cache: false to tokenize every augmented view")
    splits = [data.train_split] if isinstance(data.train_split, str) else list(data.train_split)
    splits += [data.val_split] if data.val_split else []
    ds = make_dataset(data.dir, splits, batch_size=8, training=False, repeat=False, transforms=build_preprocess(data),
                      model_inputs=lambda ex: {"image": ex["image"], "id": _id_key(ex)})
    keys, grids = [], []
    for batch in ds:
        keys += [k.decode() for k in batch["id"].numpy()]
        grids.append(np.asarray(tokenizer.encode(batch["image"])))
    if len(set(keys)) != len(keys):
        raise ValueError(f"targets.cache: {data.dir} has repeated example ids across {splits}; use cache: false")
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(keys), tf.range(len(keys), dtype=tf.int64)), default_value=-1)
    grids = tf.constant(np.concatenate(grids))

    def lookup(example, image):
        if "example_id" not in example:
            raise ValueError(f"targets.cache: the examples of {data.dir} have no example_id to look tokens up by; "
                             f"use cache: false")
        row = table.lookup(_id_key(example))
        tf.debugging.assert_non_negative(row, message="targets.cache: an example outside the cached splits")
        return tf.gather(grids, row)

    lookup.table = table  # keeps the table alive with the function
    return lookup


def token_provider(targets: TargetsConfig, model, data) -> Callable:
    """``(example, image (H, W, C)) -> tokens (H/R, W/R) int32`` for `MaskedModelingTask.model_inputs`."""
    tokenizer = load_tokenizer(targets.tokenizer)
    check_compatible(tokenizer, model, data)
    if targets.cache:
        return _cache(tokenizer, data)

    def on_the_fly(example, image):
        return tokenizer.encode(image[None])[0]

    on_the_fly.tokenizer = tokenizer
    return on_the_fly
