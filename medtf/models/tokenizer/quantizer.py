"""Vector quantisation with an exponential-moving-average codebook and dead-code restarts (VQ-VAE v2 style).

The codebook is not trained by gradients: each training call moves every code towards the mean of the encoder
vectors assigned to it (EMA of counts and sums), which is more stable than the codebook loss of the first VQ-VAE.
Codes that no vector picked for ``restart_after`` training calls in a row are re-initialised from encoder vectors
of the current batch, so a large codebook does not collapse onto a few codes.

Reference: van den Oord et al., "Neural Discrete Representation Learning", NeurIPS 2017 (straight-through
estimator, commitment loss, EMA updates in the appendix); Razavi et al., "VQ-VAE-2", NeurIPS 2019; dead-code
restarts as in Dhariwal et al., "Jukebox", 2020.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="medtf")
class VectorQuantizerEMA(keras.layers.Layer):
    """``z (B, ..., D)`` -> ``(quantised (B, ..., D), codes (B, ...) int32, commitment (B,) float32)``.

    ``quantised`` is the nearest code (squared Euclidean distance) of every vector, passed straight through:
    ``z + stop_gradient(code - z)``, so the decoder's gradient reaches the encoder unchanged. ``commitment`` is
    each example's commitment loss ``commitment_cost * mean((z - sg(code))**2)``, returned rather than
    `add_loss`-ed: a compiled loss on it is scaled per replica by Keras, while `add_loss` terms of a layer shared
    by MirroredStrategy's replica threads can be picked up by the wrong replica. In training (``training=True``)
    the layer updates its state:

    - ``cluster_size <- decay * cluster_size + (1 - decay) * n_k`` and ``embed_sum <- decay * embed_sum +
      (1 - decay) * sum of the vectors assigned to code k``; the codebook is ``embed_sum / cluster_size`` with
      Laplace smoothing ``(cluster_size + eps) / (total + K eps) * total``, derived on every call (not stored).
      Under a distribution strategy the counts and sums are summed over the replicas first and restarts use
      replica 0's draws, so every replica writes the same state (``aggregation="mean"``): one device's update
      on the global batch.
    - ``unused`` counts the training calls since a code was last picked; when it reaches ``restart_after``
      (> 0) the code restarts at a random vector of the batch (``embed_sum = z``, ``cluster_size = 1``).
      ``unused`` starts at ``restart_after``, so the first training batch seeds every code it did not pick.

    The layer computes in float32 whatever the global policy (distances of 8192 codes in float16 tie).

    Args:
        num_codes: codebook size K (the paper's DALL-E tokenizer: 8192).
        embedding_dim: code dimension D (the encoder's output channels).
        decay: EMA decay (0.99).
        commitment_cost: weight beta of the commitment loss (0.25).
        epsilon: Laplace smoothing of the cluster sizes.
        restart_after: training calls without use before a code restarts; 0 disables restarts.
        seed: of the restart draws.

    Example:
        >>> vq = VectorQuantizerEMA(num_codes=64, embedding_dim=8)
        >>> quantised, codes, commitment = vq(np.random.rand(2, 4, 4, 8).astype("float32"), training=True)
    """

    def __init__(self, num_codes=8192, embedding_dim=32, decay=0.99, commitment_cost=0.25, epsilon=1e-5,
                 restart_after=100, seed=0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if int(num_codes) < 2:
            raise ValueError(f"num_codes must be at least 2, got {num_codes}")
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.num_codes, self.embedding_dim = int(num_codes), int(embedding_dim)
        self.decay, self.commitment_cost, self.epsilon = float(decay), float(commitment_cost), float(epsilon)
        self.restart_after, self.seed = int(restart_after), int(seed)

    def build(self, input_shape):
        if input_shape[-1] != self.embedding_dim:
            raise ValueError(f"{self.name}: inputs have {input_shape[-1]} channels, embedding_dim is "
                             f"{self.embedding_dim}")
        k, d = self.num_codes, self.embedding_dim
        state = dict(trainable=False, autocast=False, aggregation="mean")
        # Codes start spread like unit-variance encoder outputs; restarts replace the unused ones with data.
        self.embed_sum = self.add_weight(shape=(k, d), name="embed_sum",
                                         initializer=keras.initializers.RandomUniform(-1.0, 1.0, seed=self.seed),
                                         **state)
        self.cluster_size = self.add_weight(shape=(k,), name="cluster_size", initializer="ones", **state)
        self.unused = self.add_weight(shape=(k,), name="unused",
                                      initializer=keras.initializers.Constant(float(self.restart_after)), **state)
        # Training calls so far: with `seed`, the stateless seed of the restart draws (a SeedGenerator's variable
        # cannot be updated inside a MirroredStrategy replica).
        self.steps = self.add_weight(shape=(), name="steps", initializer="zeros", **state)

    # === Codebook ===
    @property
    def codebook(self):
        """``(K, D)`` float32: ``embed_sum`` over the Laplace-smoothed ``cluster_size``."""
        size = ops.convert_to_tensor(self.cluster_size)
        total = ops.sum(size)
        smoothed = (size + self.epsilon) / (total + self.num_codes * self.epsilon) * total
        return ops.convert_to_tensor(self.embed_sum) / smoothed[:, None]

    def nearest(self, flat, codebook):
        """Index of the nearest code of every row of ``flat (M, D)``: argmin ``|z|^2 - 2 z.e + |e|^2``."""
        distances = (ops.sum(flat ** 2, axis=1, keepdims=True) - 2.0 * ops.matmul(flat, ops.transpose(codebook))
                     + ops.sum(codebook ** 2, axis=1)[None, :])
        return ops.cast(ops.argmin(distances, axis=1), "int32")

    def call(self, z, training=False):
        z = ops.cast(z, "float32")
        flat = ops.reshape(z, (-1, self.embedding_dim))
        codebook = self.codebook
        codes = self.nearest(flat, codebook)
        quantised = ops.reshape(ops.take(codebook, codes, axis=0), ops.shape(z))
        squared = ops.reshape(ops.square(z - ops.stop_gradient(quantised)), (ops.shape(z)[0], -1))
        commitment = self.commitment_cost * ops.mean(squared, axis=-1)
        if training:
            self._update(ops.stop_gradient(flat), codes)
        # Straight-through: the forward value is the code, the gradient w.r.t. z is the identity.
        out = z + ops.stop_gradient(quantised - z)
        return out, ops.reshape(codes, ops.shape(z)[:-1]), commitment

    def _update(self, flat, codes):
        """EMA of counts and sums, then restarts of the codes unused for ``restart_after`` calls."""
        k = self.num_codes
        counts = ops.segment_sum(ops.ones_like(codes, dtype="float32"), codes, num_segments=k)
        sums = ops.segment_sum(flat, codes, num_segments=k)
        ctx = tf.distribute.get_replica_context()  # None in a cross-replica context; 1 replica without a strategy
        replicas = ctx.num_replicas_in_sync if ctx is not None else 1
        if replicas > 1:  # the global batch's statistics: every replica computes the same update
            counts, sums = ctx.all_reduce("sum", [counts, sums])
        size = self.decay * self.cluster_size + (1.0 - self.decay) * counts
        embed = self.decay * self.embed_sum + (1.0 - self.decay) * sums
        unused = ops.where(counts > 0, 0.0, self.unused + 1.0)
        if self.restart_after > 0:
            dead = unused >= float(self.restart_after)
            seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(self.steps.value, tf.int64)])
            pick = tf.random.stateless_uniform((k,), seed, 0, tf.shape(flat)[0], dtype=tf.int32)
            candidates = ops.take(flat, pick, axis=0)
            if replicas > 1:  # replica 0's draws on every replica, so the (averaged) state stays one codebook
                first = tf.cast(tf.equal(ctx.replica_id_in_sync_group, 0), candidates.dtype)
                candidates = ctx.all_reduce("sum", candidates * first)
            embed = ops.where(dead[:, None], candidates, embed)
            size = ops.where(dead, 1.0, size)
            unused = ops.where(dead, 0.0, unused)
        self.cluster_size.assign(size)
        self.embed_sum.assign(embed)
        self.unused.assign(unused)
        self.steps.assign(self.steps + 1.0)

    def compute_output_spec(self, z, training=False):
        return (keras.KerasTensor(z.shape, "float32"), keras.KerasTensor(z.shape[:-1], "int32"),
                keras.KerasTensor(z.shape[:1], "float32"))

    def get_config(self):
        return {**super().get_config(), "num_codes": self.num_codes, "embedding_dim": self.embedding_dim,
                "decay": self.decay, "commitment_cost": self.commitment_cost, "epsilon": self.epsilon,
                "restart_after": self.restart_after, "seed": self.seed}
