"""Vision Transformer family: `ViTBackbone` (+ [MASK] token) and `MaskedImageModel` (BEiT / SimMIM pretraining)."""

from medtf.models.vit.masked_image_model import MaskedImageModel, mim_vit_base, mim_vit_small, mim_vit_tiny, vit_encoder
from medtf.models.vit.vit_backbone import ViTBackbone, vit_base, vit_large, vit_small, vit_tiny

__all__ = ["MaskedImageModel", "ViTBackbone", "mim_vit_base", "mim_vit_small", "mim_vit_tiny", "vit_base",
           "vit_encoder", "vit_large", "vit_small", "vit_tiny"]
