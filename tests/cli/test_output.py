"""The `medtf` command's own output: TensorFlow start-up noise filtered (shown with --verbose), everything else
on stderr passes unchanged (real errors, tracebacks, bars); RST markup removed from help texts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from medtf.cli.output import NOISE, clean_text, filtered_stderr, global_flags

NOISE_LINES = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"I0000 00:00:1796607519.156280    6387 port.cc:153] oneDNN custom operations are on. You may see slightly "
    b"different numerical results due to floating-point round-off errors.",
    b"I0000 00:00:1796607519.156680    6387 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU "
    b"will not be used.",
    b"I0000 00:00:1796607519.234133    6387 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    b"available CPU instructions in performance-critical operations.",
    b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate "
    b"compiler flags.",
    b"E0000 00:00:1796607523.212665    6387 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    b"Failed call to cuInit: UNKNOWN ERROR (303)",
]
REAL = [b"E0000 00:00:1796607523.2 6387 op_kernel.cc:1857] OP_REQUIRES failed at conv_ops.cc:1234 : RESOURCE_EXHAUSTED",
        b"Traceback (most recent call last):", b"medtf predict: input does not exist",
        b"W0000 00:00:1.0 12 cpu_allocator_impl.cc:83] Allocation of 1073741824 exceeds 10% of free system memory."]


def test_noise_pattern():
    assert all(NOISE.match(line) for line in NOISE_LINES)
    assert not any(NOISE.match(line) for line in REAL)


def test_filter_drops_noise_and_passes_the_rest(capfd):
    with filtered_stderr():
        for line in NOISE_LINES[:3] + [REAL[0]] + NOISE_LINES[3:] + REAL[1:]:
            os.write(2, line + b"\n")
        os.write(2, b"\rpredict:  40%|####      | 8/20")  # a bar redrawn without a newline
        os.write(2, b"\rpredict:  45%|####      | 9/20\n")
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert err == ("\n".join(line.decode() for line in REAL) + "\n\rpredict:  40%|####      | 8/20"
                   "\rpredict:  45%|####      | 9/20\nafter\n")


def _medtf(*args, **env):
    return subprocess.run([sys.executable, "-m", "medtf.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_commands_start_quietly_and_verbose_shows_tensorflow(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    quiet = subprocess.run([sys.executable, "-m", "medtf.cli.main", "info"], capture_output=True, text=True,
                           env=env, timeout=300)
    assert quiet.returncode == 0 and "oneDNN" in quiet.stdout
    assert not [line for line in quiet.stderr.splitlines() if NOISE.match(line.encode())], quiet.stderr
    verbose = subprocess.run([sys.executable, "-m", "medtf.cli.main", "info", "--verbose"], capture_output=True,
                             text=True, env=env, timeout=300)
    assert verbose.returncode == 0
    # TensorFlow prints at least its oneDNN or CUDA start-up line on every x86-64 machine.
    assert [line for line in verbose.stderr.splitlines() if NOISE.match(line.encode())], verbose.stderr
    # A real error still shows (message and exit code), after TensorFlow was loaded and filtered.
    bad = _medtf("predict", tmp_path / "no-model", "--input", tmp_path / "none.nii.gz", "--output", tmp_path / "o")
    assert bad.returncode == 2 and "medtf predict:" in bad.stderr and "not an exported model" in bad.stderr
    assert not [line for line in bad.stderr.splitlines() if NOISE.match(line.encode())], bad.stderr


def test_global_flags_and_markup():
    assert global_flags(["--quiet", "predict", "m"]) == {"quiet": True, "verbose": False}
    assert global_flags(["slurm", "run", "--", "predict", "--quiet"]) == {"quiet": False, "verbose": False}
    assert global_flags(["train", "c.yaml", "--verbose"])["verbose"]
    assert clean_text("Writes ``medtf.json`` next to it (:func:`~medtf.export.export_run`, :class:`a.B`)::") == \
        "Writes medtf.json next to it (export_run, a.B):"
    assert clean_text("keeps `single` quotes and a:b") == "keeps `single` quotes and a:b"


@pytest.mark.parametrize("position", ["before", "after"])
def test_quiet_anywhere(position, capsys, tmp_path):
    from medtf import progress
    from tests.conftest import run_medtf

    argv = ["--quiet", "verify", tmp_path] if position == "before" else ["verify", tmp_path, "--quiet"]
    assert run_medtf(*argv) == 2  # parsed (no usage error); no manifest there
    assert "no manifest" in capsys.readouterr().err and not progress.is_quiet()  # reset after the command
