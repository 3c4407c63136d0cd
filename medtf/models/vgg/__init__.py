"""VGG-ELU family (the prostate thesis's lesion classifier), 2D or 3D through ``spatial_dims``."""

from medtf.models.vgg.backbone import VGGBackbone
from medtf.models.vgg.classifier import VGGClassifier, vgg_elu, vgg_elu3d_small, vgg_elu_small

__all__ = ["VGGBackbone", "VGGClassifier", "vgg_elu", "vgg_elu3d_small", "vgg_elu_small"]
