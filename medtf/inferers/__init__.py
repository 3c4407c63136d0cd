"""Inference helpers: sliding-window prediction over images of any size, flip test-time augmentation.

Example:
    >>> from medtf.inferers import flip_tta, sliding_window_inference
    >>> probs = sliding_window_inference(volume, flip_tta(model), patch_size=(64, 64, 64), overlap=0.5)
"""

from medtf.inferers.sliding_window import importance_map, patch_starts, sliding_window_inference
from medtf.inferers.tta import classification_views, flip_tta, invariant_tta

__all__ = ["classification_views", "flip_tta", "invariant_tta", "importance_map", "patch_starts", "sliding_window_inference"]
