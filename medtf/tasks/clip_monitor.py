"""Whole-split retrieval and zero-shot metrics of a CLIP run at the end of every epoch, for checkpoint selection.

    train: {val_retrieval: true, monitor: val_retrieval_mrr, mode: max}     # task contrastive

Keras' ``val_recall_at_1`` is top-1 within each validation batch (8 candidates at batch 8), and ``val_loss`` of a
label-aware run is mostly its class part, which settles early: neither ranks a study's report among all the split's
reports, which is what ``medtf evaluate`` reports and what a user of retrieval needs. `SplitRetrieval` embeds the
whole validation split once per epoch (both towers, the deterministic preprocessing only) and adds to the epoch's logs
(before the checkpoint, the plateau schedule, CSV and TensorBoard read them):

* ``val_retrieval_recall_at_1`` / ``val_retrieval_recall_at_5``: image -> report, the split's reports as candidates;
* ``val_retrieval_mrr``: mean reciprocal rank of the own pair, both directions averaged (smoother than recall@1
  on a small split, and still weighted to the top);
* ``val_zero_shot_accuracy``: with ``evaluate.zero_shot.prompts`` and labelled data, as ``medtf evaluate`` computes it.

Every worker computes the same figures (same weights, same data), so a monitored value agrees across workers.
"""

from __future__ import annotations

import keras
import numpy as np

__all__ = ["SplitRetrieval", "split_retrieval_metrics"]


def split_retrieval_metrics(image, text, labels=None, prompt_embeddings=None, class_indices=None,
                            scale: float = 1.0) -> dict:
    """The logged figures (module docstring) from L2-normalised ``image`` / ``text`` ``(N, E)`` embeddings of one
    split; zero-shot only when ``prompt_embeddings`` and labels are given."""
    from medtf.evaluation import retrieval

    image_rank, text_rank = retrieval.own_ranks(np.asarray(image) @ np.asarray(text).T)
    out = {"val_retrieval_recall_at_1": float((image_rank <= 1).mean()),
           "val_retrieval_recall_at_5": float((image_rank <= 5).mean()),
           "val_retrieval_mrr": float(np.concatenate([1.0 / image_rank, 1.0 / text_rank]).mean())}
    if prompt_embeddings is not None and labels is not None and (np.asarray(labels) >= 0).any():
        zs = retrieval.zero_shot(image, prompt_embeddings, retrieval.relabel(labels, class_indices), scale)
        out["val_zero_shot_accuracy"] = float(zs["accuracy"])
    return out


class SplitRetrieval(keras.callbacks.Callback):
    """Adds `split_retrieval_metrics` of ``split`` of ``data_dir`` to each epoch's logs (module docstring).

    Args:
        data_dir: the shard folder; split: the validation split's name.
        preprocess: the experiment's deterministic preprocessing (`medtf.evaluation.run.build_preprocess`).
        prompts: ``evaluate.zero_shot.prompts`` (or None: no zero-shot figure).
    """

    def __init__(self, data_dir, split: str, preprocess=None, prompts=None):
        from medtf.evaluation import retrieval
        from medtf.tasks.contrastive_eval import class_names

        super().__init__()
        self.data_dir, self.split, self.preprocess = str(data_dir), split, preprocess
        # Checked now, not after the first epoch: a prompt for a class the data does not have is a config error.
        self.texts, self.indices = retrieval.prompt_classes(prompts, class_names(data_dir)) if prompts else (None, None)

    def on_epoch_end(self, epoch, logs=None):
        from medtf.evaluation import retrieval
        from medtf.tasks.contrastive_eval import embed_split, logit_scale

        if logs is None:
            return
        embedded = embed_split(self.model, self.data_dir, self.split, self.preprocess)
        prompt_embeddings = None  # re-embedded every epoch: the report tower moves
        if self.texts is not None:
            prompt_embeddings = retrieval.class_prompt_embeddings(self.model.text_tower, self.texts)
        logs.update(split_retrieval_metrics(embedded["image"], embedded["text"], embedded["labels"],
                                            prompt_embeddings, self.indices, logit_scale(self.model)))
