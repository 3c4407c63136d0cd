"""Vision Transformer family: `ViTBackbone` (+ [MASK] token, + RoI-aligned nucleus tokens), `MaskedImageModel`
(BEiT / SimMIM pretraining, L_inst head) and `NucleusClassifier` (per-nucleus softmax)."""

from medtf.models.vit.masked_image_model import MaskedImageModel, mim_vit_base, mim_vit_small, mim_vit_tiny, vit_encoder
from medtf.models.vit.nucleus_classifier import (NucleusClassifier, nucleus_vit_base, nucleus_vit_small,
                                                 nucleus_vit_tiny)
from medtf.models.vit.vit_backbone import ViTBackbone, vit_base, vit_large, vit_small, vit_tiny

__all__ = ["MaskedImageModel", "NucleusClassifier", "ViTBackbone", "mim_vit_base", "mim_vit_small", "mim_vit_tiny",
           "nucleus_vit_base", "nucleus_vit_small", "nucleus_vit_tiny", "vit_base", "vit_encoder", "vit_large",
           "vit_small", "vit_tiny"]
