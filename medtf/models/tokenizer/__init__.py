"""Visual tokenizers: a VQ-VAE with an EMA codebook that maps an H&E tile to one discrete token per ViT patch
(the targets of BEiT-style masked image modelling, `medtf.tasks.masked_modeling`)."""

from medtf.models.tokenizer.quantizer import VectorQuantizerEMA
from medtf.models.tokenizer.vqvae import VQVAE, decode_tokens, stage_factors, tokenizer_encoder, vqvae_base, vqvae_tiny

__all__ = ["VQVAE", "VectorQuantizerEMA", "decode_tokens", "stage_factors", "tokenizer_encoder", "vqvae_base",
           "vqvae_tiny"]
