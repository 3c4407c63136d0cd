"""VQ-VAE visual tokenizer: image -> one discrete token per ``R x R`` patch (R = the ViT's patch size) -> image.

The BEiT-style pretraining of the nuclei study predicts, for every masked grid patch, the token a frozen
tokenizer gives that patch. The study used DALL-E's pretrained dVAE (8192 codes); nothing can be downloaded here,
so medtf trains its own: a convolutional encoder that downsamples by exactly ``R`` (stride-2 stages for the
factors of two in ``R``, one strided stage for the odd rest: 8 -> 2 x 2 x 2, 28 -> 2 x 2 x 7), an EMA vector
quantiser (`VectorQuantizerEMA`) and a mirrored decoder.

Reference: van den Oord et al., "Neural Discrete Representation Learning", NeurIPS 2017; Ramesh et al.,
"Zero-Shot Text-to-Image Generation" (DALL-E dVAE), ICML 2021; Bao et al., "BEiT", ICLR 2022.
"""

from __future__ import annotations

import keras

from medtf.layers.factories import conv_layer, conv_transpose_layer
from medtf.models.registry import register_model
from medtf.models.tokenizer.quantizer import VectorQuantizerEMA


def stage_factors(patch_size: int) -> list[int]:
    """Down-sampling strides whose product is ``patch_size``: twos first, then the odd rest (28 -> [2, 2, 7])."""
    r = int(patch_size)
    if r < 1:
        raise ValueError(f"patch_size must be a positive integer, got {patch_size}")
    factors = []
    while r % 2 == 0:
        factors.append(2)
        r //= 2
    return factors + ([r] if r > 1 else [])


def _residual(x, width, spatial_dims, name):
    """``x + conv1(relu(conv3(relu(x))))`` (the VQ-VAE residual block, no normalisation)."""
    conv = conv_layer(spatial_dims)
    h = keras.layers.ReLU(name=f"{name}_relu1")(x)
    h = conv(width, 3, padding="same", name=f"{name}_conv3")(h)
    h = keras.layers.ReLU(name=f"{name}_relu2")(h)
    h = conv(width, 1, name=f"{name}_conv1")(h)
    return keras.layers.Add(name=f"{name}_add")([x, h])


@keras.saving.register_keras_serializable(package="medtf")
class VQVAE(keras.Model):
    """``images (B, H, W, C)`` -> ``{"reconstruction": (B, H, W, C) float32, "tokens": (B, H/R, W/R) int32,
    "commitment": (B,) float32}`` (each example's commitment loss, which the tokenizer task adds to the loss).

    Layers (sub-models, so a token-only or decode-only graph reuses them): ``encoder`` (images -> ``z (B, H/R,
    W/R, D)``), ``quantizer`` (`VectorQuantizerEMA`: nearest of ``num_codes`` codes, straight-through, commitment
    loss; EMA/restart updates when ``training``), ``decoder`` (codes' vectors -> images, linear output in the
    input's scale). Fully convolutional: any ``H, W`` that are multiples of ``patch_size``.

    Args:
        patch_size: R, the down-sampling factor: one token per R x R patch (the paper: 28 on 448 px tiles).
        num_channels: image channels C.
        num_codes: codebook size (the paper's tokenizer: 8192; CPU tests: 64-256).
        embedding_dim: code dimension D.
        width: channels of the encoder and decoder stages.
        num_res_blocks: residual blocks after the encoder's down-sampling and before the decoder's up-sampling.
        decay, commitment_cost, restart_after, seed: the quantiser's (`VectorQuantizerEMA`).
        spatial_dims: 2 (tiles); 3 builds the volumetric version through the same layer lookups.

    Example:
        >>> vq = VQVAE(patch_size=8, num_codes=64, embedding_dim=8, width=16)
        >>> out = vq(np.zeros((2, 32, 32, 3), "float32"))
        >>> out["reconstruction"].shape, out["tokens"].shape
        (TensorShape([2, 32, 32, 3]), TensorShape([2, 4, 4]))
    """

    def __init__(self, patch_size=8, num_channels=3, num_codes=8192, embedding_dim=32, width=64, num_res_blocks=1,
                 decay=0.99, commitment_cost=0.25, restart_after=100, seed=0, spatial_dims=2, **kwargs):
        factors = stage_factors(patch_size)
        conv, up = conv_layer(spatial_dims), conv_transpose_layer(spatial_dims)
        spatial = (None,) * int(spatial_dims)
        # === Layers ===
        images_e = keras.Input(shape=(*spatial, num_channels), name="images")
        x = conv(width, 3, padding="same", name="stem")(images_e)
        for i, f in enumerate(factors):  # kernel 4 for the stride-2 stages (no checkerboard), f for the odd rest
            x = keras.layers.ReLU(name=f"down{i}_relu")(x)
            x = conv(width, 4 if f == 2 else f, strides=f, padding="same", name=f"down{i}")(x)
        for i in range(num_res_blocks):
            x = _residual(x, width, spatial_dims, f"res{i}")
        x = keras.layers.ReLU(name="out_relu")(x)
        z = conv(embedding_dim, 1, name="to_codes")(x)
        encoder = keras.Model(images_e, z, name="encoder")

        codes_in = keras.Input(shape=(*spatial, embedding_dim), name="quantised")
        x = conv(width, 3, padding="same", name="from_codes")(codes_in)
        for i in range(num_res_blocks):
            x = _residual(x, width, spatial_dims, f"res{i}")
        for i, f in enumerate(reversed(factors)):
            x = keras.layers.ReLU(name=f"up{i}_relu")(x)
            x = up(width, 4 if f == 2 else f, strides=f, padding="same", name=f"up{i}")(x)
        x = keras.layers.ReLU(name="out_relu")(x)
        recon = conv(num_channels, 3, padding="same", dtype="float32", name="to_image")(x)
        decoder = keras.Model(codes_in, recon, name="decoder")
        quantizer = VectorQuantizerEMA(num_codes, embedding_dim, decay, commitment_cost, restart_after=restart_after,
                                       seed=seed, name="quantizer")
        # === Functional Model ===
        images = keras.Input(shape=(*spatial, num_channels), name="images")
        quantised, tokens, commitment = quantizer(encoder(images))
        outputs = {"reconstruction": decoder(quantised), "tokens": tokens, "commitment": commitment}
        super().__init__(inputs=images, outputs=outputs, name=kwargs.pop("name", "vqvae"), **kwargs)
        # === Config ===
        self.patch_size, self.num_channels, self.num_codes = int(patch_size), int(num_channels), int(num_codes)
        self.embedding_dim, self.width, self.num_res_blocks = int(embedding_dim), int(width), int(num_res_blocks)
        self.decay, self.commitment_cost = float(decay), float(commitment_cost)
        self.restart_after, self.seed, self.spatial_dims = int(restart_after), int(seed), int(spatial_dims)

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "patch_size": self.patch_size,
                "num_channels": self.num_channels, "num_codes": self.num_codes, "embedding_dim": self.embedding_dim,
                "width": self.width, "num_res_blocks": self.num_res_blocks, "decay": self.decay,
                "commitment_cost": self.commitment_cost, "restart_after": self.restart_after, "seed": self.seed,
                "spatial_dims": self.spatial_dims}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def tokenizer_encoder(model: VQVAE) -> keras.Model:
    """``images (B, H, W, C)`` -> ``tokens (B, H/R, W/R)`` int32 of a trained `VQVAE` (weights shared; the
    quantiser runs in inference mode: no EMA update). What the export and the MIM target provider call."""
    encoder, quantizer = model.get_layer("encoder"), model.get_layer("quantizer")
    images = keras.Input(shape=encoder.inputs[0].shape[1:], name="images")
    _, tokens, _ = quantizer(encoder(images), training=False)
    return keras.Model(images, tokens, name="tokenizer")


def decode_tokens(model: VQVAE, tokens):
    """``tokens (B, h, w)`` int -> images ``(B, h R, w R, C)``: the codes' vectors through the decoder."""
    from keras import ops

    codebook = model.get_layer("quantizer").codebook
    return model.get_layer("decoder")(ops.take(codebook, ops.cast(tokens, "int32"), axis=0), training=False)


def _vqvae(defaults: dict, kwargs: dict) -> VQVAE:
    return VQVAE(**{**defaults, **kwargs})


@register_model(model_class=VQVAE)
def vqvae_tiny(**kwargs):
    """CPU-sized tokenizer: 128 codes of 16 dimensions, 32-channel stages, one residual block; EMA decay 0.9 so the
    codebook follows the encoder within a few hundred steps."""
    return _vqvae(dict(num_codes=128, embedding_dim=16, width=32, num_res_blocks=1, decay=0.9, restart_after=20),
                  kwargs)


@register_model(model_class=VQVAE)
def vqvae_base(**kwargs):
    """The paper-sized codebook: 8192 codes of 32 dimensions, 128-channel stages, two residual blocks."""
    return _vqvae(dict(num_codes=8192, embedding_dim=32, width=128, num_res_blocks=2, restart_after=100), kwargs)
