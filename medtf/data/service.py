"""tf.data service for medtf pipelines: decoding and augmentation on CPU-only workers, batches on the trainer.

A 3D U-Net is input-bound long before it is GPU-bound (nnU-Net plans 12-32 augmentation workers per GPU).
`tf.data.experimental.service` moves the expensive part of a tf.data graph to worker processes on other
machines: a *dispatcher* hands out work, *workers* (``medtf data-service worker``) run the graph and stream
elements to the trainer. `medtf.data.make_dataset` with ``service="grpc://host:port"`` builds::

    range(epochs x files) -> (epoch, file) -> interleave(TFRecordDataset.enumerate) -> decode + parse -> [filter]
    -> shuffle -> example_seed(seed, epoch, file, record) -> transforms + patch -> model inputs
    -> distribute(service)                                            # everything above runs on the workers
    -> batch -> prefetch                                              # on the trainer

Modes (``service_mode``):
    ``distributed_epoch`` (default): the dispatcher hands each (epoch, file) pair to one worker, so an epoch
        holds every example once however many workers run (one pass when ``repeat=False``: the same multiset of
        examples as the local pipeline). Several trainers (MultiWorkerMirroredStrategy input pipelines) share
        one job: each consumes a distinct share, balanced dynamically (no ``input_context`` sharding). A
        worker that dies loses the files it held (at most ``cycle_length`` files of the epoch in progress);
        with ``repeat`` (training) the stream simply continues from the other workers.
    ``parallel_epochs``: every worker reads the whole (repeated) data set itself, in its own file order and with
        its own augmentation draws (a salt drawn from the clock when the worker starts), and the trainer takes
        elements from all of them first come, first served. An epoch of ``steps_per_epoch`` batches is then not
        one pass: with ``repeat=False`` each example arrives once per worker. Trainers sharing the job
        (MultiWorkerMirroredStrategy) split that combined stream between them: not every trainer sees every
        example. Not reproducible; for pipelines that cannot be split.

Seeds: an example's augmentation seed is a stateless function of ``(seed, epoch, file index, record index)``
(`example_seed`), not of the order in which it reaches a worker, so in ``distributed_epoch`` mode an example is
augmented identically whichever worker, and however many, process it. The draws differ from the local pipeline
(whose seeds follow the stream order). ``seed=None`` follows the local pipeline: a fresh seed every run (drawn by
`resolve_seed`, not reproducible); evaluation (``training=False``) uses seed 0 as locally. Trainers that share a job
(several input pipelines) must register the same graph, so they derive the seed from $SLURM_JOB_ID and
$SLURM_RESTART_COUNT (same for all of them, new at each start); outside a SLURM job they need an explicit seed.

Requirements: the shard paths are baked into the graph the workers run, so every worker must see them at the
same path (a shared filesystem: /project, /scratch, Lustre/GPFS). Transforms must be TF ops: a
``tf.numpy_function`` (the volumentations / albumentations backends) cannot run on a worker and is refused here.
``cache`` and ``class_balance`` are not supported through the service.

Example:
    >>> ds = make_dataset("shards/brachy", "train", batch_size=2, training=True, seed=0, patch_size=64,
    ...                   transforms=[{"name": "random_flip"}], service="grpc://node17:5050")
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from pathlib import Path
from typing import Callable, Sequence

import tensorflow as tf

SERVICE_MODES = ("distributed_epoch", "parallel_epochs")
ADDRESS_ENV = "MEDTF_DATA_SERVICE_FILE"  # set by the SLURM job: where the dispatcher wrote its address
DEFAULT_TIMEOUT = 300.0  # seconds a trainer waits for the address file and for a first registered worker
_SEED_SALT = 7_919  # second word of the (2,) base seed of example seeds
_ORDER_SALT = 15_485_863  # salt of the per-epoch file order
_PY_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
_GET_WORKERS = "/tensorflow.data.DispatcherService/GetWorkers"


class DataServiceError(RuntimeError):
    """The tf.data service cannot be used: no address, dispatcher unreachable, no worker registered."""


def normalize_address(address: str) -> str:
    """``host:port`` or ``grpc://host:port`` -> ``grpc://host:port`` (ValueError for anything else)."""
    text = str(address).strip()
    rest = text.split("://", 1)[1] if "://" in text else text
    if "://" in text and not text.startswith("grpc://"):
        raise ValueError(f"tf.data service address {address!r}: only grpc:// is supported")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"tf.data service address {address!r}: expected host:port or grpc://host:port")
    return f"grpc://{rest}"


def read_address_file(path: str | os.PathLike, timeout: float = 0.0, poll: float = 0.2) -> str:
    """The dispatcher address written to ``path`` (`write_address_file`), waiting up to ``timeout`` s for it."""
    path = Path(path)
    end = time.monotonic() + timeout
    while True:
        text = path.read_text().strip() if path.is_file() else ""
        if text:
            try:
                return normalize_address(text)
            except ValueError as exc:
                raise DataServiceError(f"{path}: {exc}") from None
        if time.monotonic() >= end:
            raise DataServiceError(f"{path}: no dispatcher address after {timeout:.0f} s (the file is written by "
                                   f"`medtf data-service dispatcher`; is the dispatcher running?)")
        time.sleep(poll)


def write_address_file(path: str | os.PathLike, address: str) -> None:
    """Write atomically, so a worker polling the file never reads half an address."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(normalize_address(address) + "\n")
    os.replace(tmp, path)


def resolve_service(service: str | None, timeout: float = DEFAULT_TIMEOUT) -> str | None:
    """None -> None; ``"auto"`` -> the address in ``$MEDTF_DATA_SERVICE_FILE``; an address -> ``grpc://...``."""
    if service is None:
        return None
    if service == "auto":
        path = os.environ.get(ADDRESS_ENV)
        if not path:
            raise DataServiceError(f"data.service=auto reads the dispatcher address from ${ADDRESS_ENV}, which the "
                                   f"SLURM job of `medtf slurm CONFIG --data-workers N` sets; outside such a job "
                                   f"give the address (grpc://host:port)")
        return read_address_file(path, timeout)
    return normalize_address(service)


def _count_field_one(message: bytes) -> int:
    """Entries of the repeated field 1 (``GetWorkersResponse.workers``) in a serialized protobuf message."""
    count, i = 0, 0

    def varint(i):
        value, shift = 0, 0
        while True:
            byte = message[i]
            value |= (byte & 0x7F) << shift
            i, shift = i + 1, shift + 7
            if not byte & 0x80:
                return value, i

    while i < len(message):
        tag, i = varint(i)
        wire = tag & 7
        if wire == 0:
            _, i = varint(i)
        elif wire == 2:
            length, i = varint(i)
            i += length
            count += tag >> 3 == 1
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
    return count


def registered_workers(address: str, timeout: float = 5.0) -> int:
    """How many workers the dispatcher at ``address`` knows (its GetWorkers RPC); DataServiceError if unreachable.

    TensorFlow has no Python client for this call; the request is empty and the response a list of WorkerInfo
    messages, so the raw bytes are counted rather than shipping the dispatcher's .proto.
    """
    import grpc

    address = normalize_address(address)
    with grpc.insecure_channel(address.removeprefix("grpc://")) as channel:
        try:
            reply = channel.unary_unary(_GET_WORKERS)(b"", timeout=timeout)
        except grpc.RpcError as exc:
            raise DataServiceError(f"tf.data service dispatcher {address} did not answer: "
                                   f"{exc.code().name} {exc.details()}") from None
    return _count_field_one(reply)


def wait_for_workers(address: str, timeout: float = DEFAULT_TIMEOUT, minimum: int = 1, poll: float = 0.5) -> int:
    """Block until ``minimum`` workers are registered; DataServiceError naming the dispatcher after ``timeout`` s.

    Without this a trainer whose workers never started would wait in its first step for ever.
    """
    end = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            workers = registered_workers(address, timeout=max(1.0, min(5.0, end - time.monotonic())))
            if workers >= minimum:
                return workers
            last = f"{workers} registered"
        except DataServiceError as exc:
            last = str(exc)
        if time.monotonic() >= end:
            raise DataServiceError(f"no tf.data service worker registered with the dispatcher at {address} within "
                                   f"{timeout:.0f} s ({last}): start `medtf data-service worker --dispatcher "
                                   f"{address}` (under SLURM: see the workers' logs in RUN_DIR/slurm/)")
        time.sleep(poll)


def example_seed(seed: int, epoch, file_index, record_index, salt=0) -> tf.Tensor:
    """The ``(2,)`` int64 augmentation seed of record ``record_index`` of file ``file_index`` in ``epoch``.

    Works eagerly and in graphs, so a test (or a user) can recompute the augmentation of any example.
    """
    base = tf.constant([int(seed), _SEED_SALT], tf.int64)
    for value in (salt, epoch, file_index, record_index):
        base = tf.random.fold_in(base, tf.cast(value, tf.int64))
    return base


def _file_order(seed: int, epoch, salt, num_files: int) -> tf.Tensor:
    order_seed = tf.random.fold_in(tf.random.fold_in(tf.constant([int(seed), _ORDER_SALT], tf.int64), salt), epoch)
    return tf.argsort(tf.random.stateless_uniform([num_files], seed=order_seed))


def resolve_seed(seed: int | None, shared: bool) -> int:
    """The seed of the service graph: ``seed``, or for None a fresh one per run (see the module docstring).

    Raises `DataServiceError` for None with ``shared`` trainers outside a SLURM job (they could not agree on one).
    """
    if seed is not None:
        return int(seed)
    if not shared:
        return secrets.randbits(31)  # what the local pipeline's unseeded shuffles and seed stream amount to
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        raise DataServiceError("seed=None with several trainers sharing one tf.data service job: they must register "
                               "the same graph, so they need the same seed; set one (the experiment's seed, data.seed) "
                               "or run inside a SLURM job (the seed then derives from $SLURM_JOB_ID)")
    key = repr(("medtf-service-seed", job, os.environ.get("SLURM_RESTART_COUNT", "0")))
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:4], "big") >> 1


def default_job_name(files: Sequence[str], seed: int, mode: str) -> str:
    """Shared job of the trainers of one SLURM job (same files, seed, mode; a requeued start gets a new job)."""
    key = repr((list(files), seed, mode, os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_RESTART_COUNT")))
    return "medtf-" + hashlib.sha1(key.encode()).hexdigest()[:16]


def check_graph_runs_remotely(dataset: tf.data.Dataset) -> None:
    """Refuse Python functions in the graph: the workers receive a GraphDef and cannot call back into Python."""
    graph = tf.compat.v1.GraphDef.FromString(dataset._as_serialized_graph().numpy())
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    if ops & _PY_OPS:
        raise ValueError("service: the pipeline calls Python (tf.numpy_function / tf.py_function, e.g. the "
                         "volumentations or albumentations backends), which tf.data service workers cannot run; "
                         "use medtf's TF transforms or service=None")


def service_examples(files: Sequence[str], *, compression: str, decode_parse: Callable, keep: Callable | None,
                     augment: Callable | None, training: bool, repeat: bool, seed: int | None,
                     shuffle_buffer: int, cycle_length: int, service: str, mode: str,
                     job_name: str | None = None) -> tf.data.Dataset:
    """Per-example model inputs computed on the tf.data service at ``service`` (see the module docstring).

    ``decode_parse(record) -> example``, ``keep(example) -> bool`` (or None), ``augment(example, seed) -> element``
    (or None: the parsed example) are the local pipeline's own stages.
    """
    if mode not in SERVICE_MODES:
        raise ValueError(f"service_mode must be one of {SERVICE_MODES}, got {mode!r}")
    seed = resolve_seed(seed, shared=job_name is not None)  # a shared job has a name (`default_job_name`)
    num_files = len(files)
    paths = tf.constant(list(files))
    # An "infinite" epoch counter; the dispatcher splits the range lazily, one (epoch, file) pair at a time.
    count = num_files * (1 if not repeat else (1 << 62) // num_files)
    if mode == "distributed_epoch":
        source = tf.data.Dataset.range(count).map(lambda n: (n, tf.constant(0, tf.int64)))
    else:  # each worker iterates the whole graph: a per-worker salt decorrelates their orders and draws
        salts = tf.data.Dataset.range(1).map(lambda _: tf.bitcast(tf.timestamp(), tf.int64))
        source = salts.flat_map(lambda s: tf.data.Dataset.range(count).map(lambda n: (n, s)))

    def locate(n, salt):
        epoch, k = n // num_files, n % num_files
        if training and num_files > 1:
            k = tf.cast(tf.gather(_file_order(seed, epoch, salt, num_files), k), tf.int64)
        return epoch, k, salt

    def records(epoch, k, salt):
        reader = tf.data.TFRecordDataset(tf.gather(paths, k), compression_type=compression).enumerate()
        return reader.map(lambda j, record: ((epoch, k, j, salt), record))

    dataset = source.map(locate).interleave(records, cycle_length=max(1, min(cycle_length, num_files)),
                                            block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
                                            deterministic=False)
    dataset = dataset.map(lambda where, record: (decode_parse(record), example_seed(seed, *where[:3], where[3])),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    if keep is not None:
        dataset = dataset.filter(lambda example, _: keep(example))
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map((lambda example, s: augment(example, s)) if augment is not None else (lambda e, _: e),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    check_graph_runs_remotely(dataset)
    return dataset.apply(tf.data.experimental.service.distribute(processing_mode=mode, service=service,
                                                                 job_name=job_name))
