"""Masked-language-model pretraining of the report text tower (BERT's MLM) on the ``report`` text of any data kind
that has one (``mri-reports``).

Before the model is built, ``medtf train`` learns the WordPiece vocabulary from the training split's reports only
(``RUN_DIR/vocab.txt``, `medtf.tasks.text_prep`). In tf.data, `model_inputs` tokenises each report with the model's
tokenizer (``[CLS] pieces [SEP]``, truncated and padded to ``text.sequence_length``) and masks ~``mask_rate`` of
its text tokens (`medtf.models.text.masking.mask_tokens`, stateless: seeded from the example, so validation masks
are fixed; with ``data.transforms: [{name: remask_tokens}]`` training masks change every epoch). The model (`medtf.models.ReportMaskedLM`) predicts the ``M = max_masked`` masked slots;
the targets are packed as ``y (B, M, 2)``: original token id and slot weight (0 for unused slots), so the loss
(`MaskedTokenLoss`: per report, the mean cross-entropy over its masked tokens only) and ``masked_accuracy`` see only
masked positions. Monitor: ``val_loss``.

``medtf export RUN_DIR`` writes the text tower as a keras-hub preset directory (backbone + tokenizer), which a CLIP
experiment loads with ``model.args.text.preset`` (the run directory itself works too).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medtf.tasks.base import Task
from medtf.tasks.masked_modeling import MaskedTokenAccuracy, MaskedTokenLoss, masked_scores


class MaskedLMTask(Task):
    """``report`` -> (masked token ids, masked positions), (original ids, weights); see the module docstring."""

    name = "masked_lm"
    fields = ("report",)
    image_panels = False

    def prepare(self, experiment, run_dir):
        from medtf.tasks.text_prep import prepare_text

        return prepare_text(experiment, run_dir)

    # === Data ===
    def model_inputs(self, model=None):
        import tensorflow as tf

        from medtf.models.text.masking import mask_tokens, report_seed

        if model is None:  # no tokenizer without a model: the diagnostics' panel mapping (this task draws none)
            return lambda example: (example["report"], tf.zeros([1], tf.float32))
        for attr in ("tokenizer", "max_masked", "mask_rate", "mask_seed"):
            if not hasattr(model, attr):
                raise ValueError(f"task 'masked_lm' needs a masked language model (e.g. report_mlm: "
                                 f"medtf.models.ReportMaskedLM); {model.name!r} has no {attr!r}")
        tokenizer, length, slots = model.tokenizer, model.tokenizer.sequence_length, model.max_masked

        # Plain TF with static Python branches: autograph would spend seconds rewriting keras-hub's tokenizer.
        @tf.autograph.experimental.do_not_convert
        def to_model(example):
            self.check_fields(example)
            tokens = tokenizer(tf.reshape(example["report"], []))
            ids, positions, targets, weights = mask_tokens(
                tokens["token_ids"], tokens["padding_mask"], report_seed(example, model.mask_seed),
                rate=model.mask_rate, max_masked=slots, mask_id=tokenizer.mask_id,
                vocabulary_size=tokenizer.vocabulary_size, special_ids=tokenizer.special_ids)
            x = {"token_ids": tf.ensure_shape(ids, [length]),
                 "padding_mask": tf.ensure_shape(tf.cast(tokens["padding_mask"], tf.int32), [length]),
                 "mask_positions": tf.ensure_shape(positions, [slots])}
            y = tf.ensure_shape(tf.stack([tf.cast(targets, tf.float32), weights], axis=-1), [slots, 2])
            return x, y

        return to_model

    # === Compile ===
    def default_loss(self, model):
        return MaskedTokenLoss()

    def default_metrics(self, model):
        return [MaskedTokenAccuracy()]

    # === Evaluation ===
    def evaluate(self, run_dir, split: str = "test", checkpoint: str = "best", output=None, data_dir=None,
                 verbose: bool = True, **_) -> dict:
        """Loss and masked-token accuracy over a split (each report's own fixed mask): summary.json in ``output``
        (default ``RUN_DIR/eval-SPLIT``). No text is written."""
        from medtf.data import make_dataset
        from medtf.evaluation.report import write_summary
        from medtf.evaluation.run import data_dir_of, load_run

        config, model, config_path, ckpt = load_run(run_dir, checkpoint)
        data = data_dir_of(config, config_path, data_dir)
        out = Path(output) if output is not None else Path(run_dir) / f"eval-{split}"
        out.mkdir(parents=True, exist_ok=True)
        ds = make_dataset(data, split, batch_size=16, training=False, repeat=False,
                          model_inputs=self.model_inputs(model))
        rows = [masked_scores(np.asarray(y), np.asarray(model(x, training=False)), "tokens") for x, y in ds]
        if not rows:
            raise ValueError(f"{data}: split {split!r} has no examples to evaluate")
        per = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
        metrics = {"n": int(len(per["loss"])), "loss": float(per["loss"].mean()),
                   "masked_accuracy": float(per["masked_sum"].sum() / max(per["masked"].sum(), 1)),
                   "masked_per_report": float(per["masked"].mean())}
        summary = {"task": self.name, "split": split, "checkpoint": str(ckpt), "metrics": metrics}
        write_summary(summary, out / "summary.json")
        if verbose:
            print(" ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "n"))
        return summary

    # === Export ===
    def export(self, run_dir, checkpoint: str = "best", output=None, **_) -> Path:
        """The text tower as a keras-hub preset directory (``config.json``, weights, ``tokenizer.json`` and the
        vocabulary): ``output`` or ``RUN_DIR/text_preset``."""
        from medtf.export.saved_model import load_checkpoint

        run_dir = Path(run_dir)
        ckpt = Path(checkpoint) if checkpoint not in ("best", "last") else \
            run_dir / "checkpoints" / f"{checkpoint}.keras"
        model = load_checkpoint(ckpt)
        out = Path(output) if output is not None else run_dir / "text_preset"
        if out.exists() and any(out.iterdir()):
            raise ValueError(f"{out}: exists and is not empty; choose another --output")
        model.save_text_preset(out)
        return out
