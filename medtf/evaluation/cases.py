"""Read a split as NumPy cases, with the geometry needed for metrics in mm.

brachy-ct: one example = one case (a whole CT volume). lgg-mri: one example = one 2D slice; slices are grouped
by their (pseudonymised) ``patient_id`` and stacked in ``slice_index`` order into one volume per patient.
Arrays are ``(z, y, x)`` and spacing ``(x, y, z)`` mm (`medtf.metrics.surface`); kinds without stored geometry
(lgg-mri) get 1 mm.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator

import numpy as np

UNIT_SPACING = (1.0, 1.0, 1.0)


@dataclasses.dataclass
class Case:
    """One evaluation case.

    Attributes:
        case_id: pseudonymised id as stored in the shards (example id; patient id for slice kinds).
        image: ``(*spatial, C)`` float32 after preprocessing; a stack of slices ``(S, H, W, C)`` for 2D kinds.
        mask: ``(z, y, x)`` bool ground truth (``(S, H, W)`` for slice stacks).
        spacing: ``(x, y, z)`` mm.
        example: the last (or only) decoded example, for extra fields (catheters, geometry).
        slice_index: stored slice numbers of a stack, in stack order (2D kinds only).
        patient_id: pseudonymised patient id (several cases may share one patient).
    """

    case_id: str
    image: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float, float]
    example: dict
    slice_index: np.ndarray | None = None
    patient_id: str = ""


def _text(value) -> str:
    value = np.asarray(value).ravel()[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def spacing_of(example: dict) -> tuple[float, float, float]:
    """Stored ``spacing`` (x, y, z mm) of an example, or 1 mm when the kind stores no geometry."""
    if "spacing" not in example:
        return UNIT_SPACING
    return tuple(float(s) for s in np.asarray(example["spacing"], float).ravel())


def reference_volume(example: dict, array: np.ndarray):
    """`medtf.io.Volume` carrying the example's stored grid (spacing, origin, direction) around ``array``."""
    from medtf.io import Volume

    return Volume(np.asarray(array), spacing=spacing_of(example), origin=np.asarray(example["origin"], float),
                  direction=np.asarray(example["direction"], float).ravel())


def iter_examples(data_dir: str | os.PathLike, split: str, preprocess: Any = None) -> Iterator[dict]:
    """Decoded, parsed (and preprocessed) examples of a split, in manifest order, batch axis removed."""
    from medtf.data import make_dataset

    ds = make_dataset(data_dir, split, batch_size=1, training=False, repeat=False, output="dict",
                      transforms=preprocess)
    for batch in ds.as_numpy_iterator():
        yield {k: v[0] for k, v in batch.items()}


def volume_cases(examples) -> Iterator[Case]:
    """One case per example (brachy-ct volumes)."""
    for ex in examples:
        yield Case(_text(ex["example_id"]), ex["image"], np.asarray(ex["mask"])[..., 0] > 0, spacing_of(ex), ex,
                   patient_id=_text(ex["patient_id"]))


def slice_stack_cases(examples) -> list[Case]:
    """Slices grouped by ``patient_id`` (first-seen order), stacked by ``slice_index`` into ``(S, H, W)`` cases."""
    groups: dict[str, list[dict]] = {}
    for ex in examples:
        groups.setdefault(_text(ex["patient_id"]), []).append(ex)
    cases = []
    for patient, slices in groups.items():
        slices.sort(key=lambda e: int(np.asarray(e["slice_index"]).ravel()[0]))
        image = np.stack([e["image"] for e in slices])
        mask = np.stack([np.asarray(e["mask"])[..., 0] > 0 for e in slices])
        index = np.array([int(np.asarray(e["slice_index"]).ravel()[0]) for e in slices])
        cases.append(Case(patient, image, mask, spacing_of(slices[-1]), slices[-1], index, patient_id=patient))
    return cases
