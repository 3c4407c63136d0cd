"""The training data's fingerprint, stored in ``medtf.json`` at export, and the out-of-distribution check of
`medtf predict` against it.

A model only knows the images it was trained on. nnU-Net records a data set's fingerprint (spacings, shapes,
intensity percentiles; ``experiment_planning/dataset_fingerprint``) and plans from it; medtf records the same facts
of the training split(s) when a run is exported, and `medtf predict` compares every input with them, so a model
for breast CTs run on a head CT or an MR says so instead of answering silently.

Fingerprint (``medtf.json`` ``"fingerprint"``)::

    modality        CT / MR / SM (from the data kind)
    body_region     BRAIN, PROSTATE ... when the kind implies one, else null
    spacing         {min, median, max} per axis (x, y[, z]) in mm, null when the data stores none; the median
                    is the spacing `medtf predict` resamples inputs to (`medtf.export.geometry`)
    orientation     3D data storing a direction matrix: the DICOM code (``LPS``, ``RAS`` ...) of the stored
                    arrays' index axes x, y, z, the most common one of the examples read; `medtf predict`
                    reorients inputs to it. Null otherwise
    shape           {min, median, max} per array axis ((D, H, W) / (H, W)), voxels
    intensity       per channel, of the raw stored values (CT in HU, RGB 0..255): p0_5, p50, p99_5, mean, std
    source          splits and the number of examples read

Checks (`check_input`), each a warning naming the value and the training range:

- modality differs (when the input's is known: DICOM);
- spacing on an axis outside ``[0.5 x min, 2 x max]`` of training;
- size on an axis outside ``[0.5 x min, 2 x max]`` of training;
- intensity: the input's median outside the training ``[p0.5, p99.5]``; more than 5% of its voxels outside that
  range (1% expected); its ``p99.5 - p0.5`` range 10x narrower or wider than training's (a rescaled image).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from medtf.data.manifest import nested_fold_splits

VERSION = 1
MODALITY = {"brachy-ct": "CT", "lgg-mri": "MR", "prostate-mpmri": "MR", "mri-reports": "MR", "nuclei-he": "SM"}
BODY_REGION = {"lgg-mri": "BRAIN", "mri-reports": "BRAIN", "prostate-mpmri": "PROSTATE"}
SPACING_FIELDS = ("spacing", "pixel_spacing")
SIZE_MARGIN = SPACING_MARGIN = 2.0   # accepted: [min / margin, max * margin]
OUTSIDE_FRACTION = 0.05             # of voxels outside the training [p0.5, p99.5]
RANGE_RATIO = 10.0                  # input vs training p99.5 - p0.5
SAMPLES = 20_000                    # voxels sampled per example and channel


def _sample(image: np.ndarray, rng: np.random.Generator, count: int = SAMPLES) -> np.ndarray:
    """``(n, C)`` float64 voxels of a channels-last image, all of them or ``count`` drawn without replacement."""
    flat = image.reshape(-1, image.shape[-1])
    if len(flat) > count:
        flat = flat[np.sort(rng.choice(len(flat), count, replace=False))]
    return flat.astype(np.float64)


def _range(values: Sequence[Sequence[float]]) -> dict:
    array = np.asarray(values, np.float64)
    stats = {"min": array.min(0), "median": np.median(array, 0), "max": array.max(0)}
    # Rounded: a float32 spacing of 0.8 reads 0.8, not 0.800000011920929.
    return {k: [round(float(v), 6) for v in value] for k, value in stats.items()}


def training_splits(manifest: Mapping, data: Mapping) -> list[str]:
    """The splits a run trained on: ``data.train_split`` (default train), or the training folds of round
    ``data.fold`` (`medtf.data.manifest.nested_fold_splits`)."""
    if data.get("fold") is not None:
        # A run's config.yaml without selection_fold was written before nested selection: it trained on every
        # fold but k.
        return nested_fold_splits(manifest, int(data["fold"]), data.get("selection_fold") or "outer").train
    split = data.get("train_split") or "train"
    return [split] if isinstance(split, str) else list(split)


def compute_fingerprint(data_dir: str | os.PathLike, splits: Sequence[str], spatial_dims: int,
                        max_examples: int = 200, seed: int = 0) -> dict:
    """The fingerprint (module docstring) of ``splits`` of a shard folder, from at most ``max_examples`` examples.

    Args:
        data_dir: shard folder (``manifest.json``).
        splits: split names, e.g. ``["train"]``.
        spatial_dims: 2 or 3; an image with that many axes has one channel (brachy-ct ``(D, H, W)``).
        max_examples: examples read, spread evenly over the splits' records.
        seed: voxel sampling seed.

    Example:
        >>> fp = compute_fingerprint("shards/brachy", ["train"], spatial_dims=3)
        >>> fp["spacing"]["min"], fp["intensity"]["p99_5"]
    """
    import tensorflow as tf

    from medtf.data.decoder import decode_example
    from medtf.export.geometry import orientation_code
    from medtf.data.manifest import read_manifest, shard_paths
    from medtf.data.schema import get_schema

    manifest = read_manifest(data_dir)
    kind = manifest["kind"]
    schema = get_schema(kind)
    files = [str(p) for s in splits for p in shard_paths(data_dir, manifest, s)]
    total = sum(manifest["splits"][s]["num_examples"] for s in splits)
    stride = max(1, -(-total // max_examples))
    names = {f.name for f in schema.fields}
    spacing_field = next((f for f in SPACING_FIELDS if f in names), None)
    dataset = tf.data.TFRecordDataset(files, compression_type=manifest.get("compression") or "")
    dataset = dataset.shard(stride, 0).map(lambda r: decode_example(r, schema))

    rng = np.random.default_rng(seed)
    shapes, spacings, samples, orientations = [], [], [], []
    for example in dataset.as_numpy_iterator():
        image = np.asarray(example["image"])
        if image.ndim == spatial_dims:
            image = image[..., None]
        shapes.append(image.shape[:spatial_dims])
        if spacing_field is not None:
            spacings.append(np.asarray(example[spacing_field], np.float64)[:spatial_dims])
        if spatial_dims == 3 and "direction" in names:
            orientations.append(orientation_code(np.asarray(example["direction"], np.float64)))
        samples.append(_sample(image, rng))
    if not samples:
        raise ValueError(f"{data_dir}: split(s) {list(splits)} hold no examples")
    voxels = np.concatenate(samples)
    p0_5, p50, p99_5 = np.percentile(voxels, [0.5, 50, 99.5], axis=0)
    return {
        "version": VERSION,
        "kind": kind,
        "modality": MODALITY.get(kind),
        "body_region": BODY_REGION.get(kind),
        "spacing": _range(spacings) if spacings else None,
        "shape": _range(shapes),
        "orientation": max(sorted(set(orientations)), key=orientations.count) if orientations else None,
        "intensity": {"channels": int(voxels.shape[1]), "p0_5": p0_5.tolist(), "p50": p50.tolist(),
                      "p99_5": p99_5.tolist(), "mean": voxels.mean(0).tolist(), "std": voxels.std(0).tolist()},
        "source": {"splits": list(splits), "examples": len(samples), "of": int(total)},
    }


def fingerprint_for_export(config: Mapping, run_dir: Path, spatial_dims: int,
                           data_dir: str | os.PathLike | None = None) -> tuple[dict | None, str | None]:
    """``(fingerprint, None)`` of a run's training data, or ``(None, why not)`` when it cannot be read.

    ``data_dir`` overrides the config's ``data.dir``, which is tried as given and relative to ``run_dir``.
    """
    from medtf.data.manifest import ManifestError, read_manifest

    data = dict(config.get("data") or {})
    given = data_dir if data_dir is not None else data.get("dir")
    if not given:
        return None, "the run's config has no data.dir"
    candidates = [Path(given)] if data_dir is not None or Path(given).is_absolute() else [Path(given), run_dir / given]
    folder = next((c for c in candidates if (c / "manifest.json").is_file()), None)
    if folder is None:
        return None, f"no shard manifest in {given} (pass --data-dir to export)"
    try:
        manifest = read_manifest(folder)
        return compute_fingerprint(folder, training_splits(manifest, data), spatial_dims), None
    except (ManifestError, KeyError, ValueError, OSError) as exc:
        return None, f"the training data in {folder} could not be read ({exc})"


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def check_input(fingerprint: Mapping[str, Any], image: np.ndarray, spacing: Sequence[float] | None = None,
                modality: str | None = None, body_region: str | None = None, seed: int = 0) -> list[str]:
    """Warnings (module docstring) for a raw channels-last input ``image`` against a training ``fingerprint``.

    Args:
        fingerprint: ``medtf.json`` ``"fingerprint"``.
        image: ``(*spatial, C)`` raw values (as the model's ``preprocess`` signature takes them).
        spacing: voxel size ``(x, y[, z])`` in mm (None: not known).
        modality, body_region: DICOM Modality / BodyPartExamined of the input, when known.

    Example:
        >>> check_input(meta["fingerprint"], mr[..., None], spacing=(0.5, 0.5, 1.0), modality="MR")
        ['modality: the input is MR, the model was trained on CT images', ...]
    """
    warnings = []
    trained = fingerprint.get("modality")
    if modality and trained and modality.upper() != trained.upper():
        warnings.append(f"modality: the input is {modality}, the model was trained on {trained} images")
    region = fingerprint.get("body_region")
    if body_region and region and body_region.upper() != region.upper():
        warnings.append(f"body region: the input shows {body_region}, the model was trained on {region}")
    nd = image.ndim - 1
    ranges = [("spacing", "voxel spacing", fingerprint.get("spacing"), spacing, SPACING_MARGIN, "mm"),
              ("shape", "size", fingerprint.get("shape"), image.shape[:nd], SIZE_MARGIN, "voxels")]
    for _, what, trained_range, value, margin, unit in ranges:
        if not trained_range or value is None or len(value) != len(trained_range["min"]):
            continue
        low = np.asarray(trained_range["min"]) / margin
        high = np.asarray(trained_range["max"]) * margin
        value = np.asarray(value, np.float64)
        if ((value < low) | (value > high)).any():
            trained_text = f"{_fmt(trained_range['min'])}..{_fmt(trained_range['max'])}"
            warnings.append(f"{what}: the input's {_fmt(value)} {unit} is outside {_fmt(low)}..{_fmt(high)}, "
                            f"{margin:g}x the training range {trained_text}")
    intensity = fingerprint.get("intensity")
    if intensity and intensity.get("channels") == image.shape[-1]:
        voxels = _sample(image, np.random.default_rng(seed), 200_000)
        lo, hi = np.asarray(intensity["p0_5"]), np.asarray(intensity["p99_5"])
        p0_5, median, p99_5 = np.percentile(voxels, [0.5, 50, 99.5], axis=0)
        outside = ((voxels < lo) | (voxels > hi)).mean(0)
        for c in range(image.shape[-1]):
            channel = f" (channel {c})" if image.shape[-1] > 1 else ""
            trained_text = f"the training data's p0.5..p99.5 {lo[c]:.4g}..{hi[c]:.4g}"
            if not lo[c] <= median[c] <= hi[c]:
                warnings.append(f"intensity{channel}: the input's median {median[c]:.4g} is outside {trained_text}")
            elif outside[c] > OUTSIDE_FRACTION:
                warnings.append(f"intensity{channel}: {100 * outside[c]:.0f}% of the input's voxels are outside "
                                f"{trained_text} (1% expected)")
            width, trained_width = p99_5[c] - p0_5[c], hi[c] - lo[c]
            if trained_width > 0 and not trained_width / RANGE_RATIO <= width <= trained_width * RANGE_RATIO:
                warnings.append(f"intensity{channel}: the input's p0.5..p99.5 {p0_5[c]:.4g}..{p99_5[c]:.4g} spans "
                                f"{width:.4g}, the training data's {trained_width:.4g} (rescaled or another "
                                f"kind of image?)")
    return warnings
