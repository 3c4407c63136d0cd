"""Segmentation losses (channels-last, float32 compute). See :mod:`medtf.losses.segmentation`."""

from medtf.losses.segmentation import (
    DiceCELoss,
    DiceFocalLoss,
    SoftDiceLoss,
    TverskyLoss,
    WeightedBCE,
    get_loss,
    list_losses,
    loss_class,
    soft_dice_loss,
)

__all__ = ["DiceCELoss", "DiceFocalLoss", "SoftDiceLoss", "TverskyLoss", "WeightedBCE", "get_loss",
           "list_losses", "loss_class", "soft_dice_loss"]
