"""H&E stain augmentation: random scaling and shifting of the haematoxylin, eosin and DAB stain concentrations.

Colour deconvolution (Ruifrok & Johnston 2001) writes the optical density of an RGB pixel as a mix of three stain
vectors (the rows of `RGB_FROM_HED`); `rgb_to_hed` inverts the mix, the jitter draws per example and per stain
``s' = alpha s + beta`` (``alpha ~ U(1 - sigma, 1 + sigma)``, ``beta ~ U(-bias, bias)``) and `hed_to_rgb` mixes
back, as Tellez et al. (2018) augment H&E. Scaling follows scikit-image's ``rgb2hed`` / ``hed2rgb`` (optical density
divided by ``-log(1e-6)``), so ``sigma`` / ``bias`` values from skimage-based HED jitter carry over; unlike
``rgb2hed`` the concentrations are not clipped at 0, which makes zero jitter the identity (up to float rounding,
for pixel values >= 1e-6).

Images are ``(H, W, 3)`` RGB in ``[0, max_value]`` (nuclei-he parses to [0, 1]); the result is clipped to that
range. Other keys (boxes, instances, classes) pass through: stain jitter moves no pixel.

Example:
    >>> aug = get_transform("hed_jitter", sigma=0.05, bias=0.05)
    >>> out = aug({"image": tile, "boxes": boxes}, tf.constant([1, 2]))

Reference:
    Ruifrok & Johnston, "Quantification of histochemical staining by color deconvolution", Anal Quant Cytol Histol
    23(4), 2001. Tellez et al., "Whole-slide mitosis detection in H&E breast histology using PHH3 as a reference to
    train distilled stain-invariant convolutional networks", IEEE TMI 37(9), 2018.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from medtf.transforms.base import register_transform
from medtf.transforms.intensity import _image_op, _range

# Stain optical-density vectors (rows: haematoxylin, eosin, DAB; columns R, G, B), Ruifrok & Johnston's values as
# scikit-image's ``rgb_from_hed``.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float64)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
EPS = 1e-6
LOG_ADJUST = float(np.log(EPS))  # optical density / -log(eps): 0 for white, 1 for a pixel at eps


def rgb_to_hed(rgb: tf.Tensor) -> tf.Tensor:
    """``(..., 3)`` RGB in [0, 1] -> stain concentrations ``(..., 3)`` (H, E, DAB), not clipped."""
    od = tf.math.log(tf.maximum(tf.cast(rgb, tf.float32), EPS)) / LOG_ADJUST
    return tf.linalg.matvec(tf.constant(HED_FROM_RGB.T, tf.float32), od)


def hed_to_rgb(hed: tf.Tensor) -> tf.Tensor:
    """Stain concentrations ``(..., 3)`` -> RGB ``(..., 3)`` in [0, 1] (clipped)."""
    od = tf.linalg.matvec(tf.constant(RGB_FROM_HED.T, tf.float32), tf.cast(hed, tf.float32))
    return tf.clip_by_value(tf.exp(od * LOG_ADJUST), 0.0, 1.0)


@register_transform("hed_jitter")
class HEDJitter:
    """Random per-stain scale and shift of H&E(-DAB) concentrations (see the module docstring).

    Args:
        sigma: scale range: ``alpha ~ U(1 - sigma, 1 + sigma)``, or a ``(lo, hi)`` pair for alpha itself.
        bias: shift range: ``beta ~ U(-bias, bias)``, or a ``(lo, hi)`` pair.
        prob: probability of jittering an example at all.
        max_value: the image's white (1.0 for nuclei-he's parsed [0, 1] images, 255 for raw uint8 values).

    Example:
        >>> HEDJitter(sigma=0.05, bias=0.05)({"image": tile}, tf.constant([3, 4]))["image"].shape
        TensorShape([64, 64, 3])
    """

    def __init__(self, sigma=0.05, bias=0.05, prob: float = 1.0, max_value: float = 1.0):
        self.alpha = _range(sigma, "sigma", around=1.0)
        self.beta = _range(bias, "bias")
        if self.alpha[0] < 0:
            raise ValueError(f"hed_jitter: sigma gives negative stain scales {self.alpha}")
        if not 0.0 <= float(prob) <= 1.0 or float(max_value) <= 0:
            raise ValueError(f"hed_jitter: prob must be in [0, 1] and max_value > 0, got {prob}, {max_value}")
        self.prob, self.max_value = float(prob), float(max_value)

    def jitter(self, image: tf.Tensor, alpha: tf.Tensor, beta: tf.Tensor) -> tf.Tensor:
        """``image`` with the stain scales ``alpha (3,)`` and shifts ``beta (3,)`` applied (float32)."""
        hed = rgb_to_hed(image / self.max_value)
        return hed_to_rgb(hed * alpha + beta) * self.max_value

    def __call__(self, example, seed):
        image = example["image"]
        if image.shape.rank != 3 or image.shape[-1] != 3:
            raise ValueError(f"hed_jitter needs 2D RGB images (H, W, 3), got {image.shape}")

        def apply(x, s):
            u = tf.random.stateless_uniform([2, 3], tf.random.fold_in(s, 1), dtype=tf.float32)
            alpha = self.alpha[0] + (self.alpha[1] - self.alpha[0]) * u[0]
            beta = self.beta[0] + (self.beta[1] - self.beta[0]) * u[1]
            return self.jitter(x, alpha, beta)

        return _image_op(example, seed, self.prob, apply)
