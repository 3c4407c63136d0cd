"""Datasets for `medtf train` from the ``data`` section, and the preprocessing other stages must reuse.

``data.preprocess`` (deterministic: ``window``, ``zscore``, ``minmax``, ``clip`` ...) runs on training *and*
validation examples, before the augmentations of ``data.transforms`` (training only). Evaluation and export call
`build_preprocess` on the run's resolved config so a model always sees inputs prepared as in training.

Example:
    >>> config = {"data": {"preprocess": [{"name": "window", "center": 400, "width": 1800}],
    ...                    "transforms": [{"name": "random_flip"}]}}
    >>> pre = build_preprocess(config)                # window only
    >>> aug = training_transforms(config)             # window, then random_flip
    >>> out = pre({"image": ct, "mask": mask}, tf.constant([0, 0]))
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def _data(config: Mapping) -> dict:
    return dict(config.get("data") or {})


def build_preprocess(config: Mapping) -> Any:
    """``data.preprocess`` as one `medtf.transforms.Compose` ``(example, seed) -> example``; None when empty."""
    from medtf.transforms import build_transforms

    entries = _data(config).get("preprocess")
    if isinstance(entries, Mapping):  # a single spec: {name: zscore}
        entries = [entries]
    return build_transforms(entries) if entries else None


def training_transforms(config: Mapping) -> Any:
    """Preprocessing then ``data.transforms`` (augmentation) for training examples; None when both are empty.

    Without preprocessing the augmentation list is built alone, so its random draws match earlier runs.
    """
    from medtf.transforms import Compose, build_transforms

    augment = _data(config).get("transforms") or None
    pre = build_preprocess(config)
    if pre is None:
        return build_transforms(augment) if augment else None
    return Compose([pre, build_transforms(augment)]) if augment else pre


def steps_per_epoch(config: Mapping) -> int | None:
    """``train.steps_per_epoch``, else the training split's examples // batch size (from the manifest)."""
    steps = (config.get("train") or {}).get("steps_per_epoch")
    if steps:
        return int(steps)
    from medtf.data.manifest import read_manifest

    data = _data(config)
    split = data.get("train_split", "train")
    splits = [split] if isinstance(split, str) else list(split)
    manifest = read_manifest(data["dir"])
    examples = sum(manifest["splits"][s]["num_examples"] for s in splits)
    return max(1, examples // int(data["batch_size"]))


def build_datasets(config: Mapping, strategy=None):
    """``(train, validation)``: train shuffled/repeated/augmented; validation ordered, one pass, preprocess only.

    Training batches ``data.patch_size`` patches; validation takes ``data.val_patch_size`` (None: whole images,
    the models are fully convolutional) in batches of ``data.val_batch_size`` (default ``data.batch_size``).
    With a multi-replica ``strategy`` the training set is built per input pipeline
    (`medtf.data.make_distributed_dataset`, ``batch_size`` global); Keras distributes the validation set.
    """
    from medtf.data import make_dataset

    data = _data(config)
    seed = data.get("seed", config.get("seed"))
    distribute = strategy is not None and strategy.num_replicas_in_sync > 1
    train_ds = make_dataset(data["dir"], data.get("train_split", "train"), training=True,
                            batch_size=int(data["batch_size"]), patch_size=data.get("patch_size"), seed=seed,
                            transforms=training_transforms(config), strategy=strategy if distribute else None)
    val_split = data.get("val_split", "val")
    val_ds = None
    if val_split:
        val_ds = make_dataset(data["dir"], val_split, training=False, repeat=False,
                              batch_size=int(data.get("val_batch_size") or data["batch_size"]),
                              patch_size=data.get("val_patch_size"), seed=seed, transforms=build_preprocess(config))
    return train_ds, val_ds


def probe_batches(config: Mapping, count: int = 2) -> tuple[tuple | None, list[tuple]]:
    """Fixed examples for the diagnostics: ``(train batch (x, y) or None, [validation (x, y) ...])`` as numpy.

    The training batch is preprocessed but not augmented (center patch of ``data.patch_size``), so gradient
    statistics at different steps are comparable; the validation examples are exactly what validation sees.
    """
    from medtf.data import make_dataset

    data = _data(config)
    pre = build_preprocess(config)

    def take(split, patch, n, batch):
        ds = make_dataset(data["dir"], split, training=False, repeat=False, batch_size=batch, patch_size=patch,
                          seed=0, transforms=pre)
        return [(np.asarray(x), np.asarray(y)) for x, y in ds.take(n)]

    train = take(data.get("train_split", "train"), data.get("patch_size"), 1, min(2, int(data["batch_size"])))
    val_split = data.get("val_split", "val")
    val = take(val_split, data.get("val_patch_size"), count, 1) if val_split else []
    return (train[0] if train else None), val
