"""Image-report dual encoder (CLIP style) whose image tower is the U-Net encoder backbone.

Reference: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021.
"""

from __future__ import annotations

import keras

from medtf.models.registry import register_model
from medtf.models.unet.encoder import unet_encoder


@keras.saving.register_keras_serializable(package="medtf")
class HashedText(keras.layers.Layer):
    """Report strings ``(B,)`` -> ``(B, dim)``: lower-cased words hashed into ``num_bins`` learned embeddings,
    averaged (no vocabulary to fit or ship; an empty report gives zeros)."""

    def __init__(self, num_bins: int = 4096, dim: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.num_bins, self.dim = int(num_bins), int(dim)
        self.embeddings = self.add_weight(shape=(self.num_bins, self.dim), initializer="glorot_uniform",
                                          name="embeddings")

    def call(self, text):
        import tensorflow as tf

        text = tf.strings.regex_replace(tf.strings.lower(tf.reshape(text, [-1])), r"[^a-z0-9]+", " ")
        words = tf.strings.split(text)
        ids = tf.strings.to_hash_bucket_fast(words, self.num_bins)
        vectors = tf.ragged.map_flat_values(tf.gather, tf.convert_to_tensor(self.embeddings), ids)
        total = tf.reduce_sum(vectors, axis=1)
        count = tf.cast(tf.maximum(ids.row_lengths(), 1), total.dtype)[:, None]
        return total / count

    def compute_output_shape(self, shape):
        return (shape[0], self.dim)

    def get_config(self):
        return {**super().get_config(), "num_bins": self.num_bins, "dim": self.dim}


@keras.saving.register_keras_serializable(package="medtf")
class L2Normalize(keras.layers.Layer):
    def call(self, x):
        return keras.ops.normalize(keras.ops.cast(x, "float32"), axis=-1)


@keras.saving.register_keras_serializable(package="medtf")
class ImageReportEncoder(keras.Model):
    """Dual encoder: ``{"image": (B, *spatial, C), "report": (B,) string}`` -> ``(B, 2 * embed_dim)`` float32,
    the L2-normalised image embedding then the report embedding (split with `split_embeddings`).

    The image tower is `medtf.models.unet.unet_encoder` (+ global average pooling and a linear projection), the
    text tower `HashedText` (+ a projection). Trained with `medtf.tasks.contrastive.ClipLoss` (negatives: the global batch).

    Example:
        >>> model = ImageReportEncoder(spatial_dims=3, in_channels=3, depth=3, base_filters=4, embed_dim=16)
        >>> model({"image": np.zeros((2, 8, 32, 32, 3)), "report": np.array(["left frontal lesion", ""])}).shape
        TensorShape([2, 32])
    """

    def __init__(self, spatial_dims=3, in_channels=1, depth=3, base_filters=8, norm="instance", embed_dim=32,
                 text_bins=4096, text_dim=64, **kwargs):
        # === Layers ===
        encoder = unet_encoder(spatial_dims, in_channels, depth, base_filters, norm=norm)
        pool = keras.layers.GlobalAveragePooling2D if spatial_dims == 2 else keras.layers.GlobalAveragePooling3D
        # === Functional Model ===
        image = keras.Input(shape=(None,) * spatial_dims + (in_channels,), name="image")
        report = keras.Input(shape=(), dtype="string", name="report")
        image_embedding = L2Normalize(name="image_embedding")(
            keras.layers.Dense(embed_dim, name="image_projection")(pool(name="pool")(encoder(image))))
        text_embedding = L2Normalize(name="text_embedding")(
            keras.layers.Dense(embed_dim, name="text_projection")(HashedText(text_bins, text_dim, name="text")(report)))
        outputs = keras.layers.Concatenate(name="embeddings", dtype="float32")([image_embedding, text_embedding])
        super().__init__(inputs={"image": image, "report": report}, outputs=outputs,
                         name=kwargs.pop("name", "image_report_encoder"), **kwargs)
        # === Config ===
        self.spatial_dims, self.in_channels, self.depth, self.base_filters = spatial_dims, in_channels, depth, base_filters
        self.norm, self.embed_dim, self.text_bins, self.text_dim = norm, embed_dim, text_bins, text_dim

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "spatial_dims": self.spatial_dims,
                "in_channels": self.in_channels, "depth": self.depth, "base_filters": self.base_filters,
                "norm": self.norm, "embed_dim": self.embed_dim, "text_bins": self.text_bins,
                "text_dim": self.text_dim}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def split_embeddings(embeddings):
    """``(B, 2E)`` -> ``(image (B, E), text (B, E))``."""
    half = embeddings.shape[-1] // 2
    return embeddings[..., :half], embeddings[..., half:]


@register_model(model_class=ImageReportEncoder)
def clip_unet3d_small(**kwargs):
    """Tiny 3D image-report dual encoder (U-Net encoder depth 3, 4 base filters, 16-d embeddings)."""
    return ImageReportEncoder(**{**dict(spatial_dims=3, depth=3, base_filters=4, embed_dim=16), **kwargs})
