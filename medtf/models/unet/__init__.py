"""U-Net family: plain U-Net and Attention U-Net, 2D or 3D through ``spatial_dims``."""

from medtf.models.unet.attention_unet import AttentionUNet, attention_unet2d, attention_unet2d_small
from medtf.models.unet.unet import UNet, unet2d, unet2d_small, unet3d, unet3d_small
from medtf.models.unet.encoder import UNetClassifier, unet_classifier2d_small, unet_classifier3d, unet_encoder

__all__ = [
    "AttentionUNet",
    "UNet",
    "UNetClassifier",
    "unet_classifier2d_small",
    "unet_classifier3d",
    "unet_encoder",
    "attention_unet2d",
    "attention_unet2d_small",
    "unet2d",
    "unet2d_small",
    "unet3d",
    "unet3d_small",
]
