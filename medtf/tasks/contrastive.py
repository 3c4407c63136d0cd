"""Contrastive image-report pretraining (CLIP): paired ``image`` and ``report`` fields, negatives from the global batch.

The model (e.g. `medtf.models.ImageReportEncoder`) maps ``{"image", "report"}`` to ``(B, 2E)``: L2-normalised image
and report embeddings side by side. `ClipLoss` is the symmetric InfoNCE over the similarity matrix; the metric
`RetrievalRecallAt1` is the fraction of images whose own report is the nearest (and vice versa).

Under a distribution strategy (MirroredStrategy, MultiWorkerMirroredStrategy) both gather every replica's
embeddings (``ReplicaContext.all_gather``): each replica contrasts its own examples against the whole global batch,
the targets being the global indices of its own rows, so N replicas of B/N examples compute what one device computes
on B (more negatives per step, as CLIP trains). The gather's gradient all-reduces the upstream gradients and hands
each replica the slice of its own embeddings (TensorFlow's all_gather custom gradient); with Keras' per-replica
``1/N`` loss scaling and the optimizer's gradient sum, loss and gradients equal the single-device ones
(tests/tasks/test_contrastive_replicas.py).

The temperature is fixed (``ClipLoss(temperature=0.07)``) unless the model learns it (``learn_temperature``: a
clamped log-scale weight whose value rides along as the output's last column). ``label_aware`` models get a loss
whose targets spread over same-class pairs (``y`` carries the example's ``label``). With a keras-hub text tower
(``model.args.text``), ``medtf train`` first learns the WordPiece vocabulary from the training reports
(``RUN_DIR/vocab.txt``) and the reports are tokenised in tf.data.
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import ops

from medtf.models.clip import split_outputs
from medtf.tasks.base import Task


def _gather(values):
    """``(this replica's rows, every replica's rows (all-gathered in replica order), index of its first row)``."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    # None: cross-replica context (Keras builds the loss symbolically under strategy.scope()); nothing to gather.
    if context is None or context.num_replicas_in_sync == 1:
        return values, values, 0
    # A copy made here carries this replica's device: all_gather sends to the input's device, and a tensor that
    # entered the replica function from outside (a function argument) has none ("destinations can not be empty"
    # under MultiWorkerMirroredStrategy).
    values = tf.identity(values)
    everyone = context.all_gather(values, axis=0)
    # The last (validation) batch may be split unevenly, or leave a replica empty: offsets from the real sizes.
    sizes = context.all_gather(tf.shape(values)[:1], axis=0)
    return values, everyone, tf.reduce_sum(sizes[:context.replica_id_in_sync_group])


def _global_pairs(y_pred):
    """``(image, text, all_image, all_text, offset, scale)``: this replica's rows split into image and report
    embeddings, every replica's rows (all-gathered in replica order), the global index of its first row and the
    model's logit scale ``(b,)`` (None: fixed temperature)."""
    y_pred, everyone, offset = _gather(ops.cast(y_pred, "float32"))
    image, text, scale = split_outputs(y_pred)
    all_image, all_text, _ = split_outputs(everyone, y_pred.shape[-1])
    return image, text, all_image, all_text, offset, scale


def _own_indices(rows, offset):
    """Global indices of this replica's rows: the targets of its images and reports."""
    return ops.cast(offset, "int32") + ops.cast(ops.arange(ops.shape(rows)[0]), "int32")


def label_targets(own_labels, all_labels, own, weight: float = 1.0):
    """Soft targets ``(b, B)``: ``weight`` spread uniformly over the own pair and every pair of the same class
    (labels < 0, unknown, match nothing but themselves), the rest ``1 - weight`` on the own pair."""
    own_labels = ops.reshape(ops.cast(own_labels, "int32"), (-1, 1))
    all_labels = ops.reshape(ops.cast(all_labels, "int32"), (1, -1))
    columns = ops.cast(ops.arange(ops.shape(all_labels)[1]), "int32")[None, :]
    positive = ops.logical_or(ops.logical_and(own_labels == all_labels, own_labels >= 0), columns == own[:, None])
    positive = ops.cast(positive, "float32")
    uniform = positive / ops.sum(positive, axis=1, keepdims=True)
    if weight == 1.0:
        return uniform
    return weight * uniform + (1.0 - weight) * ops.cast(columns == own[:, None], "float32")


def _soft_ce(targets, logits):
    return -ops.sum(targets * ops.log_softmax(logits, axis=1), axis=1)


@keras.saving.register_keras_serializable(package="medtf")
class ClipLoss(keras.losses.Loss):
    """Symmetric InfoNCE: cross-entropy of each image against all reports of the (global) batch, its own being the
    target, and of each report against all images, averaged. Per-sample values ``(B,)`` of this replica's
    examples: ``0.5 * (CE(image_i -> reports) + CE(report_i -> images))`` of the logits ``s * cos``, with
    ``s = 1 / temperature``, or the model's learnable scale when its output carries one (`split_outputs`).

    ``label_aware``: ``y_true`` holds each example's class; the target of image ``i`` is spread uniformly over its
    own report and every report of the same class (same-class pairs are not pushed apart as negatives);
    unknown classes (< 0) fall back to the own pair. ``label_weight`` < 1 keeps ``1 - label_weight`` of the target
    on the own pair (same-class reports are partly positives: the class gathers, and the own report still ranks
    first). Without ``label_aware`` ``y_true`` is ignored.

    Reference: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021.
    """

    def __init__(self, temperature=0.07, label_aware=False, name="clip_loss", reduction="sum_over_batch_size",
                 dtype="float32", label_weight=1.0):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature, self.label_aware, self.label_weight = float(temperature), bool(label_aware), float(label_weight)
        if not 0.0 < self.label_weight <= 1.0:
            raise ValueError(f"label_weight {label_weight}: expected 0 < label_weight <= 1")

    def call(self, y_true, y_pred):
        image, text, all_image, all_text, offset, scale = _global_pairs(y_pred)
        own = _own_indices(image, offset)
        scale = 1.0 / self.temperature if scale is None else scale[:, None]
        image_logits = ops.matmul(image, ops.transpose(all_text)) * scale  # (b, B): own image vs reports
        text_logits = ops.matmul(text, ops.transpose(all_image)) * scale   # (b, B): own report vs images
        if self.label_aware:
            own_labels, all_labels, _ = _gather(ops.reshape(ops.cast(y_true, "float32"), (-1,)))
            targets = label_targets(own_labels, all_labels, own, self.label_weight)
            return 0.5 * (_soft_ce(targets, image_logits) + _soft_ce(targets, text_logits))
        image_ce = keras.losses.sparse_categorical_crossentropy(own, image_logits, from_logits=True)
        text_ce = keras.losses.sparse_categorical_crossentropy(own, text_logits, from_logits=True)
        return 0.5 * (image_ce + text_ce)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature, "label_aware": self.label_aware,
                "label_weight": self.label_weight}


@keras.saving.register_keras_serializable(package="medtf")
class RetrievalRecallAt1(keras.metrics.Mean):
    """Image->report and report->image top-1 retrieval within each (global) batch, averaged over examples and
    directions."""

    def __init__(self, name="recall_at_1", dtype="float32"):
        super().__init__(name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        image, text, all_image, all_text, offset, _ = _global_pairs(y_pred)
        own = _own_indices(image, offset)
        image_hit = ops.cast(ops.cast(ops.argmax(ops.matmul(image, ops.transpose(all_text)), axis=1), "int32") == own,
                             "float32")
        text_hit = ops.cast(ops.cast(ops.argmax(ops.matmul(text, ops.transpose(all_image)), axis=1), "int32") == own,
                            "float32")
        return super().update_state(ops.concatenate([image_hit, text_hit]))


class ContrastiveTask(Task):
    name = "contrastive"
    fields = ("image", "report")
    image_panels = False

    def prepare(self, experiment, run_dir):
        from medtf.tasks.text_prep import prepare_text

        return prepare_text(experiment, run_dir)  # keras-hub text towers only (model.args.text)

    def model_inputs(self, model=None):
        """``({"image", "report"}`` or, with a keras-hub text tower, ``{"image", "token_ids", "padding_mask"}``
        tokenised here by ``model.tokenizer``), ``label (1,)`` float32 (-1 when the kind has no class)."""
        import tensorflow as tf

        tokenizer = getattr(model, "tokenizer", None)

        # Plain TF with static Python branches: autograph would spend seconds rewriting keras-hub's tokenizer.
        @tf.autograph.experimental.do_not_convert
        def to_model(example):
            self.check_fields(example)
            label = tf.reshape(tf.cast(example["label"], tf.float32), [1]) if "label" in example \
                else tf.constant([-1.0])
            if tokenizer is None:
                return {"image": example["image"], "report": example["report"]}, label
            tokens = tokenizer(tf.reshape(example["report"], []))
            length = tokenizer.sequence_length
            return {"image": example["image"], "token_ids": tf.ensure_shape(tokens["token_ids"], [length]),
                    "padding_mask": tf.ensure_shape(tf.cast(tokens["padding_mask"], tf.int32), [length])}, label

        return to_model

    default_loss_args = ("queue_size",)

    def default_loss(self, model, queue_size: int = 0):
        """`ClipLoss`; ``loss.args.queue_size > 0``: `medtf.tasks.clip_queue.ClipQueueLoss` (a memory queue)."""
        kwargs = dict(temperature=getattr(model, "temperature", 0.07), label_aware=getattr(model, "label_aware", False),
                      label_weight=getattr(model, "label_weight", 1.0))
        if queue_size:
            from medtf.tasks.clip_queue import ClipQueueLoss

            return ClipQueueLoss(queue_size, getattr(model, "embed_dim"), **kwargs)
        return ClipLoss(**kwargs)

    def configure(self, experiment):
        self.warmup_image_epochs = experiment.train.warmup_image_epochs
        self.split_retrieval = None
        from medtf.training.inputs import build_preprocess, split_names

        data = experiment.data
        val_split = split_names(data)[1]  # data.val_split, or the selection fold of a cross-validation fold
        if experiment.train.val_retrieval and val_split is not None:
            from medtf.tasks.clip_monitor import SplitRetrieval

            prompts = (experiment.evaluate or {}).get("zero_shot", {}).get("prompts")
            self.split_retrieval = SplitRetrieval(data.dir, val_split, build_preprocess(data), prompts)
        return self

    def callbacks(self, model, paths):
        """Whole-val-split retrieval figures (`medtf.tasks.clip_monitor`, ``train.val_retrieval``), the memory
        queue's switch (`medtf.tasks.clip_queue`), the image-only warm-up (`medtf.tasks.clip_warmup`)."""
        from medtf.tasks.clip_queue import QueueSwitch, queue_losses
        from medtf.tasks.clip_warmup import ImageWarmup

        out = [self.split_retrieval] if getattr(self, "split_retrieval", None) is not None else []
        if queue_losses(model.loss):
            out.append(QueueSwitch(paths.backup, write=paths.is_chief))
        if getattr(self, "warmup_image_epochs", 0):
            out.append(ImageWarmup(self.warmup_image_epochs))
        return out

    def default_metrics(self, model):
        return [RetrievalRecallAt1()]

    def evaluate(self, run_dir, split: str = "test", checkpoint: str = "best", output=None, data_dir=None,
                 verbose: bool = True, **_) -> dict:
        """Retrieval (recall@1/5/10, median / mean rank both ways, rank table), zero-shot classification from the
        experiment's ``evaluate.zero_shot.prompts``, a linear probe, the training reports' index
        (`medtf.tasks.contrastive_eval`)."""
        from medtf.tasks.contrastive_eval import evaluate_contrastive

        return evaluate_contrastive(self.name, run_dir, split, checkpoint, output, data_dir, verbose)

    def export(self, run_dir, checkpoint: str = "best", output=None, version=None, name=None,
               threshold: float = 0.5, data_dir=None, **_) -> Path:
        """``serving_default`` / ``embed_image``: raw ``images`` -> ``image_embeddings``; ``embed_text`` (alias
        ``encode_text``): ``reports`` (strings, tokenised inside) -> ``text_embeddings``; ``similarity``;
        ``preprocess``; plus the training reports' index and the zero-shot prompts
        (`medtf.tasks.contrastive_serving`)."""
        from medtf.tasks.contrastive_serving import export_contrastive

        return export_contrastive(self.name, run_dir, checkpoint, output, version, name, threshold, data_dir)

    def predict(self, model_dir, input_path=None, output=None, top_k: int = 5, query_text=None,
                show_text: bool = False, **_) -> dict:
        """``embeddings.npy`` and prediction.json (top-k training reports by id and cosine, zero-shot class
        probabilities) for case folders or images; or the reports nearest to ``query_text``."""
        from medtf.tasks.contrastive_serving import predict_contrastive

        return predict_contrastive(self.name, model_dir, input_path, output, top_k, query_text, show_text)
