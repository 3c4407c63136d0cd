"""`medtf export` of a nucleus classification run: a SavedModel that maps an H&E tile + nucleus boxes to
per-nucleus class probabilities.

Signatures (``H, W, C`` the model's image size; ``N <= max_nuclei`` boxes per call, ``(ymin, xmin, ymax, xmax)``
in image pixels, corners: a box ``[1, 2, 3, 5]`` holds rows 1-2 and columns 2-4, as the nuclei-he converter's):

==================  ===========================================================  ==================================
signature           input                                                        output
==================  ===========================================================  ==================================
serving_default     ``images (B, H, W, C)`` float32 raw (0-255),                 ``probabilities (B, N, K)``
                    ``boxes (B, N, 4)`` float32, ``num_boxes (B,)`` int32        float32 (rows past num_boxes:
                                                                                 padding, to be ignored)
classify_all        ``images``, ``boxes``: every box is a real nucleus           ``probabilities (B, N, K)``
preprocess          raw float32 images                                           ``images`` as the model sees them
==================  ===========================================================  ==================================

The boxes are padded to the model's ``max_nuclei`` slots inside the graph; more boxes than slots fail with the
limit named (`medtf.tasks.nucleus_predict` splits a tile's nuclei into calls of at most ``max_nuclei``).
``medtf.json`` records ``class_names`` (the shards' manifest, else ``class_0..``), ``image_size``,
``max_nuclei`` and the training normalisation.
"""

from __future__ import annotations

from pathlib import Path


def class_names_of(config: dict, run_dir: Path, num_classes: int, data_dir=None) -> list[str]:
    """The nucleus class names of the run's shards (manifest ``options.class_names`` minus background); generic
    ``class_k`` names when the shards are gone or list no (or other) classes."""
    from medtf.data.manifest import ManifestError
    from medtf.tasks.nucleus_classification import manifest_classes

    folder = Path(data_dir) if data_dir is not None else Path(str((config.get("data") or {}).get("dir", "")))
    try:
        names = manifest_classes(folder)
    except (ManifestError, OSError, ValueError):  # moved / unreadable shards must not block the export
        names = None
    if names is None or len(names) != num_classes:
        return [f"class_{k}" for k in range(num_classes)]
    return [str(n) for n in names]


def export_nucleus_classifier(run_dir, checkpoint: str = "best", output=None, version=None, name=None,
                              data_dir=None) -> Path:
    """Write ``OUTPUT/NAME/VERSION`` (default ``RUN_DIR/export/<model name>/<next version>``); returns it."""
    import keras
    import tensorflow as tf

    from medtf import __version__
    from medtf.export.layout import ExportError
    from medtf.export.normalization import Preprocessor
    from medtf.export.saved_model import load_checkpoint, plan_export, sha256_file, write_archive
    from medtf.models.vit.vit_backbone import image_hw

    run_dir = Path(run_dir)
    config, ckpt, base, target = plan_export(run_dir, checkpoint, output, version, name, default_name="nucleus_classifier")
    data = config["data"]
    model = load_checkpoint(ckpt)
    if not (getattr(model, "max_nuclei", None) and getattr(model, "num_classes", None)):
        raise ExportError(f"{ckpt}: not a nucleus classifier ({type(model).__name__}); the run's task is "
                          f"'nucleus_classification'")
    slots, k = int(model.max_nuclei), int(model.num_classes)
    height, width = image_hw(model.image_size)
    preprocessor = Preprocessor(data["kind"], data.get("preprocess"))
    image_spec = tf.TensorSpec((None, height, width, model.num_channels), tf.float32, name="images")
    box_spec = tf.TensorSpec((None, None, 4), tf.float32, name="boxes")
    count_spec = tf.TensorSpec((None,), tf.int32, name="num_boxes")

    def classify(images, boxes, num_boxes):
        n = tf.shape(boxes)[1]
        check = tf.debugging.assert_less_equal(n, slots, message=(
            f"more boxes than the model's max_nuclei {slots} in one call; split them into calls of at most "
            f"{slots}"))
        with tf.control_dependencies([check]):
            padded = tf.pad(boxes, [[0, 0], [0, slots - n], [0, 0]])
        padded = tf.ensure_shape(padded, (None, slots, 4))
        count = tf.minimum(tf.cast(num_boxes, tf.int32), n)
        probs = model({"images": prep(images), "boxes": padded, "num_boxes": count}, training=False)
        return {"probabilities": tf.cast(probs, tf.float32)[:, :n]}

    # Tracing dominates the export time: one traced model graph for both signatures, and autograph only for the
    # preprocessing transforms (rewriting the plain-TF model graph took 5 of 10 s for a tiny ViT).
    prep = tf.function(preprocessor.batch, autograph=bool(preprocessor.specs))
    serving = tf.function(classify, input_signature=[image_spec, box_spec, count_spec], autograph=False)

    def classify_all(images, boxes):
        return serving(images, boxes, tf.fill(tf.shape(boxes)[:1], tf.shape(boxes)[1]))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serving)
    archive.add_endpoint("classify_all", tf.function(classify_all, input_signature=[image_spec, box_spec],
                                                     autograph=False))
    archive.add_endpoint("preprocess", tf.function(lambda images: {"images": preprocessor.batch(images)},
                                                   input_signature=[image_spec]))
    signatures = {"serving_default": "raw images, boxes, num_boxes -> probabilities",
                  "classify_all": "raw images, boxes (all real) -> probabilities",
                  "preprocess": "raw images -> images"}
    metadata = {"format": "medtf-savedmodel-v1", "task": "nucleus_classification", "kind": data["kind"],
                "model": name, "spatial_dims": 2, "in_channels": int(model.num_channels),
                "image_size": [int(height), int(width)], "patch_size": int(model.patch_size), "max_nuclei": slots,
                "num_classes": k, "class_names": class_names_of(config, run_dir, k, data_dir),
                "box_format": "ymin, xmin, ymax, xmax (image pixels, corners)", **preprocessor.describe(),
                "signatures": signatures, "input_name": "images", "output_names": ["probabilities"],
                "medtf_version": __version__, "checkpoint": {"file": ckpt.name, "sha256": sha256_file(ckpt)}}
    return write_archive(archive, metadata, base, target)
