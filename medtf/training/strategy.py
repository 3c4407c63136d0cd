"""Distribution strategies for `medtf train` by name, and which worker writes what into the run directory.

=============  ===================================================================================================
``auto``       `tf.distribute.MirroredStrategy` over all GPUs when there is more than one, else the default
               (one-device) strategy: nothing changes for a laptop or a single-GPU job.
``mirrored``   `MirroredStrategy` over all GPUs; without GPUs, over all logical CPUs (tests split one CPU in two).
``one_device`` `tf.distribute.OneDeviceStrategy` on the first GPU (CPU when there is none).
``multiworker`` `tf.distribute.MultiWorkerMirroredStrategy`: the cluster comes from SLURM
               (`SlurmClusterResolver`, when ``SLURM_JOB_ID`` is set and ``SLURM_NTASKS`` > 1), else from
               ``TF_CONFIG`` (`TFConfigClusterResolver`).
=============  ===================================================================================================

Under several workers only the chief writes the run directory (checkpoints, history.csv, TensorBoard); the other
workers must still run every callback that saves (a save is a collective op), so they write into throw-away
places: TensorBoard into ``logs/worker-<i>`` and checkpoints into a temporary folder (the Keras multi-worker
tutorial pattern). The BackupAndRestore folder is the same path for every worker, so all resume from one state.

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

STRATEGIES = ("auto", "mirrored", "one_device", "multiworker")


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
    try:  # medtf's job scripts: port base per job, CPU-only nodes (see medtf.hpc.workers)
        from medtf.hpc.workers import slurm_cluster_resolver
    except ImportError:
        return resolvers.SlurmClusterResolver()
    return slurm_cluster_resolver()


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """The `tf.distribute.Strategy` called ``name`` (see the module docstring for the choices).

    Logical devices (``tf.config.set_logical_device_configuration``) must be configured before this is called.

    Example:
        >>> make_strategy("mirrored").num_replicas_in_sync   # 2 GPUs -> 2
    """
    name = str(name or "auto").lower()
    if name not in STRATEGIES:
        raise ValueError(f"unknown train.strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        # Without GPUs MirroredStrategy() would take one CPU; several logical CPUs are what tests split off.
        return tf.distribute.MirroredStrategy(devices=cpus,
                                              cross_device_ops=tf.distribute.ReductionToOneDevice())
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=_cluster_resolver())


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
    """Where this worker writes: the run directory's paths for the chief, throw-away ones for the others."""

    run_dir: Path
    logs: Path
    checkpoints: Path
    history: Path
    backup: Path
    is_chief: bool
    worker: int

    @property
    def images(self) -> Path:
        return self.logs / "images"

    @property
    def gradients(self) -> Path:
        return self.logs / "gradients"


def run_paths(run_dir: str | os.PathLike, strategy: tf.distribute.Strategy | None = None) -> RunPaths:
    """`RunPaths` of this worker of ``strategy`` inside ``run_dir``.

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
    scratch = Path(tempfile.mkdtemp(prefix=f"medtf-worker-{task_id}-"))
    return RunPaths(run_dir, run_dir / "logs" / f"worker-{task_id}", scratch / "checkpoints",
                    scratch / "history.csv", backup, False, task_id)
