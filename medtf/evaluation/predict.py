"""Whole image/volume -> binary mask with sliding-window inference."""

from __future__ import annotations

from typing import Sequence

import numpy as np

THRESHOLD = 0.5


def probabilities_to_mask(probs: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """``(..., K)`` model output -> boolean foreground ``(...)``.

    One channel: sigmoid probability ``> threshold``. Several channels (softmax): ``argmax != 0`` (any class but
    background), so binary metrics compare the foreground of multi-class models too.

    Example:
        >>> probabilities_to_mask(np.array([[0.2], [0.7]]))
        array([False,  True])
    """
    probs = np.asarray(probs)
    if probs.shape[-1] == 1:
        return probs[..., 0] > threshold
    return np.argmax(probs, axis=-1) != 0


def predict_masks(model, images: np.ndarray, patch_size: Sequence[int], overlap: float = 0.5,
                  threshold: float = THRESHOLD, batch_size: int = 4) -> np.ndarray:
    """Boolean masks ``(B, *spatial)`` of images ``(B, *spatial, C)`` (a batch of slices or volumes).

    Args:
        model: Keras model mapping ``(N, *patch_size, C)`` to probabilities ``(N, *patch_size, K)``.
        images: channels-last batch, any spatial size (sliding window pads/crops).
        patch_size: sliding-window patch, one int per spatial axis.
        overlap: fraction by which neighbouring windows overlap.
        threshold: sigmoid decision threshold (single-channel models).
        batch_size: windows per model call.

    Example:
        >>> masks = predict_masks(model, ct[None, ..., None], (32, 64, 64))   # (1, D, H, W) bool
    """
    from medtf.inferers import sliding_window_inference

    probs = sliding_window_inference(np.asarray(images, np.float32), model, tuple(patch_size), overlap=overlap,
                                     batch_size=batch_size, output_device="cpu")
    return probabilities_to_mask(np.asarray(probs, np.float32), threshold)
