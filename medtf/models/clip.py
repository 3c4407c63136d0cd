"""Image-report dual encoder (CLIP style) whose image tower is the U-Net encoder backbone.

Reference: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021.
"""

from __future__ import annotations

import math
import weakref

import keras
from keras import ops

from medtf.models.registry import register_model
from medtf.models.unet.encoder import POOLING, global_pool, unet_encoder


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
class CoordinateChannels(keras.layers.Layer):
    """``(B, *spatial, C)`` -> ``(B, *spatial, C + spatial_dims)``: appends each voxel's position, -1..1 along
    every spatial axis (CoordConv). A pooled image embedding is translation-invariant; with positions as inputs the
    features at a finding can carry where it is (side, lobe), which report retrieval needs.

    Reference: Liu et al., "An intriguing failing of convolutional neural networks and the CoordConv solution",
    NeurIPS 2018."""

    def call(self, x):
        shape = ops.shape(x)
        dims = len(x.shape) - 2
        # arange, not linspace: the sizes are symbolic tensors inside tf.function (linspace needs a Python int)
        axes = [ops.cast(ops.arange(shape[1 + i]), "float32") * 2.0 / ops.cast(ops.maximum(shape[1 + i] - 1, 1),
                                                                             "float32") - 1.0 for i in range(dims)]
        grids = ops.stack(ops.meshgrid(*axes, indexing="ij"), axis=-1)  # (*spatial, dims)
        grids = ops.broadcast_to(ops.cast(grids, x.dtype)[None], (shape[0], *[shape[1 + i] for i in range(dims)], dims))
        return ops.concatenate([x, grids], axis=-1)

    def compute_output_shape(self, shape):
        return (*shape[:-1], None if shape[-1] is None else shape[-1] + len(shape) - 2)


@keras.saving.register_keras_serializable(package="medtf")
class LogitScale(keras.layers.Layer):
    """The learnable inverse temperature of CLIP: a log-scale weight, initialised at ``log(1 / temperature)``;
    ``call(x)`` gives ``exp(clip(log_scale, 0, log(max_scale)))`` as a ``(B, 1)`` column (the clamp of CLIP: the
    scale stays in ``[1, max_scale]``, i.e. the temperature in ``[1 / max_scale, 1]``)."""

    def __init__(self, temperature: float = 0.07, max_scale: float = 100.0, **kwargs):
        super().__init__(**kwargs)
        self.temperature, self.max_scale = float(temperature), float(max_scale)
        if not 1.0 / self.max_scale <= self.temperature <= 1.0:
            raise ValueError(f"temperature {temperature} outside the clamp [1/{max_scale}, 1]")
        self.log_scale = self.add_weight(shape=(), name="log_scale", dtype="float32",
                                         initializer=keras.initializers.Constant(-math.log(self.temperature)))

    def call(self, x):
        scale = ops.exp(ops.clip(self.log_scale, 0.0, math.log(self.max_scale)))
        return ops.ones_like(ops.cast(x[:, :1], "float32")) * scale

    def compute_output_shape(self, shape):
        return (shape[0], 1)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature, "max_scale": self.max_scale}


@keras.saving.register_keras_serializable(package="medtf")
class ImageReportEncoder(keras.Model):
    """Dual encoder: image ``(B, *spatial, C)`` and report -> ``(B, 2 * embed_dim [+ 1])`` float32: the
    L2-normalised image embedding, the report embedding and, with ``learn_temperature``, the logit scale
    (`split_outputs`).

    The image tower is `medtf.models.unet.unet_encoder` (+ global ``pooling``: ``avg``, ``max`` or both
    concatenated, ``avg_max``; ``pool_regions=2``: also over each half-by-half block, `HalvesPooling`, so the
    embedding keeps the side of a finding; and a linear projection); ``coords`` appends voxel positions to the input
    (`CoordinateChannels`) so the pooled embedding can say where a finding is. The
    report tower is either `HashedText` (``text=None``; input ``report``: raw strings) or a keras-hub BERT /
    DistilBERT backbone (``text``: a mapping, `medtf.models.text.tower`; inputs ``token_ids`` and ``padding_mask``,
    tokenised in tf.data by the task with ``model.tokenizer``), pooled and projected. `text_tower` /
    `image_tower` embed raw inputs. Trained with `medtf.tasks.contrastive.ClipLoss` (negatives: the global batch);
    ``label_aware``: the task's default loss treats same-class pairs as positives (``label_weight`` of the
    target on them; the rest on the own pair).

    Example:
        >>> model = ImageReportEncoder(spatial_dims=3, in_channels=3, depth=3, base_filters=4, embed_dim=16)
        >>> model({"image": np.zeros((2, 8, 32, 32, 3)), "report": np.array(["left frontal lesion", ""])}).shape
        TensorShape([2, 32])
    """

    def __init__(self, spatial_dims=3, in_channels=1, depth=3, base_filters=8, norm="instance", embed_dim=32,
                 text_bins=4096, text_dim=64, text=None, learn_temperature=False, temperature=0.07,
                 max_logit_scale=100.0, label_aware=False, pooling="avg", coords=False, pool_regions=1,
                 label_weight=1.0, **kwargs):
        # === Layers ===
        if pooling not in POOLING:
            raise ValueError(f"pooling {pooling!r}: expected one of {POOLING}")
        encoder = unet_encoder(spatial_dims, in_channels + (spatial_dims if coords else 0), depth, base_filters,
                               norm=norm)
        backbone = tokenizer = None
        if text is not None:
            from medtf.models.text.tower import TokenPooling, backbone_sequence, resolve_text, token_inputs

            backbone, tokenizer, text = resolve_text(text)
        # === Functional Model ===
        image = keras.Input(shape=(None,) * spatial_dims + (in_channels,), name="image")
        features = encoder(CoordinateChannels(name="coords")(image) if coords else image)
        # max: a small focal finding is a few voxels of the bottleneck, which the average dilutes
        image_embedding = L2Normalize(name="image_embedding")(
            keras.layers.Dense(embed_dim, name="image_projection")(
                global_pool(features, spatial_dims, pooling, regions=pool_regions)))
        if backbone is None:
            report = keras.Input(shape=(), dtype="string", name="report")
            inputs = {"image": image, "report": report}
            features = HashedText(text_bins, text_dim, name="text")(report)
        else:
            token_ids, padding_mask = token_inputs()
            inputs = {"image": image, "token_ids": token_ids, "padding_mask": padding_mask}
            features = TokenPooling(text["pooling"], text["pooling_heads"], name="text_pool")(
                backbone_sequence(backbone, token_ids, padding_mask), padding_mask)
        text_embedding = L2Normalize(name="text_embedding")(
            keras.layers.Dense(embed_dim, name="text_projection")(features))
        parts = [image_embedding, text_embedding]
        if learn_temperature:
            parts.append(LogitScale(temperature, max_logit_scale, name="logit_scale")(image_embedding))
        outputs = keras.layers.Concatenate(name="embeddings", dtype="float32")(parts)
        super().__init__(inputs=inputs, outputs=outputs, name=kwargs.pop("name", "image_report_encoder"), **kwargs)
        # === Config ===
        self.spatial_dims, self.in_channels, self.depth, self.base_filters = spatial_dims, in_channels, depth, base_filters
        self.norm, self.embed_dim, self.text_bins, self.text_dim = norm, embed_dim, text_bins, text_dim
        self.text, self.learn_temperature, self.temperature = text, bool(learn_temperature), float(temperature)
        self.max_logit_scale, self.label_aware = float(max_logit_scale), bool(label_aware)
        self.label_weight = float(label_weight)
        self.pooling, self.coords, self.pool_regions = pooling, bool(coords), int(pool_regions)
        self.text_backbone, self.tokenizer = backbone, tokenizer

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "spatial_dims": self.spatial_dims,
                "in_channels": self.in_channels, "depth": self.depth, "base_filters": self.base_filters,
                "norm": self.norm, "embed_dim": self.embed_dim, "text_bins": self.text_bins,
                "text_dim": self.text_dim, "text": self.text, "learn_temperature": self.learn_temperature,
                "temperature": self.temperature, "max_logit_scale": self.max_logit_scale,
                "label_aware": self.label_aware, "pooling": self.pooling, "coords": self.coords,
                "pool_regions": self.pool_regions, "label_weight": self.label_weight}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    # === Towers (retrieval, serving) ===
    def _tower(self, kind: str) -> keras.Model:
        towers = _TOWERS.setdefault(self, {})
        if kind not in towers:  # image: images in; text: report strings (hashed) or token_ids + padding_mask
            if kind == "text" and self.tokenizer is not None:
                inputs = {n: self.get_layer(n).output for n in ("token_ids", "padding_mask")}
            else:
                inputs = self.get_layer("image" if kind == "image" else "report").output
            towers[kind] = keras.Model(inputs, self.get_layer(f"{kind}_embedding").output, name=f"{kind}_tower")
        return towers[kind]

    def text_tower(self, reports, training=False):
        """Report strings ``(B,)`` -> L2-normalised text embeddings ``(B, embed_dim)`` (tokenised here)."""
        if self.tokenizer is None:
            return self._tower("text")(reports, training=training)
        tokens = self.tokenizer(reports)
        return self._tower("text")({"token_ids": tokens["token_ids"],
                                    "padding_mask": ops.cast(tokens["padding_mask"], "int32")}, training=training)

    def image_tower(self, images, training=False):
        """Images ``(B, *spatial, C)`` -> L2-normalised image embeddings ``(B, embed_dim)``."""
        return self._tower("image")(images, training=training)


_TOWERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> sub-models (not tracked: not saved)


def split_outputs(outputs, width=None):
    """``(B, 2E [+ 1])`` -> ``(image (B, E), text (B, E), logit scale (B,) or None)``; ``width``: the static
    ``2E [+ 1]`` when ``outputs`` lost it (an all-gather under MultiWorkerMirroredStrategy)."""
    width = outputs.shape[-1] if width is None else width
    half = width // 2
    scale = outputs[..., -1] if width % 2 else None
    return outputs[..., :half], outputs[..., half:2 * half], scale


def split_embeddings(embeddings):
    """``(B, 2E [+ 1])`` -> ``(image (B, E), text (B, E))``."""
    image, text, _ = split_outputs(embeddings)
    return image, text


@register_model(model_class=ImageReportEncoder)
def clip_unet3d_small(**kwargs):
    """Tiny 3D image-report dual encoder (U-Net encoder depth 3, 4 base filters, 16-d embeddings)."""
    return ImageReportEncoder(**{**dict(spatial_dims=3, depth=3, base_filters=4, embed_dim=16), **kwargs})


@register_model(model_class=ImageReportEncoder)
def clip_unet3d_bert(**kwargs):
    """3D U-Net encoder + keras-hub DistilBERT report tower, 256-d projections, learnable temperature (the brain
    MRI study's layout; sizes from ``text`` / ``base_filters``, see experiments/brain_clip.yaml)."""
    defaults = dict(spatial_dims=3, depth=4, base_filters=16, embed_dim=256, learn_temperature=True,
                    text={"arch": "distil_bert"})
    return ImageReportEncoder(**{**defaults, **kwargs})


clip_unet3d_bert.text_tower = True  # medtf train learns its vocabulary first (medtf.tasks.text_prep)
