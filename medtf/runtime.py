"""Process-level runtime defaults: oneDNN on every x86-64 CPU, TensorFlow threads sized to the CPUs this process
may use, and the machine facts `medtf info` prints.

Why: TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX-512 VNNI/BF16 or AMX. Everywhere else
(AVX2-only laptops, login nodes, AMD EPYC cloud VMs) Conv3D and its gradients run on Eigen kernels about 10x slower
(`benchmarks/RESULTS.md`, "Train step"). And TensorFlow sizes its thread pools from the cores it can be scheduled
on, not from a SLURM ``--cpus-per-task`` or a cgroup CPU quota, so a 4-CPU job on a 64-core node starts 64 threads
that fight over 4 CPUs.

`configure` runs when ``medtf`` is imported (so the ``medtf`` command, SLURM jobs and scripts that import medtf
before TensorFlow all get it). It only sets environment variables the user has not set, and only while TensorFlow
is not yet loaded (TensorFlow reads them once, at import). A script that imports TensorFlow first does the same by
hand::

    import os
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")    # before the first `import tensorflow`
    import tensorflow as tf

Opt out with ``TF_ENABLE_ONEDNN_OPTS=0`` (e.g. to compare kernels); set ``TF_NUM_INTRAOP_THREADS`` /
``TF_NUM_INTEROP_THREADS`` to choose thread counts yourself.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import sys
from pathlib import Path
from typing import Mapping, MutableMapping

log = logging.getLogger("medtf.runtime")

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
THREAD_ENVS = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
# TensorFlow's C++ INFO and WARNING lines (kernel choices, buffer sizes ...) hidden unless the user sets it;
# ``medtf --verbose`` shows them (`show_tensorflow_logs`).
LOG_LEVEL_ENV, LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL", "2"
X86_64 = ("x86_64", "amd64")
# CPU flags (as /proc/cpuinfo spells them) that matter for deep learning on the CPU.
FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
NATIVE_BF16 = ("avx512_bf16", "amx_bf16")

# What `configure` did in this process (``medtf info`` reports it).
_applied: dict[str, str] = {}


def cpu_info(cpuinfo: str | None = None) -> dict:
    """``{"model", "vendor", "flags": [the FEATURES present]}`` from ``/proc/cpuinfo`` (or the text given).

    Example:
        >>> cpu_info("model name : AMD EPYC\\nflags : fpu avx2 fma\\n")["flags"]
        ['avx2', 'fma']
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:  # the first processor describes them all
            fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name") or platform.processor() or "unknown",
            "vendor": fields.get("vendor_id", "unknown"),
            "flags": [f for f in FEATURES if f in flags]}


def _cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cores(env: Mapping[str, str] | None = None, *, affinity: int | None = None,
                 cgroup_limit: float | None = -1.0) -> tuple[int, str]:
    """How many CPUs this process may really use, and what limited it.

    The smallest of: the CPUs it may be scheduled on (affinity, which SLURM's task/affinity and cgroup cpusets set),
    the cgroup CPU quota (rounded up: a quota of 1.5 CPUs keeps two threads busy) and SLURM's
    ``--cpus-per-task`` (``SLURM_CPUS_PER_TASK``; a cluster without CPU binding does not enforce it, but the job
    asked for it and shares the node with others).

    Example:
        >>> usable_cores({"SLURM_CPUS_PER_TASK": "4"}, affinity=64, cgroup_limit=None)
        (4, 'SLURM_CPUS_PER_TASK')
    """
    env = os.environ if env is None else env
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            affinity = os.cpu_count() or 1
    if cgroup_limit == -1.0:
        cgroup_limit = _cgroup_cpu_limit()
    limits = [(affinity, "CPU affinity")]
    if cgroup_limit is not None:
        limits.append((max(1, math.ceil(cgroup_limit)), "cgroup CPU quota"))
    try:
        slurm = int(env.get("SLURM_CPUS_PER_TASK", "") or 0)
    except ValueError:
        slurm = 0
    if slurm > 0:
        limits.append((slurm, "SLURM_CPUS_PER_TASK"))
    cores, source = min(limits, key=lambda item: item[0])  # ties keep the first: affinity
    return max(1, cores), source


def tensorflow_loaded() -> bool:
    return "tensorflow" in sys.modules


def configure(env: MutableMapping[str, str] | None = None, *, machine: str | None = None,
              cores: tuple[int, str] | None = None, tf_loaded: bool | None = None) -> dict[str, str]:
    """Set oneDNN and TensorFlow thread defaults in ``env`` (``os.environ``) unless the user set them; returns
    what was set. Does nothing once TensorFlow is imported (too late: it read them at import).

    Threads are only set when fewer CPUs are usable than the machine schedules on (SLURM or a cgroup quota); with
    the whole machine TensorFlow's own defaults are right.

    Example:
        >>> configure({}, machine="x86_64", cores=(2, "CPU affinity"), tf_loaded=False)
        {'TF_ENABLE_ONEDNN_OPTS': '1', 'TF_CPP_MIN_LOG_LEVEL': '2'}
    """
    env = os.environ if env is None else env
    machine = (machine or platform.machine()).lower()
    if tf_loaded is None:
        tf_loaded = tensorflow_loaded()
    if tf_loaded:
        return {}
    applied: dict[str, str] = {}
    if machine in X86_64 and ONEDNN_ENV not in env:
        applied[ONEDNN_ENV] = "1"
    if LOG_LEVEL_ENV not in env:
        applied[LOG_LEVEL_ENV] = LOG_LEVEL
    count, source = cores or usable_cores(env)
    if source != "CPU affinity":
        for name in THREAD_ENVS:
            if name not in env:
                applied[name] = str(count)
    env.update(applied)
    if env is os.environ:
        _applied.update(applied)
    return applied


def show_tensorflow_logs(env: MutableMapping[str, str] | None = None) -> bool:
    """Undo `configure`'s ``TF_CPP_MIN_LOG_LEVEL`` default (``medtf --verbose``) while TensorFlow is not loaded;
    a value the user set stays. Returns whether the level is now 0."""
    env = os.environ if env is None else env
    if env is os.environ and _applied.get(LOG_LEVEL_ENV) == env.get(LOG_LEVEL_ENV) and not tensorflow_loaded():
        env[LOG_LEVEL_ENV] = "0"
        _applied.pop(LOG_LEVEL_ENV)
    return env.get(LOG_LEVEL_ENV, "0") == "0"


def onednn_enabled() -> bool:
    """Whether the TensorFlow loaded in this process uses oneDNN kernels (imports TensorFlow)."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def gpu_info() -> list[dict]:
    """``[{"name", "compute_capability"}]`` of the GPUs TensorFlow sees (imports TensorFlow)."""
    import tensorflow as tf

    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        gpus.append({"name": details.get("device_name", device.name),
                     "compute_capability": details.get("compute_capability")})
    return gpus


def auto_precision(gpus: list[dict] | None = None, flags: list[str] | None = None) -> tuple[str, str]:
    """The Keras precision policy that is fast here, and why.

    bfloat16 only where the hardware computes it natively: GPUs of compute capability >= 8.0 (Ampere and later),
    or CPUs with AVX-512 BF16 / AMX. Older GPUs (>= 7.0, tensor cores) get mixed_float16. Everywhere else bf16 is
    emulated and slower than float32 (an AVX2 CPU), so float32.

    Example:
        >>> auto_precision(gpus=[], flags=["avx2", "fma"])
        ('float32', 'CPU without native bfloat16 (no AVX-512 BF16 / AMX): bfloat16 would be emulated')
    """
    gpus = gpu_info() if gpus is None else gpus
    flags = cpu_info()["flags"] if flags is None else flags
    if gpus:
        capabilities = [tuple(g.get("compute_capability") or (0, 0)) for g in gpus]
        lowest = min(capabilities)
        if lowest >= (8, 0):
            return "mixed_bfloat16", f"GPU compute capability {lowest[0]}.{lowest[1]} computes bfloat16 natively"
        if lowest >= (7, 0):
            return "mixed_float16", f"GPU compute capability {lowest[0]}.{lowest[1]}: float16 tensor cores, no bf16"
        return "float32", "GPU without tensor cores"
    native = [f for f in NATIVE_BF16 if f in flags]
    if native:
        return "mixed_bfloat16", f"CPU computes bfloat16 natively ({', '.join(native)})"
    return "float32", "CPU without native bfloat16 (no AVX-512 BF16 / AMX): bfloat16 would be emulated"


def resolve_precision(requested: str) -> str:
    """``requested`` unless it is ``auto``; then `auto_precision`'s choice, logged with its reason."""
    if str(requested) != "auto":
        return str(requested)
    policy, reason = auto_precision()
    # Printed, not logged: the choice changes speed and numerics, and `medtf train` configures no logging.
    print(f"medtf: train.precision auto -> {policy} ({reason})", file=sys.stderr, flush=True)
    return policy


STACK = ("tensorflow", "keras", "keras-hub", "keras-tuner", "tensorboard", "numpy", "pydicom", "SimpleITK",
         "nibabel", "highdicom", "albumentations", "volumentations-3d")


def stack_versions(names=STACK) -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _thread_count(configured: int, env_name: str) -> int:
    """The pool size TensorFlow uses: set in code, else from its environment variable, else one per CPU it may be
    scheduled on (TensorFlow's default)."""
    if configured:
        return configured
    try:
        return int(os.environ[env_name])
    except (KeyError, ValueError):
        return usable_cores(cgroup_limit=None, env={})[0]


def info() -> dict:
    """Everything a user or a support request needs about this machine and process (imports TensorFlow)."""
    import tensorflow as tf

    cores, source = usable_cores()
    cpu = cpu_info()
    gpus = gpu_info()
    policy, reason = auto_precision(gpus, cpu["flags"])
    from medtf import __version__

    return {
        "medtf": __version__,
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": cpu,
        "cores": {"host": os.cpu_count(), "usable": cores, "limited_by": source},
        "onednn": {"enabled": onednn_enabled(), ONEDNN_ENV: os.environ.get(ONEDNN_ENV, "(unset)"),
                   "set_by_medtf": ONEDNN_ENV in _applied},
        "threads": {"intra_op": _thread_count(tf.config.threading.get_intra_op_parallelism_threads(),
                                              THREAD_ENVS[0]),
                    "inter_op": _thread_count(tf.config.threading.get_inter_op_parallelism_threads(),
                                              THREAD_ENVS[1]),
                    **{name: os.environ.get(name, "(unset)") for name in THREAD_ENVS}},
        "gpus": gpus,
        "precision_auto": {"policy": policy, "reason": reason},
        "versions": stack_versions(),
    }


def format_info(facts: dict) -> str:
    """`info` as the aligned text `medtf info` prints."""
    cpu, cores, onednn = facts["cpu"], facts["cores"], facts["onednn"]
    flags = set(cpu["flags"])
    feature_line = ", ".join(f"{name} {'yes' if name in flags else 'no'}"
                             for name in ("avx2", "avx512f", "avx512_bf16", "amx_bf16"))
    state = "on" if onednn["enabled"] else "off"
    origin = "set by medtf" if onednn["set_by_medtf"] else f"{ONEDNN_ENV}={onednn[ONEDNN_ENV]}"
    gpus = "; ".join(f"{g['name']} (cc {'.'.join(map(str, g['compute_capability'] or ()))})"
                     for g in facts["gpus"]) or "none"
    rows = [
        ("medtf", facts["medtf"]),
        ("platform", facts["platform"]),
        ("CPU", f"{cpu['model']} ({cpu['vendor']})"),
        ("CPU features", feature_line),
        ("oneDNN", f"{state} ({origin})"),
        ("cores", f"{cores['usable']} usable of {cores['host']} (limited by {cores['limited_by']})"),
        ("TF threads", f"intra-op {facts['threads']['intra_op']}, inter-op {facts['threads']['inter_op']}"),
        ("GPUs", gpus),
        ("precision auto", f"{facts['precision_auto']['policy']} ({facts['precision_auto']['reason']})"),
    ]
    rows += [(name, version) for name, version in facts["versions"].items()]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
