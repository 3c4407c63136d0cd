"""medtf.runtime: oneDNN on by default, threads from the usable CPUs, `medtf info`, `train.precision: auto`."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from medtf import runtime
from tests.conftest import run_medtf

AMD_AVX2 = "processor : 0\nvendor_id : AuthenticAMD\nmodel name : AMD EPYC 7B13\nflags : fpu sse avx avx2 fma\n"
XEON_AMX = ("processor : 0\nvendor_id : GenuineIntel\nmodel name : Intel(R) Xeon(R) Platinum 8481C\n"
            "flags : avx2 fma avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8\n"
            "processor : 1\nflags : something else\n")


def test_cpu_info_reads_model_vendor_and_deep_learning_features():
    amd = runtime.cpu_info(AMD_AVX2)
    assert amd == {"model": "AMD EPYC 7B13", "vendor": "AuthenticAMD", "flags": ["avx2", "fma"]}
    xeon = runtime.cpu_info(XEON_AMX)
    assert xeon["model"] == "Intel(R) Xeon(R) Platinum 8481C"
    assert xeon["flags"] == ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
                             "amx_int8"]


@pytest.mark.parametrize("env, affinity, cgroup, expected", [
    ({}, 64, None, (64, "CPU affinity")),
    ({"SLURM_CPUS_PER_TASK": "4"}, 64, None, (4, "SLURM_CPUS_PER_TASK")),
    ({"SLURM_CPUS_PER_TASK": "4"}, 2, None, (2, "CPU affinity")),      # bound to 2: affinity wins the tie-break
    ({}, 64, 1.5, (2, "cgroup CPU quota")),                           # 1.5 CPUs keep two threads busy
    ({"SLURM_CPUS_PER_TASK": "8"}, 64, 3.0, (3, "cgroup CPU quota")),
    ({"SLURM_CPUS_PER_TASK": "junk"}, 16, None, (16, "CPU affinity")),
    ({}, 4, 0.2, (1, "cgroup CPU quota")),
])
def test_usable_cores_is_the_tightest_limit(env, affinity, cgroup, expected):
    assert runtime.usable_cores(env, affinity=affinity, cgroup_limit=cgroup) == expected


def test_cgroup_quota_v2_and_v1(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("250000 100000\n")
    assert runtime._cgroup_cpu_limit(v2) == 2.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert runtime._cgroup_cpu_limit(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert runtime._cgroup_cpu_limit(v1) == 3.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert runtime._cgroup_cpu_limit(v1) is None
    assert runtime._cgroup_cpu_limit(tmp_path / "missing") is None


def test_configure_sets_only_what_the_user_left_unset():
    whole_machine = (8, "CPU affinity")
    env = {}
    assert runtime.configure(env, machine="x86_64", cores=whole_machine, tf_loaded=False) == {
        "TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    assert env == {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env = {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "0"}  # an explicit opt-out / log level stays
    assert runtime.configure(env, machine="x86_64", cores=whole_machine, tf_loaded=False) == {}
    assert env == {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "0"}
    assert runtime.configure({}, machine="aarch64", cores=whole_machine, tf_loaded=False) == {
        "TF_CPP_MIN_LOG_LEVEL": "2"}
    # TensorFlow already imported: it read the variables at import, setting them now would only mislead.
    assert runtime.configure({}, machine="x86_64", cores=whole_machine, tf_loaded=True) == {}
    # A SLURM job with 4 CPUs on a bigger node: both thread pools follow the job, unless the user chose.
    env = {"TF_NUM_INTEROP_THREADS": "1"}
    applied = runtime.configure(env, machine="x86_64", cores=(4, "SLURM_CPUS_PER_TASK"), tf_loaded=False)
    assert applied == {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "TF_NUM_INTRAOP_THREADS": "4"}
    assert env["TF_NUM_INTEROP_THREADS"] == "1"


@pytest.mark.parametrize("gpus, flags, policy", [
    ([], ["avx2", "fma"], "float32"),
    ([], ["avx2", "avx512f", "avx512_vnni"], "float32"),          # AVX-512 without BF16: still emulated
    ([], ["avx2", "avx512f", "avx512_bf16"], "mixed_bfloat16"),
    ([], ["avx2", "amx_tile", "amx_bf16"], "mixed_bfloat16"),
    ([{"name": "A100", "compute_capability": (8, 0)}], ["avx2"], "mixed_bfloat16"),
    ([{"name": "V100", "compute_capability": (7, 0)}], ["amx_bf16"], "mixed_float16"),
    ([{"name": "H100", "compute_capability": (9, 0)}, {"name": "T4", "compute_capability": (7, 5)}], [],
     "mixed_float16"),                                                # the slowest GPU decides
    ([{"name": "K80", "compute_capability": (3, 7)}], [], "float32"),
])
def test_auto_precision_picks_bf16_only_where_native(gpus, flags, policy):
    chosen, reason = runtime.auto_precision(gpus=gpus, flags=flags)
    assert chosen == policy
    assert reason


def test_resolve_precision_says_what_auto_chose(capsys):
    assert runtime.resolve_precision("mixed_float16") == "mixed_float16"
    assert capsys.readouterr().err == ""
    expected, reason = runtime.auto_precision()
    assert runtime.resolve_precision("auto") == expected
    assert f"train.precision auto -> {expected} ({reason})" in capsys.readouterr().err


def _probe(env_changes: dict, code: str) -> dict:
    """Run ``code`` (which prints one JSON line last) in a fresh interpreter with ``env_changes``
    (value None removes the variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_ENABLE_ONEDNN", "TF_NUM_", "SLURM_"))}
    env.update({k: v for k, v in env_changes.items() if v is not None})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


PROBE = ("import json, os, medtf, tensorflow as tf; from medtf.runtime import onednn_enabled; "
         "print(json.dumps({'onednn': onednn_enabled(), 'env': os.environ.get('TF_ENABLE_ONEDNN_OPTS'), "
         "'intra': os.environ.get('TF_NUM_INTRAOP_THREADS'), 'inter': os.environ.get('TF_NUM_INTEROP_THREADS')}))")


@pytest.mark.skipif(platform.machine().lower() not in runtime.X86_64, reason="oneDNN default is for x86-64 CPUs")
def test_importing_medtf_first_turns_onednn_on_in_a_fresh_process():
    on = _probe({}, PROBE)
    assert on["onednn"] is True and on["env"] == "1"
    off = _probe({"TF_ENABLE_ONEDNN_OPTS": "0"}, PROBE)
    assert off["onednn"] is False and off["env"] == "0"
    # TensorFlow first: too late for medtf, TensorFlow keeps its own default (on only on AVX-512 VNNI/AMX CPUs).
    late = _probe({}, PROBE.replace("import json, os, medtf, tensorflow as tf",
                                    "import json, os, tensorflow as tf, medtf"))
    assert late["env"] is None


def test_slurm_cpus_per_task_sizes_the_thread_pools_in_a_fresh_process():
    cores, _ = runtime.usable_cores({}, cgroup_limit=None)
    if cores < 2:
        pytest.skip("needs a machine with 2 or more CPUs for a SLURM limit below them")
    limited = _probe({"SLURM_CPUS_PER_TASK": "1"}, PROBE)
    assert (limited["intra"], limited["inter"]) == ("1", "1")
    whole = _probe({}, PROBE)
    assert (whole["intra"], whole["inter"]) == (None, None)  # the whole machine: TensorFlow's defaults


def test_medtf_info_prints_machine_facts(capsys):
    assert run_medtf("info", "--json") == 0
    facts = json.loads(capsys.readouterr().out)
    cpu = runtime.cpu_info()
    assert facts["cpu"]["model"] == cpu["model"]
    assert facts["cpu"]["flags"] == cpu["flags"]
    assert facts["cores"]["usable"] == runtime.usable_cores()[0]
    assert facts["cores"]["host"] == os.cpu_count()
    import tensorflow as tf

    assert facts["versions"]["tensorflow"] == tf.__version__
    assert facts["onednn"]["enabled"] == runtime.onednn_enabled()
    assert facts["precision_auto"]["policy"] == runtime.auto_precision()[0]
    assert run_medtf("info") == 0
    text = capsys.readouterr().out
    assert f"CPU                {cpu['model']}" in text
    assert ("oneDNN             on" if facts["onednn"]["enabled"] else "oneDNN             off") in text
