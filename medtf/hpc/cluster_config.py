"""The user's cluster description: what every job script needs but no experiment should know.

Read from ``--cluster-config FILE``, else ``$MEDTF_CLUSTER_CONFIG``, else ``~/.config/medtf/cluster.yaml`` (if it
exists). Every key is optional. A Compute Canada-style example::

    partition: gpu
    account: def-someprof
    gpu_request: gres          # "gres" -> --gres=gpu[:type]:N ; "gpus-per-node" -> --gpus-per-node=[type:]N
    gpu_type: v100l            # optional GPU model in the request
    cpus_per_gpu: 6            # --cpus-per-task = cpus_per_gpu x GPUs per node (at least 1)
    cpus_per_task: null        # or a fixed number (used when there are no GPUs)
    mem: 32G                   # --mem (per node)
    modules: [StdEnv/2023, python/3.11, cuda/12.2, cudnn]
    module_purge: true         # `module purge` before loading
    venv: ~/envs/medtf         # `source VENV/bin/activate`
    setup: ["export TF_CPP_MIN_LOG_LEVEL=2"]   # extra shell lines after the modules and the venv
    sbatch: ["--mail-type=FAIL"]               # extra #SBATCH options, verbatim
    medtf: medtf               # how to launch medtf inside jobs (e.g. "python -m medtf.cli.main")
    signal_seconds: 300        # USR1 this long before the time limit (save a backup, requeue)
    max_requeues: 10           # stop requeueing after this many restarts
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping


DEFAULT_PATH = Path("~/.config/medtf/cluster.yaml")
GPU_REQUEST_STYLES = ("gpus-per-node", "gres")


class ClusterConfigError(ValueError):
    pass


@dataclass
class ClusterConfig:
    """Site settings for job scripts (see the module docstring for the file format)."""

    partition: str | None = None
    account: str | None = None
    gpu_request: str = "gpus-per-node"
    gpu_type: str | None = None
    cpus_per_gpu: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    modules: list[str] = field(default_factory=list)
    module_purge: bool = False
    venv: str | None = None
    setup: list[str] = field(default_factory=list)
    sbatch: list[str] = field(default_factory=list)
    medtf: str = "medtf"
    signal_seconds: int = 300
    max_requeues: int = 10
    source: str | None = None  # the file it came from (for messages)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str | None = None) -> "ClusterConfig":
        known = {f.name for f in fields(cls)} - {"source"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ClusterConfigError(f"{source or 'cluster config'}: unknown keys {unknown}; known: {sorted(known)}")
        config = cls(**{k: v for k, v in data.items() if v is not None}, source=source)
        if config.gpu_request not in GPU_REQUEST_STYLES:
            raise ClusterConfigError(f"{source or 'cluster config'}: gpu_request must be one of "
                                     f"{GPU_REQUEST_STYLES}, not {config.gpu_request!r}")
        for name in ("modules", "setup", "sbatch"):
            value = getattr(config, name)
            if isinstance(value, str):
                setattr(config, name, [value])
        return config

    def gpu_option(self, gpus: int) -> str | None:
        """The #SBATCH option requesting ``gpus`` GPUs per node in this cluster's style (None for a CPU job)."""
        if gpus <= 0:
            return None
        if self.gpu_request == "gres":
            return f"--gres=gpu:{self.gpu_type}:{gpus}" if self.gpu_type else f"--gres=gpu:{gpus}"
        return f"--gpus-per-node={self.gpu_type}:{gpus}" if self.gpu_type else f"--gpus-per-node={gpus}"

    def cpus(self, gpus: int) -> int | None:
        if self.cpus_per_gpu and gpus > 0:
            return max(1, int(self.cpus_per_gpu) * gpus)
        return int(self.cpus_per_task) if self.cpus_per_task else None

    def env_setup(self) -> str:
        """Shell lines that prepare a job's environment (module loads, venv, extra lines)."""
        lines = []
        if self.modules or self.module_purge:
            lines.append("# `module` is a shell function on login shells only: make sure it exists in batch jobs.")
            lines.append("if ! command -v module >/dev/null 2>&1 && [[ -f /etc/profile.d/modules.sh ]]; then "
                         "source /etc/profile.d/modules.sh; fi")
        if self.module_purge:
            lines.append("module purge")
        if self.modules:
            lines.append("module load " + " ".join(self.modules))
        if self.venv:
            lines.append(f"source {_quote_path(self.venv)}/bin/activate")
        lines.extend(self.setup)
        return "\n".join(lines or ["# (none: the job runs in the environment it was submitted from)"])


def _quote_path(path: str) -> str:
    """Keep a leading ``~`` expandable by the job's shell, quote the rest."""
    import shlex

    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def find_cluster_config(path: str | os.PathLike | None = None) -> Path | None:
    """The cluster config file to use: ``path``, ``$MEDTF_CLUSTER_CONFIG`` or the default (when it exists)."""
    if path:
        return Path(path)
    if os.environ.get("MEDTF_CLUSTER_CONFIG"):
        return Path(os.environ["MEDTF_CLUSTER_CONFIG"])
    default = DEFAULT_PATH.expanduser()
    return default if default.is_file() else None


def load_cluster_config(path: str | os.PathLike | None = None) -> ClusterConfig:
    """Read the cluster config (see `find_cluster_config`); defaults when there is none.

    Example:
        >>> load_cluster_config(None).gpu_option(2)   # with no file, $MEDTF_CLUSTER_CONFIG or ~/.config/medtf
        '--gpus-per-node=2'
    """
    found = find_cluster_config(path)
    if found is None:
        return ClusterConfig()
    from medtf.training.config import read_yaml_mapping

    data = read_yaml_mapping(found, ClusterConfigError, "cluster config", empty={})
    return ClusterConfig.from_mapping(data, source=str(found))
