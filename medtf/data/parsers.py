"""Parsers: decoded records -> training examples, and examples -> model inputs, one entry per data kind.

The second half of the decoder/parser split (tf/models ``official/vision/dataloaders/parser.py``): the decoder
(`medtf.data.decoder`) only undoes the writer's encoding; a parser casts and lays out tensors as the transforms
expect them (`medtf.transforms.base`: channels-last, float32 image, labels with a channel axis), and a model mapping
picks the ``(x, y)`` a Keras model is fitted on.

Per kind (``parse_fn`` output; ``model_inputs_fn`` output):

=============== ======================================================= ==============================================
kind            example after parsing                                   model inputs
=============== ======================================================= ==============================================
brachy-ct       image ``(D, H, W, 1)`` float32 (HU), mask and           ``(image, mask float32)``
                instances ``(D, H, W, 1)`` uint8
lgg-mri         image ``(H, W, 3)`` float32 in [0, 1], mask             ``(image, mask float32)``
                ``(H, W, 1)`` uint8, label int64
prostate-mpmri  image ``(H, W, 3)`` float32 (z-scored), label int64     ``(image, label int32)``; label -1 (unknown)
                                                                        is dropped in training
nuclei-he       image ``(H, W, 3)`` float32 in [0, 1], instances        ``{"image", "boxes" (max_boxes, 4),
                ``(H, W, 1)`` int32, boxes ``(N, 4)``, classes and      "classes" (max_boxes,) padded with -1,
                instance_ids ``(N,)`` int32                             "num_boxes"}`` (a single dict, no ``y``)
mri-reports     image ``(D, H, W, C)`` float32, report string, label    ``({"image", "report"}, label int32)``
image-folders   image ``(H, W, C)`` float32 in [0, 1], label int64      ``(image, label int32)``
lung-nodules    image ``(H, W, C)`` float32 (windowed or HU), label     ``(image, label int32)``
=============== ======================================================= ==============================================

Every other stored field (ids, geometry, ...) passes through the parser unchanged, so ``output="dict"`` pipelines
see them.

Example:
    >>> parse = parse_fn("lgg-mri", training=True)
    >>> example = parse(decode_example(serialized, LGG_MRI))     # example["image"]: (H, W, 3) float32
    >>> x, y = model_inputs_fn("lgg-mri")(example)
"""

from __future__ import annotations

from typing import Callable, Mapping

import tensorflow as tf

DEFAULT_MAX_BOXES = 256


def _channels(manifest: Mapping | None, default=None):
    """Channel count of mri-reports images from the manifest's sequence list (static shape for Keras)."""
    sequences = ((manifest or {}).get("options") or {}).get("sequences")
    return len(sequences) if sequences else default


def _parse_brachy(example: dict, training: bool, manifest=None) -> dict:
    out = dict(example)
    out["image"] = tf.cast(example["image"], tf.float32)[..., None]
    out["mask"] = example["mask"][..., None]
    out["instances"] = example["instances"][..., None]
    return out


# Stored image values are divided by this to give the model input (uint8 RGB -> [0, 1]); kinds not listed are
# stored in model units already (CT in HU). `medtf.export` bakes the same divisor into exported SavedModels.
_IMAGE_SCALE: dict[str, float] = {"lgg-mri": 255.0, "nuclei-he": 255.0, "image-folders": 255.0}


def image_scale(kind: str) -> float:
    """Divisor from stored image values to model input values for ``kind`` (255 for uint8 RGB kinds, else 1).

    The parser computes ``image = float32(stored) / image_scale(kind)``; exporters and predictors that start
    from raw images (RGB 0..255, CT in HU) apply the same division so serving matches training.

    Example:
        >>> image_scale("lgg-mri"), image_scale("brachy-ct")
        (255.0, 1.0)
    """
    _lookup(_PARSERS, kind)
    return _IMAGE_SCALE.get(kind, 1.0)


def _parse_lgg(example: dict, training: bool, manifest=None) -> dict:
    out = dict(example)
    image = tf.cast(example["image"], tf.float32) / image_scale("lgg-mri")
    image.set_shape([None, None, 3])
    out["image"] = image
    mask = tf.identity(example["mask"])
    mask.set_shape([None, None, 1])
    out["mask"] = mask
    return out


def _parse_prostate(example: dict, training: bool, manifest=None) -> dict:
    out = dict(example)
    image = tf.cast(example["image"], tf.float32)
    channels = ((manifest or {}).get("options") or {}).get("channels") or [None] * 3  # names; dwi alone: 1
    image.set_shape([None, None, len(channels)])
    out["image"] = image
    return out


def _parse_image_folders(example: dict, training: bool, manifest=None) -> dict:
    out = dict(example)
    options = (manifest or {}).get("options") or {}
    image = tf.cast(example["image"], tf.float32) / image_scale("image-folders")
    size = options.get("resize") or [None, None]  # static when the converter resized (flatten heads need it)
    image.set_shape([size[0], size[1], options.get("channels")])
    out["image"] = image
    return out


def _parse_lung_nodules(example: dict, training: bool, manifest=None) -> dict:
    out = dict(example)
    options = (manifest or {}).get("options") or {}
    image = tf.cast(example["image"], tf.float32)
    size = options.get("patch_size")
    image.set_shape([size, size, options.get("channels")])
    out["image"] = image
    return out


def _parse_nuclei(example: dict, training: bool, manifest=None) -> dict:
    out = dict(example)
    image = tf.cast(example["image"], tf.float32) / 255.0
    image.set_shape([None, None, 3])
    out["image"] = image
    out["instances"] = tf.cast(example["instances"], tf.int32)[..., None]
    out["boxes"] = tf.reshape(tf.cast(example["boxes"], tf.float32), [-1, 4])
    out["classes"] = tf.cast(example["classes"], tf.int32)
    out["instance_ids"] = tf.cast(example["instance_ids"], tf.int32)
    return out


def _parse_reports(example: dict, training: bool, manifest=None) -> dict:
    out = dict(example)
    image = tf.cast(example["image"], tf.float32)
    image.set_shape([None, None, None, _channels(manifest)])
    out["image"] = image
    return out


def _segmentation_inputs(example: dict, **_):
    return example["image"], tf.cast(example["mask"], tf.float32)


def _classification_inputs(example: dict, **_):
    return example["image"], tf.cast(example["label"], tf.int32)


def _reports_inputs(example: dict, **_):
    return {"image": example["image"], "report": example["report"]}, tf.cast(example["label"], tf.int32)


def pad_boxes(boxes: tf.Tensor, classes: tf.Tensor, max_boxes: int):
    """Pad (or truncate) ``boxes (N, 4)`` with zeros and ``classes (N,)`` with -1 to ``max_boxes`` rows.

    Returns:
        ``(boxes (max_boxes, 4) float32, classes (max_boxes,) int32, num_boxes int32)``.
    """
    n = tf.minimum(tf.shape(boxes)[0], max_boxes)
    boxes = tf.pad(tf.cast(boxes[:n], tf.float32), [[0, max_boxes - n], [0, 0]])
    classes = tf.pad(tf.cast(classes[:n], tf.int32), [[0, max_boxes - n]], constant_values=-1)
    boxes.set_shape([max_boxes, 4])
    classes.set_shape([max_boxes])
    return boxes, classes, n


def _nuclei_inputs(example: dict, max_boxes: int = DEFAULT_MAX_BOXES, **_):
    boxes, classes, n = pad_boxes(example["boxes"], example["classes"], max_boxes)
    return {"image": example["image"], "boxes": boxes, "classes": classes, "num_boxes": n}


def _known_label(example: dict) -> tf.Tensor:
    return example["label"] >= 0


_PARSERS: dict[str, Callable] = {
    "brachy-ct": _parse_brachy,
    "lgg-mri": _parse_lgg,
    "prostate-mpmri": _parse_prostate,
    "nuclei-he": _parse_nuclei,
    "mri-reports": _parse_reports,
    "image-folders": _parse_image_folders,
    "lung-nodules": _parse_lung_nodules,
}
_MODEL_INPUTS: dict[str, Callable] = {
    "brachy-ct": _segmentation_inputs,
    "lgg-mri": _segmentation_inputs,
    "prostate-mpmri": _classification_inputs,
    "nuclei-he": _nuclei_inputs,
    "mri-reports": _reports_inputs,
    "image-folders": _classification_inputs,
    "lung-nodules": _classification_inputs,
}
_TRAINING_FILTERS: dict[str, Callable] = {"prostate-mpmri": _known_label}


def _lookup(table: dict, kind: str):
    try:
        return table[kind]
    except KeyError:
        raise KeyError(f"no parser for data kind {kind!r}; known: {sorted(table)}") from None


def parse_fn(kind: str, training: bool, manifest: Mapping | None = None) -> Callable[[dict], dict]:
    """A ``Dataset.map``-able ``decoded example -> parsed example`` for ``kind`` (see the module table).

    Args:
        kind: data kind (``manifest["kind"]``).
        training: training-mode parsing (today only `keep_fn` differs between modes; kept for the tf/models
            ``parse_fn(is_training)`` contract).
        manifest: the shard folder's manifest, used for static channel counts (mri-reports sequences).
    """
    parser = _lookup(_PARSERS, kind)

    def parse(example: dict) -> dict:
        return parser(example, training, manifest)

    return parse


def keep_fn(kind: str, training: bool) -> Callable[[dict], tf.Tensor] | None:
    """Predicate on parsed examples for ``Dataset.filter`` (e.g. unknown prostate labels in training), or None."""
    _lookup(_PARSERS, kind)
    return _TRAINING_FILTERS.get(kind) if training else None


def model_inputs_fn(kind: str, *, max_boxes: int = DEFAULT_MAX_BOXES) -> Callable[[dict], object]:
    """``parsed example -> (x, y)`` (or a single dict for nuclei-he) as Keras ``fit`` consumes it."""
    mapping = _lookup(_MODEL_INPUTS, kind)

    def to_model(example: dict):
        return mapping(example, max_boxes=max_boxes)

    return to_model
