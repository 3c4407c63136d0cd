"""Datasets for `medtf train` from the ``data`` section, and the preprocessing other stages must reuse.

``data.preprocess`` (deterministic: ``window``, ``zscore``, ``minmax``, ``clip`` ...) runs on training *and*
validation examples, before the augmentations of ``data.transforms`` (training only). Evaluation and export call
`build_preprocess` on the run's resolved config so a model always sees inputs prepared as in training.

Every function takes the typed ``data`` section (`medtf.training.experiment.DataConfig`; a plain mapping of the
``data`` section is parsed first), never the whole experiment.

Example:
    >>> data = DataConfig.from_dict({"dir": "shards/ct", "batch_size": 2,
    ...                              "preprocess": [{"name": "window", "center": 400, "width": 1800}],
    ...                              "transforms": [{"name": "random_flip"}]}, "data")
    >>> pre = build_preprocess(data)                  # window only
    >>> aug = training_transforms(data)               # window, then random_flip
    >>> out = pre({"image": ct, "mask": mask}, tf.constant([0, 0]))

Cross-validation: ``data.fold: k`` (with an optional ``data.folds: K`` that must match the manifest) replaces
``train_split`` / ``val_split`` on a K-fold shard folder (``medtf convert ... --folds K``). With
``data.selection_fold: inner`` (default) validation - what picks the best checkpoint, stops early, lowers the
learning rate - reads ``fold-((k+1) mod K)``, training the other K-2 folds, and ``fold-k`` is left for the final
evaluation only; ``outer`` validates on ``fold-k`` itself and trains on every other fold (see `fold_roles`).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from medtf.training.config import ConfigError
from medtf.training.experiment import DataConfig, TrainConfig, section


def _data(data: DataConfig | Mapping) -> DataConfig:
    return section(DataConfig, data, "data")


def fold_roles(data: DataConfig | Mapping):
    """``FoldSplits(train, selection, held_out)`` of the ``data`` section's ``data.fold`` on its manifest
    (`medtf.data.manifest.nested_fold_splits`, with ``data.selection_fold``).

    Raises:
        ConfigError: ``data.fold`` is unset, the manifest has no ``fold-*`` splits, ``k`` is out of range,
            ``data.folds`` disagrees, or ``inner`` selection on fewer than 3 folds (names the folder and count).

    Example:
        >>> fold_roles(DataConfig(dir="shards/lgg-5fold", batch_size=8, fold=2))
        FoldSplits(train=['fold-0', 'fold-1', 'fold-4'], selection='fold-3', held_out='fold-2')
    """
    from medtf.data.manifest import fold_names, nested_fold_splits, read_manifest

    data = _data(data)
    k = data.fold
    if k is None:
        raise ConfigError("data.fold is not set: no cross-validation round to split")
    manifest = read_manifest(data.dir)
    splits, folds = list(manifest["splits"]), fold_names(manifest)
    if not folds:
        raise ConfigError(f"data.fold={k}, but {data.dir} is not a K-fold shard folder (splits: {splits}); "
                          f"convert it with `medtf convert KIND ... --folds K`")
    if data.folds is not None and data.folds != len(folds):
        raise ConfigError(f"data.folds={data.folds}, but {data.dir} has {len(folds)} folds "
                          f"(splits: {splits})")
    if f"fold-{k}" not in folds:
        raise ConfigError(f"data.fold={k} is out of range: {data.dir} has {len(folds)} folds "
                          f"(splits: {splits})")
    try:
        return nested_fold_splits(manifest, k, data.selection_fold)
    except ValueError as exc:
        raise ConfigError(f"data.fold={k} on {data.dir}: {exc}") from None


def split_names(data: DataConfig | Mapping) -> tuple[str | list[str], str | None]:
    """``(training split(s), validation split or None)`` of the ``data`` section.

    Without ``data.fold``: ``data.train_split`` (default ``"train"``) and ``data.val_split`` (default ``"val"``).
    With ``data.fold: k``: the training folds and the selection fold of `fold_roles` (``inner``: K-2 folds and
    ``fold-((k+1) mod K)``; ``outer``: every fold but k and ``fold-k``).

    Raises:
        ConfigError: as `fold_roles`.

    Example:
        >>> split_names(DataConfig(dir="shards/lgg-5fold", batch_size=8, fold=2))
        (['fold-0', 'fold-1', 'fold-4'], 'fold-3')
    """
    data = _data(data)
    if data.fold is None:
        return data.train_split, data.val_split
    roles = fold_roles(data)
    return roles.train, roles.selection


def build_preprocess(data: DataConfig | Mapping) -> Any:
    """``data.preprocess`` as one `medtf.transforms.Compose` ``(example, seed) -> example``; None when empty."""
    from medtf.transforms import build_transforms

    entries = _data(data).preprocess
    return build_transforms(entries) if entries else None


def training_transforms(data: DataConfig | Mapping) -> Any:
    """Preprocessing then ``data.transforms`` (augmentation) for training examples; None when both are empty.

    Without preprocessing the augmentation list is built alone, so its random draws match earlier runs.
    """
    from medtf.transforms import Compose, build_transforms

    data = _data(data)
    augment = data.transforms or None
    pre = build_preprocess(data)
    if pre is None:
        return build_transforms(augment) if augment else None
    return Compose([pre, build_transforms(augment)]) if augment else pre


def steps_per_epoch(data: DataConfig | Mapping, train: TrainConfig | Mapping | None = None) -> int:
    """``train.steps_per_epoch``, else the training split's examples // batch size (from the manifest).

    With ``data.class_balance`` ``augmentation_factor`` an epoch holds each minority example ``factor`` times (as
    the thesis enlarged its training set), so the minority examples are counted ``factor`` times (their labels read
    from the shards); oversampling keeps the epoch at the stored examples.
    """
    train = section(TrainConfig, train, "train")
    if train.steps_per_epoch:
        return train.steps_per_epoch
    from medtf.data.balance import validate_class_balance
    from medtf.data.manifest import read_manifest

    data = _data(data)
    split = split_names(data)[0]
    splits = [split] if isinstance(split, str) else list(split)
    manifest = read_manifest(data.dir)
    examples = sum(manifest["splits"][s]["num_examples"] for s in splits)
    balance = validate_class_balance(data.class_balance)
    if balance is not None and balance["method"] == "augmentation_factor":
        from medtf.training.class_shares import label_counts

        minority = label_counts(data.dir, splits).get(int(balance["minority"]), 0)
        examples += (int(balance["factor"]) - 1) * minority
    return max(1, examples // data.batch_size)


def build_datasets(data: DataConfig | Mapping, strategy=None, *, seed: int | None = None, model_inputs=None):
    """``(train, validation)``: train shuffled/repeated/augmented; validation ordered, one pass, preprocess only.

    Training batches ``data.patch_size`` patches; validation takes ``data.val_patch_size`` (None: whole images,
    the models are fully convolutional) in batches of ``data.val_batch_size`` (default ``data.batch_size``).
    The splits come from `split_names` (``data.fold`` selects a cross-validation round). ``data.class_balance``
    (oversample / augmentation_factor, `medtf.data.balance`) applies to the training set only.
    With a multi-replica ``strategy`` the training set is built per input pipeline
    (`medtf.data.make_distributed_dataset`, ``batch_size`` global); Keras distributes the validation set.
    ``seed``: used when ``data.seed`` is null (`ExperimentConfig.data_seed` passes the experiment's seed).
    ``model_inputs``: the task's ``example -> (x, y)`` (`medtf.tasks.Task.model_inputs`; default: the kind's).
    """
    from medtf.data import make_dataset

    data = _data(data)
    seed = data.seed if data.seed is not None else seed
    distribute = strategy is not None and strategy.num_replicas_in_sync > 1
    train_split, val_split = split_names(data)
    train_ds = make_dataset(data.dir, train_split, training=True,
                            batch_size=data.batch_size, patch_size=data.patch_size, seed=seed,
                            transforms=training_transforms(data), strategy=strategy if distribute else None,
                            model_inputs=model_inputs, class_balance=data.class_balance,
                            service=data.service, service_mode=data.service_mode,
                            service_timeout=data.service_timeout, mosaic=data.mosaic)
    val_ds = None
    if val_split:
        val_batch = data.val_batch_size or data.batch_size
        val_ds = make_dataset(data.dir, val_split, training=False, repeat=False, batch_size=val_batch,
                              patch_size=data.val_patch_size, seed=seed, transforms=build_preprocess(data),
                              model_inputs=model_inputs)
        val_ds = _with_length(val_ds, data.dir, val_split, val_batch, strategy)
    return train_ds, val_ds


def _with_length(val_ds, data_dir, split, batch_size: int, strategy):
    """The validation set with its number of batches declared (one pass, no filter, last batch kept).

    Keras cannot count a tf.data pipeline of shard files: with ``validation_steps`` None it reads until the
    data ends and then warns "Your input ran out of data; interrupting training" after every epoch. With the
    length known it stops at the end of the pass. Across several workers Keras shards the set by example, so
    each worker sees fewer batches: left undeclared there.
    """
    import math

    import tensorflow as tf

    from medtf.data.manifest import read_manifest
    from medtf.training.strategy import num_workers

    if strategy is not None and num_workers(strategy) > 1:
        return val_ds
    splits = read_manifest(data_dir)["splits"]
    examples = sum(splits[s]["num_examples"] for s in ([split] if isinstance(split, str) else split))
    return val_ds.apply(tf.data.experimental.assert_cardinality(math.ceil(examples / batch_size)))


def probe_batches(data: DataConfig | Mapping, count: int = 2, *, model_inputs=None,
                  panel_inputs=None) -> tuple[tuple | None, list[tuple]]:
    """Fixed examples for the diagnostics: ``(train batch (x, y) or None, [validation (x, y) ...])`` as numpy.

    The training batch is preprocessed but not augmented (center patch of ``data.patch_size``), so gradient
    statistics at different steps are comparable; the validation examples are exactly what validation sees.
    ``model_inputs`` maps the training batch (the targets the compiled loss takes), ``panel_inputs`` the
    validation examples (one image and its target for the task's panels); default: the kind's mapping.
    """
    from medtf.data import make_dataset

    data = _data(data)
    pre = build_preprocess(data)

    import tensorflow as tf

    def take(split, patch, n, batch, mapping):
        ds = make_dataset(data.dir, split, training=False, repeat=False, batch_size=batch, patch_size=patch,
                          seed=0, transforms=pre, model_inputs=mapping)
        return [tf.nest.map_structure(np.asarray, (x, y)) for x, y in ds.take(n)]

    train_split, val_split = split_names(data)
    train = take(train_split, data.patch_size, 1, min(2, data.batch_size), model_inputs)
    val = take(val_split, data.val_patch_size, count, 1, panel_inputs or model_inputs) if val_split else []
    return (train[0] if train else None), val
