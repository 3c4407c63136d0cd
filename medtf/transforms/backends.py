"""Optional NumPy augmentation backends: volumentations-3D (3D) and albumentations (2D) via ``tf.numpy_function``.

These run Python/NumPy inside ``Dataset.map`` (holding the GIL, so they scale poorly; the in-graph transforms are
10x+ faster): use them to reproduce a study that used these libraries. The wrapper makes them fit the transform
protocol:

- explicit output shapes and dtypes (``Tout`` + ``set_shape``): ``image`` comes back float32, labels in their
  input dtype (rounded), the static shape is the input's (or ``output_size`` for cropping pipelines);
- reproducibility: a NumPy seed is derived *in the graph* from the example's stateless seed and passed into the
  NumPy function, which seeds the library under a lock (volumentations draws from the global ``random`` and
  ``np.random``, which it reseeds; albumentations from per-transform generators, each given its own seed because
  albumentations 2.0's ``Compose.set_random_seed`` gives all transforms the same one and their draws coincide), so
  an example's result depends only on its seed;
- known volumentations-3d 1.0.4 defects are refused or repaired: ``Resize`` / ``RandomResizedCrop`` /
  ``ResizedCropNonEmptyMaskIfExists`` (default ``resize_type=1`` raises or silently casts to uint8, turning
  -500..500 into 3..253) raise `ValueError`; ``Flip`` without an ``axis`` draws a separate random axis for the image
  and the mask (they end up misaligned) and is refused; ``GaussianNoise`` returns float64 (cast back to float32).
  Its default ``var_limit=(10, 50)`` is a *variance* of 10-50, i.e. a noise std of 3-7 intensity units: it wipes
  out normalised (0-1 or z-scored) images; give e.g. ``var_limit: [0.0, 0.01]``.

Layouts: volumentations gets ``image`` ``(D, H, W, C)`` and labels ``(D, H, W)``; albumentations ``(H, W, C)`` and
``(H, W)``. ``mask`` and ``instances`` are moved as masks (nearest); ``boxes`` are not supported.

Example:
    >>> aug = build_transforms([{"name": "volumentations", "transforms": [
    ...     {"name": "Flip", "axis": 0, "p": 0.5}, {"name": "Rotate", "x_limit": [-15, 15], "p": 0.5}]}])
    >>> out = aug({"image": vol, "mask": mask}, seed=tf.constant([1, 2]))   # vol (D, H, W, C) float32
"""

from __future__ import annotations

import importlib
import random  # only to seed volumentations (it draws from Python random) inside the numpy function, per call
import threading
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from medtf.transforms.base import LABEL_KEYS, register_transform, spatial_rank

BACKENDS = {"volumentations": ("volumentations", 3), "albumentations": ("albumentations", 2)}
REFUSED = {
    "volumentations": {
        "Resize": "volumentations-3d Resize (resize_type=1) raises on (H, W, D) input or silently casts to uint8",
        "RandomResizedCrop": "volumentations-3d RandomResizedCrop (resize_type=1) silently casts to uint8",
        "ResizedCropNonEmptyMaskIfExists": "volumentations-3d resized crops silently cast to uint8",
    },
    "albumentations": {},
}
_SHAPE_ARGS = ("shape", "size")  # crop transforms whose output size is known from their arguments
_LOCK = threading.Lock()  # the libraries' RNGs are global (volumentations) or per Compose: one call at a time


def _check(backend: str, name: str, params: Mapping[str, Any]) -> None:
    if name in REFUSED[backend]:
        raise ValueError(f"{backend} {name} is refused: {REFUSED[backend][name]}; use medtf's in-graph 'resize' / "
                         f"'random_resized_crop' transforms instead (see the medtf.transforms.backends docstring)")
    if backend == "volumentations" and name == "Flip" and params.get("axis") is None:
        raise ValueError("volumentations Flip without 'axis' flips the image and the mask along independently "
                         "drawn axes (misaligned labels); give one Flip per axis, e.g. {name: Flip, axis: 0, p: 0.5}")
    if backend == "volumentations" and name == "GaussianNoise" and "var_limit" not in params:
        warnings.warn("volumentations GaussianNoise defaults to var_limit=(10, 50) (noise std 3-7): far too strong "
                      "for normalised images; set var_limit", stacklevel=3)


def build_compose(backend: str, transforms: Sequence, p: float = 1.0):
    """``[{"name": "Flip", "axis": 0, "p": 0.5}, ...]`` (or transform objects) -> the library's ``Compose``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {sorted(BACKENDS)}")
    lib = importlib.import_module(BACKENDS[backend][0])
    steps = []
    for entry in transforms:
        if isinstance(entry, Mapping):
            params = dict(entry)
            name = params.pop("name", None)
            if name is None or not hasattr(lib, name):
                raise ValueError(f"{backend} has no transform {name!r}")
            _check(backend, name, params)
            steps.append(getattr(lib, name)(**params))
        else:
            _check(backend, type(entry).__name__, vars(entry))
            steps.append(entry)
    if backend == "volumentations":
        return lib.Compose(steps, p=p, targets=[["image"], list(LABEL_KEYS)])
    return lib.Compose(steps, p=p, additional_targets={"instances": "mask"})


def _output_size(backend: str, transforms: Sequence):
    """The spatial size set by the last crop transform with a ``shape``/``size``/``height,width`` argument."""
    size = None
    for entry in transforms:
        params = entry if isinstance(entry, Mapping) else vars(entry)
        if "Crop" not in str(params.get("name", type(entry).__name__)):
            continue
        for arg in _SHAPE_ARGS:
            if params.get(arg) is not None:
                size = list(params[arg])
        if params.get("height") is not None and params.get("width") is not None:
            size = [params["height"], params["width"]]
    return size


def _seed_albumentations(node, seed: int) -> None:
    """Seed an albumentations (2.0.x) Compose tree with a *different* seed per transform.

    ``Compose.set_random_seed(s)`` hands the same ``s`` to every child, so all children draw the same numbers: e.g.
    ``HorizontalFlip(p=.5)`` and ``VerticalFlip(p=.5)`` then always flip together. Children get seeds spawned from
    ``(seed, index)`` instead.
    """
    node.set_random_seed(seed)
    for i, child in enumerate(getattr(node, "transforms", None) or []):
        if hasattr(child, "set_random_seed"):
            _seed_albumentations(child, int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))


class NumpyBackendTransform:
    """A volumentations / albumentations ``Compose`` as a seeded transform (see the module docstring).

    Args:
        backend: ``"volumentations"`` (3D images) or ``"albumentations"`` (2D images).
        transforms: list of ``{"name": <library class>, **kwargs}`` (or library transform objects).
        p: probability of applying the whole ``Compose``.
        output_size: spatial output size when the pipeline crops; default: inferred from crop transforms with a
            ``shape``/``size``/``height,width`` argument, else the input's.
    """

    def __init__(self, backend: str, transforms: Sequence, p: float = 1.0, output_size=None):
        self.backend = backend
        self.compose = build_compose(backend, transforms, p)
        self.output_size = list(output_size) if output_size is not None else _output_size(backend, transforms)

    def _run(self, seed, image, labels):
        keys = [k for k in LABEL_KEYS if k in labels]
        with _LOCK:
            seed = int(seed)
            if self.backend == "volumentations":
                random.seed(seed)
                np.random.seed(seed % 2**32)
                out = self.compose(image=image, **{k: labels[k] for k in keys})
            else:
                _seed_albumentations(self.compose, seed)
                out = self.compose(image=image, **{k: labels[k] for k in keys})
        result = [np.ascontiguousarray(out["image"], dtype=np.float32)]
        for key in keys:
            result.append(np.rint(out[key]).astype(labels[key].dtype))
        return result

    def __call__(self, example, seed):
        rank = spatial_rank(example["image"])
        if rank != BACKENDS[self.backend][1]:
            raise ValueError(f"{self.backend} transforms {BACKENDS[self.backend][1]}D images; got a {rank}D image")
        if "boxes" in example:
            raise ValueError("numpy backends do not move 'boxes'; use medtf's in-graph spatial transforms")
        keys = [k for k in LABEL_KEYS if k in example]
        squeeze = {k: example[k].shape.rank == rank + 1 and example[k].shape[-1] == 1 for k in keys}
        labels = {k: example[k][..., 0] if squeeze[k] else example[k] for k in keys}
        # the NumPy seed is a function of the stateless seed, computed in the graph: reproducible per example
        np_seed = tf.random.stateless_uniform([], seed, 0, 2**31 - 1, dtype=tf.int64)

        def run(np_seed_, image_, *label_arrays):
            return self._run(np_seed_, image_, dict(zip(keys, label_arrays)))

        dtypes = [tf.float32] + [labels[k].dtype for k in keys]
        outputs = tf.numpy_function(run, [np_seed, example["image"]] + [labels[k] for k in keys], dtypes,
                                    stateful=False)
        spatial = self.output_size or example["image"].shape[:rank].as_list()
        out = dict(example)
        image = outputs[0]
        image.set_shape(list(spatial) + [example["image"].shape[-1]])
        out["image"] = image  # float32 by contract
        for key, value in zip(keys, outputs[1:]):
            value.set_shape(list(spatial) + labels[key].shape[rank:].as_list())
            out[key] = value[..., None] if squeeze[key] else value
        return out


def numpy_backend_transform(backend: str, transforms_config: Sequence, p: float = 1.0, output_size=None):
    """Factory: `NumpyBackendTransform` for ``backend`` (``"volumentations"`` or ``"albumentations"``).

    Example:
        >>> t = numpy_backend_transform("albumentations", [{"name": "HorizontalFlip", "p": 0.5}])
    """
    return NumpyBackendTransform(backend, transforms_config, p=p, output_size=output_size)


@register_transform("volumentations")
def volumentations(transforms: Sequence, p: float = 1.0, output_size=None) -> NumpyBackendTransform:
    """Config entry ``{name: volumentations, transforms: [{name: Flip, axis: 0, p: 0.5}, ...]}`` (3D)."""
    return NumpyBackendTransform("volumentations", transforms, p=p, output_size=output_size)


@register_transform("albumentations")
def albumentations(transforms: Sequence, p: float = 1.0, output_size=None) -> NumpyBackendTransform:
    """Config entry ``{name: albumentations, transforms: [{name: HorizontalFlip, p: 0.5}, ...]}`` (2D)."""
    return NumpyBackendTransform("albumentations", transforms, p=p, output_size=output_size)


@register_transform("numpy_backend")
def numpy_backend(backend: str, transforms: Sequence, p: float = 1.0, output_size=None) -> NumpyBackendTransform:
    """Config entry ``{name: numpy_backend, backend: volumentations|albumentations, transforms: [...]}``."""
    return NumpyBackendTransform(backend, transforms, p=p, output_size=output_size)
