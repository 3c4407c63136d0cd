"""Nucleus classification: every ground-truth nucleus box of an H&E tile -> one of the data set's classes.

The model (`medtf.models.vit.NucleusClassifier`) takes ``{"images", "boxes" (B, M, 4), "num_boxes" (B,)}`` and
gives per-slot probabilities ``(B, M, K)``. `model_inputs` pads / truncates the example's boxes to
``M = max_nuclei`` (`medtf.data.parsers.pad_boxes`; a tile with more nuclei keeps its first ``M``) and turns the
stored class ids ``1..K`` (0 is background in ``nuclei-he`` manifests) into labels ``0..K-1``, ``-1`` for padding.
``K`` is the shards' ``options.class_names`` minus background (PanNuke 5, CoNSeP merged 4); a class id above the
model's ``num_classes`` stops the input pipeline with the fix named, and the evaluator checks ``K`` against the
manifest.

Loss: cross-entropy pooled over the real nuclei of the batch (padding ignored). Metrics: ``accuracy`` and macro
``f1`` over the real nuclei (monitor ``val_f1``). Evaluation (the paper's protocol: ground-truth boxes) writes
per_nucleus.csv, summary.json (accuracy, macro F1, per-class precision / recall / F1 / support, confusion matrix)
and the confusion matrix as a TensorBoard image.
"""

from __future__ import annotations

import csv
from pathlib import Path

import keras
import numpy as np
from keras import ops

from medtf.tasks.base import Task


def _valid(y_true):
    labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
    return ops.maximum(labels, 0), ops.cast(labels >= 0, "float32")


def _global_count(count):
    """``(nuclei of the global batch, replicas)``: ``count`` summed over the replicas of a distribution strategy
    (inside a replica context, e.g. a Keras train / test step under MirroredStrategy), else ``(count, 1)``."""
    if keras.backend.backend() != "tensorflow":
        return count, 1
    import tensorflow as tf

    context = tf.distribute.get_replica_context()  # None in a cross-replica context: nothing to sum over
    if context is None or context.num_replicas_in_sync == 1:
        return count, 1
    return context.all_reduce("sum", tf.stop_gradient(count)), context.num_replicas_in_sync


@keras.saving.register_keras_serializable(package="medtf")
class NucleusLoss(keras.losses.Loss):
    """Cross-entropy of probabilities ``y_pred (B, M, K)`` against labels ``y_true (B, M)`` (``-1``: padding),
    pooled over the real nuclei of the *global* batch: per-example values are scaled so their batch mean is the
    mean over nuclei (a tile with many nuclei weighs more than one with few, as every nucleus is one sample).

    Under a distribution strategy each replica sees part of the batch; pooling per replica would weigh the nuclei
    of a replica with few of them more (one MirroredStrategy step then differs from one device). So the nucleus
    count is all-reduced over the replicas and each replica's summed cross-entropy is divided by it; Keras
    divides a replica's loss by the replica count before the gradients are summed, which is undone here (factor
    ``replicas``): the summed gradient is that of the global mean, and the logged loss (Keras unscales it and
    averages it over the replicas) is the global mean too (tests/tasks/_nucleus_loss_replicas_check.py)."""

    def __init__(self, name="nucleus_loss", reduction="sum_over_batch_size", dtype="float32"):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        shape = ops.shape(y_pred)
        labels, valid = _valid(y_true)
        probs = ops.reshape(ops.cast(y_pred, "float32"), (-1, shape[-1]))
        ce = keras.losses.sparse_categorical_crossentropy(labels, probs) * valid
        per_example = ops.sum(ops.reshape(ce, (shape[0], -1)), axis=-1)
        total, replicas = _global_count(ops.sum(valid))
        return per_example * ops.cast(shape[0] * replicas, "float32") / ops.maximum(total, 1.0)


@keras.saving.register_keras_serializable(package="medtf")
class NucleusAccuracy(keras.metrics.Mean):
    """Top-1 accuracy over every real nucleus seen."""

    def __init__(self, name="accuracy", dtype="float32"):
        super().__init__(name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels, valid = _valid(y_true)
        pred = ops.argmax(ops.reshape(y_pred, (-1, ops.shape(y_pred)[-1])), axis=-1)
        return super().update_state(ops.cast(ops.cast(pred, "int32") == labels, "float32"), sample_weight=valid)


@keras.saving.register_keras_serializable(package="medtf")
class NucleusF1(keras.metrics.Metric):
    """Macro F1 over the classes present (in truth or prediction) from a running confusion matrix of the real
    nuclei (as scikit-learn's ``f1_score(average="macro")``)."""

    def __init__(self, num_classes, name="f1", dtype="float32"):
        super().__init__(name=name, dtype=dtype)
        self.num_classes = int(num_classes)
        self.confusion = self.add_variable(shape=(self.num_classes, self.num_classes), initializer="zeros",
                                           name="confusion", aggregation="sum")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels, valid = _valid(y_true)
        pred = ops.argmax(ops.reshape(y_pred, (-1, ops.shape(y_pred)[-1])), axis=-1)
        truth = ops.one_hot(labels, self.num_classes) * valid[:, None]
        self.confusion.assign_add(ops.matmul(ops.transpose(truth), ops.one_hot(pred, self.num_classes)))

    def result(self):
        tp = ops.diagonal(self.confusion)
        fp, fn = ops.sum(self.confusion, axis=0) - tp, ops.sum(self.confusion, axis=1) - tp
        present = ops.cast(tp + fp + fn > 0, "float32")
        f1 = 2 * tp / ops.maximum(2 * tp + fp + fn, 1.0)
        return ops.sum(f1 * present) / ops.maximum(ops.sum(present), 1.0)

    def reset_state(self):
        self.confusion.assign(ops.zeros_like(self.confusion))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


def nucleus_scores(labels, predicted, num_classes: int, class_names=None) -> dict:
    """Accuracy, macro F1 (classes present in truth or prediction), per-class precision / recall / F1 / support
    (0 where undefined, as scikit-learn's ``zero_division=0``) and the confusion matrix (rows truth, columns
    prediction) of integer ``labels`` and ``predicted`` (NumPy, real nuclei only)."""
    labels, predicted = np.asarray(labels, int).ravel(), np.asarray(predicted, int).ravel()
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    tp = np.diag(confusion).astype(np.float64)
    fp, fn = confusion.sum(0) - tp, confusion.sum(1) - tp
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=tp + fn > 0)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=2 * tp + fp + fn > 0)
    present = (tp + fp + fn) > 0
    names = list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]
    return {"n": int(labels.size), "accuracy": float((labels == predicted).mean()) if labels.size else float("nan"),
            "f1": float(f1[present].mean()) if present.any() else float("nan"),
            "per_class": {names[k]: {"precision": float(precision[k]), "recall": float(recall[k]),
                                     "f1": float(f1[k]), "support": int(confusion[k].sum())}
                          for k in range(num_classes)},
            "confusion_matrix": confusion.tolist(), "class_names": names}


def manifest_classes(data_dir) -> list[str] | None:
    """The nucleus class names of a ``nuclei-he`` shard folder (manifest ``options.class_names`` without the
    background at index 0), or None when the manifest does not list them."""
    from medtf.data.manifest import read_manifest

    names = (read_manifest(data_dir).get("options") or {}).get("class_names")
    return list(names[1:]) if names else None


class NucleusClassificationTask(Task):
    """``image`` + ``boxes`` + ``classes`` -> per-nucleus class; see the module docstring."""

    name = "nucleus_classification"
    fields = ("image", "boxes", "classes")
    image_panels = False

    # === Data ===
    def model_inputs(self, model=None, with_ids: bool = False):
        import tensorflow as tf

        from medtf.data.parsers import pad_boxes

        if model is None:  # no model, no nucleus slots: the diagnostics' tiles + boxes for the attention panels
            from medtf.tasks.attention_panels import panel_inputs

            return panel_inputs
        for attr in ("max_nuclei", "num_classes", "grid"):
            if not getattr(model, attr, None):
                raise ValueError(f"task 'nucleus_classification' needs a nucleus classifier (e.g. nucleus_vit_tiny: "
                                 f"medtf.models.vit.NucleusClassifier); {model.name!r} has no {attr!r}")
        from medtf.models.vit.vit_backbone import image_hw

        slots, k = model.max_nuclei, model.num_classes
        shape = [*image_hw(model.image_size), model.num_channels]

        @tf.autograph.experimental.do_not_convert
        def to_model(example):
            self.check_fields(example)
            image = example["image"]
            if image.shape.rank != 3 or not image.shape[:2].is_compatible_with(shape[:2]):
                raise ValueError(f"task 'nucleus_classification': the model takes 2D images {shape}, the examples "
                                 f"have {image.shape}; crop them with data.patch_size / data.val_patch_size "
                                 f"{shape[:2]} (or set the model's image_size)")
            boxes, classes, n = pad_boxes(example["boxes"], example["classes"], slots)
            real = tf.range(slots) < n
            ids = tf.where(real, classes, 1)
            checks = [tf.debugging.assert_greater_equal(ids, 1, message=(
                          "task 'nucleus_classification': a nucleus has class id 0 (background); nuclei-he class "
                          "ids are 1..K")),
                      tf.debugging.assert_less_equal(ids, k, message=(
                          f"task 'nucleus_classification': a nucleus class id exceeds the model's num_classes {k}; "
                          f"set model.args.num_classes to the shards' manifest options.class_names count minus "
                          f"background (PanNuke 5, CoNSeP merged 4)"))]
            with tf.control_dependencies(checks):
                labels = tf.where(real, classes - 1, -1)
            x = {"images": tf.ensure_shape(image, shape), "boxes": boxes, "num_boxes": n}
            if not with_ids:
                return x, labels
            ident = example.get("example_id", tf.constant(""))
            ident = ident if ident.dtype == tf.string else tf.strings.as_string(ident)
            return x, {"labels": labels, "example_id": tf.reshape(ident, []),
                       "dropped": tf.shape(example["boxes"])[0] - n}

        return to_model

    def diagnostics(self, data, train_cfg, paths, best, val_examples) -> list:
        """[CLS] attention panels (`medtf.tasks.attention_panels`)."""
        from medtf.tasks.attention_panels import attention_diagnostics

        return attention_diagnostics(train_cfg, paths, val_examples)

    # === Compile ===
    def default_loss(self, model):
        return NucleusLoss()

    def default_metrics(self, model):
        return [NucleusAccuracy(), NucleusF1(model.num_classes)]

    # === Evaluation ===
    def evaluate(self, run_dir, split: str = "test", checkpoint: str = "best", output=None, data_dir=None,
                 verbose: bool = True, projector: bool = False, **_) -> dict:
        """per_nucleus.csv (example, slot, box, label, prediction, probabilities), summary.json (`nucleus_scores`
        with the manifest's class names; ``nuclei_dropped``: nuclei beyond ``max_nuclei``, not evaluated) and the
        confusion matrix / per-class curves in ``output/logs`` (default ``RUN_DIR/eval-SPLIT``). ``projector``:
        also the nucleus tokens as a TensorBoard projector folder ``output/projector``
        (`medtf.evaluation.projector`)."""
        from medtf.data import make_dataset
        from medtf.evaluation.report import write_summary
        from medtf.evaluation.projector import export_nucleus_projector, nucleus_embedding_model
        from medtf.evaluation.run import build_preprocess, data_dir_of, load_run
        from medtf.tasks.classification import write_tensorboard

        config, model, config_path, ckpt = load_run(run_dir, checkpoint)
        data = data_dir_of(config, config_path, data_dir)
        names = manifest_classes(data)
        if names is not None and len(names) != model.num_classes:
            raise ValueError(f"{data}: the shards have {len(names)} nucleus classes {names}, the model "
                             f"{model.num_classes}; evaluate on shards of the data set it was trained on")
        out = Path(output) if output is not None else Path(run_dir) / f"eval-{split}"
        out.mkdir(parents=True, exist_ok=True)
        ds = make_dataset(data, split, batch_size=8, training=False, repeat=False,
                          patch_size=config.data.val_patch_size, transforms=build_preprocess(config),
                          model_inputs=self.model_inputs(model, with_ids=True))
        features = nucleus_embedding_model(model) if projector else None  # same layers, the tokens too
        rows, labels, probs, dropped, embeddings, tiles, seen = [], [], [], 0, [], [], 0
        for x, y in ds:
            tokens, p = features(x, training=False) if projector else (None, model(x, training=False))
            p, tokens = np.asarray(p, np.float64), None if tokens is None else np.asarray(tokens, np.float32)
            for b in range(p.shape[0]):
                ident = y["example_id"][b].numpy().decode()
                dropped += int(y["dropped"][b])
                for slot in range(int(x["num_boxes"][b])):
                    label = int(y["labels"][b, slot])
                    labels.append(label)
                    probs.append(p[b, slot])
                    rows.append([ident, slot, *[f"{v:g}" for v in np.asarray(x["boxes"][b, slot])], label,
                                 int(p[b, slot].argmax()), *[f"{v:.6f}" for v in p[b, slot]]])
                    if projector:
                        embeddings.append(tokens[b, slot])
                        tiles.append(seen + b)  # the tile's position in the split, not its id
            seen += p.shape[0]
        if not labels:
            raise ValueError(f"{data}: split {split!r} has no nuclei to evaluate")
        probs = np.stack(probs)
        scores = nucleus_scores(labels, probs.argmax(1), model.num_classes, names)
        with open(out / "per_nucleus.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["example_id", "slot", "ymin", "xmin", "ymax", "xmax", "label", "prediction",
                             *[f"p_{n}" for n in scores["class_names"]]])
            writer.writerows(rows)
        summary = {"task": self.name, "split": split, "checkpoint": str(ckpt), "nuclei_dropped": dropped,
                   "metrics": scores}
        if projector:
            summary["projector"] = str(export_nucleus_projector(out / "projector", embeddings, labels,
                                                                probs.argmax(1), tiles, scores["class_names"]))
        write_summary(summary, out / "summary.json")
        write_tensorboard(out / "logs", np.asarray(labels), probs)
        if verbose:
            print(f"nuclei {scores['n']} accuracy {scores['accuracy']:.4f} f1 {scores['f1']:.4f} " + " ".join(
                f"{n} {v['f1']:.3f}" for n, v in scores["per_class"].items()))
        return summary

    # === Export / predict (medtf.tasks.nucleus_export, medtf.tasks.nucleus_predict) ===
    def export(self, run_dir, checkpoint: str = "best", output=None, version=None, name=None, data_dir=None,
               **_) -> Path:
        from medtf.tasks.nucleus_export import export_nucleus_classifier

        return export_nucleus_classifier(run_dir, checkpoint, output, version, name, data_dir)

    def predict(self, model_dir, input_path, output, boxes=None, instances=None, **_) -> dict:
        from medtf.tasks.nucleus_predict import predict_nuclei

        return predict_nuclei(model_dir, input_path, output, boxes=boxes, instances=instances)
