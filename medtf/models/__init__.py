"""Model families and the name registry: ``get_model("unet3d_small", in_channels=1, num_classes=2)``."""

from medtf.models.registry import get_model, list_models, register_model
from medtf.models.clip import ImageReportEncoder  # noqa: E402  (registers the dual encoders)
from medtf.models.unet import AttentionUNet, UNet, UNetClassifier, unet_encoder  # noqa: E402  (registers the unet variants)
from medtf.models.vit import MaskedImageModel, ViTBackbone  # noqa: E402  (registers the vit variants)
from medtf.models.vgg import VGGBackbone, VGGClassifier  # noqa: E402  (registers the vgg variants)
from medtf.models.text import ReportMaskedLM  # noqa: E402  (registers report_mlm)
from medtf.models.tokenizer import VQVAE  # noqa: E402  (registers the tokenizer variants)
from medtf.models.freeze import freeze, trainable_counts, unfreeze  # noqa: E402

__all__ = ["AttentionUNet", "ImageReportEncoder", "ReportMaskedLM", "UNet", "UNetClassifier", "VGGBackbone",
           "VGGClassifier", "freeze", "get_model", "list_models", "register_model", "trainable_counts", "unet_encoder",
           "unfreeze"]
