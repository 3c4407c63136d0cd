"""Augmented volumes/s delivered to one trainer by the tf.data service with 0 (in-process), 1 and 2 workers.

Data: ``--volumes`` synthetic brachy CTs of ``--size``^3 (``pipeline_data.synthetic_ct``: body, catheters) as
brachy-ct shards of ~``--shard-mb`` MB each (several files, so the dispatcher has something to split), the
**elastic row** of ``benchmarks/pipeline.py`` (z-score, flips, rotation, noise, gamma, elastic; each p 0.5).

Each setting is a fresh trainer process pinned to core 0 (``os.sched_setaffinity``) that only consumes
``make_dataset(training=True, seed=0, batch_size=2)`` batches (no model): warm-up ``--warmup`` batches, then at
least ``--seconds`` s and ``--min-volumes`` volumes. With workers, a dispatcher (pinned with the trainer: it only
hands out file indices) and N ``medtf data-service worker`` processes, worker i pinned to core ``(i + 1) % cores``
with ``taskset``. Reported: delivered volumes/s, the trainer's peak RSS (VmHWM) and the workers' CPU seconds per
volume. On a 2-core machine the second worker shares core 0 with the trainer: say so when quoting the 2-worker row.

Usage::

    nice -n 5 .venv/bin/python benchmarks/data_service.py [--size 64] [--volumes 16] [--json out.json]

The paper estimate of 1-core workers per GPU: volumes the GPU consumes per second (``--batch`` / ``--step-seconds``,
a training step on ``--target-size``^3 volumes) times the workers' CPU seconds per volume, scaled from ``--size``^3
to ``--target-size``^3 by the voxel count (the transforms are linear in voxels). ``--from-json OUT`` reprints the
table and the estimate of a saved run without measuring again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline_data as data  # noqa: E402

ENV = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
       "PYTHONUNBUFFERED": "1"}


def prepare(workdir: Path, volumes: int, size: int, shard_mb: float) -> Path:
    from medtf.data.schema import BRACHY_CT
    from medtf.data.writer import write_record_file

    out = workdir / f"shards{size}"
    stamp = out / "params.json"
    params = {"volumes": volumes, "size": size, "shard_mb": shard_mb}
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    records = [data._brachy_record(*data.synthetic_ct(rng, size), i) for i in range(min(volumes, 8))]
    work = workdir / "work.tfrecord"
    write_record_file(work, records)
    data._write_shards(out / "shards", BRACHY_CT, work, volumes, shard_mb)
    work.unlink()
    stamp.write_text(json.dumps(params))
    return out / "shards"


def _vm(field: str, pid: str = "self") -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(field + ":"))) / 1024


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child(args) -> None:
    """The trainer: consume batches, print one JSON line."""
    os.sched_setaffinity(0, {0})
    from medtf.data import make_dataset

    ds = make_dataset(args.shards, "train", batch_size=2, training=True, seed=0, output="model",
                      transforms=data.medtf_transforms("elastic"), service=args.service or None,
                      service_timeout=120)
    it = iter(ds)
    for _ in range(args.warmup):
        next(it)
    rss_before = _vm("VmRSS")
    start, volumes = time.perf_counter(), 0
    while time.perf_counter() - start < args.seconds or volumes < args.min_volumes:
        x, _ = next(it)
        volumes += int(x.shape[0])
    elapsed = time.perf_counter() - start
    print("RESULT " + json.dumps({"volumes": volumes, "seconds": elapsed, "vol_per_s": volumes / elapsed,
                                  "peak_rss_mb": _vm("VmHWM"), "rss_mb": rss_before,
                                  "shape": list(x.shape)}))


def _medtf(*args, core: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-m", "medtf.cli.main", "data-service",
                             *map(str, args)], cwd=ROOT, env=ENV, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def run_setting(shards: Path, workers: int, args, workdir: Path) -> dict:
    from medtf.data.service import read_address_file, wait_for_workers

    cores = data.usable_cores()
    procs, service = [], ""
    try:
        if workers:
            service_dir = workdir / f"service{workers}"
            shutil.rmtree(service_dir, ignore_errors=True)
            address_file = service_dir / "dispatcher.address"
            procs.append(_medtf("dispatcher", "--work-dir", service_dir, "--host", "localhost", core=0,
                                log=workdir / f"dispatcher{workers}.log"))
            service = read_address_file(address_file, timeout=120)
            for i in range(workers):
                procs.append(_medtf("worker", "--address-file", address_file, "--host", "localhost",
                                    core=(i + 1) % cores, log=workdir / f"worker{workers}_{i}.log"))
            wait_for_workers(service, timeout=120, minimum=workers)
        cpu_before = [_cpu_seconds(p.pid) for p in procs[1:]]
        proc = subprocess.run([sys.executable, __file__, "--child", "--shards", str(shards), "--service", service,
                               "--warmup", str(args.warmup), "--seconds", str(args.seconds),
                               "--min-volumes", str(args.min_volumes)],
                              env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"trainer failed: {proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
        # Worker CPU includes the warm-up and what they prefetched: an upper bound per delivered volume.
        worker_cpu = sum(_cpu_seconds(p.pid) for p in procs[1:]) - sum(cpu_before)
        result.update(workers=workers, worker_cpu_s=worker_cpu)
        return result
    finally:
        for p in reversed(procs):  # the dispatcher last: it removes the address file the workers follow
            p.terminate()
            p.wait(60)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/bench_data_service")
    parser.add_argument("--size", type=int, default=64, help="volume edge (default 64; 128 as issue #17 asks)")
    parser.add_argument("--volumes", type=int, default=16)
    parser.add_argument("--shard-mb", type=float, default=None, help="default: ~4 volumes per shard file")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--min-volumes", type=int, default=16)
    parser.add_argument("--step-seconds", type=float, default=0.25,
                        help="GPU step time of the brachy 3D U-Net on --target-size^3 for the estimate (default "
                             "0.25: an assumption, not a measurement; RESULTS.md has CPU figures only)")
    parser.add_argument("--batch", type=int, default=2, help="volumes per training step for the estimate")
    parser.add_argument("--target-size", type=int, default=128, help="volume edge of the estimate (default 128)")
    parser.add_argument("--from-json", default=None, help="reprint a saved run (--json) instead of measuring")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shards", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--service", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if args.from_json:
        report(json.loads(Path(args.from_json).read_text())["rows"], args)
        return 0
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    shard_mb = args.shard_mb or 4 * args.size ** 3 * 3 / 2**20  # int16 image + 2 uint8 masks per voxel
    shards = prepare(workdir, args.volumes, args.size, shard_mb)
    rows = [run_setting(shards, n, args, workdir) for n in args.workers]
    estimate = report(rows, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "estimate": estimate, "args": vars(args)}, indent=2))
    return 0


def report(rows: list[dict], args) -> dict | None:
    print(f"{'workers':>7} {'vol/s':>7} {'peak RSS MB':>11} {'worker CPU s/vol':>16}")
    for r in rows:
        per_volume = r["worker_cpu_s"] / r["volumes"] if r["workers"] else float("nan")
        print(f"{r['workers']:>7} {r['vol_per_s']:>7.2f} {r['peak_rss_mb']:>11.0f} {per_volume:>16.3f}")
    served = [r for r in rows if r["workers"]]
    if not served:
        return None
    cpu_per_volume = max(r["worker_cpu_s"] / r["volumes"] for r in served)  # the costlier measurement
    scaled = cpu_per_volume * (args.target_size / args.size) ** 3
    need = args.batch / args.step_seconds
    estimate = {"volumes_per_s_needed": need, "worker_cpu_s_per_volume": cpu_per_volume,
                "worker_cpu_s_per_target_volume": scaled, "workers_per_gpu": need * scaled}
    print(f"estimate: a GPU at {args.step_seconds} s/step x {args.batch} volumes of {args.target_size}^3 consumes "
          f"{need:.2f} vol/s; a worker spends {cpu_per_volume:.3f} CPU s per {args.size}^3 volume = {scaled:.3f} s "
          f"per {args.target_size}^3 -> {estimate['workers_per_gpu']:.1f} one-core workers per GPU")
    return estimate


if __name__ == "__main__":
    sys.exit(main())
