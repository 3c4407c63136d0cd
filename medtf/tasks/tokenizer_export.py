"""`medtf export` of a tokenizer run: a SavedModel that maps images to int32 token grids.

Signatures (``H, W`` any multiple of the patch size R; ``C`` the trained channels):

==================  ====================================================  ======================================
signature           input                                                 output
==================  ====================================================  ======================================
serving_default     ``images (B, H, W, C)`` float32, raw (0-255 for H&E)  ``tokens (B, H/R, W/R)`` int32
tokenize_uint8      ``images (B, H, W, C)`` uint8                         ``tokens``
tokenize_inputs     ``images`` already normalised as in training          ``tokens`` (the MIM target provider's)
decode              ``tokens (B, h, w)`` int32                            ``images (B, h R, w R, C)`` float32,
                                                                          the training scale (H&E: [0, 1])
preprocess          raw float32 images                                    ``images`` as the model sees them
==================  ====================================================  ======================================

The training normalisation (the kind's scaling, then ``data.preprocess``) is inside the graph
(`medtf.export.normalization.Preprocessor`); ``medtf.json`` records it with ``patch_size`` and ``num_codes``.
"""

from __future__ import annotations

from pathlib import Path


def export_tokenizer(run_dir, checkpoint: str = "best", output=None, version=None, name=None) -> Path:
    """Write ``OUTPUT/NAME/VERSION`` (default ``RUN_DIR/export/<model name>/<next version>``); returns it."""
    import keras
    import tensorflow as tf

    from medtf import __version__
    from medtf.export.layout import ExportError
    from medtf.export.normalization import Preprocessor
    from medtf.export.saved_model import load_checkpoint, plan_export, sha256_file, write_archive
    from medtf.models.tokenizer import decode_tokens, tokenizer_encoder

    run_dir = Path(run_dir)
    config, ckpt, base, target = plan_export(run_dir, checkpoint, output, version, name, default_name="tokenizer")
    data = config["data"]
    model = load_checkpoint(ckpt)
    if not hasattr(model, "num_codes"):
        raise ExportError(f"{ckpt}: not a tokenizer model ({type(model).__name__}); the run's task is 'tokenizer'")
    encoder = tokenizer_encoder(model)
    preprocessor = Preprocessor(data["kind"], data.get("preprocess"))
    rank, channels = model.spatial_dims, model.num_channels
    raw = tf.TensorSpec((None,) * (rank + 1) + (channels,), tf.float32, name="images")
    raw_uint8 = tf.TensorSpec((None,) * (rank + 1) + (channels,), tf.uint8, name="images")
    token_spec = tf.TensorSpec((None,) * (rank + 1), tf.int32, name="tokens")

    def tokens_of(x):
        return {"tokens": tf.cast(encoder(x, training=False), tf.int32)}

    archive = keras.export.ExportArchive()
    archive.track(model)  # the encoder's and decoder's variables are the model's
    archive.add_endpoint("serving_default", tf.function(lambda images: tokens_of(preprocessor.batch(images)),
                                                        input_signature=[raw]))
    archive.add_endpoint("tokenize_uint8", tf.function(lambda images: tokens_of(preprocessor.batch(images)),
                                                       input_signature=[raw_uint8]))
    archive.add_endpoint("tokenize_inputs", tf.function(tokens_of, input_signature=[raw]))
    archive.add_endpoint("decode", tf.function(
        lambda tokens: {"images": tf.cast(decode_tokens(model, tokens), tf.float32)}, input_signature=[token_spec]))
    archive.add_endpoint("preprocess", tf.function(lambda images: {"images": preprocessor.batch(images)},
                                                   input_signature=[raw]))
    signatures = {"serving_default": "raw images -> tokens", "tokenize_uint8": "uint8 images -> tokens",
                  "tokenize_inputs": "normalised images (as in training) -> tokens",
                  "decode": "tokens -> images (training scale)", "preprocess": "raw images -> images"}
    metadata = {"format": "medtf-savedmodel-v1", "task": "tokenizer", "kind": data["kind"], "model": name,
                "spatial_dims": rank, "in_channels": channels, "patch_size": model.patch_size,
                "num_codes": model.num_codes, **preprocessor.describe(), "signatures": signatures,
                "input_name": "images", "output_names": ["tokens"], "medtf_version": __version__,
                "checkpoint": {"file": ckpt.name, "sha256": sha256_file(ckpt)}}
    return write_archive(archive, metadata, base, target)
