"""Data, transform definitions and the pipelines compared by `benchmarks/pipeline.py`.

- Synthetic 128^3 CT volumes (int16 HU, catheter tubes as mask/instances) written once as ``brachy-ct`` shards with
  `medtf.data.writer.DatasetWriter` (256 MB shards, as ``medtf convert`` writes them) and as ``.npy`` (the same
  int16 HU + uint8 mask) for MONAI and the generator baseline; 256x256x3 ``lgg-mri`` slices likewise.
- Rows (issue #11): ``base`` = z-score; flip per axis p 0.5; rotation +-15 deg about axis 0 (in the H-W plane)
  p 0.5, linear image / nearest mask; Gaussian noise sigma 0.1 p 0.5; gamma 0.7-1.5 p 0.5. ``elastic`` = the same
  plus an elastic deformation p 0.5 after the rotation (parameters matched across libraries: `ELASTIC`).
- medtf: ``medtf.data.make_dataset(training=True, seed=0)`` with those transforms as the registry spells them.
- Generator baseline (the brachytherapy study's loader): ``.npy`` + volumentations-3D in a pool of worker processes
  (as many as usable cores, two tasks in flight per worker like a DataLoader's prefetch), fed to
  ``tf.data.Dataset.from_generator``.

TensorFlow is imported lazily, so the baseline's worker processes (forked before it is imported) stay small.
"""

from __future__ import annotations

import json
import os
import random
from collections import deque
from pathlib import Path

import numpy as np

ROWS = {"base": "z-score + flips + rotate +-15 deg + noise + gamma (each p .5)",
        "elastic": "the same + elastic (p .5)", "2d": "flip + rotate + gamma + noise"}
ROTATE_DEG, NOISE_STD, GAMMA, PROB = 15.0, 0.1, (0.7, 1.5), 0.5
# medtf random_elastic: 8^3 control points, N(0, 3^2) voxel displacements, bicubic upsampling: RMS displacement
# 2.4 voxels, RMS displacement gradient 0.22 (measured on 128^3). MONAI Rand3DElasticd with sigma 7-9 and magnitude
# 550-750 gives the same two statistics (pipeline_monai.py); volumentations' ElasticTransform keeps the study's
# defaults (deformation_limits (0, 0.25): sigma up to 32 voxels, max displacement up to 16 voxels).
ELASTIC = {"grid": 8, "magnitude": 3.0}
NOISE_STD_2D = (0.01, 0.03)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


# ---------------------------------------------------------------- synthetic data
def synthetic_ct(rng: np.random.Generator, size: int):
    """A body ellipsoid (soft tissue ~40 HU in air), 3-6 straight catheter tubes (~1500 HU) and their masks."""
    z, y, x = np.ogrid[:size, :size, :size]
    c = size / 2
    body = ((y - c) / (0.42 * size)) ** 2 + ((x - c) / (0.36 * size)) ** 2 <= 1
    image = np.broadcast_to(np.where(body, 40.0, -1000.0), (size,) * 3).astype(np.float32)
    image += rng.normal(0, 20, image.shape).astype(np.float32)
    instances = np.zeros((size, size, size), np.uint8)
    for k in range(1, rng.integers(3, 7) + 1):
        cy, cx = rng.uniform(0.35, 0.65, 2) * size
        dy, dx = rng.uniform(-0.2, 0.2, 2)
        tube = (y - (cy + dy * z)) ** 2 + (x - (cx + dx * z)) ** 2 <= 2.5 ** 2
        instances[tube] = k
        image[tube] = 1500.0
    return np.clip(image, -1024, 3071).astype(np.int16), (instances > 0).astype(np.uint8), instances


def _brachy_record(image, mask, instances, index: int):
    from medtf.data.schema import BRACHY_CT

    return BRACHY_CT.encode_chunk({
        "patient_id": f"bench-{index:04d}", "example_id": f"bench-{index:04d}-0", "image": image, "mask": mask,
        "instances": instances, "catheter_points": np.zeros((2, 3), np.float32), "catheter_offsets": [0, 2],
        "window": [40.0, 400.0], "spacing": [1.0, 1.0, 1.0], "origin": [0.0, 0.0, 0.0],
        "direction": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]})


def _slice_record(image, mask, index: int):
    from medtf.data.schema import LGG_MRI

    return LGG_MRI.encode_chunk({
        "patient_id": f"bench-{index // 8:04d}", "example_id": f"bench-{index:04d}", "image": image, "mask": mask,
        "slice_index": index % 8 + 1, "num_slices": 8, "label": int(mask.any())})


def _write_shards(folder: Path, schema, work_file: Path, count: int, shard_mb: float) -> None:
    """``count`` records cycling over the distinct records of ``work_file``, into one ``train`` split."""
    from medtf.data.writer import DatasetWriter, RecordRef, iter_record_file

    refs = iter_record_file(work_file)
    writer = DatasetWriter(folder, schema, shard_size_mb=shard_mb)
    for i in range(count):
        ref = refs[i % len(refs)]
        writer.add("train", f"p{i:05d}", RecordRef(ref.path, ref.offset, ref.length))
    writer.finalize({"created_by": "benchmarks/pipeline.py"})


def prepare(workdir: Path, *, volumes: int, size: int, mem_small: int, slices: int) -> dict[str, Path]:
    """Write every data set once (reused when ``workdir`` already holds them with the same parameters)."""
    from medtf.data.schema import BRACHY_CT, LGG_MRI
    from medtf.data.writer import write_record_file

    workdir = Path(workdir)
    paths = {name: workdir / name for name in ("shards3d", "npy3d", "mem_small", "mem_large", "shards2d", "npy2d")}
    stamp = workdir / "params.json"
    params = {"volumes": volumes, "size": size, "mem_small": mem_small, "slices": slices, "version": 3}
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        return paths
    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths["npy3d"].mkdir(exist_ok=True)
    records = []
    for i in range(volumes):
        image, mask, instances = synthetic_ct(rng, size)
        records.append(_brachy_record(image, mask, instances, i))
        np.save(paths["npy3d"] / f"case{i:03d}_image.npy", image)  # the shards' int16 HU, as stored
        np.save(paths["npy3d"] / f"case{i:03d}_mask.npy", mask)
    work3d = workdir / "work3d.tfrecord"
    write_record_file(work3d, records)
    # medtf's default 256 MB shards, as a real conversion writes them (~30 volumes of 128^3 each).
    _write_shards(paths["shards3d"], BRACHY_CT, work3d, volumes, 256)
    _write_shards(paths["mem_small"], BRACHY_CT, work3d, mem_small, 256)
    _write_shards(paths["mem_large"], BRACHY_CT, work3d, 10 * mem_small, 256)

    paths["npy2d"].mkdir(exist_ok=True)
    records = []
    yy, xx = np.mgrid[:256, :256]
    for i in range(slices):
        cy, cx, r = rng.uniform(80, 176), rng.uniform(80, 176), rng.uniform(10, 40)
        mask = (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).astype(np.uint8)[..., None]
        image = rng.normal(90, 15, (256, 256, 3)) + 80 * mask
        image = np.clip(image, 0, 255).astype(np.uint8)
        records.append(_slice_record(image, mask, i))
        np.save(paths["npy2d"] / f"slice{i:03d}_image.npy", image)
        np.save(paths["npy2d"] / f"slice{i:03d}_mask.npy", mask)
    work2d = workdir / "work2d.tfrecord"
    write_record_file(work2d, records)
    _write_shards(paths["shards2d"], LGG_MRI, work2d, slices, 64)
    for f in (work3d, work2d):
        f.unlink()
    stamp.write_text(json.dumps(params))
    return paths


# ---------------------------------------------------------------- medtf
def medtf_config(row: str) -> list[dict]:
    """The transform list of a row, as an experiment config declares it."""
    if row == "2d":
        return [{"name": "random_flip", "axes": [0, 1], "prob": 0.5},
                {"name": "random_affine", "rotation_deg": ROTATE_DEG, "scale": [1.0, 1.0], "prob": 1.0},
                {"name": "random_gamma", "gamma_range": list(GAMMA), "prob": 1.0},
                {"name": "gaussian_noise", "std_range": list(NOISE_STD_2D), "prob": 1.0}]
    config = [{"name": "zscore"},
              {"name": "random_flip", "axes": [0, 1, 2], "prob": PROB},
              # rotation about axis 0 only: the (H, W) plane, as MONAI's range_x and volumentations' x_limit
              {"name": "random_affine", "rotation_deg": [ROTATE_DEG, 0, 0], "scale": [1.0, 1.0], "prob": PROB}]
    if row == "elastic":
        config.append({"name": "random_elastic", **ELASTIC, "prob": PROB})
    config += [{"name": "gaussian_noise", "std": NOISE_STD, "prob": PROB},
               {"name": "random_gamma", "gamma_range": list(GAMMA), "prob": PROB}]
    return config


def _drop_instances(example, seed):
    """MONAI and the baseline load image + mask only: drop ``instances`` so every pipeline moves the same arrays."""
    return {k: v for k, v in example.items() if k != "instances"}


def medtf_transforms(row: str):
    from medtf.transforms import Compose, build_transforms

    return Compose([_drop_instances] + build_transforms(medtf_config(row)).transforms)


def medtf_dataset(shard_dir: Path, row: str, *, batch_size: int = 2, training: bool = True, **kwargs):
    """Shards -> augmented ``(image, mask)`` batches through ``medtf.data.make_dataset`` (seed 0)."""
    from medtf.data import make_dataset

    kwargs.setdefault("seed", 0)
    return make_dataset(shard_dir, "train", batch_size=batch_size, training=training,
                        transforms=medtf_transforms(row), output="model", **kwargs)


# ---------------------------------------------------------------- generator + volumentations baseline
_AUG = None


def _volumentations(row: str):
    import volumentations as V

    aug = [V.Flip(0, p=PROB), V.Flip(1, p=PROB), V.Flip(2, p=PROB),
           # x_limit rotates in the plane of axes 1 and 2 (volumentations' rot_x), i.e. about axis 0
           V.Rotate(x_limit=(-ROTATE_DEG, ROTATE_DEG), y_limit=(0, 0), z_limit=(0, 0), interpolation=1,
                    border_mode="constant", value=0, mask_value=0, p=PROB)]
    if row == "elastic":
        aug.append(V.ElasticTransform(deformation_limits=(0, 0.25), interpolation=1, p=PROB))
    aug.append(V.GaussianNoise(var_limit=(NOISE_STD ** 2, NOISE_STD ** 2), mean=0, p=PROB))
    return V.Compose(aug, p=1.0)


def _worker_init(row: str) -> None:
    global _AUG
    _AUG = _volumentations(row)
    seed = os.getpid()
    random.seed(seed)  # volumentations draws with Python's random: forked workers must not share its state
    np.random.seed(seed % 2**32)


def _gamma(image: np.ndarray) -> np.ndarray:
    """Gamma on min-max-scaled intensities (volumentations' RandomGamma is np.power: NaN on z-scored data)."""
    lo, hi = float(image.min()), float(image.max())
    gamma = random.uniform(*GAMMA)
    return (((image - lo) / (hi - lo + 1e-7)) ** gamma * (hi - lo) + lo).astype(np.float32)


def baseline_item(case: str):
    """One volume through the study's loader: np.load, z-score, volumentations, gamma (runs in a worker)."""
    image = np.load(case + "_image.npy").astype(np.float32)
    image = (image - image.mean()) / (image.std() + 1e-8)
    out = _AUG(image=image, mask=np.load(case + "_mask.npy"))
    image = out["image"].astype(np.float32)  # GaussianNoise returns float64 (notes/stack.md)
    if random.random() < PROB:
        image = _gamma(image)
    return image[..., None], out["mask"][..., None]


def baseline_pool(row: str, workers: int):
    """The worker pool; create it before TensorFlow is imported (workers are forked)."""
    import multiprocessing

    return multiprocessing.get_context("fork").Pool(workers, initializer=_worker_init, initargs=(row,))


def baseline_3d_dataset(npy_dir: Path, pool, workers: int, batch_size: int = 2, seed: int = 0):
    """Shuffled epochs of ``.npy`` cases mapped by ``pool`` (2 tasks in flight per worker) -> from_generator."""
    import tensorflow as tf

    cases = sorted(str(p)[: -len("_image.npy")] for p in Path(npy_dir).glob("*_image.npy"))
    rng = np.random.default_rng(seed)

    def generator():
        pending = deque()
        while True:
            for index in rng.permutation(len(cases)):
                pending.append(pool.apply_async(baseline_item, (cases[index],)))
                if len(pending) >= 2 * workers:
                    image, mask = pending.popleft().get()
                    yield {"image": image, "mask": mask}

    spec = {"image": tf.TensorSpec((None, None, None, 1), tf.float32),
            "mask": tf.TensorSpec((None, None, None, 1), tf.uint8)}
    return tf.data.Dataset.from_generator(generator, output_signature=spec).batch(batch_size).prefetch(2)


def baseline_2d_dataset(npy_dir: Path):
    import albumentations as A
    import tensorflow as tf

    cases = sorted(str(p)[: -len("_image.npy")] for p in Path(npy_dir).glob("*_image.npy"))
    aug = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5),
                     A.Affine(rotate=(-ROTATE_DEG, ROTATE_DEG), p=1.0),
                     A.RandomGamma(gamma_limit=(int(GAMMA[0] * 100), int(GAMMA[1] * 100)), p=1.0),
                     A.GaussNoise(std_range=NOISE_STD_2D, p=1.0)])

    def generator():
        while True:
            for case in cases:
                image = np.load(case + "_image.npy").astype(np.float32) / 255.0
                out = aug(image=image, mask=np.load(case + "_mask.npy"))
                yield {"image": out["image"].astype(np.float32), "mask": out["mask"]}

    spec = {"image": tf.TensorSpec((None, None, 3), tf.float32), "mask": tf.TensorSpec((None, None, 1), tf.uint8)}
    return tf.data.Dataset.from_generator(generator, output_signature=spec).prefetch(2)


# ---------------------------------------------------------------- hot spots
def op_costs(size: int, calls: int = 8) -> dict[str, tuple[float, float]]:
    """(wall ms, CPU ms) per call of each medtf transform of the elastic row, applied with probability 1 to one
    ``size^3`` volume + mask in a `tf.function` (as inside ``Dataset.map``), both cores available to the op."""
    import time

    import tensorflow as tf

    from medtf.transforms import get_transform

    image = tf.random.stateless_normal((size, size, size, 1), [0, 1])
    example = {"image": image, "mask": tf.cast(image > 0.5, tf.uint8)}
    costs = {}
    for config in medtf_config("elastic"):
        config = {**config, "prob": 1.0} if "prob" in config else dict(config)
        transform = get_transform(config.pop("name"), **config)
        fn = tf.function(lambda ex, seed, t=transform: t(ex, seed))
        fn(example, tf.constant([0, 0], tf.int64))["image"].numpy()
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(calls):
            out = fn(example, tf.constant([1, i], tf.int64))
            out["image"].numpy()
        costs[transform.__class__.__name__] = ((time.perf_counter() - t0) / calls * 1000,
                                               (time.process_time() - c0) / calls * 1000)
    return costs
