"""Masked image modeling (BEiT / SimMIM pretraining): mask ~40 % of the patches in blocks, predict what was there.

The model (`medtf.models.MaskedImageModel`) takes ``{"images", "mask" (B, N)}`` and predicts per patch; its
config holds the masking settings. `model_inputs` draws, inside the input pipeline, a BEiT blockwise mask per
example (stateless, seeded from the example: `medtf.models.vit.masking.example_seed`) and the targets, packed as
``y (B, N, T + 1)``: the per-patch target (``T`` pixel values, or 1 token id) followed by the mask channel, so
the loss and metrics see which patches count.

Losses are per example, the mean over its masked patches only (unmasked predictions do not matter), then
averaged over the batch: masked MSE for pixels, masked sparse cross-entropy for tokens. Metrics: ``masked_mse``
and ``masked_psnr`` (pixels; PSNR = 10 log10(1 / MSE) on the target scale, i.e. per-patch standard deviations
when the targets are normalised) or ``masked_accuracy`` (tokens). Monitor: ``val_loss``.

A model with nucleus tokens (``max_nuclei > 0``) also gets the example's ``boxes`` / ``num_boxes``; with token
targets and ``inst_loss`` it predicts ``{"patches", "nuclei"}`` and adds L_inst (`medtf.tasks.instance_tokens`:
4 tokens per nucleus that intersects a masked patch) to the loss; metrics ``patches_masked_accuracy`` and
``nuclei_inst_accuracy``.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import ops

from medtf.tasks.base import Task
from medtf.tasks.instance_tokens import (InstanceTokenAccuracy, InstanceTokenLoss, has_inst_head, instance_inputs,
                                         instance_scores)


def _split(y_true, y_pred):
    y_true = ops.cast(y_true, "float32")
    return y_true[..., :-1], y_true[..., -1], ops.cast(y_pred, "float32")


def _per_example(values, mask):
    """Mean of ``values (B, N)`` over each example's masked positions -> ``(B,)`` (0 where nothing is masked)."""
    return ops.sum(values * mask, axis=-1) / ops.maximum(ops.sum(mask, axis=-1), 1.0)


@keras.saving.register_keras_serializable(package="medtf")
class MaskedPixelLoss(keras.losses.Loss):
    """Mean squared error of the masked patches' pixels: ``y_true (B, N, T + 1)`` (targets, mask),
    ``y_pred (B, N, T)``. Per-example values ``(B,)``."""

    def __init__(self, name="masked_pixel_loss", reduction="sum_over_batch_size", dtype="float32"):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        target, mask, pred = _split(y_true, y_pred)
        return _per_example(ops.mean(ops.square(pred - target), axis=-1), mask)


@keras.saving.register_keras_serializable(package="medtf")
class MaskedTokenLoss(keras.losses.Loss):
    """Sparse cross-entropy of the masked patches' tokens: ``y_true (B, N, 2)`` (token id, mask), ``y_pred
    (B, N, V)`` logits. Per-example values ``(B,)``."""

    def __init__(self, name="masked_token_loss", reduction="sum_over_batch_size", dtype="float32"):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        target, mask, logits = _split(y_true, y_pred)
        ce = keras.losses.sparse_categorical_crossentropy(ops.cast(target[..., 0], "int32"), logits,
                                                          from_logits=True)
        return _per_example(ce, mask)


@keras.saving.register_keras_serializable(package="medtf")
class MaskedMSE(keras.metrics.Mean):
    """Pixel MSE pooled over every masked patch seen (all patches weigh the same)."""

    def __init__(self, name="masked_mse", dtype="float32"):
        super().__init__(name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        target, mask, pred = _split(y_true, y_pred)
        return super().update_state(ops.mean(ops.square(pred - target), axis=-1), sample_weight=mask)


@keras.saving.register_keras_serializable(package="medtf")
class MaskedPSNR(keras.metrics.Mean):
    """Per-example PSNR ``10 log10(data_range**2 / masked MSE)``, averaged over examples."""

    def __init__(self, data_range=1.0, name="masked_psnr", dtype="float32"):
        super().__init__(name=name, dtype=dtype)
        self.data_range = float(data_range)

    def update_state(self, y_true, y_pred, sample_weight=None):
        target, mask, pred = _split(y_true, y_pred)
        mse = _per_example(ops.mean(ops.square(pred - target), axis=-1), mask)
        psnr = 10.0 * ops.log(self.data_range ** 2 / ops.maximum(mse, 1e-10)) / np.log(10.0)
        return super().update_state(psnr)

    def get_config(self):
        return {**super().get_config(), "data_range": self.data_range}


@keras.saving.register_keras_serializable(package="medtf")
class MaskedTokenAccuracy(keras.metrics.Mean):
    """Top-1 accuracy over every masked patch seen."""

    def __init__(self, name="masked_accuracy", dtype="float32"):
        super().__init__(name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        target, mask, logits = _split(y_true, y_pred)
        hit = ops.cast(ops.cast(ops.argmax(logits, axis=-1), "int32") == ops.cast(target[..., 0], "int32"), "float32")
        return super().update_state(hit, sample_weight=mask)


def masked_scores(y: np.ndarray, pred: np.ndarray, target: str) -> dict:
    """Per-example arrays of the evaluator (NumPy): ``loss``, ``mask_ratio`` and ``mse`` / ``psnr`` (pixels) or
    ``accuracy`` (tokens), plus ``masked`` (masked patches) and ``masked_sum`` (their summed MSE / correct
    tokens) for pooling over a split."""
    values, mask = y[..., :-1].astype(np.float64), y[..., -1].astype(np.float64)
    masked = mask.sum(-1)
    out = {"masked": masked, "mask_ratio": masked / mask.shape[-1]}
    if target == "pixels":
        mse = ((pred - values) ** 2).mean(-1)
        out["loss"] = out["mse"] = (mse * mask).sum(-1) / np.maximum(masked, 1)
        out["psnr"] = 10 * np.log10(1.0 / np.maximum(out["mse"], 1e-10))
        out["masked_sum"] = (mse * mask).sum(-1)  # for the pooled MSE: all masked patches weigh the same
    else:
        logits = pred.astype(np.float64)
        logits = logits - logits.max(-1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        tokens = values[..., 0].astype(int)
        ce = -np.take_along_axis(log_p, tokens[..., None], -1)[..., 0]
        out["loss"] = (ce * mask).sum(-1) / np.maximum(masked, 1)
        out["masked_sum"] = ((pred.argmax(-1) == tokens) * mask).sum(-1)  # correct masked tokens
        out["accuracy"] = out["masked_sum"] / np.maximum(masked, 1)
    return out


class MaskedModelingTask(Task):
    """``image`` -> (masked images, per-patch targets); see the module docstring."""

    name = "masked_modeling"
    fields = ("image",)
    image_panels = False
    targets = data = None  # the experiment's `targets` and `data` sections (`configure`)

    def configure(self, experiment):
        """Token targets from a frozen tokenizer (`medtf.tasks.token_targets`) when the experiment has ``targets``."""
        self.targets, self.data = getattr(experiment, "targets", None), experiment.data
        return self

    # === Data ===
    def model_inputs(self, model=None):
        import tensorflow as tf

        from medtf.models.vit.masking import (blockwise_mask, example_seed, normalize_patches, num_masking_patches,
                                              patchify)

        if model is None:  # no model, no patch grid: the diagnostics' tiles (+ boxes) for the attention panels
            from medtf.tasks.attention_panels import panel_inputs

            return panel_inputs
        for attr in ("patch_size", "grid", "target", "mask_ratio"):
            if not hasattr(model, attr):
                raise ValueError(f"task 'masked_modeling' needs a masked image model (e.g. mim_vit_tiny: "
                                 f"medtf.models.MaskedImageModel); {model.name!r} has no {attr!r}")
        p, (gh, gw), target = model.patch_size, model.grid, model.target
        shape = [gh * p, gw * p, model.num_channels]
        count = num_masking_patches(gh * gw, model.mask_ratio)
        provider = None
        if self.targets is not None:  # (example, image) -> (gh, gw) token ids of the frozen tokenizer
            from medtf.tasks.token_targets import token_provider

            provider = token_provider(self.targets, model, self.data)

        # Plain TF with static Python branches: autograph would only spend seconds rewriting it (and the mask loop).
        @tf.autograph.experimental.do_not_convert
        def to_model(example):
            self.check_fields(example)
            image = example["image"]
            if image.shape.rank != 3 or not image.shape[:2].is_compatible_with(shape[:2]):
                raise ValueError(f"task 'masked_modeling': the model takes 2D images {shape}, the examples have "
                                 f"{image.shape}; crop them with data.patch_size / data.val_patch_size "
                                 f"{shape[:2]} (or set the model's image_size)")
            image = tf.ensure_shape(image, shape)
            seed = example_seed(example, model.mask_seed)
            mask = blockwise_mask(seed, (gh, gw), count, model.min_mask_patches, model.max_mask_patches,
                                  model.min_aspect)
            mask = tf.cast(tf.reshape(mask, [gh * gw]), tf.float32)
            if target == "pixels":
                values = patchify(image, p)
                values = normalize_patches(values) if model.norm_pixel_target else values
            elif provider is not None:
                values = tf.cast(tf.reshape(provider(example, image), [gh * gw, 1]), tf.float32)
            else:
                if "tokens" not in example:
                    raise ValueError(f"task 'masked_modeling' with target 'tokens' needs a 'tokens' field "
                                     f"({gh}x{gw} token ids from a tokenizer); the data provides {sorted(example)}")
                values = tf.cast(tf.reshape(example["tokens"], [gh * gw, 1]), tf.float32)
            x, y = {"images": image, "mask": mask}, tf.concat([values, mask[:, None]], axis=-1)
            if getattr(model, "max_nuclei", 0):  # nucleus tokens: boxes in, L_inst targets out (instance_tokens)
                extra, nuclei = instance_inputs(model, image, values, mask, example)
                x.update(extra)
                y = y if nuclei is None else {"patches": y, "nuclei": nuclei}
            return x, y

        return to_model

    def diagnostics(self, data, train_cfg, paths, best, val_examples) -> list:
        """[CLS] attention panels (`medtf.tasks.attention_panels`)."""
        from medtf.tasks.attention_panels import attention_diagnostics

        return attention_diagnostics(train_cfg, paths, val_examples)

    # === Compile ===
    def default_loss(self, model):
        if has_inst_head(model):  # the BEiT loss on masked patches + L_inst, summed by Keras (equal weights)
            return {"patches": MaskedTokenLoss(), "nuclei": InstanceTokenLoss()}
        return MaskedTokenLoss() if getattr(model, "target", "pixels") == "tokens" else MaskedPixelLoss()

    def default_metrics(self, model):
        if has_inst_head(model):
            return {"patches": [MaskedTokenAccuracy()], "nuclei": [InstanceTokenAccuracy()]}
        if getattr(model, "target", "pixels") == "tokens":
            return [MaskedTokenAccuracy()]
        return [MaskedMSE(), MaskedPSNR()]

    # === Evaluation ===
    def evaluate(self, run_dir, split: str = "test", checkpoint: str = "best", output=None, data_dir=None,
                 verbose: bool = True, **_) -> dict:
        """The masked metrics over a split (the masks each example gets in validation): summary.json in
        ``output`` (default ``RUN_DIR/eval-SPLIT``) with the loss, mean per-example and pooled MSE / PSNR
        (pixels) or accuracy (tokens), and the realised mask ratio."""
        from medtf.data import make_dataset
        from medtf.evaluation.report import write_summary
        from medtf.evaluation.run import build_preprocess, data_dir_of, load_run

        config, model, config_path, ckpt = load_run(run_dir, checkpoint)
        data = data_dir_of(config, config_path, data_dir)
        if getattr(config, "targets", None) is not None:  # the same tokens on the fly: no cache pass for one split
            self.configure(config.replace(targets=config.targets.replace(cache=False)))
        out = Path(output) if output is not None else Path(run_dir) / f"eval-{split}"
        out.mkdir(parents=True, exist_ok=True)
        ds = make_dataset(data, split, batch_size=8, training=False, repeat=False,
                          patch_size=config.data.val_patch_size, transforms=build_preprocess(config),
                          model_inputs=self.model_inputs(model))
        rows = []
        for x, y in ds:
            pred = model(x, training=False)
            if isinstance(pred, dict):  # + L_inst: the grid-token scores of "patches", instance_scores of "nuclei"
                rows.append({**masked_scores(np.asarray(y["patches"]), np.asarray(pred["patches"]), model.target),
                             **instance_scores(np.asarray(y["nuclei"]), np.asarray(pred["nuclei"]))})
            else:
                rows.append(masked_scores(np.asarray(y), np.asarray(pred), model.target))
        if not rows:
            raise ValueError(f"{data}: split {split!r} has no examples to evaluate")
        per = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
        metrics = {"n": int(len(per["loss"])), "loss": float(per["loss"].mean()),
                   "mask_ratio": float(per["mask_ratio"].mean())}
        pooled = float(per["masked_sum"].sum() / max(per["masked"].sum(), 1))
        if model.target == "pixels":
            metrics.update({"masked_mse": float(per["mse"].mean()), "masked_mse_pooled": pooled,
                            "masked_psnr": float(per["psnr"].mean())})
        else:
            metrics.update({"masked_accuracy": pooled, "masked_accuracy_per_example": float(per["accuracy"].mean())})
        if "inst_counted" in per:
            metrics.update({"inst_loss": float(per["inst_loss"].mean()), "inst_nuclei": int(per["inst_counted"].sum()),
                            "inst_accuracy": float(per["inst_correct"].sum() / max(4 * per["inst_counted"].sum(), 1))})
        summary = {"task": self.name, "split": split, "checkpoint": str(ckpt), "target": model.target,
                   "metrics": metrics}
        write_summary(summary, out / "summary.json")
        if verbose:
            print(" ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "n"))
        return summary

    # === Export ===
    def export(self, run_dir, checkpoint: str = "best", output=None, version=None, name=None,
               threshold: float = 0.5, **_) -> Path:
        """``serving_default`` and ``encode``: raw ``images (B, H, W, C)`` (the model's size) ->
        ``cls_features (B, D)`` and ``token_features (B, N, D)`` of the unmasked backbone; ``preprocess``."""
        import tensorflow as tf

        from medtf.export.normalization import Preprocessor
        from medtf.export.saved_model import load_checkpoint, read_run
        from medtf.models.vit import vit_encoder
        from medtf.tasks.classification import export_classifier

        run_dir = Path(run_dir)
        ckpt = Path(checkpoint) if checkpoint not in ("best", "last") else \
            run_dir / "checkpoints" / f"{checkpoint}.keras"
        encoder = vit_encoder(load_checkpoint(ckpt))
        data = read_run(run_dir)["data"]
        preprocessor = Preprocessor(data["kind"], data.get("preprocess"))
        shape = tuple(encoder.inputs[0].shape)

        def encode(images):
            """raw images -> cls_features, token_features"""
            tokens = tf.cast(encoder(preprocessor.batch(images), training=False), tf.float32)
            return {"cls_features": tokens[:, 0], "token_features": tokens[:, 1:]}

        spec = tf.TensorSpec((None,) * (len(shape) - 1) + (shape[-1],), tf.float32, name="images")
        return export_classifier(self.name, run_dir, checkpoint, output, version, name, threshold,
                                 {"cls_features": lambda y: y[:, 0], "token_features": lambda y: y[:, 1:]},
                                 extra_signatures={"encode": ([spec], encode)}, image_model=encoder)

    # === Predict ===
    def predict(self, model_dir, input_path, output, **_) -> dict:
        """``features.npy``: the pretrained backbone's [CLS] feature ``(N, D)`` of each input image (a file or a
        folder of PNG/TIFF tiles at the model's size, in sorted order), e.g. for a linear probe or an embedding
        projector; ``prediction.json`` maps rows to inputs."""
        from medtf.tasks.classification import predict_features

        return predict_features(self.name, model_dir, input_path, output, "cls_features", "features.npy")
