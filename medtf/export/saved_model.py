"""Export a training run's checkpoint as a TF Serving SavedModel that takes raw images (``medtf export``).

The SavedModel carries three signatures (all float32, channels-last, any spatial size the model accepts):

==================  ==========================================  =====================================================
signature           input ``images``                            output
==================  ==========================================  =====================================================
``serving_default`` raw images ``(B, *spatial, C)`` as stored   ``probabilities (B, *spatial, K)``: scaling +
                    (CT in HU, RGB 0..255)                      ``data.preprocess`` per image, then the model
``preprocess``      raw images                                  ``images``: the model inputs (scaling + preprocess)
``predict_patch``   model inputs (already preprocessed)         ``probabilities``: the model alone
==================  ==========================================  =====================================================

Models that output logits (medtf models with ``final_activation=None``) get a sigmoid/softmax appended, so
``probabilities`` always holds probabilities (``medtf.json`` ``output_activation`` says which).

Any spatial size works: U-Nets need sizes divisible by ``size_divisor`` (``medtf.json``), so ``serving_default`` and
``predict_patch`` pad the *preprocessed* input inside the graph up to the next multiple (split evenly before and
after on each axis) and crop the probabilities back. The padding value is each image's and channel's minimum after
preprocessing: for windowed CT that is the window's floor (air and anything below the window, i.e. background),
for RGB/MR the darkest background. Reflect/symmetric padding would mirror anatomy (a catheter near the border
would appear twice) and fails on axes shorter than the padding; zero would be mid-grey after zscore.

``serving_default`` is what a TF Serving client calls on whole images. Sliding-window inference must not use it
patch by patch: preprocessing with image statistics (zscore, minmax) would then see one patch instead of the whole
image as in training. `medtf predict` therefore calls ``preprocess`` once and slides ``predict_patch``.

``medtf.json`` next to ``saved_model.pb`` holds what a predictor needs (kind, dims, channels, classes, patch size,
threshold, preprocessing, source checkpoint hash) and nothing about patients.

Example:
    >>> version_dir = export_run("runs/brachy", checkpoint="best")     # runs/brachy/export/unet3d/1
    >>> serve = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    >>> serve(images=tf.constant(ct_hu[None, ..., None], tf.float32))["probabilities"]
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from medtf.export.fingerprint import fingerprint_for_export
from medtf.export.layout import METADATA_FILE, ExportError, next_version, publish
from medtf.export.normalization import Preprocessor
from medtf.layers.padding import pad_to_multiple
from medtf.tasks.base import main_output

DEFAULT_THRESHOLD = 0.5
FORMAT = "medtf-savedmodel/1"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_run(run_dir: str | os.PathLike) -> dict:
    """The resolved ``config.yaml`` of a run directory, with ``data.kind`` filled from the shard manifest if absent.

    Raises:
        ExportError: no config, or the data kind cannot be determined.
    """
    import yaml

    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ExportError(f"{run_dir}: no config.yaml (not a run directory written by `medtf train`)")
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    data = dict(config.get("data") or {})
    if not data.get("kind"):
        manifest = Path(str(data.get("dir", ""))) / "manifest.json"
        if not data.get("dir") or not manifest.is_file():
            raise ExportError(f"{path}: data.kind is not set and the shard manifest {manifest} is not readable")
        data["kind"] = json.loads(manifest.read_text(encoding="utf-8"))["kind"]
    config["data"] = data
    return config


def resolve_patch_size(patch: Any, spatial_dims: int) -> list[int] | None:
    """``data.patch_size`` (an int, a list, or a sampler spec ``{"name", "size"}``) -> one int per spatial axis."""
    if isinstance(patch, Mapping):
        patch = patch.get("size", patch.get("patch_size"))
    if patch is None:
        return None
    if isinstance(patch, (int, float)):
        return [int(patch)] * spatial_dims
    patch = [int(p) for p in patch]
    if len(patch) != spatial_dims:
        raise ExportError(f"data.patch_size {patch} does not have {spatial_dims} spatial axes")
    return patch


def load_checkpoint(path: Path):
    """A ``.keras`` checkpoint without its optimizer/loss (medtf's registered layers and models imported first)."""
    import keras

    import medtf.layers  # noqa: F401  (registers serializable layers, models, losses and metrics)
    import medtf.losses  # noqa: F401
    import medtf.metrics  # noqa: F401
    import medtf.models  # noqa: F401

    if not path.is_file():
        raise ExportError(f"checkpoint {path} does not exist")
    return keras.saving.load_model(str(path), compile=False)


def model_facts(model) -> dict:
    """Spatial dims, input channels, classes, size divisor (``2**(depth-1)`` for U-Nets) and output activation.

    ``output_activation`` is what the export appends so the output really is a probability: medtf models built
    with ``final_activation=None`` emit logits and get ``sigmoid`` (one class) or ``softmax``; models that do not
    declare ``final_activation`` are taken to output probabilities already.
    """
    shape = tuple(model.inputs[0].shape)
    out = main_output(model.outputs)
    num_classes = int(out.shape[-1])
    depth = getattr(model, "depth", None)
    declared = getattr(model, "final_activation", "undeclared")
    added = None
    if declared in (None, "linear"):
        added = "sigmoid" if num_classes == 1 else "softmax"
    return {"spatial_dims": len(shape) - 2, "in_channels": int(shape[-1]), "num_classes": num_classes,
            "size_divisor": 2 ** (int(depth) - 1) if depth else 1,
            "final_activation": None if declared == "undeclared" else declared, "output_activation": added}


def build_archive(model, preprocessor: Preprocessor, spatial_dims: int, in_channels: int,
                  output_activation: str | None = None, size_divisor: int = 1):
    """A `keras.export.ExportArchive` with the three signatures of the module docstring (inputs of any size are
    padded to ``size_divisor`` in the graph, see `pad_to_multiple`)."""
    import keras
    import tensorflow as tf

    spec = tf.TensorSpec(shape=(None,) * (spatial_dims + 1) + (in_channels,), dtype=tf.float32, name="images")
    activation = {None: tf.identity, "sigmoid": tf.sigmoid, "softmax": tf.nn.softmax}[output_activation]

    def model_fn(x):
        padded, crop = pad_to_multiple(x, size_divisor, spatial_dims)
        return crop(activation(tf.cast(main_output(model(padded, training=False)), tf.float32)))

    @tf.function(input_signature=[spec])
    def serving_default(images):
        return {"probabilities": model_fn(preprocessor.batch(images))}

    @tf.function(input_signature=[spec])
    def preprocess(images):
        return {"images": preprocessor.batch(images)}

    @tf.function(input_signature=[spec])
    def predict_patch(images):
        return {"probabilities": model_fn(images)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serving_default)  # first endpoint: TF Serving's default
    archive.add_endpoint("preprocess", preprocess)
    archive.add_endpoint("predict_patch", predict_patch)
    return archive


def plan_export(run_dir: str | os.PathLike, checkpoint: str = "best", output: str | os.PathLike | None = None,
                version: int | None = None, name: str | None = None, default_name: str = "model"):
    """``(config, checkpoint_path, model_base, target)`` of a run's export, shared by every task's exporter.

    ``target`` is ``OUTPUT/NAME/VERSION`` (default ``RUN_DIR/export/<model.name or default_name>/<next version>``).
    Raises `ExportError` for a bad name or version, and for an existing non-empty version: versions are never
    overwritten, so a served model cannot change under its clients.
    """
    run_dir = Path(run_dir)
    config = read_run(run_dir)
    ckpt = Path(checkpoint) if checkpoint not in ("best", "last") else run_dir / "checkpoints" / f"{checkpoint}.keras"
    name = name or str((config.get("model") or {}).get("name") or default_name)
    if not name or "/" in name or name.startswith("."):
        raise ExportError(f"invalid model name {name!r}")
    model_base = (Path(output) if output is not None else run_dir / "export") / name
    if version is None:
        version = next_version(model_base)
    elif int(version) < 1:
        raise ExportError(f"version must be a positive integer, got {version}")
    target = model_base / str(int(version))
    if target.exists() and any(target.iterdir()):
        raise ExportError(f"version {version} already exists in {model_base}; versions are never overwritten")
    return config, ckpt, model_base, target


def export_run(run_dir: str | os.PathLike, checkpoint: str = "best", output: str | os.PathLike | None = None,
               version: int | None = None, name: str | None = None, threshold: float = DEFAULT_THRESHOLD,
               data_dir: str | os.PathLike | None = None) -> Path:
    """Export ``run_dir/checkpoints/<checkpoint>.keras`` to ``OUTPUT/NAME/VERSION`` (see the module docstring).

    Args:
        run_dir: a run directory of `medtf.training.engine.train` (``config.yaml`` + ``checkpoints/``).
        checkpoint: ``"best"``, ``"last"`` or a path to a ``.keras`` file.
        output: base folder (default ``run_dir/export``).
        version: version number; default the next free one. An existing version is never overwritten.
        name: model name (default the config's ``model.name``).
        threshold: default decision threshold recorded in ``medtf.json``.
        data_dir: shard folder of the training data (default the config's ``data.dir``), whose fingerprint
            ``medtf.json`` records for `medtf predict`'s out-of-distribution warnings (`medtf.export.fingerprint`);
            without readable data the model is exported without one, with a warning.

    Returns:
        The published version folder.

    Raises:
        ExportError: missing config/checkpoint, existing version, inconsistent patch size.
    """
    from medtf import __version__

    run_dir = Path(run_dir)
    config, ckpt, model_base, target = plan_export(run_dir, checkpoint, output, version, name)
    data = config["data"]

    model = load_checkpoint(ckpt)
    facts = model_facts(model)
    preprocessor = Preprocessor(data["kind"], data.get("preprocess"))
    archive = build_archive(model, preprocessor, facts["spatial_dims"], facts["in_channels"],
                            facts["output_activation"], facts["size_divisor"])
    metadata = {
        "format": FORMAT,
        "kind": data["kind"],
        "model": name,
        **facts,
        "patch_size": resolve_patch_size(data.get("patch_size"), facts["spatial_dims"]),
        "threshold": float(threshold),
        **preprocessor.describe(),
        "signatures": {"serving_default": "raw images -> probabilities", "preprocess": "raw images -> images",
                       "predict_patch": "preprocessed images -> probabilities"},
        "input_name": "images",
        "output_name": "probabilities",
        "medtf_version": __version__,
        "checkpoint": {"file": ckpt.name, "sha256": sha256_file(ckpt)},
    }
    metadata["fingerprint"], why_not = fingerprint_for_export(config, run_dir, facts["spatial_dims"], data_dir)
    if why_not:
        logging.getLogger("medtf.export").warning("no training-data fingerprint in %s: %s; medtf predict will not "
                                                  "warn about inputs unlike the training data", METADATA_FILE, why_not)

    return write_archive(archive, metadata, model_base, target)


def write_archive(archive, metadata: dict, base: Path, target: Path) -> Path:
    """Write ``archive`` + ``medtf.json`` into a temporary folder under ``base`` and publish it as ``target``
    (atomic: a half-written export never looks complete)."""
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    logger = logging.getLogger("tensorflow")
    level = logger.level
    try:
        logger.setLevel(logging.WARNING)  # "Assets written to: <tmp dir>" would name the temporary folder
        archive.write_out(str(tmp), verbose=False)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        return publish(tmp, target)
    finally:
        logger.setLevel(level)
        shutil.rmtree(tmp, ignore_errors=True)
