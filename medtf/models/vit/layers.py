"""Token layers of the ViT family: [CLS] token, positional embedding (learned, fixed 2D sin-cos, or the
sinusoidal (x, y, w, h) box code), [MASK] tokens.

Every layer keeps its weights in float32 and computes in the layer's compute dtype (mixed precision).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

POSITION_KINDS = ("learned", "sincos", "xywh")


def sincos_2d(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> np.ndarray:
    """Fixed 2D sin-cos position codes ``(gh * gw, dim)`` in row-major patch order (MAE / MoCo v3).

    The first half of each vector encodes the patch row, the second half its column; each half is
    ``[sin(pos * omega), cos(pos * omega)]`` with ``omega = temperature ** -(k / (dim / 4))``.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs hidden_dim divisible by 4, got {dim}")
    omega = 1.0 / temperature ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
    rows, cols = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")

    def encode(pos):
        angles = pos.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([encode(rows), encode(cols)], axis=1).astype(np.float32)


def xywh_frequencies(dim: int, temperature: float = 10000.0) -> np.ndarray:
    """The ``dim / 8`` angular frequencies of `sincos_xywh`: ``temperature ** -(k / (dim / 8))``."""
    if dim % 8:
        raise ValueError(f"the (x, y, w, h) position encoding needs hidden_dim divisible by 8, got {dim}")
    return 1.0 / temperature ** (np.arange(dim // 8, dtype=np.float64) / (dim // 8))


def sincos_xywh(xywh, dim: int, temperature: float = 10000.0):
    """Sinusoidal code of boxes ``(..., 4)`` = ``(x centre, y centre, width, height)`` -> ``(..., dim)``.

    ``dim / 4`` dimensions per coordinate, in the order x, y, w, h, each ``[sin(v * omega), cos(v * omega)]``
    (`xywh_frequencies`). NumPy in, NumPy out (float32); a tensor in, a float32 tensor out. The ViT uses patch
    units (pixels / patch size): grid token ``(i, j)`` is ``(j + 0.5, i + 0.5, 1, 1)``, a nucleus box its centre
    and size, so grid and nucleus tokens share one coordinate system (the paper's position-and-shape code).
    """
    omega = xywh_frequencies(dim, temperature)
    if isinstance(xywh, np.ndarray):
        angles = np.asarray(xywh, np.float64)[..., :, None] * omega  # (..., 4, dim / 8)
        code = np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)  # (..., 4, dim / 4)
        return code.reshape(*code.shape[:-2], dim).astype(np.float32)
    angles = ops.cast(xywh, "float32")[..., :, None] * ops.cast(omega, "float32")
    code = ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)
    return ops.reshape(code, (*ops.shape(code)[:-2], dim))


def grid_xywh(grid: tuple[int, int]) -> np.ndarray:
    """``(gh * gw, 4)`` row-major ``(x, y, w, h)`` of the grid patches in patch units."""
    rows, cols = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
    ones = np.ones(rows.size)
    return np.stack([cols.reshape(-1) + 0.5, rows.reshape(-1) + 0.5, ones, ones], axis=1)


@keras.saving.register_keras_serializable(package="medtf")
class MaskTokens(keras.layers.Layer):
    """``[tokens (B, N, D), mask (B, N)]`` -> tokens with every masked position (mask 1 / True) replaced by one
    learned [MASK] embedding (BEiT). A float mask in (0, 1) blends, so mask 0 is exactly the identity.

    The mask travels as a list element, not a ``mask=`` argument: Keras reserves that name for its own
    padding-mask propagation.
    """

    def __init__(self, initializer_range: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.initializer_range = float(initializer_range)

    def build(self, input_shape):
        dim = input_shape[0][-1]
        self.mask_token = self.add_weight(
            shape=(dim,), name="mask_token",
            initializer=keras.initializers.TruncatedNormal(stddev=self.initializer_range))

    def call(self, inputs):
        tokens, mask = inputs
        m = ops.cast(mask, tokens.dtype)[..., None]
        return tokens * (1 - m) + ops.cast(self.mask_token, tokens.dtype) * m

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "initializer_range": self.initializer_range}


@keras.saving.register_keras_serializable(package="medtf")
class ClassToken(keras.layers.Layer):
    """``(B, N, D)`` -> ``(B, 1 + N, D)``: a learned [CLS] embedding prepended to every sequence."""

    def __init__(self, initializer_range: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.initializer_range = float(initializer_range)

    def build(self, input_shape):
        self.token = self.add_weight(
            shape=(1, 1, input_shape[-1]), name="token",
            initializer=keras.initializers.TruncatedNormal(stddev=self.initializer_range))

    def call(self, tokens):
        cls = ops.broadcast_to(ops.cast(self.token, tokens.dtype), (ops.shape(tokens)[0], 1, ops.shape(tokens)[-1]))
        return ops.concatenate([cls, tokens], axis=1)

    def compute_output_shape(self, input_shape):
        n = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], n, input_shape[2])

    def get_config(self):
        return {**super().get_config(), "initializer_range": self.initializer_range}


@keras.saving.register_keras_serializable(package="medtf")
class PositionEmbedding(keras.layers.Layer):
    """Adds position codes to ``(B, 1 + gh * gw, D)`` ([CLS] first, patches row-major).

    ``kind="learned"``: one trainable vector per position (ViT); ``kind="sincos"``: fixed `sincos_2d` codes for
    the patches and zeros for [CLS] (MAE), nothing to train, any ``D`` divisible by 4; ``kind="xywh"``: fixed
    `sincos_xywh` codes of the patches' boxes and a learned [CLS] position (the nucleus-token ViT), ``D``
    divisible by 8.
    """

    def __init__(self, grid, kind: str = "learned", initializer_range: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        if kind not in POSITION_KINDS:
            raise ValueError(f"position_embedding must be 'learned', 'sincos' or 'xywh', got {kind!r}")
        self.grid, self.kind, self.initializer_range = [int(g) for g in grid], kind, float(initializer_range)

    def build(self, input_shape):
        length, dim = 1 + self.grid[0] * self.grid[1], input_shape[-1]
        if self.kind == "learned":
            self.embedding = self.add_weight(
                shape=(length, dim), name="embedding",
                initializer=keras.initializers.TruncatedNormal(stddev=self.initializer_range))
        elif self.kind == "sincos":  # a constant, not a weight: nothing to save, and it cannot drift in training
            self.table = np.concatenate([np.zeros((1, dim), np.float32), sincos_2d(self.grid, dim)])
        else:
            self.cls_position = self.add_weight(
                shape=(1, dim), name="cls_position",
                initializer=keras.initializers.TruncatedNormal(stddev=self.initializer_range))
            self.table = sincos_xywh(grid_xywh(self.grid), dim)

    def call(self, tokens):
        if self.kind == "xywh":
            table = ops.concatenate([ops.cast(self.cls_position, tokens.dtype), ops.cast(self.table, tokens.dtype)],
                                    axis=0)
        else:
            table = ops.cast(self.embedding if self.kind == "learned" else self.table, tokens.dtype)
        return tokens + table[None]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "grid": list(self.grid), "kind": self.kind,
                "initializer_range": self.initializer_range}


@keras.saving.register_keras_serializable(package="medtf")
class PatchTokens(keras.layers.Layer):
    """``(B, 1 + N [+ M], D)`` -> ``(B, N, D)``: the patch tokens without [CLS] (what per-patch heads predict
    from). ``num_patches`` (None: everything after [CLS]) stops before the nucleus tokens of a nucleus ViT."""

    def __init__(self, num_patches: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.num_patches = None if num_patches is None else int(num_patches)

    def call(self, tokens):
        return tokens[:, 1:] if self.num_patches is None else tokens[:, 1:1 + self.num_patches]

    def compute_output_shape(self, input_shape):
        if self.num_patches is not None:
            return (input_shape[0], self.num_patches, input_shape[2])
        n = None if input_shape[1] is None else input_shape[1] - 1
        return (input_shape[0], n, input_shape[2])

    def get_config(self):
        config = super().get_config()
        return {**config, "num_patches": self.num_patches} if self.num_patches is not None else config


@keras.saving.register_keras_serializable(package="medtf")
class NoMask(keras.layers.Layer):
    """``images (B, ...)`` -> an all-zero mask ``(B, num_patches)``: runs a masked backbone unmasked (encoding)."""

    def __init__(self, num_patches: int, **kwargs):
        super().__init__(**kwargs)
        self.num_patches = int(num_patches)

    def call(self, images):
        return ops.zeros((ops.shape(images)[0], self.num_patches), dtype="float32")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_patches)

    def get_config(self):
        return {**super().get_config(), "num_patches": self.num_patches}
