"""Nucleus-token layers of the ViT: box position code, [PAD] replacement, attention mask, token slices.

A nucleus ViT's sequence is ``[CLS] + N grid tokens + M nucleus tokens`` (``M = max_nuclei``); an image with
``n < M`` nuclei fills the last ``M - n`` slots with one learned [PAD] embedding, and the attention mask stops every
token from attending to a [PAD] slot, so the outputs of [CLS], the grid and the real nuclei do not depend on how
much padding there is or on what the padded box rows hold.

Reference: "Learning Nuclei Representations with Masked Image Modelling" (the study of issue #15: RoIAlign + a
k x k convolution per nucleus box, (x, y, w, h) sinusoidal codes, [PAD] masking).
"""

from __future__ import annotations

import keras
from keras import ops

from medtf.models.vit.layers import sincos_xywh


def valid_slots(num_boxes, max_nuclei: int):
    """``num_boxes (B,)`` -> ``(B, M)`` bool, True for the first ``num_boxes`` slots (the real nuclei)."""
    n = ops.reshape(ops.cast(num_boxes, "int32"), (-1, 1))
    return ops.arange(max_nuclei, dtype="int32")[None, :] < n


def boxes_to_xywh(boxes, patch_size: int):
    """``[ymin, xmin, ymax, xmax]`` pixels -> ``(x centre, y centre, width, height)`` in patch units."""
    boxes = ops.cast(boxes, "float32") / float(patch_size)
    ymin, xmin, ymax, xmax = (boxes[..., i] for i in range(4))
    return ops.stack([(xmin + xmax) / 2, (ymin + ymax) / 2, xmax - xmin, ymax - ymin], axis=-1)


@keras.saving.register_keras_serializable(package="medtf")
class BoxPositionEncoding(keras.layers.Layer):
    """``[tokens (B, M, D), boxes (B, M, 4)]`` -> tokens + `sincos_xywh` of each box (pixels -> patch units)."""

    def __init__(self, patch_size: int, **kwargs):
        kwargs.setdefault("autocast", False)  # boxes stay float32 under mixed precision (float16 steps 0.25 px at 448)
        super().__init__(**kwargs)
        self.patch_size = int(patch_size)

    def call(self, inputs):
        tokens, boxes = inputs
        code = sincos_xywh(boxes_to_xywh(boxes, self.patch_size), tokens.shape[-1])
        return tokens + ops.cast(code, tokens.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size}


@keras.saving.register_keras_serializable(package="medtf")
class PadTokens(keras.layers.Layer):
    """``[tokens (B, M, D), num_boxes (B,)]`` -> tokens with every slot ``>= num_boxes`` replaced by a learned
    [PAD] embedding (a select, not a blend: whatever the padded rows computed does not reach the output)."""

    def __init__(self, initializer_range: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.initializer_range = float(initializer_range)

    def build(self, input_shape):
        self.pad_token = self.add_weight(
            shape=(input_shape[0][-1],), name="pad_token",
            initializer=keras.initializers.TruncatedNormal(stddev=self.initializer_range))

    def call(self, inputs):
        tokens, num_boxes = inputs
        keep = valid_slots(num_boxes, tokens.shape[1])[..., None]
        return ops.where(keep, tokens, ops.cast(self.pad_token, tokens.dtype)[None, None, :])

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "initializer_range": self.initializer_range}


@keras.saving.register_keras_serializable(package="medtf")
class PadAttentionMask(keras.layers.Layer):
    """``num_boxes (B,)`` -> ``(B, L, L)`` bool attention mask, ``L = num_fixed + max_nuclei``: every query may
    attend to the first ``num_fixed`` tokens ([CLS] + grid) and to the real nuclei, never to a [PAD] slot."""

    def __init__(self, num_fixed: int, max_nuclei: int, **kwargs):
        super().__init__(**kwargs)
        self.num_fixed, self.max_nuclei = int(num_fixed), int(max_nuclei)

    def call(self, num_boxes):
        nuclei = valid_slots(num_boxes, self.max_nuclei)
        fixed = ops.ones((ops.shape(nuclei)[0], self.num_fixed), dtype="bool")
        keys = ops.concatenate([fixed, nuclei], axis=1)[:, None, :]  # (B, 1, L)
        length = self.num_fixed + self.max_nuclei
        return ops.broadcast_to(keys, (ops.shape(nuclei)[0], length, length))

    def compute_output_shape(self, input_shape):
        length = self.num_fixed + self.max_nuclei
        return (input_shape[0], length, length)

    def compute_output_spec(self, num_boxes):
        length = self.num_fixed + self.max_nuclei
        return keras.KerasTensor((num_boxes.shape[0], length, length), dtype="bool")

    def get_config(self):
        return {**super().get_config(), "num_fixed": self.num_fixed, "max_nuclei": self.max_nuclei}


@keras.saving.register_keras_serializable(package="medtf")
class TokenSlice(keras.layers.Layer):
    """``(B, L, D)`` -> ``(B, stop - start, D)``: e.g. the nucleus tokens ``[1 + N:]`` of a nucleus ViT, or its
    [CLS] + grid tokens ``[:1 + N]``."""

    def __init__(self, start: int = 0, stop: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop = int(start), (None if stop is None else int(stop))

    def call(self, tokens):
        return tokens[:, self.start:self.stop]

    def compute_output_shape(self, input_shape):
        stop = input_shape[1] if self.stop is None else self.stop
        return (input_shape[0], None if stop is None else stop - self.start, input_shape[2])

    def get_config(self):
        return {**super().get_config(), "start": self.start, "stop": self.stop}


@keras.saving.register_keras_serializable(package="medtf")
class Zeros(keras.layers.Layer):
    """``images (B, ...)`` -> zeros ``(B, *shape)`` of ``out_dtype``: an empty mask / no boxes / 0 nuclei for
    running a masked or nucleus backbone on images alone."""

    def __init__(self, zeros_shape=(), out_dtype: str = "float32", **kwargs):
        super().__init__(**kwargs)
        self.zeros_shape, self.out_dtype = [int(s) for s in zeros_shape], str(out_dtype)

    def call(self, images):
        return ops.zeros((ops.shape(images)[0], *self.zeros_shape), dtype=self.out_dtype)

    def compute_output_spec(self, images):
        return keras.KerasTensor((images.shape[0], *self.zeros_shape), dtype=self.out_dtype)

    def get_config(self):
        return {**super().get_config(), "zeros_shape": list(self.zeros_shape), "out_dtype": self.out_dtype}
