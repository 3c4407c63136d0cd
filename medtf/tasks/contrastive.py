"""Contrastive image-report pretraining (CLIP): paired ``image`` and ``report`` fields, in-batch negatives.

The model (e.g. `medtf.models.ImageReportEncoder`) maps ``{"image", "report"}`` to ``(B, 2E)``: L2-normalised image
and report embeddings side by side. `ClipLoss` is the symmetric InfoNCE over the batch's similarity matrix; the
metric `RetrievalRecallAt1` is the fraction of images whose own report is the nearest (and vice versa).
Not yet: negatives gathered across replicas (each replica contrasts its own batch).
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
from keras import ops

from medtf.tasks.base import Task


def _similarity(y_pred, temperature):
    y_pred = ops.cast(y_pred, "float32")
    half = y_pred.shape[-1] // 2
    image, text = y_pred[:, :half], y_pred[:, half:]
    return ops.matmul(image, ops.transpose(text)) / temperature


@keras.saving.register_keras_serializable(package="medtf")
class ClipLoss(keras.losses.Loss):
    """Symmetric InfoNCE: cross-entropy of each image against all reports of the batch (its own is the target) and
    of each report against all images, averaged; ``y_true`` is ignored. Per-sample values, shape ``(B,)``."""

    def __init__(self, temperature=0.07, name="clip_loss", reduction="sum_over_batch_size", dtype="float32"):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature = float(temperature)

    def call(self, y_true, y_pred):
        logits = _similarity(y_pred, self.temperature)
        n = ops.shape(logits)[0]
        targets = ops.one_hot(ops.arange(n), n)
        image_ce = keras.losses.categorical_crossentropy(targets, logits, from_logits=True)
        text_ce = keras.losses.categorical_crossentropy(targets, ops.transpose(logits), from_logits=True)
        return 0.5 * (image_ce + text_ce)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="medtf")
class RetrievalRecallAt1(keras.metrics.Mean):
    """Image->report and report->image top-1 retrieval within each batch, averaged over examples and directions."""

    def __init__(self, name="recall_at_1", dtype="float32"):
        super().__init__(name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        logits = _similarity(y_pred, 1.0)
        n = ops.shape(logits)[0]
        own = ops.arange(n)
        image_hit = ops.cast(ops.argmax(logits, axis=1) == own, "float32")
        text_hit = ops.cast(ops.argmax(logits, axis=0) == own, "float32")
        return super().update_state(ops.concatenate([image_hit, text_hit]))


class ContrastiveTask(Task):
    name = "contrastive"
    fields = ("image", "report")
    image_panels = False

    def model_inputs(self, model=None):
        import tensorflow as tf

        def to_model(example):
            self.check_fields(example)
            return {"image": example["image"], "report": example["report"]}, tf.zeros([1], tf.float32)

        return to_model

    def default_loss(self, model):
        return ClipLoss()

    def default_metrics(self, model):
        return [RetrievalRecallAt1()]

    def evaluate(self, run_dir, split: str = "test", checkpoint: str = "best", output=None, data_dir=None,
                 verbose: bool = True, **_) -> dict:
        """Retrieval over the whole split: image->report and report->image recall@1/@5 and median rank of the own
        pair; per_example.csv (ranks) and summary.json in ``output`` (default ``RUN_DIR/eval-SPLIT``)."""
        import csv

        from medtf.data import make_dataset
        from medtf.evaluation.report import write_summary
        from medtf.evaluation.run import build_preprocess, data_dir_of, load_run

        config, model, config_path, ckpt = load_run(run_dir, checkpoint)
        data = data_dir_of(config, config_path, data_dir)
        out = Path(output) if output is not None else Path(run_dir) / f"eval-{split}"
        out.mkdir(parents=True, exist_ok=True)
        ds = make_dataset(data, split, batch_size=4, training=False, repeat=False, output="dict",
                          transforms=build_preprocess(config))
        ids, embeddings = [], []
        for batch in ds:
            embeddings.append(np.asarray(model({"image": batch["image"], "report": batch["report"]}, training=False)))
            ids.extend(v.decode() for v in batch["example_id"].numpy())
        both = np.concatenate(embeddings)
        half = both.shape[1] // 2
        similarity = both[:, :half] @ both[:, half:].T
        own = np.diag(similarity)
        image_rank = 1 + (similarity > own[:, None]).sum(axis=1)   # image i among all reports
        text_rank = 1 + (similarity > own[None, :]).sum(axis=0)    # report j among all images
        metrics = {"n": int(len(own))}
        for name, ranks in (("image_to_report", image_rank), ("report_to_image", text_rank)):
            metrics.update({f"{name}_recall_at_1": float((ranks <= 1).mean()),
                            f"{name}_recall_at_5": float((ranks <= 5).mean()),
                            f"{name}_median_rank": float(np.median(ranks))})
        with open(out / "per_example.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["example_id", "image_to_report_rank", "report_to_image_rank"])
            writer.writerows(zip(ids, image_rank.tolist(), text_rank.tolist()))
        summary = {"task": self.name, "split": split, "checkpoint": str(ckpt), "metrics": metrics}
        write_summary(summary, out / "summary.json")
        if verbose:
            print(" ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k != "n"))
        return summary

    def export(self, run_dir, checkpoint: str = "best", output=None, version=None, name=None,
               threshold: float = 0.5, **_) -> Path:
        """``serving_default``: raw ``images`` -> ``image_embeddings (B, E)``; ``encode_text``: ``reports``
        (strings) -> ``text_embeddings (B, E)``; ``preprocess``. Embeddings are L2-normalised."""
        import tensorflow as tf

        from medtf.export.saved_model import load_checkpoint
        from medtf.tasks.classification import export_classifier

        run_dir = Path(run_dir)
        ckpt = Path(checkpoint) if checkpoint not in ("best", "last") else \
            run_dir / "checkpoints" / f"{checkpoint}.keras"
        model = load_checkpoint(ckpt)
        image_tower = keras.Model(model.get_layer("image").output, model.get_layer("image_embedding").output)
        text_tower = keras.Model(model.get_layer("report").output, model.get_layer("text_embedding").output)

        def encode_text(reports):
            """reports (strings) -> text_embeddings"""
            return {"text_embeddings": tf.cast(text_tower(reports, training=False), tf.float32)}

        return export_classifier(
            self.name, run_dir, checkpoint, output, version, name, threshold, {"image_embeddings": None},
            extra_signatures={"encode_text": ([tf.TensorSpec([None], tf.string, name="reports")], encode_text)},
            image_model=image_tower)

    def predict(self, model_dir, input_path, output, **_) -> dict:
        """``embeddings.npy`` (one L2-normalised image embedding per input, in input order) and prediction.json."""
        import tensorflow as tf

        from medtf.tasks.classification import read_for_predict

        model_dir, meta, paths, images = read_for_predict(model_dir, input_path)
        served = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
        embeddings = np.concatenate([served(images=tf.constant(im[None], tf.float32))["image_embeddings"].numpy()
                                     for im in images])
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "embeddings.npy", embeddings)
        summary = {"task": self.name, "model": str(model_dir), "embeddings": "embeddings.npy",
                   "predictions": [{"input": str(p), "row": i} for i, p in enumerate(paths)]}
        (out / "prediction.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        return summary
