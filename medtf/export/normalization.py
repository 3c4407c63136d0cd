"""Raw image -> model input, exactly as training saw it: the parser's scaling, then ``data.preprocess``.

Training parses every stored example (`medtf.data.parsers`: CT stays in HU, uint8 RGB is divided by 255) and then
applies the deterministic ``data.preprocess`` transforms (window, zscore, ...) to the *whole* image before patches
are cut. An exported model must repeat both steps on raw images, so they live here once and are used by the
exporter (inside the SavedModel graph), by the predictor and by the tests.

The transforms are seeded with a fixed seed: preprocessing transforms are deterministic, the seed only satisfies
the ``transform(example, seed)`` protocol.

Example:
    >>> prep = Preprocessor("brachy-ct", [{"name": "window", "center": 650, "width": 1700}])
    >>> x = prep.batch(ct_hu[None, ..., None])        # (1, D, H, W, 1) in [0, 1]
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import tensorflow as tf

FIXED_SEED = (0, 0)


def _specs(preprocess: Sequence[Mapping[str, Any]] | None) -> list[dict]:
    specs = [dict(s) for s in (preprocess or [])]
    for i, spec in enumerate(specs):
        if "name" not in spec:
            raise ValueError(f"data.preprocess entry #{i} has no 'name': {spec}")
    return specs


class Preprocessor:
    """Scaling + preprocessing transforms of one data kind, per example or over a batch.

    Args:
        kind: data kind (``brachy-ct``, ``lgg-mri`` ...); fixes the raw -> float scaling (`image_scale`).
        preprocess: the run's ``data.preprocess`` list of transform specs (``[{"name": ..., **params}]``) or None.

    Example:
        >>> Preprocessor("lgg-mri", None).example(rgb_0_255)      # (H, W, 3) -> values in [0, 1]
    """

    def __init__(self, kind: str, preprocess: Sequence[Mapping[str, Any]] | None = None):
        from medtf.data.parsers import image_scale
        from medtf.transforms import build_transforms

        self.kind = kind
        self.scale = float(image_scale(kind))
        self.specs = _specs(preprocess)
        self.compose = build_transforms(self.specs)

    def example(self, image: tf.Tensor) -> tf.Tensor:
        """One raw channels-last image ``(H, W, C)`` / ``(D, H, W, C)`` -> float32 model input of the same shape."""
        image = tf.cast(image, tf.float32)
        if self.scale != 1.0:
            image = image / self.scale  # division, as the parser does: bit-identical to training
        if len(self.compose):
            image = self.compose({"image": image}, tf.constant(FIXED_SEED, tf.int64))["image"]
        return tf.cast(image, tf.float32)

    def batch(self, images: tf.Tensor) -> tf.Tensor:
        """A raw batch ``(B, *spatial, C)`` -> model inputs; transforms run per example (per-image statistics)."""
        images = tf.convert_to_tensor(images)
        if not len(self.compose):
            return self.example(images)  # scaling is elementwise: no per-example loop needed
        spec = tf.TensorSpec(shape=images.shape[1:], dtype=tf.float32)
        return tf.map_fn(self.example, images, fn_output_signature=spec)

    def describe(self) -> dict:
        """JSON-able description written into ``medtf.json``."""
        return {"image_scale_divisor": self.scale, "preprocess": self.specs}
