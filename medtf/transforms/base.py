"""The transform protocol: pure-TF functions on a dict of tensors, seeded with stateless RNG.

An example is a dict of tensors as the decoder/parser produce it, in channels-last layout:

- ``image``: ``(H, W, C)`` for 2D, ``(D, H, W, C)`` for 3D (float32 after the parser's cast).
- label keys (``LABEL_KEYS``: ``mask``, ``instances``): same spatial shape as ``image``, interpolated *nearest*.
- ``boxes``: ``(N, 4)`` ``[ymin, xmin, ymax, xmax]`` in pixels (2D only), moved with the geometry.
- anything else (ids, geometry, text, labels) passes through untouched.

A transform is a callable ``transform(example, seed) -> example`` where ``seed`` is a ``(2,)`` int32/int64 tensor.
All randomness comes from ``tf.random.stateless_*`` with that seed (or seeds derived from it with
``tf.random.split``/``tf.random.fold_in``), never from Python ``random`` or NumPy: inside ``Dataset.map`` Python
code runs once at trace time, so every example would get the same draw. The same seed always gives the same
output, eagerly and inside ``Dataset.map``; the pipeline gives every example (and every epoch) its own seed.

Transforms are registered by name so experiment configs can declare them::

    transforms:
      - {name: random_flip, axes: [0, 1, 2]}
      - {name: random_gamma, gamma_range: [0.7, 1.5]}

and `build_transforms(config)` turns that list into one `Compose`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import tensorflow as tf

LABEL_KEYS = ("mask", "instances")
Example = dict
Transform = Callable[[Example, tf.Tensor], Example]

_REGISTRY: dict[str, Callable[..., Transform]] = {}


def register_transform(name: str):
    """Class/function decorator: make a transform factory creatable from configs as ``{"name": name, ...}``."""

    def wrap(factory):
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"transform {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return wrap


def registered_transforms() -> list[str]:
    _import_builtin_transforms()
    return sorted(_REGISTRY)


def get_transform(name: str, **params) -> Transform:
    _import_builtin_transforms()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown transform {name!r}; known: {sorted(_REGISTRY)}") from None
    return factory(**params)


def spatial_rank(image: tf.Tensor) -> int:
    """Number of spatial dims of a channels-last image: 2 for ``(H, W, C)``, 3 for ``(D, H, W, C)``."""
    rank = image.shape.rank
    if rank not in (3, 4):
        raise ValueError(f"image must be (H, W, C) or (D, H, W, C), got shape {image.shape}")
    return rank - 1


def as_seed(seed) -> tf.Tensor:
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        seed = tf.cast(seed, tf.int64)
    seed.shape.assert_is_compatible_with([2])
    return seed


class Compose:
    """Apply transforms in order, each with its own seed derived from the example's seed.

    Example:
        >>> aug = Compose([get_transform("random_flip", axes=[0, 1]), get_transform("random_gamma")])
        >>> out = aug({"image": image, "mask": mask}, seed=tf.constant([1, 2]))
    """

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, example: Example, seed) -> Example:
        seed = as_seed(seed)
        example = dict(example)
        for i, transform in enumerate(self.transforms):
            example = transform(example, tf.random.fold_in(seed, i))
        return example

    def __len__(self) -> int:
        return len(self.transforms)


def build_transforms(config: Sequence[Mapping[str, Any]] | None) -> Compose:
    """``[{"name": ..., **params}, ...]`` -> `Compose` (an empty/None config gives the identity)."""
    transforms = []
    for i, entry in enumerate(config or []):
        entry = dict(entry)
        name = entry.pop("name", None)
        if name is None:
            raise ValueError(f"transform #{i} has no 'name': {entry}")
        transforms.append(get_transform(name, **entry))
    return Compose(transforms)


def _import_builtin_transforms() -> None:
    """Importing the modules registers their transforms (kept lazy so `base` has no import cycle)."""
    import importlib

    for module in ("medtf.transforms.spatial", "medtf.transforms.intensity", "medtf.transforms.sampling",
                   "medtf.transforms.backends", "medtf.transforms.stain"):
        importlib.import_module(module)
