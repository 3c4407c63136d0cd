"""Classification: image -> class (binary or multi-class), with its metrics, evaluator, export and predict writer.

Targets come from the example's ``label``; kinds without one but with a ``mask`` (brachy-ct) are labelled 1 when
the mask has any foreground, so e.g. ``lgg-mri`` slices train as tumour / no tumour. Binary models (one sigmoid
output) take ``(B, 1)`` float targets; multi-class models (softmax over K) integer class indices.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import keras
import numpy as np

from medtf.inferers import classification_views, invariant_tta
from medtf.tasks.base import Task, main_output


@keras.saving.register_keras_serializable(package="medtf")
class SparseAUC(keras.metrics.AUC):
    """Macro one-vs-rest ROC AUC of softmax outputs ``(B, K)`` against integer labels ``(B,)`` / ``(B, 1)``."""

    def __init__(self, num_classes, name="auc", **kwargs):
        kwargs.pop("multi_label", None), kwargs.pop("num_labels", None)
        super().__init__(name=name, multi_label=True, num_labels=int(num_classes), **kwargs)
        self.num_classes = int(num_classes)

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,))
        return super().update_state(keras.ops.one_hot(labels, self.num_classes), y_pred, sample_weight)

    def get_config(self):
        config = super().get_config()
        return {**config, "num_classes": self.num_classes}


def _classes(model) -> int:
    return int(main_output(model.outputs).shape[-1])


def tta_views(model, shift: int = 0) -> list:
    """`medtf.inferers.classification_views` for ``model``'s input: quarter turns unless its H and W are fixed
    and differ (a turned non-square crop would not fit; a network that takes any size takes it turned)."""
    shape = tuple(model.inputs[0].shape)
    spatial = shape[1:-1]
    square = None in spatial[-2:] or spatial[-1] == spatial[-2]
    return classification_views(len(spatial), square=square, shift=int(shift))


# === Evaluation statistics (NumPy) ===

def _auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the rank statistic (ties count half); NaN when only one class is present."""
    pos, neg = score[y == 1], score[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def classification_scores(labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> dict:
    """AUC, sensitivity, specificity, balanced accuracy, F1 and accuracy of one set of predictions.

    Binary (``probabilities (N,)`` or ``(N, 1)``): positives are ``p >= threshold``. Multi-class (``(N, K)``):
    the argmax; AUC, sensitivity (recall), specificity and F1 are macro averages over the classes (one vs rest).
    """
    labels = np.asarray(labels).astype(int).ravel()
    probs = np.asarray(probabilities, np.float64)
    if probs.ndim == 1 or probs.shape[-1] == 1:
        probs = probs.reshape(-1)
        probs = np.stack([1 - probs, probs], axis=1)
        predicted = (probs[:, 1] >= threshold).astype(int)
        classes = [1]
    else:
        predicted = probs.argmax(axis=1)
        classes = list(range(probs.shape[1]))
    sens, spec, f1, auc = [], [], [], []
    for k in classes:
        t, p = labels == k, predicted == k
        tp, fp, fn, tn = (t & p).sum(), (~t & p).sum(), (t & ~p).sum(), (~t & ~p).sum()
        sens.append(tp / (tp + fn) if tp + fn else np.nan)
        spec.append(tn / (tn + fp) if tn + fp else np.nan)
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else np.nan)
        auc.append(_auc(t.astype(int), probs[:, k]))
    sensitivity, specificity = float(np.nanmean(sens)), float(np.nanmean(spec))
    return {"auc": float(np.nanmean(auc)) if not np.all(np.isnan(auc)) else float("nan"),
            "sensitivity": sensitivity, "specificity": specificity,
            "balanced_accuracy": float(np.nanmean(sens)) if len(classes) > 1 else (sensitivity + specificity) / 2,
            "f1": float(np.nanmean(f1)), "accuracy": float((predicted == labels).mean())}


def bootstrap_summary(labels, probabilities, threshold: float = 0.5, samples: int = 1000, seed: int = 0,
                      level: float = 0.95) -> dict:
    """`classification_scores` with percentile bootstrap confidence intervals (examples resampled with
    replacement ``samples`` times): ``{metric: {"value", "ci_low", "ci_high"}, "n", "bootstrap_samples"}``."""
    labels = np.asarray(labels).astype(int).ravel()
    probabilities = np.asarray(probabilities)
    point = classification_scores(labels, probabilities, threshold)
    rng = np.random.default_rng(seed)
    draws = {k: [] for k in point}
    with np.errstate(invalid="ignore"):
        for _ in range(samples):
            idx = rng.integers(0, len(labels), len(labels))
            for k, v in classification_scores(labels[idx], probabilities[idx], threshold).items():
                draws[k].append(v)
    alpha = (1 - level) / 2
    out = {}
    for k, v in point.items():
        finite = np.asarray([d for d in draws[k] if np.isfinite(d)])
        low, high = (np.quantile(finite, [alpha, 1 - alpha]) if len(finite) else (np.nan, np.nan))
        out[k] = {"value": v, "ci_low": float(low), "ci_high": float(high)}
    return {**out, "n": int(len(labels)), "bootstrap_samples": samples, "confidence_level": level}


def _curve_image(xs, ys, size: int = 128) -> np.ndarray:
    """A step curve through ``(x, y)`` points in [0, 1]^2 drawn white on black, ``(size, size, 1)`` uint8."""
    image = np.zeros((size, size, 1), np.uint8)
    image[-1, :] = image[:, 0] = 80  # axes
    for (x0, y0), (x1, y1) in zip(zip(xs[:-1], ys[:-1]), zip(xs[1:], ys[1:])):
        for t in np.linspace(0, 1, size):
            x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
            image[size - 1 - int(round(y * (size - 1))), int(round(x * (size - 1))), 0] = 255
    return image


def curves(labels, scores) -> dict:
    """Binary ROC ``(fpr, tpr)`` and precision-recall ``(recall, precision)`` points, thresholds high to low."""
    labels = np.asarray(labels).astype(int).ravel()
    order = np.argsort(-np.asarray(scores, np.float64).ravel(), kind="stable")
    t = labels[order]
    tp, fp = np.concatenate([[0], np.cumsum(t)]), np.concatenate([[0], np.cumsum(1 - t)])
    pos, neg = max(1, t.sum()), max(1, (1 - t).sum())
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
    return {"roc": (fp / neg, tp / pos), "pr": (tp / pos, precision)}


def write_tensorboard(log_dir, labels, probabilities, threshold: float = 0.5) -> None:
    """ROC and PR curves (per class, one vs rest) and the confusion matrix as TensorBoard images."""
    import tensorflow as tf

    labels = np.asarray(labels).astype(int).ravel()
    probs = np.asarray(probabilities, np.float64)
    binary = probs.ndim == 1 or probs.shape[-1] == 1
    scores = probs.reshape(-1, 1) if binary else probs
    predicted = (scores[:, 0] >= threshold).astype(int) if binary else scores.argmax(1)
    k = 2 if binary else scores.shape[1]
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    cell = 32
    heat = (255 * confusion / max(1, confusion.max())).astype(np.uint8)
    heat = np.kron(heat, np.ones((cell, cell), np.uint8))[..., None]
    with tf.summary.create_file_writer(str(log_dir)).as_default():
        for c in range(scores.shape[1]):
            target = labels if binary else (labels == c).astype(int)
            points = curves(target, scores[:, c])
            name = "" if binary else f"_class{c}"
            tf.summary.image(f"roc{name}", _curve_image(*points["roc"])[None], step=0,
                             description="ROC curve: false positive rate (x) vs sensitivity (y)")
            tf.summary.image(f"pr{name}", _curve_image(*points["pr"])[None], step=0,
                             description="precision (y) vs recall (x)")
        tf.summary.image("confusion_matrix", heat[None], step=0,
                         description=f"rows: truth, columns: prediction; counts {confusion.tolist()}")
        tf.summary.text("confusion_matrix_counts", json.dumps(confusion.tolist()), step=0)


class ClassificationTask(Task):
    """``image`` -> ``label``; default loss binary / sparse categorical cross-entropy, metrics AUC (monitor
    ``val_auc``), accuracy, precision and recall (binary)."""

    name = "classification"
    fields = ("image",)
    image_panels = False

    # === Data ===
    def model_inputs(self, model=None):
        import tensorflow as tf

        binary = model is None or _classes(model) == 1

        def to_model(example):
            self.check_fields(example)
            if "label" in example:
                label = tf.reshape(example["label"], [])
            elif "mask" in example:
                label = tf.cast(tf.reduce_any(example["mask"] > 0), tf.int64)
            else:
                raise ValueError(f"task 'classification' needs a 'label' (or a 'mask') field; the data kind "
                                 f"provides {sorted(example)}")
            if binary:
                return example["image"], tf.reshape(tf.cast(label, tf.float32), [1])
            return example["image"], tf.cast(label, tf.int32)

        return to_model

    # === Compile ===
    def default_loss(self, model):
        return keras.losses.BinaryCrossentropy() if _classes(model) == 1 else \
            keras.losses.SparseCategoricalCrossentropy()

    def default_metrics(self, model):
        k = _classes(model)
        if k == 1:
            return [keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy"),
                    keras.metrics.Precision(name="precision"), keras.metrics.Recall(name="recall")]
        return [SparseAUC(k, name="auc"), keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    # === Evaluation ===
    def evaluate(self, run_dir, split: str = "test", checkpoint: str = "best", output=None, data_dir=None,
                 threshold: float = 0.5, bootstrap: int = 1000, verbose: bool = True, tta: bool = False,
                 tta_shift: int = 0, **_) -> dict:
        """Per-example probabilities CSV, summary.json (metrics with 95% bootstrap CIs) and TensorBoard images
        (ROC, PR, confusion matrix) in ``output`` (default ``RUN_DIR/eval-SPLIT``).

        ``tta``: "enhanced prediction", the mean probability over `tta_views` (flips and quarter turns in plane,
        plus 4 shifts of ``tta_shift`` pixels when > 0)."""
        from medtf.data import make_dataset
        from medtf.evaluation.report import write_summary
        from medtf.evaluation.run import build_preprocess, data_dir_of, load_run

        config, model, config_path, ckpt = load_run(run_dir, checkpoint)
        data = data_dir_of(config, config_path, data_dir)
        out = Path(output) if output is not None else Path(run_dir) / f"eval-{split}"
        out.mkdir(parents=True, exist_ok=True)
        to_model = self.model_inputs(model)
        views = tta_views(model, tta_shift) if tta else [("identity", lambda x: x)]
        predictor = invariant_tta(lambda x: main_output(model(x, training=False)), views)
        ds = make_dataset(data, split, batch_size=8, training=False, repeat=False, output="dict",
                          transforms=build_preprocess(config))
        ids, labels, probs = [], [], []
        for batch in ds:
            x, y = zip(*[to_model({k: v[i] for k, v in batch.items()}) for i in range(len(batch["image"]))])
            probs.append(np.asarray(predictor(np.stack(x)), np.float64))
            labels.extend(int(np.asarray(v).ravel()[0]) for v in y)
            key = "example_id" if "example_id" in batch else None
            ids.extend(v.decode() if isinstance(v, bytes) else str(v) for v in
                       (batch[key].numpy() if key else np.arange(len(ids), len(ids) + len(y))))
        probs = np.concatenate(probs)
        labels = np.asarray(labels)
        k = probs.shape[1]
        with open(out / "per_example.csv", "w", newline="") as f:
            writer = csv.writer(f)
            columns = ["p_positive"] if k == 1 else [f"p_class{c}" for c in range(k)]
            writer.writerow(["example_id", "label", *columns, "prediction"])
            for i, p in enumerate(probs):
                pred = int(p[0] >= threshold) if k == 1 else int(p.argmax())
                writer.writerow([ids[i], labels[i], *[f"{v:.6f}" for v in p], pred])
        summary = {"task": self.name, "split": split, "checkpoint": str(ckpt), "threshold": threshold,
                   "tta": [name for name, _ in views] if tta else None, "metrics": bootstrap_summary(labels, probs, threshold, samples=bootstrap)}
        write_summary(summary, out / "summary.json")
        write_tensorboard(out / "logs", labels, probs, threshold)
        if verbose:
            m = summary["metrics"]
            print(" ".join(f"{n} {m[n]['value']:.3f} [{m[n]['ci_low']:.3f}, {m[n]['ci_high']:.3f}]"
                           for n in ("auc", "sensitivity", "specificity", "balanced_accuracy", "f1")))
        return summary

    # === Export / predict ===
    def export(self, run_dir, checkpoint: str = "best", output=None, version=None, name=None,
               threshold: float = 0.5, tta_shift: int = 0, **_) -> Path:
        """A SavedModel whose ``serving_default`` takes raw ``images (B, *spatial, C)`` and returns
        ``probabilities (B, K)``; ``predict_tta`` the same averaged over `tta_views` (enhanced prediction);
        ``preprocess`` returns the model inputs. ``medtf.json`` says ``task`` and names the TTA views."""
        return export_classifier(self.name, run_dir, checkpoint, output, version, name, threshold,
                                 {"probabilities": lambda y: main_output(y)}, tta_shift=tta_shift)

    def predict(self, model_dir, input_path, output, threshold: float | None = None, tta: bool = False,
                lesions=None, **_) -> dict:
        """probabilities.csv and prediction.json (class, probabilities) for an image file or a folder of them;
        ``tta``: through the model's ``predict_tta`` signature (mean over flips and rotations).

        Models of lesion-crop kinds (``prostate-mpmri``, ``lung-nodules``) take a study folder plus ``lesions``
        (a lesion CSV) instead: `medtf.tasks.lesions` makes the converter's crops and writes lesions.csv, the
        JSON and overlay PNGs."""
        import tensorflow as tf

        from medtf.export.layout import METADATA_FILE, resolve_model_dir
        from medtf.tasks.lesions import LESION_KINDS, predict_lesions

        model_dir = resolve_model_dir(model_dir)
        meta = json.loads((model_dir / METADATA_FILE).read_text(encoding="utf-8"))
        if lesions is None and meta.get("kind") in LESION_KINDS:
            raise ValueError(f"this model classifies {meta['kind']} lesion crops: give the study folder as --input "
                             f"and the lesion coordinates with --lesions FILE (see medtf predict --help)")
        signatures = tf.saved_model.load(str(model_dir)).signatures
        if tta and "predict_tta" not in signatures:
            raise ValueError(f"{model_dir} has no predict_tta signature (exported before medtf had one): export "
                             f"the run again, or predict without --tta")
        served = signatures["predict_tta" if tta else "serving_default"]
        threshold = meta.get("threshold", 0.5) if threshold is None else threshold
        base = {"task": self.name, "model": str(model_dir), "threshold": threshold,
                "tta": meta.get("tta_views") if tta else None}
        if lesions is not None:
            summary = {**base, **predict_lesions(model_dir, meta, served, input_path, lesions, output, threshold)}
            summary["predictions"] = summary.pop("lesions")
            (Path(output) / "prediction.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
            return summary
        model_dir, meta, paths, images = read_for_predict(model_dir, input_path)
        rows = []
        for path, image in zip(paths, images):
            p = served(images=tf.constant(image[None], tf.float32))["probabilities"].numpy()[0]
            cls = int(p[0] >= threshold) if len(p) == 1 else int(p.argmax())
            rows.append({"input": str(path), "probabilities": [float(v) for v in p], "class": cls})
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "probabilities.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["input", *[f"p{c}" for c in range(len(rows[0]["probabilities"]))], "class"])
            for r in rows:
                writer.writerow([r["input"], *[f"{v:.6f}" for v in r["probabilities"]], r["class"]])
        summary = {**base, "predictions": rows}
        (out / "prediction.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        return summary


# === Shared by the non-segmentation tasks' export and predict ===

def export_classifier(task: str, run_dir, checkpoint, output, version, name, threshold, outputs: dict,
                      extra_signatures: dict | None = None, image_model=None, tta_shift: int | None = None) -> Path:
    """Write ``OUTPUT/NAME/VERSION`` with ``serving_default`` (raw images -> ``outputs``), ``preprocess`` and
    ``extra_signatures`` (name -> (input specs, fn)), plus ``medtf.json`` (task, kind, signatures, preprocessing).
    ``tta_shift`` not None adds ``predict_tta``: ``outputs`` averaged over `tta_views`."""
    import tensorflow as tf

    from medtf import __version__
    from medtf.export.normalization import Preprocessor
    from medtf.export.saved_model import load_checkpoint, plan_export, sha256_file, write_archive

    run_dir = Path(run_dir)
    config, ckpt, base, target = plan_export(run_dir, checkpoint, output, version, name, default_name="model")
    data = config["data"]
    model = load_checkpoint(ckpt)
    served_model = image_model if image_model is not None else model  # e.g. a dual encoder's image tower
    preprocessor = Preprocessor(data["kind"], data.get("preprocess"))
    image_input = served_model.inputs[0]
    shape = tuple(image_input.shape)
    spec = tf.TensorSpec((None,) * (len(shape) - 1) + (shape[-1],), tf.float32, name="images")

    @tf.function(input_signature=[spec])
    def serving_default(images):
        y = served_model(preprocessor.batch(images), training=False)
        return {k: tf.cast(y if fn is None else fn(y), tf.float32) for k, fn in outputs.items()}

    @tf.function(input_signature=[spec])
    def preprocess(images):
        return {"images": preprocessor.batch(images)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serving_default)
    archive.add_endpoint("preprocess", preprocess)
    signatures = {"serving_default": f"raw images -> {', '.join(outputs)}", "preprocess": "raw images -> images"}
    views = None
    if tta_shift is not None:
        views = tta_views(served_model, tta_shift)

        @tf.function(input_signature=[spec])
        def predict_tta(images):
            x = preprocessor.batch(images)
            return {k: invariant_tta(lambda v: served_model(v, training=False) if fn is None else
                                     fn(served_model(v, training=False)), views)(x) for k, fn in outputs.items()}

        archive.add_endpoint("predict_tta", predict_tta)
        signatures["predict_tta"] = (f"raw images -> {', '.join(outputs)}, mean over {len(views)} views "
                                     f"(flips, rotations{', shifts' if tta_shift else ''})")
    for sig, (specs, fn) in (extra_signatures or {}).items():
        archive.add_endpoint(sig, tf.function(fn, input_signature=specs))
        signatures[sig] = fn.__doc__ or sig
    metadata = {"format": "medtf-savedmodel-v1", "task": task, "kind": data["kind"], "model": name,
                "spatial_dims": len(shape) - 2, "in_channels": int(shape[-1]),
                "num_classes": int(main_output(model.outputs).shape[-1]) if task == "classification" else None,
                "threshold": float(threshold), **preprocessor.describe(), "signatures": signatures,
                "tta_views": [n for n, _ in views] if views else None,
                "input_name": "images", "output_names": list(outputs), "medtf_version": __version__,
                "checkpoint": {"file": ckpt.name, "sha256": sha256_file(ckpt)},
                "conversion": conversion_record(data)}
    return write_archive(archive, metadata, base, target)


def conversion_record(data: dict) -> dict | None:
    """The converter's options of the training shards (manifest ``options``: crop size / mm, channels,
    normalisation, windows ...), so `medtf predict` crops a user's study exactly as the shards were cut; None
    (with a warning) when the shards are not readable at ``data.dir``."""
    import logging

    manifest = Path(str(data.get("dir", ""))) / "manifest.json"
    try:
        found = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        logging.getLogger("medtf.export").warning("no conversion record in medtf.json: %s is not readable; "
                                                  "medtf predict --lesions will refuse this model", manifest)
        return None
    options = {k: v for k, v in (found.get("options") or {}).items() if k != "shard_size_mb"}
    return {"kind": found.get("kind"), **options}


def predict_features(task: str, model_dir, input_path, output, output_key: str, filename: str) -> dict:
    """One row of ``serving_default``'s ``output_key`` per input image (`read_for_predict`), saved as
    ``OUTPUT/filename`` (``.npy``), with ``prediction.json`` mapping rows to inputs; the summary is returned."""
    import tensorflow as tf

    model_dir, _, paths, images = read_for_predict(model_dir, input_path)
    served = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    rows = np.concatenate([served(images=tf.constant(im[None], tf.float32))[output_key].numpy() for im in images])
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / filename, rows)
    summary = {"task": task, "model": str(model_dir), filename.split(".")[0]: filename,
               "predictions": [{"input": str(p), "row": i} for i, p in enumerate(paths)]}
    (out / "prediction.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def read_for_predict(model_dir, input_path) -> tuple[Path, dict, list[Path], list[np.ndarray]]:
    """The model folder, its ``medtf.json`` and the raw images of ``input_path`` (one file or a folder of PNG /
    TIFF / NIfTI files), each ``(*spatial, C)`` float32 with the channel axis the model expects."""
    from medtf.export.layout import METADATA_FILE, resolve_model_dir
    from medtf.export.predict import read_input

    model_dir = resolve_model_dir(model_dir)
    meta = json.loads((model_dir / METADATA_FILE).read_text(encoding="utf-8"))
    input_path = Path(input_path)
    paths = sorted(p for p in input_path.iterdir() if p.is_file()) if input_path.is_dir() else [input_path]
    images = []
    for path in paths:
        array = np.asarray(read_input(path).volume.array, np.float32)
        if array.ndim == meta["spatial_dims"]:
            array = array[..., None]
        images.append(array)
    return model_dir, meta, paths, images
