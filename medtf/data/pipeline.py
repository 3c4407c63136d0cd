"""tf.data input pipelines over medtf shard folders: streaming, seeded, distribution-aware.

One order for every data kind (big_vision ``input_pipeline.py``, tf/models ``input_reader.py``)::

    shard files (from manifest.json, never a glob) -> [input-pipeline shard] -> [shuffle files]
    -> interleave(TFRecordDataset, parallel) -> decode + parse_fn(training) -> [filter] -> [cache]
    -> [class balance] -> [shuffle] -> [repeat] -> zip per-example seed -> map(transforms + patch, AUTOTUNE)
    -> model inputs -> batch (drop remainder in training; padded where shapes vary) -> prefetch

Nothing materialises the data set unless ``cache`` asks for it: memory stays flat however many shards there are.
Per-example augmentation seeds come from ``tf.data.Dataset.random(seed)`` zipped in *after* ``repeat``, so every
example of every epoch gets its own ``(2,)`` seed (and the stream is reproducible when ``seed`` is set).

With ``service="grpc://host:port"`` (or ``"auto"``) everything up to the model inputs runs on tf.data service
workers on other machines and only batching and prefetching stay here (`medtf.data.service`: modes, seeds, failures).

Sharding under `tf.distribute`: `make_distributed_dataset` builds one pipeline per input pipeline through
``strategy.distribute_datasets_from_function``; each pipeline keeps every ``num_input_pipelines``-th shard file
(records instead, with files in manifest order, when a split has fewer files than pipelines) and batches
``global_batch_size / num_replicas``. Datasets made without an ``input_context`` keep the auto-shard policy AUTO
(file-level where possible, DATA otherwise) for ``strategy.experimental_distribute_dataset``; FILE would fail on
splits with fewer shards than workers.

Example:
    >>> ds = make_dataset("shards/lgg", "train", batch_size=16, training=True, seed=0,
    ...                   transforms=[{"name": "random_flip", "axes": [0, 1]}])
    >>> model.fit(ds, steps_per_epoch=100, epochs=10)
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import tensorflow as tf

from medtf.data import balance as balance_lib
from medtf.data import parsers
from medtf.data.decoder import decode_example
from medtf.data.manifest import ManifestError, fold_names, read_manifest, shard_paths
from medtf.data.schema import get_schema

AUTOTUNE = tf.data.AUTOTUNE
_PATCH_SEED_SALT = 1_000_003  # fold_in salt of the patch sampler's seed (transforms use 0..len-1)


def resolve_splits(manifest: Mapping, split: str | Sequence[str] | None = "train",
                   folds: Sequence[int] | None = None) -> list[str]:
    """Split names to read: ``folds=[0, 2]`` -> ``["fold-0", "fold-2"]``, else ``split`` (a name or a list)."""
    if folds is not None:
        if split not in (None, "train"):
            raise ValueError(f"give either split ({split!r}) or folds ({folds!r}), not both")
        available = fold_names(manifest)
        if not available:
            raise ManifestError(f"folds={list(folds)} but the manifest has no folds (splits: {list(manifest['splits'])})")
        names = [f"fold-{int(k)}" for k in folds]
    else:
        names = [split] if isinstance(split, str) else list(split or ["train"])
    unknown = [n for n in names if n not in manifest["splits"]]
    if unknown:
        raise ManifestError(f"split(s) {unknown} not in manifest; available: {list(manifest['splits'])}")
    return names


def _seed(seed: int | None, salt: int) -> int | None:
    return None if seed is None else int(seed) * 1_000_033 + salt


def _build_transform(transforms) -> Callable | None:
    if transforms is None:
        return None
    if callable(transforms):
        return transforms
    from medtf.transforms import build_transforms

    return build_transforms(transforms) if transforms else None


def patch_transform(patch_size, training: bool) -> Callable:
    """Patch sampler of ``patch_size``: the registered ``random_patch`` in training (``center_patch`` otherwise).

    ``patch_size`` is a size (int or one per spatial axis) or a full transform config
    ``{"name": "random_patch", "size": ..., **params}``. Falls back to ``random_crop``/``center_crop`` when no patch
    sampler is registered.
    """
    from medtf.transforms import get_transform, registered_transforms

    if isinstance(patch_size, Mapping):
        config = dict(patch_size)
        return get_transform(config.pop("name"), **config)
    names = registered_transforms()
    name = ("random_patch" if training else "center_patch")
    if name not in names:
        name = "random_crop" if training else "center_crop"
    try:
        return get_transform(name, size=patch_size)
    except TypeError:  # a sampler whose size argument is called patch_size
        return get_transform(name, patch_size=patch_size)


def _has_unknown_dims(spec) -> bool:
    return any(s.shape.rank is None or None in s.shape.as_list() for s in tf.nest.flatten(spec))


_PAD_MINUS_ONE = ("classes", "instance_ids")  # per-box ids: -1 marks padding rows (0 is a valid id)


def _padding_values(spec):
    """``padded_batch`` padding: 0 / b"" everywhere, -1 for the per-box ``classes``/``instance_ids`` of a dict."""

    def pad(s, minus_one=False):
        if s.dtype == tf.string:
            return tf.constant(b"")
        return tf.constant(-1 if minus_one and s.dtype.is_integer else 0, s.dtype)

    if isinstance(spec, Mapping):
        return {k: tf.nest.map_structure(lambda s, k=k: pad(s, k in _PAD_MINUS_ONE), v) for k, v in spec.items()}
    return tf.nest.map_structure(pad, spec)


SHUFFLE_BUDGET_BYTES = 256 << 20
READER_BUDGET_BYTES = 32 << 20


def _mean_record_bytes(manifest: dict, names) -> int:
    shards = [sh for n in names for sh in manifest["splits"][n]["shards"]]
    examples = sum(sh["num_examples"] for sh in shards)
    return max(1, sum(sh["bytes"] for sh in shards) // max(1, examples))


def make_dataset(
    data_dir: str | os.PathLike,
    split: str | Sequence[str] | None = "train",
    *,
    batch_size: int,
    training: bool,
    transforms: Any = None,
    patch_size: Any = None,
    folds: Sequence[int] | None = None,
    cache: str | os.PathLike | None = None,
    seed: int | None = None,
    strategy: tf.distribute.Strategy | None = None,
    deterministic: bool | None = None,
    shuffle_buffer: int | None = None,
    repeat: bool | None = None,
    class_balance: Mapping | None = None,
    output: str = "model",
    drop_remainder: bool | None = None,
    max_boxes: int = parsers.DEFAULT_MAX_BOXES,
    cycle_length: int | None = None,
    input_context: tf.distribute.InputContext | None = None,
    model_inputs: Callable[[dict], Any] | None = None,
    service: str | None = None,
    service_mode: str = "distributed_epoch",
    service_timeout: float | None = None,
    mosaic: Mapping | None = None,
):
    """A batched, prefetched ``tf.data.Dataset`` over one or more splits of a medtf shard folder.

    Args:
        data_dir: folder with ``manifest.json`` (any of the five kinds; the kind comes from the manifest).
        split: split name or list of names (``"train"``, ``"val"``, ``"test"``, ``"fold-3"`` ...).
        batch_size: examples per batch (per replica when ``input_context`` is given; global with ``strategy``).
        training: shuffle files and examples, repeat, drop the last partial batch, training-mode parser.
        transforms: a `medtf.transforms.Compose` / callable ``(example, seed) -> example``, or a config list
            ``[{"name": ..., **params}]`` for `medtf.transforms.build_transforms`.
        patch_size: sample a patch of this spatial size after the transforms (see `patch_transform`).
        folds: K-fold indices to read (``[0, 1, 2]`` -> splits ``fold-0..2``); replaces ``split``.
        cache: None (stream; default), ``"memory"``, or a file path prefix for ``Dataset.cache``. Caches parsed,
            un-augmented examples.
        seed: makes file order, shuffles, class sampling and augmentation seeds reproducible.
        strategy: a `tf.distribute.Strategy`: return `make_distributed_dataset(strategy, ...)` with
            ``batch_size`` as the global batch size.
        deterministic: element order of parallel stages; default True when ``seed`` is set or not training.
        shuffle_buffer: examples in the shuffle buffer (and per class stream when oversampling). Default: as many
            as fit ``SHUFFLE_BUDGET_BYTES`` (256 MB) of parsed examples, between 4 and 256, so 128^3 volumes do
            not fill the memory.
        repeat: repeat forever (default: ``training``).
        class_balance: ``{"method": "oversample" | "augmentation_factor", ...}`` (see `medtf.data.balance`).
        output: ``"model"`` -> the kind's ``(x, y)`` (`medtf.data.parsers`); ``"dict"`` -> the whole example.
        drop_remainder: default ``training``.
        max_boxes: nuclei-he model inputs pad/truncate boxes to this many rows.
        cycle_length: shard files read concurrently. Default: as many as keep ``READER_BUDGET_BYTES`` (32 MB) of
            records in flight, between 1 and 16, so memory does not grow with the number of shards. Files are read
            in parallel (prefetching) only while ``4 * cycle_length`` records fit that budget; bigger records
            (3D volumes) are read round-robin in order.
        input_context: from ``distribute_datasets_from_function``: shard files per input pipeline.
        model_inputs: ``parsed example -> (x, y)`` replacing the kind's mapping for ``output="model"``: a task's
            (`medtf.tasks.Task.model_inputs`), so any kind that provides the task's fields works with it.
        service: a tf.data service dispatcher (``grpc://host:port``, or ``"auto"``: the address file named by
            ``$MEDTF_DATA_SERVICE_FILE``): reading, parsing and augmentation run on its workers, batching and
            prefetching here (`medtf.data.service`: modes, seeds, shared-filesystem paths). Waits up to
            ``service_timeout`` s (default 300) for a registered worker.
        service_mode: ``"distributed_epoch"`` (each example once per epoch over all workers and trainers) or
            ``"parallel_epochs"`` (every worker reads everything; see `medtf.data.service`).
        mosaic: ``nuclei-he`` training on overlapping crops from 2 x 2 neighbouring tiles of one source image
            (``{"size": ..., "min_visible": ...}``, `medtf.data.mosaic`); before the transforms and patch.

    Returns:
        ``tf.data.Dataset`` of batches, e.g. lgg-mri: ``((B, H, W, 3) float32, (B, H, W, 1) float32)``;
        brachy-ct with ``patch_size=32``: ``((B, 32, 32, 32, 1), (B, 32, 32, 32, 1))``.

    Example:
        >>> train = make_dataset("shards/brachy", "train", batch_size=2, training=True, seed=1, patch_size=64,
        ...                      transforms=[{"name": "random_flip", "axes": [0, 1, 2]}])
        >>> val = make_dataset("shards/brachy", "val", batch_size=1, training=False)
    """
    arguments = dict(locals())
    if strategy is not None and input_context is None:
        kwargs = {k: v for k, v in arguments.items()
                  if k not in ("strategy", "data_dir", "split", "batch_size", "input_context")}
        return make_distributed_dataset(strategy, data_dir, split, global_batch_size=batch_size, **kwargs)
    if output not in ("model", "dict"):
        raise ValueError(f"output must be 'model' or 'dict', got {output!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    balance = balance_lib.validate_class_balance(class_balance)
    manifest = read_manifest(data_dir)
    kind = manifest["kind"]
    schema = get_schema(kind)
    names = resolve_splits(manifest, split, folds)
    files = [str(p) for name in names for p in shard_paths(data_dir, manifest, name)]
    if not files:
        raise ManifestError(f"{data_dir}: split(s) {names} have no shards")
    num_examples = sum(manifest["splits"][n]["num_examples"] for n in names)
    record_bytes = _mean_record_bytes(manifest, names)
    if shuffle_buffer is None:  # parsed examples are about twice the stored bytes (float32 casts)
        shuffle_buffer = int(min(256, max(4, SHUFFLE_BUDGET_BYTES // (2 * record_bytes))))
    if cycle_length is None:
        cycle_length = int(min(16, max(1, READER_BUDGET_BYTES // record_bytes)))
    compression = manifest.get("compression") or ""
    repeat = training if repeat is None else repeat
    drop_remainder = training if drop_remainder is None else drop_remainder
    deterministic = (seed is not None or not training) if deterministic is None else deterministic
    if seed is None and not training:
        seed = 0  # evaluation is reproducible by default (only matters when transforms are given)

    if mosaic is not None:  # {} too: every setting at its default
        from medtf.data import mosaic as mosaic_lib

        mosaic = mosaic_lib.settings(mosaic, manifest, data_dir)
    if mosaic:
        if not training or service is not None or balance is not None:
            raise ValueError("data.mosaic: overlapping crops are for training, without the tf.data service and "
                             "class_balance")
    parse = parsers.parse_fn(kind, training, manifest)
    keep = parsers.keep_fn(kind, training)
    augment = _augment_fn(_build_transform(transforms),
                          patch_transform(patch_size, training) if patch_size is not None else None,
                          (model_inputs or parsers.model_inputs_fn(kind, max_boxes=max_boxes))
                          if output == "model" else None)
    if service is not None:
        if cache is not None or balance is not None:
            raise ValueError(f"service: {'cache' if cache is not None else 'class_balance'} is not supported "
                             f"through the tf.data service (the workers stream from the shard files)")
        from medtf.data import service as service_lib

        address = service_lib.resolve_service(service, service_timeout or service_lib.DEFAULT_TIMEOUT)
        service_lib.wait_for_workers(address, service_timeout or service_lib.DEFAULT_TIMEOUT)
        shared = input_context is not None and input_context.num_input_pipelines > 1
        dataset = service_lib.service_examples(
            files, compression=compression, decode_parse=lambda record: parse(decode_example(record, schema)),
            keep=keep, augment=augment, training=training, repeat=repeat, seed=seed,
            shuffle_buffer=shuffle_buffer, cycle_length=cycle_length, service=address, mode=service_mode,
            # trainers share one job (each takes a distinct share); a single consumer owns an anonymous one
            job_name=service_lib.default_job_name(files, seed, service_mode) if shared else None)
        return _batch_prefetch(dataset, batch_size, drop_remainder, deterministic, input_context)

    pipelines, pipeline_id = 1, 0
    if input_context is not None:
        pipelines, pipeline_id = input_context.num_input_pipelines, input_context.input_pipeline_id
        if seed is not None:
            seed = int(seed) + 104_729 * pipeline_id  # different augmentation draws per pipeline
    shard_records = pipelines > 1 and len(files) < pipelines

    # === Files -> records -> parsed examples ===
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if pipelines > 1 and not shard_records:
        dataset = dataset.shard(pipelines, pipeline_id)
    if training and len(files) > 1 and not shard_records:
        dataset = dataset.shuffle(len(files), seed=_seed(seed, 1), reshuffle_each_iteration=True)
    cycle = max(1, min(cycle_length, len(files)))
    # A parallel interleave buffers ~2 records per open file and opens as many files ahead: ~4 x cycle records in
    # flight, which for 128^3 volumes is ~200 MB more with 8 shards than with 1. Records that large are read by a
    # plain round-robin interleave (a local read is ~1 ms per record; parsing and augmentation stay parallel).
    parallel = {"num_parallel_calls": AUTOTUNE, "deterministic": deterministic or shard_records} \
        if 4 * cycle * record_bytes <= READER_BUDGET_BYTES else {}
    dataset = dataset.interleave(lambda path: tf.data.TFRecordDataset(path, compression_type=compression),
                                 cycle_length=cycle, block_length=1, **parallel)
    if shard_records:
        dataset = dataset.shard(pipelines, pipeline_id)
    dataset = dataset.map(lambda record: parse(decode_example(record, schema)), num_parallel_calls=AUTOTUNE,
                          deterministic=deterministic)
    if keep is not None:
        dataset = dataset.filter(keep)
    if mosaic:  # one element per source image: its tiles stacked (this pipeline's files, see medtf.data.mosaic)
        if shard_records:
            raise ValueError(f"data.mosaic: {data_dir} has fewer shard files ({len(files)}) than input pipelines "
                             f"({pipelines}); tiles of one image must stay in one pipeline")
        dataset = mosaic_lib.group_tiles(dataset, mosaic_lib.tile_counts(files[pipeline_id::pipelines],
                                                                         compression))
    if cache is not None:
        dataset = dataset.cache("" if cache == "memory" else os.fspath(cache))

    # === Balance, shuffle, repeat ===
    if balance is not None and balance["method"] == "oversample":
        classes = range(len(manifest.get("options", {}).get("class_names") or [])) or None
        dataset = balance_lib.oversample(dataset, balance, classes, shuffle_buffer=shuffle_buffer,
                                         seed=_seed(seed, 2))
        if not repeat:
            dataset = dataset.take(max(1, num_examples // pipelines))
    else:
        if balance is not None:
            dataset = balance_lib.augmentation_factor(dataset, balance)
        if training:
            buffer = mosaic_lib.GROUP_SHUFFLE if mosaic else shuffle_buffer
            dataset = dataset.shuffle(buffer, seed=_seed(seed, 3), reshuffle_each_iteration=True)
        if repeat:
            dataset = dataset.repeat()
        if mosaic:  # each source -> as many crops as tiles, shuffled
            dataset = mosaic_lib.crops(dataset, mosaic, seed=_seed(seed, 5), shuffle_buffer=shuffle_buffer,
                                       deterministic=deterministic)

    # === Per-example seed -> augmentation -> model inputs ===
    if augment is not None and augment.seeded:
        seeds = tf.data.Dataset.random(seed=_seed(seed, 4)).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(augment, num_parallel_calls=AUTOTUNE,
                                                              deterministic=deterministic)
    elif augment is not None:
        dataset = dataset.map(lambda example: augment(example, None), num_parallel_calls=AUTOTUNE,
                              deterministic=deterministic)
    return _batch_prefetch(dataset, batch_size, drop_remainder, deterministic, input_context)


def _augment_fn(transform, patch, to_model) -> Callable | None:
    """``(example, seed) -> element``: transforms, then the patch sampler, then model inputs (None: nothing to do).

    ``.seeded`` says whether it draws random numbers (the seed stream is only zipped in then, which keeps the
    draws of earlier runs).
    """
    if transform is None and patch is None and to_model is None:
        return None

    def augment(example, example_seed):
        if transform is not None:
            example = transform(example, example_seed)
        if patch is not None:
            example = patch(example, tf.random.fold_in(example_seed, _PATCH_SEED_SALT))
        return to_model(example) if to_model is not None else example

    augment.seeded = transform is not None or patch is not None
    return augment


def _batch_prefetch(dataset, batch_size, drop_remainder, deterministic, input_context):
    """Batch (padded where shapes vary), prefetch, and the options (auto-sharding off per input pipeline)."""
    if _has_unknown_dims(dataset.element_spec):
        dataset = dataset.padded_batch(batch_size, padding_values=_padding_values(dataset.element_spec),
                                       drop_remainder=drop_remainder)
    else:
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE,
                                deterministic=deterministic)
    dataset = dataset.prefetch(AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF if input_context is not None
        else tf.data.experimental.AutoShardPolicy.AUTO)
    return dataset.with_options(options)


def make_distributed_dataset(strategy: tf.distribute.Strategy, data_dir, split="train", *, global_batch_size: int,
                             **kwargs):
    """`make_dataset` per input pipeline through ``strategy.distribute_datasets_from_function``.

    Each pipeline reads its own shard files (``input_context``) and batches ``global_batch_size / replicas``, so a
    step sees ``global_batch_size`` distinct examples across replicas (MirroredStrategy, MultiWorkerMirrored,
    TPUStrategy alike).

    Args:
        strategy: the distribution strategy.
        data_dir, split: as `make_dataset`.
        global_batch_size: examples per step over all replicas (divisible by the replica count).
        **kwargs: every other `make_dataset` argument (``training``, ``transforms``, ``seed`` ...).

    Example:
        >>> strategy = tf.distribute.MirroredStrategy()
        >>> ds = make_distributed_dataset(strategy, "shards/lgg", "train", global_batch_size=32, training=True)
    """
    kwargs.pop("strategy", None)
    if global_batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"global_batch_size {global_batch_size} is not divisible by the "
                         f"{strategy.num_replicas_in_sync} replicas")

    def dataset_fn(context: tf.distribute.InputContext):
        return make_dataset(data_dir, split, batch_size=context.get_per_replica_batch_size(global_batch_size),
                            input_context=context, **kwargs)

    return strategy.distribute_datasets_from_function(dataset_fn)
