"""NumPy backends (volumentations-3D, albumentations): shapes/dtypes, per-seed reproducibility, refusals, alignment."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from medtf.transforms import build_transforms, get_transform
from tests.transforms.conftest import blob_example

FLIPS_3D = [{"name": "Flip", "axis": a, "p": 0.5} for a in range(3)]
FLIPS_2D = [{"name": "HorizontalFlip", "p": 0.5}, {"name": "VerticalFlip", "p": 0.5}]


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def tensors(ex: dict) -> dict:
    return {k: tf.constant(v) for k, v in ex.items()}


def blob(rank: int) -> dict:
    ex = blob_example(rank, 16 if rank == 3 else 32)
    if rank == 2:
        ex["image"] = np.repeat(ex["image"], 3, axis=-1)  # (H, W, 3) like an RGB slice
    ex["instances"] = ex["mask"][..., 0].astype(np.uint16) * 5
    return ex


def mapped(transform, ex: dict, n: int) -> list[dict]:
    ex = tensors(ex)
    ds = tf.data.Dataset.range(n).map(lambda i: transform(ex, tf.stack([i, tf.constant(3, tf.int64)])),
                                      num_parallel_calls=4, deterministic=True)
    return [{k: v.numpy() for k, v in e.items()} for e in ds]


@pytest.mark.parametrize("rank,name,config", [(3, "volumentations", FLIPS_3D), (2, "albumentations", FLIPS_2D)],
                         ids=["volumentations", "albumentations"])
def test_shapes_dtypes_reproducible_aligned(rank, name, config):
    ex = blob(rank)
    transform = get_transform(name, transforms=config)
    first, again = mapped(transform, ex, 8), mapped(transform, ex, 8)
    spec = tf.data.Dataset.from_tensors(tensors(ex)).map(lambda e: transform(e, tf.constant([0, 0]))).element_spec
    for key in ("image", "mask", "instances"):
        assert tuple(spec[key].shape) == ex[key].shape and spec[key].dtype == tf.as_dtype(ex[key].dtype)
    moved = 0
    for i, (a, b) in enumerate(zip(first, again)):
        for key in ("image", "mask", "instances"):  # same seed, same result, even with parallel calls
            np.testing.assert_array_equal(a[key], b[key])
            assert a[key].dtype == ex[key].dtype and a[key].shape == ex[key].shape
        eager = transform(tensors(ex), tf.constant([i, 3], tf.int64))
        np.testing.assert_array_equal(eager["image"].numpy(), a["image"])
        assert dice(a["mask"], a["image"][..., :1] > 0.5) > 0.95
        np.testing.assert_array_equal(a["instances"], a["mask"][..., 0].astype(np.uint16) * 5)
        moved += not np.array_equal(a["mask"], ex["mask"])
    assert moved >= 4  # flips really happen, and differ between seeds
    assert len({a["image"].tobytes() for a in first}) >= 3


@pytest.mark.parametrize("entry", [{"name": "Resize", "shape": (8, 8, 8)},
                                   {"name": "RandomResizedCrop", "shape": (8, 8, 8)},
                                   {"name": "Flip", "p": 0.5},
                                   {"name": "NoSuchTransform"}])
def test_refused_volumentations_transforms(entry):
    with pytest.raises(ValueError, match=entry["name"]):
        get_transform("volumentations", transforms=[entry])


def test_refused_prebuilt_object_and_wrong_rank():
    import volumentations as V

    with pytest.raises(ValueError, match="Resize"):
        get_transform("volumentations", transforms=[V.Resize((8, 8, 8))])
    with pytest.raises(ValueError, match="3D"):
        get_transform("volumentations", transforms=FLIPS_3D)(tensors(blob(2)), tf.constant([0, 0]))
    with pytest.raises(ValueError, match="unknown backend"):
        get_transform("numpy_backend", backend="monai", transforms=[])


def test_gaussian_noise_cast_back_to_float32_and_default_warns():
    ex = blob(3)
    transform = get_transform("volumentations", transforms=[{"name": "GaussianNoise", "var_limit": [0.01, 0.01],
                                                             "p": 1.0}])
    out = transform(tensors(ex), tf.constant([1, 2]))
    assert out["image"].dtype == tf.float32 and out["mask"].dtype == tf.uint8
    noise = out["image"].numpy() - ex["image"]
    assert abs(noise.std() - 0.1) < 0.01  # var 0.01 -> std 0.1
    np.testing.assert_array_equal(out["mask"].numpy(), ex["mask"])
    with pytest.warns(UserWarning, match="var_limit"):
        get_transform("volumentations", transforms=[{"name": "GaussianNoise", "p": 1.0}])


def test_cropping_pipeline_output_size_and_config_list():
    ex = blob(3)
    aug = build_transforms([{"name": "volumentations",
                             "transforms": [{"name": "RandomCrop", "shape": [8, 12, 10]}, *FLIPS_3D]}])
    ds = tf.data.Dataset.from_tensors(tensors(ex)).map(lambda e: aug(e, tf.constant([5, 6])))
    assert ds.element_spec["image"].shape == (8, 12, 10, 1) and ds.element_spec["mask"].shape == (8, 12, 10, 1)
    out = next(iter(ds))
    assert out["image"].shape == (8, 12, 10, 1)
    assert dice(out["mask"].numpy(), out["image"].numpy() > 0.5) > 0.95 or not out["mask"].numpy().any()
