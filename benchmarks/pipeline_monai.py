"""MONAI side of `benchmarks/pipeline.py`: the same augmentation rows on the same volumes, volumes/s of a DataLoader.

Runs in the benchmark venv (``make bench`` creates ``.venv-bench`` from ``benchmarks/requirements-monai.txt``:
PyTorch CPU + MONAI, never the main lock) as a child of ``pipeline.py``, which samples the PSS of this process and
its DataLoader workers. Prints one JSON line.

Transforms (``--row base``), dictionary versions on ``image`` (float32) and ``mask``:
``LoadImaged`` (``.npy``, int16 HU / uint8) -> ``EnsureChannelFirstd`` -> ``NormalizeIntensityd`` (z-score over the
volume) -> ``RandFlipd`` x3 (one per spatial axis, p 0.5) -> ``RandRotated(range_x=15 deg, p 0.5)`` (rotation in the
plane of spatial axes 1 and 2, bilinear image, nearest mask, zero padding) -> [``--row elastic``:
``Rand3DElasticd(sigma_range, magnitude_range, p 0.5)``, bilinear/nearest, zero padding] ->
``RandGaussianNoised(std 0.1, sample_std=False, p 0.5)`` -> ``RandAdjustContrastd(gamma 0.7-1.5, p 0.5)``.
``Dataset`` runs them all per item; ``CacheDataset`` caches the output of the deterministic prefix (load, channel,
z-score) in memory before the loop (not timed) and copies a cached item for the random part, as MONAI does.

Usage (normally through ``pipeline.py``)::

    .venv-bench/bin/python benchmarks/pipeline_monai.py --npy DIR --row base --dataset Dataset --workers 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

# Rand3DElasticd parameters chosen to match medtf ``random_elastic(grid=8, magnitude=3.0)`` (see
# ``pipeline_data.ELASTIC``): Gaussian-smoothed uniform noise with sigma 7-9 voxels has the same correlation length
# (RMS displacement / RMS displacement gradient ~11 voxels) and, at magnitude 550-750, the same RMS displacement
# (~2.4 voxels) as medtf's 8^3 control points with N(0, 3^2) displacements upsampled bicubically.
ELASTIC_SIGMA, ELASTIC_MAGNITUDE = (7.0, 9.0), (550.0, 750.0)
ROTATE_DEG, NOISE_STD, GAMMA = 15.0, 0.1, (0.7, 1.5)


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


def transforms(row: str):
    from monai.transforms import (
        Compose, EnsureChannelFirstd, LoadImaged, NormalizeIntensityd, Rand3DElasticd, RandAdjustContrastd,
        RandFlipd, RandGaussianNoised, RandRotated)

    keys = ["image", "mask"]
    deterministic = [LoadImaged(keys, reader="NumpyReader", image_only=True),
                     EnsureChannelFirstd(keys, channel_dim="no_channel"),
                     NormalizeIntensityd("image")]
    random = [RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(3)]
    random.append(RandRotated(keys, range_x=math.radians(ROTATE_DEG), prob=0.5, mode=("bilinear", "nearest"),
                              padding_mode="zeros"))
    if row == "elastic":
        random.append(Rand3DElasticd(keys, sigma_range=ELASTIC_SIGMA, magnitude_range=ELASTIC_MAGNITUDE, prob=0.5,
                                     mode=("bilinear", "nearest"), padding_mode="zeros"))
    random += [RandGaussianNoised("image", prob=0.5, std=NOISE_STD, sample_std=False),
               RandAdjustContrastd("image", prob=0.5, gamma=GAMMA)]
    return Compose(deterministic), Compose(random)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--npy", type=Path, required=True, help="folder of caseNNN_image.npy / caseNNN_mask.npy")
    parser.add_argument("--row", choices=["base", "elastic"], default="base")
    parser.add_argument("--dataset", choices=["Dataset", "CacheDataset"], default="Dataset")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=4, help="volumes before timing")
    parser.add_argument("--min-volumes", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0, help="minimum timed seconds")
    parser.add_argument("--max-seconds", type=float, default=40.0, help="stop after this once 4 volumes are timed")
    args = parser.parse_args(argv)

    t_start = time.perf_counter()
    import torch
    from monai.data import CacheDataset, DataLoader, Dataset
    from monai.transforms import Compose
    from monai.utils import set_determinism

    with open("/proc/self/smaps_rollup") as f:  # the process after its imports (torch + MONAI)
        import_pss = next(int(line.split()[1]) for line in f if line.startswith("Pss:")) / 1024
    set_determinism(seed=0)
    cases = sorted(str(p)[: -len("_image.npy")] for p in args.npy.glob("*_image.npy"))
    items = [{"image": c + "_image.npy", "mask": c + "_mask.npy"} for c in cases]
    deterministic, random = transforms(args.row)
    t0 = time.perf_counter()
    if args.dataset == "CacheDataset":
        dataset = CacheDataset(items, Compose([*deterministic.transforms, *random.transforms]), cache_rate=1.0,
                               num_workers=max(1, args.workers), progress=False)
    else:
        dataset = Dataset(items, Compose([*deterministic.transforms, *random.transforms]))
    setup_seconds = time.perf_counter() - t0
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        persistent_workers=args.workers > 0, drop_last=True)

    def batches():
        while True:  # epochs; workers persist across them
            yield from loader

    stream = batches()
    seen = 0
    while seen < args.warmup:
        seen += len(next(stream)["image"])
    first_volume_seconds = time.perf_counter() - t_start
    count, t0, cpu0 = 0, time.perf_counter(), tree_cpu_seconds()
    while count < args.min_volumes or time.perf_counter() - t0 < args.seconds:
        if count >= 4 and time.perf_counter() - t0 >= args.max_seconds:
            break
        batch = next(stream)
        count += len(batch["image"])
    seconds = time.perf_counter() - t0
    assert tuple(batch["image"].shape[1:]) == (1,) + tuple(batch["mask"].shape[2:]), batch["image"].shape
    print(json.dumps({"volumes_per_s": count / seconds, "volumes": count, "seconds": seconds,
                      "cpu_ms_per_volume": (tree_cpu_seconds() - cpu0) / count * 1000,
                      "setup_seconds": setup_seconds, "warmup_done_seconds": first_volume_seconds,
                      "torch": torch.__version__, "monai": __import__("monai").__version__,
                      "torch_threads": torch.get_num_threads(), "import_pss_mb": import_pss}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
