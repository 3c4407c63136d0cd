"""Benchmark medtf's tf.data pipeline + in-graph augmentation side by side with MONAI and a generator baseline.

One run (``make bench``; ~6-8 minutes on 2 cores, ``--quick`` ~2) measures what issues #4 and #11 ask:

1. **3D side by side** (issue #11): the same transform definitions on the same 32 synthetic 128^3 CT volumes
   (image + uint8 mask), batch 2, volumes/s in steady state and the peak PSS of the whole process tree (workers
   included: ``/proc/<pid>/smaps_rollup`` of the child and all its descendants, sampled every 0.1 s):
   - medtf: ``make_dataset(training=True, seed=0)`` over TFRecord shards, streaming and ``cache="memory"``;
   - MONAI (``pipeline_monai.py`` in the benchmark venv ``.venv-bench``): ``Dataset`` and ``CacheDataset``,
     ``DataLoader(num_workers=0 and = usable cores)``;
   - the brachytherapy study's generator + volumentations-3D, in a pool of as many worker processes as usable
     cores, so no ratio compares two cores with one.
   Rows ``base`` (z-score, flips, rotation +-15 deg about one axis, noise, gamma, each p 0.5) and ``elastic`` (the
   same + elastic p 0.5). Each setting runs in a fresh process: warm-up (4 volumes; one epoch for medtf's cache),
   then >= 16 volumes and >= ``--seconds`` (a slow setting stops after ``--max-seconds`` with >= 4 volumes timed).
   Targets: medtf >= 2.5x (base) / >= 4x (elastic) MONAI's best
   setting, with peak PSS no higher than that setting's.
2. **Memory** (issue #4): peak RSS (``VmHWM``) of a fresh process streaming one augmented epoch over a small and a
   10x larger shard set (256 MB shards) for a few ``make_dataset`` settings; target ratio <= 1.1.
3. **2D**, 256x256x3 slices with a mask: medtf vs a generator + albumentations with the same transforms.
4. **Hot spots**: wall and CPU milliseconds per call of each medtf transform of the elastic row on one volume.

medtf children run with ``TF_ENABLE_ONEDNN_OPTS=1``. Seeds are fixed; MONAI and the baselines draw with their own
generators as the libraries do.

Usage::

    .venv/bin/python benchmarks/pipeline.py [--workdir /tmp/bench_pipe] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline_data as data  # noqa: E402  (synthetic shards + .npy, transform definitions; no TensorFlow)

TARGETS = {"base": 2.5, "elastic": 4.0}   # x MONAI's best setting (issue #11)
MEMORY_TARGET = 1.1
BATCH = 2
CHILD_ENV = {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def machine_info() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    features = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    return {"cpu": cpu, "features": features, "usable_cores": data.usable_cores(), "python": platform.python_version(),
            "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "loadavg": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M")}


# ---------------------------------------------------------------- process-tree PSS
def _tree(pid: int) -> list[int]:
    pids, i = [pid], 0
    while i < len(pids):
        try:
            for task in os.listdir(f"/proc/{pids[i]}/task"):
                with open(f"/proc/{pids[i]}/task/{task}/children") as f:
                    pids += [int(c) for c in f.read().split()]
        except OSError:
            pass
        i += 1
    return pids


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0


def tree_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds so far of process ``pid`` (default: this one) and all its descendants."""
    pids, i, ticks = [pid or os.getpid()], 0, 0
    while i < len(pids):
        try:
            with open(f"/proc/{pids[i]}/stat") as f:
                ticks += sum(int(v) for v in f.read().rsplit(")", 1)[1].split()[11:13])
            for task in os.listdir(f"/proc/{pids[i]}/task"):
                with open(f"/proc/{pids[i]}/task/{task}/children") as f:
                    pids += [int(c) for c in f.read().split()]
        except OSError:
            pass
        i += 1
    return ticks / os.sysconf("SC_CLK_TCK")


def run_child(cmd: list[str], env: dict | None = None, interval: float = 0.1) -> dict:
    """Run ``cmd``, sample the PSS of its process tree, return its last JSON line + ``peak_pss_mb``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, cwd=ROOT)
    peak, processes, done = [0], [0], threading.Event()

    def sample():
        while not done.wait(interval):
            pids = _tree(proc.pid)
            peak[0] = max(peak[0], sum(_pss_kb(p) for p in pids))
            processes[0] = max(processes[0], len(pids))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    done.set()
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(peak_pss_mb=peak[0] / 1024, processes=processes[0])
    return result


# ---------------------------------------------------------------- children
def timed(iterator, warmup: int, min_volumes: int, seconds: float, max_seconds: float = 1e9) -> dict:
    """Steady-state volumes/s of an iterator of ``(image, mask)`` batches: after ``warmup`` volumes, at least
    ``min_volumes`` and ``seconds``, but stop after ``max_seconds`` once 4 volumes are timed (slow settings)."""
    t_start, seen = time.perf_counter(), 0
    while seen < warmup:
        seen += len(next(iterator)[0])
    warm = time.perf_counter() - t_start
    count, t0, cpu0 = 0, time.perf_counter(), tree_cpu_seconds()
    while count < min_volumes or time.perf_counter() - t0 < seconds:
        if count >= 4 and time.perf_counter() - t0 >= max_seconds:
            break
        batch = next(iterator)
        count += len(batch[0])
    batch[0].numpy()
    elapsed = time.perf_counter() - t0
    return {"volumes_per_s": count / elapsed, "volumes": count, "seconds": elapsed, "warmup_done_seconds": warm,
            "cpu_ms_per_volume": (tree_cpu_seconds() - cpu0) / count * 1000}


def _own_pss_mb() -> float:
    return _pss_kb(os.getpid()) / 1024


def _medtf_child(args) -> None:
    import tensorflow as tf

    from medtf.data import make_dataset  # noqa: F401  (imports counted in import_pss_mb)
    from medtf.transforms import geometry

    import_pss = _own_pss_mb()
    cache = None if args.cache == "none" else args.cache
    dataset = data.medtf_dataset(args.data, args.row, batch_size=BATCH, cache=cache)
    volumes = len(list(Path(args.npy).glob("*_image.npy"))) if args.npy else 0
    warmup = max(args.warmup, volumes) if cache else args.warmup  # the first epoch fills the cache
    result = timed(iter(dataset), warmup, args.min_volumes, args.seconds, args.max_seconds)
    result.update(tensorflow=tf.__version__, xla_warp=geometry.XLA_WARP, import_pss_mb=import_pss)
    print(json.dumps(result), flush=True)


def _generator_child(args) -> None:
    pool = data.baseline_pool(args.row, args.workers)  # forked before TensorFlow is imported
    import tensorflow  # noqa: F401

    import_pss = _own_pss_mb()
    dataset = data.baseline_3d_dataset(args.npy, pool, args.workers, batch_size=BATCH)
    result = timed(((b["image"], b["mask"]) for b in dataset), args.warmup, args.min_volumes, args.seconds,
                   args.max_seconds)
    pool.terminate()
    result["import_pss_mb"] = import_pss
    print(json.dumps(result), flush=True)


MEMORY_MODES = {  # label -> make_dataset keyword arguments (streaming, transforms of the base row)
    "training, default buffers": {"training": True},
    "evaluation (no shuffle)": {"training": False},
}


def _peak_rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def _stream_child(args) -> None:
    dataset = data.medtf_dataset(args.data, "base", batch_size=1, repeat=False, **MEMORY_MODES[args.mode])
    n, t0, trace = 0, time.perf_counter(), {}
    for _ in dataset:
        n += 1
        if n & (n - 1) == 0:  # 1, 2, 4, 8, ...: how the peak grows along the epoch
            trace[n] = round(_peak_rss_mb())
    print(json.dumps({"examples": n, "seconds": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb(),
                      "trace": trace}), flush=True)


# ---------------------------------------------------------------- parent
def side_by_side(paths, args, monai_python: Path | None) -> list[dict]:
    cores = data.usable_cores()
    me = [sys.executable, str(Path(__file__).resolve())]
    timing = ["--warmup", str(args.warmup), "--min-volumes", str(args.min_volumes), "--seconds", str(args.seconds),
              "--max-seconds", str(args.max_seconds)]
    results = []
    for row in args.rows:
        settings = [("medtf", "streaming", me + ["--_child", "medtf", "--cache", "none"]),
                    ("medtf", 'cache="memory"', me + ["--_child", "medtf", "--cache", "memory"])]
        if monai_python is not None:
            for dataset in ("Dataset", "CacheDataset"):
                for workers in sorted({0, cores}):
                    settings.append(("MONAI", f"{dataset}, {workers} workers",
                                     [str(monai_python), str(Path(__file__).with_name("pipeline_monai.py")),
                                      "--dataset", dataset, "--workers", str(workers)]))
        settings.append(("generator", f"volumentations, {cores} worker processes",
                         me + ["--_child", "generator", "--workers", str(cores)]))
        for library, setting, cmd in settings:
            common = ["--row", row, "--npy", str(paths["npy3d"])] + timing
            if library == "medtf":
                common += ["--data", str(paths["shards3d"])]
            result = run_child(cmd + common, CHILD_ENV if library != "MONAI" else {"OMP_NUM_THREADS": str(cores)})
            result.update(row=row, library=library, setting=setting)
            results.append(result)
            print(f"  {row:<8} {library:<9} {setting:<36} {result['volumes_per_s']:6.2f} vol/s  "
                  f"{result['cpu_ms_per_volume']:5.0f} CPU ms/vol  peak PSS {result['peak_pss_mb']:6.0f} MB "
                  f"({result['processes']} processes)", flush=True)
    return results


def side_by_side_table(results: list[dict]) -> list[str]:
    lines = ["| row | library | setting | vol/s | CPU ms / volume | peak PSS (MB) | of which after imports | "
             "medtf vs MONAI best |", "|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for row in dict.fromkeys(r["row"] for r in results):
        rows = [r for r in results if r["row"] == row]
        monai = [r for r in rows if r["library"] == "MONAI"]
        best = max(monai, key=lambda r: r["volumes_per_s"]) if monai else None
        for r in rows:
            ratio = f"{r['volumes_per_s'] / best['volumes_per_s']:.2f}x" if best and r["library"] == "medtf" else ""
            mark = " (best)" if r is best else ""
            lines.append(f"| {row} | {r['library']} | {r['setting']}{mark} | {r['volumes_per_s']:.2f} | "
                         f"{r['cpu_ms_per_volume']:.0f} | {r['peak_pss_mb']:.0f} | {r.get('import_pss_mb', 0):.0f} | "
                         f"{ratio} |")
        if best:
            for r in (r for r in rows if r["library"] == "medtf"):
                ratio = r["volumes_per_s"] / best["volumes_per_s"]
                ok_rate, ok_mem = ratio >= TARGETS[row], r["peak_pss_mb"] <= best["peak_pss_mb"]
                verdicts.append(
                    f"- {row}, medtf {r['setting']}: {ratio:.2f}x MONAI's best ({best['setting']}; target "
                    f">= {TARGETS[row]}x: {'met' if ok_rate else 'NOT met'}), peak PSS {r['peak_pss_mb']:.0f} vs "
                    f"{best['peak_pss_mb']:.0f} MB ({'met' if ok_mem else 'NOT met'})")
    return lines + [""] + verdicts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="keep data here (reused when present)")
    parser.add_argument("--volumes", type=int, default=32, help="distinct 3D volumes (default 32)")
    parser.add_argument("--size", type=int, default=128, help="3D volume edge (default 128)")
    parser.add_argument("--seconds", type=float, default=8.0, help="minimum timed seconds per setting")
    parser.add_argument("--warmup", type=int, default=4, help="volumes before timing (medtf's cache: one epoch)")
    parser.add_argument("--min-volumes", type=int, default=16, help="minimum timed volumes per setting")
    parser.add_argument("--max-seconds", type=float, default=40.0,
                        help="stop timing a slow setting after this long once 4 volumes are timed")
    parser.add_argument("--rows", nargs="+", default=["base", "elastic"], choices=["base", "elastic"])
    parser.add_argument("--mem-small", type=int, default=24, help="volumes in the small memory set (large = 10x)")
    parser.add_argument("--slices", type=int, default=32, help="distinct 2D slices")
    parser.add_argument("--monai-python", type=Path, default=ROOT / ".venv-bench" / "bin" / "python",
                        help="interpreter of the benchmark venv with torch + monai (make bench creates it)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["side", "memory", "2d", "ops"])
    parser.add_argument("--json", type=Path, help="also write every result here")
    parser.add_argument("--quick", action="store_true", help="short timings and small sets, to check the script")
    parser.add_argument("--_child", choices=["medtf", "generator"], help=argparse.SUPPRESS)
    parser.add_argument("--_stream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--row", default="base", help=argparse.SUPPRESS)
    parser.add_argument("--cache", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--npy", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default=next(iter(MEMORY_MODES)), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child == "medtf":
        return _medtf_child(args) or 0
    if args._child == "generator":
        return _generator_child(args) or 0
    if args._stream:
        return _stream_child(args) or 0
    if args.quick:  # a smoke run of every part (~3 min): 8 volumes of 64^3, short timings
        args.seconds, args.warmup, args.min_volumes, args.mem_small = 1.0, 4, 4, 4
        args.volumes, args.size, args.slices = min(args.volumes, 8), min(args.size, 64), min(args.slices, 16)

    t_start = time.perf_counter()
    info = machine_info()
    print(f"machine: {info}", flush=True)
    monai_python = args.monai_python if args.monai_python.is_file() else None
    if monai_python is None:
        print(f"no benchmark venv at {args.monai_python}: MONAI rows skipped (`make bench` creates it)", flush=True)
    tmp = None
    workdir = args.workdir
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="medtf-bench-pipe-")
        workdir = Path(tmp.name)
    t0 = time.perf_counter()
    paths = data.prepare(workdir, volumes=args.volumes, size=args.size, mem_small=args.mem_small,
                         slices=args.slices)
    print(f"data ready in {time.perf_counter() - t0:.1f} s in {workdir}", flush=True)

    report = {"machine": info, "command": " ".join(sys.argv)}
    if "side" not in args.skip:
        report["side_by_side"] = side_by_side(paths, args, monai_python)
    memory = []
    if "memory" not in args.skip:
        for mode in MEMORY_MODES:
            sizes = []
            for key in ("mem_small", "mem_large"):
                result = run_child([sys.executable, str(Path(__file__).resolve()), "--_stream", "--data",
                                    str(paths[key]), "--mode", mode], CHILD_ENV)
                sizes.append(result)
            print(f"  memory, {mode}: small {sizes[0]}, large {sizes[1]}", flush=True)
            memory.append((mode, *sizes))
        report["memory"] = [{"mode": m, "small": s, "large": lg} for m, s, lg in memory]
    if "2d" not in args.skip or "ops" not in args.skip:
        os.environ.update(CHILD_ENV)  # before TensorFlow is imported in this process
    if "2d" not in args.skip:
        medtf_2d = timed(((b[0], b[1]) for b in data.medtf_dataset(paths["shards2d"], "2d", batch_size=32,
                                                                     shuffle_buffer=256)),
                         64, 128, args.seconds)["volumes_per_s"]
        base_2d = timed(((b["image"][None], b["mask"]) for b in data.baseline_2d_dataset(paths["npy2d"])),
                        4, 64, args.seconds)["volumes_per_s"]
        print(f"  2D   medtf {medtf_2d:.1f} slices/s, albumentations generator {base_2d:.1f} slices/s", flush=True)
        report["2d"] = {"medtf": medtf_2d, "albumentations": base_2d}
    if "ops" not in args.skip:
        costs = data.op_costs(args.size)
        report["ops_ms"] = costs
        print("  per-op (wall ms, CPU ms) on one volume: "
              + ", ".join(f"{k} {w:.1f}/{c:.1f}" for k, (w, c) in costs.items()), flush=True)

    total = time.perf_counter() - t_start
    print(f"\n### Side by side, {args.volumes} volumes of {args.size}^3, batch {BATCH}, "
          f"{data.usable_cores()} usable cores ({info['cpu']}), load average at start {info['loadavg']}\n")
    if "side_by_side" in report:
        print("\n".join(side_by_side_table(report["side_by_side"])))
    if memory:
        print("\n| peak RSS, one epoch, small -> 10x larger shard set | small | large | ratio | <= 1.1? |")
        print("|---|---|---|---|---|")
        for mode, small, large in memory:
            ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
            print(f"| {mode} ({small['examples']} -> {large['examples']} volumes) | {small['peak_rss_mb']:.0f} MB | "
                  f"{large['peak_rss_mb']:.0f} MB | {ratio:.3f} | {'yes' if ratio <= MEMORY_TARGET else '**no**'} |")
        for mode, small, large in memory:
            print(f"peak RSS along the large epoch ({mode}), volumes: MB = {large['trace']}")
    if "2d" in report:
        print(f"\n2D 256x256x3 {data.ROWS['2d']} (batch 32): medtf {report['2d']['medtf']:.1f} slices/s, "
              f"albumentations generator {report['2d']['albumentations']:.1f} slices/s")
    if "ops_ms" in report:
        print("\n| transform (one 3D volume + mask, p 1, tf.function) | wall ms | CPU ms |\n|---|---|---|")
        print("\n".join(f"| {k} | {w:.1f} | {c:.1f} |" for k, (w, c) in report["ops_ms"].items()))
    report.update(total_seconds=total, loadavg_end=os.getloadavg())
    print(f"\nwhole benchmark: {total:.0f} s; load average at the end: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
