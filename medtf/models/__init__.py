"""Model families and the name registry: ``get_model("unet3d_small", in_channels=1, num_classes=2)``."""

from medtf.models.registry import get_model, list_models, register_model
from medtf.models.clip import ImageReportEncoder  # noqa: E402  (registers the dual encoders)
from medtf.models.unet import AttentionUNet, UNet, UNetClassifier, unet_encoder  # noqa: E402  (registers the unet variants)

__all__ = ["AttentionUNet", "ImageReportEncoder", "UNet", "UNetClassifier", "unet_encoder", "get_model", "list_models", "register_model"]
