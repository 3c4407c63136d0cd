"""make_dataset through a real tf.data service (dispatcher + 2 worker processes on localhost): same examples as
the local pipeline, stateless per-example seeds, clear errors without workers, the experiment key."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from medtf.data import make_dataset
from medtf.data import service as service_lib
from medtf.data.service import DataServiceError

TRANSFORMS = [{"name": "random_flip", "prob": 0.5}, {"name": "random_brightness_contrast"}]


def _reference_images(shards, seed: int) -> dict[str, np.ndarray]:
    """example_id -> the image augmented with `example_seed(seed, epoch 0, file k, record j)`, computed locally
    from the shard files in manifest order (independently of the service pipeline's reading)."""
    from medtf.data import parsers
    from medtf.data.decoder import decode_example
    from medtf.data.manifest import read_manifest, shard_paths
    from medtf.data.schema import get_schema
    from medtf.transforms import build_transforms

    manifest = read_manifest(shards)
    parse, schema = parsers.parse_fn("lgg-mri", True, manifest), get_schema("lgg-mri")
    transform = build_transforms(TRANSFORMS)
    files = [str(p) for p in shard_paths(shards, manifest, "train")]

    def augment(k, j, record):
        example = transform(parse(decode_example(record, schema)), service_lib.example_seed(seed, 0, k, j))
        return example["example_id"], example["image"]

    records = tf.data.Dataset.from_tensor_slices(files).enumerate().flat_map(
        lambda k, path: tf.data.TFRecordDataset(path).enumerate().map(lambda j, record: (k, j, record)))
    return {i.decode(): image for i, image in records.map(augment).as_numpy_iterator()}


def _check_one_epoch(address: str, shards) -> None:
    """One distributed_epoch pass through the service at ``address`` vs the local pipeline and the seed function."""
    from medtf.data.manifest import read_manifest

    manifest = read_manifest(shards)
    assert len(manifest["splits"]["train"]["shards"]) >= 3  # several files: the dispatcher has something to split
    common = dict(batch_size=4, training=True, repeat=False, drop_remainder=False, seed=5, output="dict",
                  transforms=TRANSFORMS)
    local_ids = sorted(i.decode() for b in make_dataset(shards, "train", **common) for i in b["example_id"].numpy())
    remote = list(make_dataset(shards, "train", service=address, service_timeout=30, **common))
    remote_ids = sorted(i.decode() for b in remote for i in b["example_id"].numpy())
    assert len(local_ids) == manifest["splits"]["train"]["num_examples"]
    assert remote_ids == local_ids  # the same multiset: every example exactly once in distributed_epoch mode
    sizes = [b["image"].shape[0] for b in remote]  # batched here, by the trainer
    assert sizes[:-1] == [4] * (len(sizes) - 1) and sum(sizes) == len(local_ids)
    # Each example's augmentation is the stateless function of (seed, epoch, file, record), whichever worker ran it.
    reference = _reference_images(shards, seed=5)
    for batch in remote:
        for example_id, image in zip(batch["example_id"].numpy(), batch["image"].numpy()):
            np.testing.assert_allclose(image, reference[example_id.decode()], rtol=1e-6, atol=1e-6)


@pytest.fixture
def in_process_service() -> str:
    """A real dispatcher and two real workers in this process (no TensorFlow start-up per process): the address."""
    from tensorflow.data.experimental import service as tfds

    dispatcher = tfds.DispatchServer()
    workers = [tfds.WorkerServer(tfds.WorkerConfig(dispatcher_address=dispatcher.target.removeprefix("grpc://")))
               for _ in range(2)]
    assert service_lib.wait_for_workers(dispatcher.target, timeout=30, minimum=2) == 2
    yield dispatcher.target
    for server in workers + [dispatcher]:
        server._stop()


def test_one_epoch_on_two_in_process_workers(in_process_service, service_shards):
    """The default tier's end-to-end check: a real dispatcher and two real workers, in this process."""
    _check_one_epoch(in_process_service, service_shards)


@pytest.mark.slow  # 4-9 s on two shared cores (the default tier keeps the distributed_epoch check)
def test_parallel_epochs_sends_every_example_once_per_worker(in_process_service, service_shards):
    # parallel_epochs: each worker reads the whole split with its own draws, so every example arrives twice,
    # augmented differently (brightness/contrast is continuous).
    both = [(i.decode(), x) for b in make_dataset(service_shards, "train", batch_size=4, training=True,
                                                   repeat=False, drop_remainder=False, seed=5, output="dict",
                                                   transforms=TRANSFORMS,
                                                   service=in_process_service, service_mode="parallel_epochs")
            for i, x in zip(b["example_id"].numpy(), b["image"].numpy())]
    ids = sorted(i for i, _ in both)
    assert ids == sorted(2 * list(_reference_images(service_shards, seed=5)))
    pairs = {}
    for i, x in both:
        pairs.setdefault(i, []).append(x)
    assert all(not np.allclose(a, b) for a, b in pairs.values())


@pytest.mark.slow  # three TensorFlow processes start: ~35 s on two shared cores
def test_one_epoch_on_two_worker_processes(service_factory, service_shards):
    """The same through `medtf data-service dispatcher` + 2 `worker` processes, which then shut down cleanly."""
    svc = service_factory(workers=2)
    _check_one_epoch(svc.address, service_shards)
    assert service_lib.registered_workers(svc.address) == 2
    codes = svc.close()  # SIGTERM to the dispatcher; the workers see its address file go and leave with 0
    assert codes == {"dispatcher": 0, "worker0": 0, "worker1": 0}, {n: svc.log(n)[-2000:] for n in codes}
    assert not svc.address_file.exists()
    assert "2 worker(s) registered" in svc.log("dispatcher")
    assert "removed: the dispatcher stopped" in svc.log("worker0")


def test_no_registered_worker_is_a_clear_error(service_shards):
    dispatcher = tf.data.experimental.service.DispatchServer()
    address = dispatcher.target
    try:
        assert service_lib.registered_workers(address) == 0
        with pytest.raises(DataServiceError, match=rf"no tf.data service worker registered with the dispatcher at "
                                                   rf"{address} within 1 s \(0 registered\)"):
            make_dataset(service_shards, "train", batch_size=2, training=True, service=address, service_timeout=1)
        worker = tf.data.experimental.service.WorkerServer(
            tf.data.experimental.service.WorkerConfig(dispatcher_address=address.removeprefix("grpc://")))
        assert service_lib.wait_for_workers(address, timeout=30) == 1  # the real GetWorkers answer, parsed
        worker._stop()
    finally:
        dispatcher._stop()


def test_unreachable_dispatcher_and_bad_addresses(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataServiceError, match=rf"grpc://localhost:{port} did not answer"):
        service_lib.registered_workers(f"localhost:{port}", timeout=1)
    assert service_lib.normalize_address("node7:5050") == service_lib.normalize_address("grpc://node7:5050")
    for bad in ("node7", "node7:x", "http://node7:80", "node7:70000"):
        with pytest.raises(ValueError, match="tf.data service address"):
            service_lib.normalize_address(bad)
    monkeypatch.delenv(service_lib.ADDRESS_ENV, raising=False)
    with pytest.raises(DataServiceError, match="MEDTF_DATA_SERVICE_FILE"):
        service_lib.resolve_service("auto")
    path = tmp_path / "dispatcher.address"
    monkeypatch.setenv(service_lib.ADDRESS_ENV, str(path))
    with pytest.raises(DataServiceError, match=rf"{path}: no dispatcher address after 0 s"):
        service_lib.resolve_service("auto", timeout=0)
    service_lib.write_address_file(path, "node3:41000")
    assert path.read_text() == "grpc://node3:41000\n" and service_lib.resolve_service("auto") == "grpc://node3:41000"


def test_worker_info_count_from_the_wire_format():
    info = b"\x0a\x0anode1:5051\x10\x01"  # WorkerInfo {address: "node1:5051", field 2: 1}
    message = b"".join(b"\x0a" + bytes([len(info)]) + info for _ in range(3)) + b"\x12\x00\x18\x05"
    assert service_lib._count_field_one(message) == 3 and service_lib._count_field_one(b"") == 0


def test_experiment_key_is_checked(service_shards):
    from medtf.training.config import ConfigError
    from medtf.training.experiment import DataConfig

    def data(**kw):
        return DataConfig.from_dict({"dir": str(service_shards), "batch_size": 2, **kw}, "data")

    assert data().service is None and data().service_mode == "distributed_epoch"
    assert data(service="auto").service == "auto" and data(service="node2:5000").service == "node2:5000"
    with pytest.raises(ConfigError, match=r"data.service: tf.data service address .node2.: expected host:port"):
        data(service="node2")
    with pytest.raises(ConfigError, match="data.service_mode: unknown service mode 'parallel'"):
        data(service_mode="parallel")


def test_python_functions_and_cache_are_refused(service_shards):
    with pytest.raises(ValueError, match="service: cache is not supported"):
        make_dataset(service_shards, "train", batch_size=2, training=True, cache="memory", service="localhost:1")
    dataset = tf.data.Dataset.range(3).map(lambda x: tf.numpy_function(lambda v: v, [x], tf.int64))
    with pytest.raises(ValueError, match="cannot run"):
        service_lib.check_graph_runs_remotely(dataset)
    service_lib.check_graph_runs_remotely(tf.data.Dataset.range(3).map(lambda x: x + 1))


def test_cli_errors_name_the_file(tmp_path, capsys):
    from tests.conftest import run_medtf

    missing = tmp_path / "nowhere.address"
    assert run_medtf("data-service", "worker", "--address-file", missing, "--wait", "0.2") == 2
    err = capsys.readouterr().err
    assert f"medtf data-service worker: {missing}: no dispatcher address after 0 s" in err


def test_seed_none_draws_a_fresh_seed_like_the_local_pipeline(monkeypatch):
    """seed=None used to become 0 on the service; now one trainer draws a new seed per run (as the local pipeline's
    unseeded ops), trainers sharing a job agree through the SLURM job, and elsewhere they are refused."""
    assert service_lib.resolve_seed(7, shared=True) == 7 and service_lib.resolve_seed(0, shared=False) == 0
    draws = {service_lib.resolve_seed(None, shared=False) for _ in range(4)}
    assert len(draws) > 1 and all(0 <= d < 2**31 for d in draws)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    first = service_lib.resolve_seed(None, shared=True)
    assert first == service_lib.resolve_seed(None, shared=True) and 0 <= first < 2**31  # every trainer of the job
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert service_lib.resolve_seed(None, shared=True) != first  # a requeued start draws anew
    monkeypatch.delenv("SLURM_JOB_ID")
    with pytest.raises(DataServiceError, match=r"seed=None with several trainers .* set one \(the experiment.s seed"):
        service_lib.resolve_seed(None, shared=True)


@pytest.mark.slow  # ~3-6 s: two passes through an in-process service
def test_seed_none_on_the_service_is_not_seed_zero(in_process_service, service_shards):
    common = dict(batch_size=4, training=True, repeat=False, drop_remainder=False, output="dict",
                  transforms=TRANSFORMS, service=in_process_service, service_timeout=30)
    zero = _reference_images(service_shards, seed=0)
    runs = [{i.decode(): x for b in make_dataset(service_shards, "train", seed=None, **common)
             for i, x in zip(b["example_id"].numpy(), b["image"].numpy())} for _ in range(2)]
    assert sorted(runs[0]) == sorted(runs[1]) == sorted(zero)  # every example once per run
    # brightness/contrast is continuous: a fresh seed changes (almost) every image, vs seed 0 and between runs
    assert sum(np.allclose(runs[0][i], zero[i]) for i in zero) <= 1
    assert sum(np.allclose(runs[0][i], runs[1][i]) for i in zero) <= 1
