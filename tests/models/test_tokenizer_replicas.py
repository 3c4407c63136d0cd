"""The EMA quantiser and one fit step of the tokenizer task on 2 replicas (MirroredStrategy on 2 logical CPUs)
against one device on the same global batch (tests/models/_tokenizer_replicas_check.py, in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("_tokenizer_replicas_check.py")
ENV = {"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def test_codebook_state_and_fit_step_on_two_replicas_equal_one_device():
    proc = subprocess.run([sys.executable, str(SCRIPT)], cwd=REPO, capture_output=True, text=True, timeout=240,
                          env={**os.environ, **ENV})
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert result["replicas"] == 2
    # EMA only: counts and sums summed over the replicas first = one device's update on the global batch.
    single, mirrored = result["restart0"]["single"], result["restart0"]["mirrored"]
    for name in ("cluster_size", "embed_sum", "unused"):
        np.testing.assert_allclose(mirrored[name], single[name], rtol=1e-5, atol=1e-6)
        assert mirrored[f"{name}_replicas_agree"]
    # Restarts: every replica holds the same restarted codes, drawn from replica 0's half of the batch (rows 0-5).
    single, mirrored = result["restart1"]["single"], result["restart1"]["mirrored"]
    assert all(mirrored[f"{n}_replicas_agree"] for n in ("cluster_size", "embed_sum", "unused"))
    z = np.asarray(result["z"])
    restarted = sorted(set(range(8)) - set(result["restart1"]["codes"]))  # codes no vector picked: restarted
    assert restarted and mirrored["cluster_size"] == single["cluster_size"]
    assert all(single["cluster_size"][k] == 1.0 and single["unused"][k] == 0 for k in restarted)
    for k in restarted:
        assert any(np.allclose(mirrored["embed_sum"][k], row) for row in z[:6]), k
    # One SGD step of the compiled task: the same logs (commitment included) and the same weights.
    one, two = result["fit_single"], result["fit_mirrored"]
    assert set(one["logs"]) >= {"loss", "commitment_loss", "reconstruction_mse", "tokens_perplexity"}
    for key, value in one["logs"].items():
        assert two["logs"][key] == np.float64(value) or abs(two["logs"][key] - value) <= 1e-5 * abs(value), key
    for a, b in zip(one["weights"], two["weights"]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
