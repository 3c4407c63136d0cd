"""The multi-worker cluster of a SLURM job step, as the engine needs it for MultiWorkerMirroredStrategy.

The multi-node job script (slurm/train_multinode.sbatch) exports ``MEDTF_PORT_BASE`` (a free base port: worker i
on a node listens on base + i) and ``MEDTF_GPUS_PER_NODE``; srun sets the SLURM_* variables of each task.

Example (inside ``srun``)::

    resolver = slurm_cluster_resolver()
    strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
"""

from __future__ import annotations

import os
from typing import Mapping

DEFAULT_PORT_BASE = 8888  # SlurmClusterResolver's own default, for jobs not started from a medtf template


def in_slurm_step(env: Mapping[str, str] | None = None) -> bool:
    """True inside a task started by ``srun`` (where SlurmClusterResolver can read the step's layout)."""
    env = os.environ if env is None else env
    return "SLURM_PROCID" in env and "SLURM_STEP_NODELIST" in env


def slurm_cluster_resolver(env: Mapping[str, str] | None = None):
    """A `tf.distribute.cluster_resolver.SlurmClusterResolver` for this task, also right on CPU-only nodes.

    SlurmClusterResolver pairs tasks with GPUs (``range(0, gpus_per_node, gpus_per_task)``): with no GPUs it fails
    with "range() arg 3 must not be zero", and with fewer GPUs than tasks it silently drops workers. On CPU nodes
    it is therefore given one pretend GPU per task and told not to touch ``CUDA_VISIBLE_DEVICES``.

    Args:
        env: the environment to read (default ``os.environ``): ``MEDTF_PORT_BASE``, ``MEDTF_GPUS_PER_NODE``,
            SLURM_* of the step.
    """
    import tensorflow as tf
    from tensorflow.python.distribute.cluster_resolver.slurm_cluster_resolver import expand_tasks_per_node

    env = os.environ if env is None else env
    port_base = int(env.get("MEDTF_PORT_BASE", DEFAULT_PORT_BASE))
    gpus = env.get("MEDTF_GPUS_PER_NODE")
    resolver_cls = tf.distribute.cluster_resolver.SlurmClusterResolver
    if gpus is not None and int(gpus) == 0:
        tasks = max(expand_tasks_per_node(env["SLURM_STEP_TASKS_PER_NODE"]))
        return resolver_cls(port_base=port_base, gpus_per_node=tasks, gpus_per_task=1, auto_set_gpu=False)
    return resolver_cls(port_base=port_base, gpus_per_node=int(gpus) if gpus is not None else None)
