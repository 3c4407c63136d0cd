"""Two MultiWorkerMirroredStrategy trainers (TF_CONFIG on 127.0.0.1, one process each) sharing one tf.data service
job: in ``distributed_epoch`` mode each consumes a distinct share and together they see every example exactly once.

The dispatcher and two workers run in this process (real servers, no extra TensorFlow start-up); the trainers are
subprocesses that iterate ``strategy.distribute_datasets_from_function(make_dataset(..., input_context=ctx,
service=...))`` for one epoch (no fit: the input side is what is shared) and print the example ids they received.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter

import pytest

from medtf.data import make_dataset
from medtf.data import service as service_lib
from tests.conftest import TEST_SALT, run_medtf
from tests.training.test_multiworker import REPO, free_ports

TRAINER = textwrap.dedent("""
    import json, sys
    from medtf.training.strategy import make_strategy
    strategy = make_strategy("multiworker")  # before any other TensorFlow work
    from medtf.data import make_dataset

    shards, address, modes = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    result = {"replicas": strategy.num_replicas_in_sync}
    for mode in modes:
        def dataset_fn(context, mode=mode):
            return make_dataset(shards, "train", batch_size=2, training=True, repeat=False, drop_remainder=False,
                                seed=5, output="dict", input_context=context, service=address, service_mode=mode,
                                service_timeout=30)
        ids = []
        for batch in strategy.distribute_datasets_from_function(dataset_fn):
            for local in strategy.experimental_local_results(batch["example_id"]):
                ids += [i.decode() for i in local.numpy()]
        result[mode] = ids
    print("RESULT " + json.dumps(result))
""")


@pytest.fixture
def in_process_service():
    """A real dispatcher and two real workers in this process: the dispatcher's address."""
    from tensorflow.data.experimental import service as tfds

    dispatcher = tfds.DispatchServer()
    workers = [tfds.WorkerServer(tfds.WorkerConfig(dispatcher_address=dispatcher.target.removeprefix("grpc://")))
               for _ in range(2)]
    assert service_lib.wait_for_workers(dispatcher.target, timeout=30, minimum=2) == 2
    yield dispatcher.target
    for server in workers + [dispatcher]:
        server._stop()


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory):
    """lgg-mri, 4 patients x ~40 slices of 32x32 in ~20 shard files: enough that the first trainer to register
    cannot take the whole epoch into its read-ahead before the second one asks (the split is first come, first
    served)."""
    from medtf.synth.lgg_mri import generate_lgg_mri

    root = tmp_path_factory.mktemp("multiworker_shards")
    generate_lgg_mri(root / "src", cases=4, seed=3, num_slices=40, size=32)
    assert run_medtf("convert", "lgg-mri", "--input", root / "src", "--output", root / "lgg", "--split",
                     "0.5,0.25,0.25", "--id-salt", TEST_SALT, "--shard-size-mb", "0.02") == 0
    return root / "lgg"


def run_trainers(shards, address: str, modes: list[str], timeout: float = 150.0) -> list[dict]:
    """Worker 0 and 1 of one TF_CONFIG cluster iterate one epoch per mode; their RESULT dicts."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "TF_CONFIG"}
    procs = []
    for index in range(2):
        env = {**base, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
               "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
        procs.append(subprocess.Popen([sys.executable, "-c", TRAINER, str(shards), address, ",".join(modes)],
                                      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err[-4000:]
            results.append(json.loads(out.split("RESULT ", 1)[1].splitlines()[0]))
    finally:
        for proc in procs:  # a trainer left waiting on a collective after the other failed
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


@pytest.mark.slow  # two TensorFlow trainer processes + a 4-patient conversion: ~75 s on the shared 2 cores
def test_two_multiworker_trainers_share_one_job(in_process_service, many_shards):
    local = Counter(i.decode() for b in make_dataset(many_shards, "train", batch_size=4, training=True,
                                                     repeat=False, drop_remainder=False, seed=5, output="dict")
                    for i in b["example_id"].numpy())
    assert len(local) >= 60 and set(local.values()) == {1}  # one pass, each example once

    first, second = run_trainers(many_shards, in_process_service, ["distributed_epoch", "parallel_epochs"])
    assert first["replicas"] == second["replicas"] == 2
    # distributed_epoch: distinct shares (no example reaches both trainers) whose union is one pass of the data.
    a, b = Counter(first["distributed_epoch"]), Counter(second["distributed_epoch"])
    print("distributed_epoch shares:", sum(a.values()), sum(b.values()))
    assert a and b, (a, b)  # both trainers received a share
    assert not set(a) & set(b)
    assert a + b == local
    # parallel_epochs: each of the 2 workers reads the whole split; the trainers share that stream.
    a, b = Counter(first["parallel_epochs"]), Counter(second["parallel_epochs"])
    print("parallel_epochs shares:", sum(a.values()), sum(b.values()))
    assert a + b == Counter({k: 2 * v for k, v in local.items()})
