"""Distribution strategies for `medtf train` by name, and which worker writes what into the run directory.

=============  ===================================================================================================
``auto``       `MirroredStrategy` (`tf.distribute.MirroredStrategy` that Keras 3 ``fit`` can use with text inputs)
               over all GPUs when there is more than one, else the default (one-device) strategy: nothing changes
               for a laptop or a single-GPU job.
``mirrored``   `MirroredStrategy` over all GPUs; without GPUs, over all logical CPUs (tests split one CPU in two).
``one_device`` `tf.distribute.OneDeviceStrategy` on the first GPU (CPU when there is none).
``multiworker`` `MultiWorkerStrategy` (a `tf.distribute.MultiWorkerMirroredStrategy` that Keras 3 ``fit`` can
               use across workers, see its docstring): the cluster comes from SLURM (`SlurmClusterResolver`,
               when ``SLURM_JOB_ID`` is set and ``SLURM_NTASKS`` > 1), else from ``TF_CONFIG``
               (`TFConfigClusterResolver`; no ``TF_CONFIG``: one local worker).
=============  ===================================================================================================

Under several workers only the chief (worker 0) writes the run directory (checkpoints, history.csv, TensorBoard);
the other workers still run every callback, into their own places: TensorBoard into ``logs/worker-<i>`` (a run of
its own, never interleaved with the chief's) and checkpoints + history.csv into a temporary folder removed at the
end, or ``workers/worker-<i>/`` with ``train.keep_worker_outputs`` (the Keras multi-worker tutorial pattern). The
BackupAndRestore folder is the same path for every worker, so all resume from one state. The engine also
synchronizes batch norm (`synchronize_batch_norm`) and shards the validation set by example (`shard_by_example`)
when there is more than one worker (`num_workers`).

Example:
    >>> strategy = make_strategy("auto")
    >>> with strategy.scope():
    ...     model = get_model("unet2d_small", in_channels=3)
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import tensorflow as tf

from medtf.hpc.workers import slurm_cluster_resolver
from medtf.training.experiment import STRATEGIES  # noqa: F401  (train.strategy's names, checked with the config)


def cluster_resolver_kind(env: Mapping[str, str] | None = None) -> str:
    """``"slurm"`` when ``env`` describes a SLURM job with more than one task, else ``"tf_config"``.

    Example:
        >>> cluster_resolver_kind({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"})
        'slurm'
    """
    env = os.environ if env is None else env
    try:
        tasks = int(env.get("SLURM_NTASKS", "1") or 1)
    except ValueError:
        tasks = 1
    return "slurm" if env.get("SLURM_JOB_ID") and tasks > 1 else "tf_config"


def _cluster_resolver():
    resolvers = tf.distribute.cluster_resolver
    if cluster_resolver_kind() != "slurm":
        return resolvers.TFConfigClusterResolver()
    return slurm_cluster_resolver()  # medtf's job scripts: port base per job, CPU-only nodes (medtf.hpc.workers)


def _first_local_if_text(strategy, value):
    """This process's first replica value of a distributed string tensor, else None.

    Keras 3 ``fit``/``evaluate`` start with ``strategy.reduce("MEAN", first batch, axis=None)`` only to build the
    model symbolically from one batch; text inputs (the contrastive task's reports) cannot be averaged (AddN has no
    string kernel: every multi-replica fit of a model with string inputs failed). A batch of the right dtype and
    rank is all the build needs, so a string leaf gives its first local replica's value, on every worker alike (no
    collective is skipped on one worker only).
    """
    if isinstance(value, tf.distribute.DistributedValues):
        first = strategy.experimental_local_results(value)[0]
        if getattr(first, "dtype", None) == tf.string:
            return first
    return None


class MirroredStrategy(tf.distribute.MirroredStrategy):
    """`tf.distribute.MirroredStrategy` whose `reduce` lets Keras 3 ``fit`` build models with string inputs
    (see `_first_local_if_text`); everything else is MirroredStrategy's own reduce."""

    def reduce(self, reduce_op, value, axis):
        if not isinstance(value, tf.distribute.DistributedValues) and tf.nest.is_nested(value):
            return tf.nest.map_structure(lambda leaf: self.reduce(reduce_op, leaf, axis), value)
        text = _first_local_if_text(self, value)
        return text if text is not None else super().reduce(reduce_op, value, axis)


class MultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """`tf.distribute.MultiWorkerMirroredStrategy` with a `reduce` that Keras 3 ``fit`` can use across workers.

    Keras 3 (3.15) calls ``strategy.reduce`` in two ways that only a multi-worker cluster rejects:

    * ``fit``/``evaluate`` start with ``reduce("MEAN", (x, y), axis=None)`` on the first distributed batch
      (``TensorFlowTrainer._maybe_symbolic_build``). MirroredStrategy reduces a nest leaf by leaf
      (``MirroredExtended._reduce_to``); ``CollectiveAllReduceExtended._reduce_to`` hands the tuple to the
      cross-device ops: "Attempt to convert a value (PerReplica ...) with an unsupported type".
    * every step's logs go through ``reduce_per_replica``, which for multi-worker strategies calls
      ``reduce("MEAN", v, axis=0)`` on each *scalar* metric: "Invalid reduction dimension 0 for input with
      0 dimensions". On one worker Keras means the mean over replicas (``tf.reduce_mean(local_results, 0)``),
      which is ``axis=None`` here.

    So a nest is reduced leaf by leaf, and a scalar ignores ``axis``. Every worker runs the same reduces in the
    same order, as collectives need. See keras-team/keras#20585 (Keras 3 and MultiWorkerMirroredStrategy).
    String leaves (text inputs) are not reduced at all (`_first_local_if_text`).
    """

    def reduce(self, reduce_op, value, axis):
        if not isinstance(value, tf.distribute.DistributedValues) and tf.nest.is_nested(value):
            return tf.nest.map_structure(lambda leaf: self.reduce(reduce_op, leaf, axis), value)
        text = _first_local_if_text(self, value)
        if text is not None:
            return text
        if axis is not None and _rank(value) == 0:
            axis = None
        return super().reduce(reduce_op, value, axis)


def _rank(value) -> int | None:
    """Rank of a tensor, or of the first local component of a distributed value (None when unknown)."""
    if isinstance(value, tf.distribute.DistributedValues):
        value = value.values[0]
    shape = getattr(value, "shape", None)
    return None if shape is None else shape.rank


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """The `tf.distribute.Strategy` called ``name`` (see the module docstring for the choices).

    Logical devices (``tf.config.set_logical_device_configuration``) must be configured before this is called.

    Example:
        >>> make_strategy("mirrored").num_replicas_in_sync   # 2 GPUs -> 2
    """
    name = str(name or "auto").lower()
    if name not in STRATEGIES:
        raise ValueError(f"unknown train.strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    if name == "multiworker":
        # Before anything that starts the TF runtime (listing devices does): with a cluster it must configure
        # collective ops first, else "Collective ops must be configured at program startup".
        return MultiWorkerStrategy(cluster_resolver=_cluster_resolver())
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        if gpus:
            return MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        # Without GPUs MirroredStrategy() would take one CPU; several logical CPUs are what tests split off.
        return MirroredStrategy(devices=cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")


def num_workers(strategy: tf.distribute.Strategy | None) -> int:
    """How many workers (processes) ``strategy`` spans: 1 for everything but a multi-worker cluster."""
    extended = getattr(strategy, "extended", None)
    in_cluster = getattr(extended, "_in_multi_worker_mode", lambda: False)()
    return int(getattr(extended, "_num_workers", 1)) if in_cluster else 1


def shard_by_example(dataset, strategy: tf.distribute.Strategy | None):
    """``dataset`` that Keras can split over the workers of ``strategy`` (unchanged for a single worker).

    Keras distributes a plain `tf.data.Dataset` (the validation set) with the AUTO shard policy, which
    shards by *file* and fails when a split has fewer shard files than there are workers ("Could not apply
    FILE based sharding"). By example (DATA) every worker reads the files and keeps every n-th batch.
    """
    if dataset is None or num_workers(strategy) == 1:
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def synchronize_batch_norm(model) -> int:
    """Make every BatchNormalization layer of ``model`` use batch statistics over all replicas; returns how many.

    Keras 3 creates the moving mean/variance with aggregation "none" (tf.keras 2 used ON_READ + MEAN), so under
    several workers each one updates them from its own local batch and the workers' weights drift apart (the
    trainable weights stay identical: their gradients are all-reduced). Synchronized batch norm all-reduces the
    batch moments, so every worker normalises with, and keeps, the same statistics (those of the global batch,
    as one worker training on the global batch would). Called by `medtf.training.engine.train` when the strategy
    spans more than one worker; the flag is part of the layer config and is a no-op on one replica.
    """
    import keras

    layers = [layer for layer in model._flatten_layers(include_self=False)
              if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.synchronized = True
    return len(layers)


def worker_info(strategy: tf.distribute.Strategy) -> tuple[str | None, int, bool]:
    """``(task_type, task_id, is_chief)``; a single-worker strategy is the chief.

    The chief is task ``chief``, or ``worker`` 0 when the cluster has no ``chief`` job (the Keras rule).
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    task_id = int(getattr(resolver, "task_id", 0) or 0)
    if task_type is None:
        return None, 0, True
    jobs = resolver.cluster_spec().as_dict() if resolver is not None else {}
    chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in jobs)
    return task_type, task_id, chief


@dataclass(frozen=True)
class RunPaths:
    """Where this worker writes: the run directory's paths for the chief, throw-away ones for the others.

    ``scratch`` is the non-chief worker's temporary folder, which `medtf.training.engine.train` removes when it
    returns (None for the chief, and for workers whose outputs are kept in ``run_dir/workers/``).
    """

    run_dir: Path
    logs: Path
    checkpoints: Path
    history: Path
    backup: Path
    is_chief: bool
    worker: int
    scratch: Path | None = None

    @property
    def images(self) -> Path:
        return self.logs / "images"

    @property
    def gradients(self) -> Path:
        return self.logs / "gradients"


def run_paths(run_dir: str | os.PathLike, strategy: tf.distribute.Strategy | None = None,
              keep_workers: bool = False) -> RunPaths:
    """`RunPaths` of this worker of ``strategy`` inside ``run_dir``.

    Args:
        run_dir: the run directory (the chief's files).
        strategy: the distribution strategy (None: a single worker, the chief).
        keep_workers: non-chief workers write their checkpoints and history.csv into
            ``run_dir/workers/worker-<i>/`` (kept) instead of a temporary folder; ``train.keep_worker_outputs``
            turns it on to check that every worker ended with the chief's weights.

    Example:
        >>> run_paths("runs/a").checkpoints
        PosixPath('runs/a/checkpoints')
    """
    run_dir = Path(run_dir)
    _, task_id, chief = worker_info(strategy) if strategy is not None else (None, 0, True)
    backup = run_dir / "backup"  # shared: every worker restores the same epoch
    if chief:
        return RunPaths(run_dir, run_dir / "logs", run_dir / "checkpoints", run_dir / "history.csv", backup,
                        True, task_id)
    logs = run_dir / "logs" / f"worker-{task_id}"  # its own TensorBoard run, never interleaved with the chief's
    if keep_workers:
        own = run_dir / "workers" / f"worker-{task_id}"
        own.mkdir(parents=True, exist_ok=True)
        return RunPaths(run_dir, logs, own / "checkpoints", own / "history.csv", backup, False, task_id)
    scratch = Path(tempfile.mkdtemp(prefix=f"medtf-worker-{task_id}-"))
    return RunPaths(run_dir, logs, scratch / "checkpoints", scratch / "history.csv", backup, False, task_id,
                    scratch)
