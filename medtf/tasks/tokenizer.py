"""The ``tokenizer`` task: train a VQ-VAE (`medtf.models.tokenizer.VQVAE`) to reconstruct images through one
discrete token per ``R x R`` patch; its tokens are the targets of BEiT-style masked image modelling.

Any data kind with an ``image`` field works (``nuclei-he`` tiles: labels, boxes and instances are ignored, so
unlabelled tiles serve too). The model outputs ``{"reconstruction", "tokens", "commitment"}``; the loss is the
reconstruction's mean squared error plus the mean commitment loss (logged as ``reconstruction_loss`` and
``commitment_loss``), ``tokens`` has no loss and only feeds the codebook metrics. Keras names the metrics after the
outputs:

- ``reconstruction_mse`` and ``reconstruction_psnr`` (``10 log10(1 / MSE)`` per example, averaged: images in
  ``[0, 1]``, as the ``nuclei-he`` parser scales them),
- ``tokens_perplexity``: ``exp(entropy)`` of the code histogram pooled over the epoch (1: one code used,
  ``num_codes``: all used equally) and ``tokens_usage``: the fraction of codes used at least once in the epoch.

TensorBoard gets ``[input | reconstruction | token map]`` panels of validation tiles when ``val_loss`` improves.
`export` writes a SavedModel whose signatures map images (raw float or uint8, the training normalisation inside)
to int32 token grids (see `TokenizerTask.export`).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import ops

from medtf.tasks.base import Task
from medtf.training.diagnostics import ValidationPanels, _rgb


@keras.saving.register_keras_serializable(package="medtf")
class ReconstructionPSNR(keras.metrics.Mean):
    """Per-example PSNR ``10 log10(data_range**2 / MSE)`` of ``(B, ..., C)`` images, averaged over examples."""

    def __init__(self, data_range=1.0, name="psnr", dtype="float32"):
        super().__init__(name=name, dtype=dtype)
        self.data_range = float(data_range)

    def update_state(self, y_true, y_pred, sample_weight=None):
        diff = ops.cast(y_pred, "float32") - ops.cast(y_true, "float32")
        mse = ops.mean(ops.reshape(ops.square(diff), (ops.shape(diff)[0], -1)), axis=-1)
        return super().update_state(10.0 * ops.log(self.data_range ** 2 / ops.maximum(mse, 1e-10)) / np.log(10.0))

    def get_config(self):
        return {**super().get_config(), "data_range": self.data_range}


@keras.saving.register_keras_serializable(package="medtf")
class CommitmentLoss(keras.losses.Loss):
    """The mean of the model's per-example commitment output ``y_pred (B,)`` (``y_true`` is a placeholder)."""

    def __init__(self, name="commitment", reduction="sum_over_batch_size", dtype="float32"):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return ops.cast(y_pred, "float32")


class _CodeCounts(keras.metrics.Metric):
    """How often each of ``num_codes`` codes occurs in the predicted token grids (``y_true`` is ignored)."""

    def __init__(self, num_codes, name, dtype="float32"):
        super().__init__(name=name, dtype=dtype)
        self.num_codes = int(num_codes)
        self.counts = self.add_variable(shape=(self.num_codes,), initializer="zeros", name="counts",
                                        aggregation="sum")

    def update_state(self, y_true, y_pred, sample_weight=None):
        codes = ops.reshape(ops.cast(y_pred, "int32"), (-1,))
        self.counts.assign_add(ops.segment_sum(ops.ones_like(codes, dtype="float32"), codes,
                                               num_segments=self.num_codes))

    def reset_state(self):
        self.counts.assign(ops.zeros((self.num_codes,)))

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "num_codes": self.num_codes}


@keras.saving.register_keras_serializable(package="medtf")
class CodebookPerplexity(_CodeCounts):
    """``exp(-sum p log p)`` of the pooled code histogram ``p``: the effective number of codes in use."""

    def __init__(self, num_codes, name="perplexity", dtype="float32"):
        super().__init__(num_codes, name, dtype)

    def result(self):
        p = self.counts / ops.maximum(ops.sum(self.counts), 1.0)
        return ops.exp(-ops.sum(ops.where(p > 0, p * ops.log(ops.maximum(p, 1e-30)), 0.0)))


@keras.saving.register_keras_serializable(package="medtf")
class CodebookUsage(_CodeCounts):
    """Fraction of the ``num_codes`` codes that occurred at least once."""

    def __init__(self, num_codes, name="usage", dtype="float32"):
        super().__init__(num_codes, name, dtype)

    def result(self):
        return ops.mean(ops.cast(self.counts > 0, "float32"))


def code_statistics(counts: np.ndarray) -> dict:
    """NumPy ``perplexity``, ``usage`` and ``codes_used`` of a code histogram (the evaluator's)."""
    counts = np.asarray(counts, np.float64)
    p = counts / max(counts.sum(), 1.0)
    nz = p[p > 0]
    return {"perplexity": float(np.exp(-(nz * np.log(nz)).sum())), "usage": float((counts > 0).mean()),
            "codes_used": int((counts > 0).sum())}


def token_colours(num_codes: int) -> np.ndarray:
    """A fixed random RGB colour per code ``(K, 3)`` in [0.15, 1] (the same code looks the same in every panel)."""
    return 0.15 + 0.85 * np.random.default_rng(12345).random((int(num_codes), 3)).astype(np.float32)


class ReconstructionPanels(ValidationPanels):
    """`ValidationPanels` whose panel is ``[input | reconstruction | token map]`` (input and reconstruction on
    the input's display range; each token a colour, one R x R block per token)."""

    tag, caption = "validation/reconstructions", "input | reconstruction | token map"

    def panels(self) -> np.ndarray:
        colours = token_colours(self.model.num_codes)
        out = []
        for x, _ in self.examples:
            y = self.model(x, training=False)
            image = np.asarray(x[0], np.float32)
            recon = np.asarray(y["reconstruction"][0], np.float32)
            lo, hi = float(image.min()), float(image.max())
            scale = (lambda a: np.clip((a - lo) / (hi - lo), 0, 1)) if hi > lo else (lambda a: np.zeros_like(a))
            tokens = np.asarray(y["tokens"][0])
            r = self.model.patch_size
            tmap = np.repeat(np.repeat(colours[tokens], r, axis=0), r, axis=1)[:image.shape[0], :image.shape[1]]
            out.append(np.concatenate([_rgb(scale(image)), _rgb(scale(recon)), tmap], axis=1))
        height, width = max(p.shape[0] for p in out), max(p.shape[1] for p in out)
        return np.stack([np.pad(p, ((0, height - p.shape[0]), (0, width - p.shape[1]), (0, 0))) for p in out])


class TokenizerTask(Task):
    """``image`` -> (image, {reconstruction target, token placeholder}); see the module docstring."""

    name = "tokenizer"
    fields = ("image",)

    # === Data ===
    def model_inputs(self, model=None):
        import tensorflow as tf

        if model is None:  # diagnostics panels: one image, the image again as "target"
            return lambda example: (example["image"], example["image"])
        if not hasattr(model, "num_codes") or not hasattr(model, "patch_size"):
            raise ValueError(f"task 'tokenizer' needs a tokenizer model (e.g. vqvae_tiny: "
                             f"medtf.models.tokenizer.VQVAE); {model.name!r} is not one")
        r = model.patch_size

        @tf.autograph.experimental.do_not_convert
        def to_model(example):
            self.check_fields(example)
            image = example["image"]
            spatial = image.shape[:-1]
            if spatial.is_fully_defined() and any(int(s) % r for s in spatial):
                raise ValueError(f"task 'tokenizer': images {image.shape} are not a multiple of the tokenizer's "
                                 f"patch_size {r}; crop them with data.patch_size / data.val_patch_size")
            # Tokens and commitment have no target; Keras still wants one entry per output (ignored).
            placeholder = tf.zeros(tf.shape(image)[:-1] // r, tf.int32)
            return image, {"reconstruction": image, "tokens": placeholder, "commitment": tf.zeros(())}

        return to_model

    # === Compile ===
    def default_loss(self, model):
        return {"reconstruction": keras.losses.MeanSquaredError(name="mse"), "tokens": None,
                "commitment": CommitmentLoss()}

    def build_loss(self, loss, model):
        """A named loss replaces the reconstruction's (the commitment loss stays)."""
        built = super().build_loss(loss, model)
        return built if isinstance(built, dict) else {"reconstruction": built, "tokens": None,
                                                      "commitment": CommitmentLoss()}

    def default_metrics(self, model):
        return {"reconstruction": [keras.metrics.MeanSquaredError(name="mse"), ReconstructionPSNR()],
                "tokens": [CodebookPerplexity(model.num_codes), CodebookUsage(model.num_codes)]}

    def diagnostics(self, data, train_cfg, paths, best, val_examples) -> list:
        if train_cfg.image_panels and val_examples:
            return [ReconstructionPanels(paths.images, val_examples, train_cfg.monitor, train_cfg.mode, best=best)]
        return []

    # === Evaluation ===
    def evaluate(self, run_dir, split: str = "test", checkpoint: str = "best", output=None, data_dir=None,
                 verbose: bool = True, **_) -> dict:
        """Reconstruction MSE / PSNR (mean per example) and the codebook's perplexity / usage over a split's
        tokens: ``summary.json`` in ``output`` (default ``RUN_DIR/eval-SPLIT``)."""
        from medtf.data import make_dataset
        from medtf.evaluation.report import write_summary
        from medtf.evaluation.run import build_preprocess, data_dir_of, load_run

        config, model, config_path, ckpt = load_run(run_dir, checkpoint)
        data = data_dir_of(config, config_path, data_dir)
        out = Path(output) if output is not None else Path(run_dir) / f"eval-{split}"
        out.mkdir(parents=True, exist_ok=True)
        ds = make_dataset(data, split, batch_size=8, training=False, repeat=False,
                          patch_size=config.data.val_patch_size, transforms=build_preprocess(config),
                          model_inputs=self.model_inputs(model))
        mse, counts = [], np.zeros(model.num_codes, np.int64)
        for x, _ in ds:
            y = model(x, training=False)
            diff = np.asarray(y["reconstruction"], np.float64) - np.asarray(x, np.float64)
            mse.append((diff ** 2).reshape(len(diff), -1).mean(1))
            counts += np.bincount(np.asarray(y["tokens"]).ravel(), minlength=model.num_codes)
        if not mse:
            raise ValueError(f"{data}: split {split!r} has no examples to evaluate")
        mse = np.concatenate(mse)
        metrics = {"n": int(len(mse)), "mse": float(mse.mean()),
                   "psnr": float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-10)))), **code_statistics(counts)}
        summary = {"task": self.name, "split": split, "checkpoint": str(ckpt), "num_codes": model.num_codes,
                   "metrics": metrics}
        write_summary(summary, out / "summary.json")
        if verbose:
            print(" ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "n"))
        return summary

    # === Export ===
    def export(self, run_dir, checkpoint: str = "best", output=None, version=None, name=None, **_) -> Path:
        from medtf.tasks.tokenizer_export import export_tokenizer

        return export_tokenizer(run_dir, checkpoint, output, version, name)

    # === Predict ===
    def predict(self, model_dir, input_path, output, **_) -> dict:
        """``tokens.npy``: the ``(N, H/R, W/R)`` token grids of the input tiles (a PNG / TIFF file or a folder of
        same-sized tiles, sorted), ``prediction.json`` mapping rows to inputs."""
        from medtf.tasks.classification import predict_features

        return predict_features(self.name, model_dir, input_path, output, "tokens", "tokens.npy")
