"""Group/instance normalisation; instance norm through TF's fused batch-norm kernel (lean under mixed precision)."""

from __future__ import annotations

import keras
import tensorflow as tf


def fused_instance_norm(x, gamma, beta, epsilon):
    """Normalise each (sample, channel) of channels-last ``x`` over its spatial axes, then scale and shift.

    Instance norm is batch norm over one sample: ``x (B, *S, C)`` is laid out as NHWC ``(1, S, 1, B*C)`` (a free
    reshape for ``B = 1``, one transpose otherwise) and run through ``FusedBatchNormV3`` in training mode, whose
    gradient needs only its input and the per-channel statistics. The autodiff of the unfused formula keeps
    float32 copies of full-size tensors instead (Keras ``GroupNormalization`` upcasts bfloat16/float16 inputs),
    which is most of the memory a mixed-precision U-Net step needs.

    Args:
        x: ``(B, *spatial, C)`` float tensor (float32, float16 or bfloat16).
        gamma, beta: ``(C,)`` scale and offset, or ``None`` for 1 / 0.
        epsilon: added to the (biased) variance.

    Returns:
        Tensor of the shape and dtype of ``x``.

    Example:
        >>> y = fused_instance_norm(tf.random.normal((2, 8, 8, 8, 4)), None, None, 1e-3)
    """
    shape = tf.shape(x)
    batch, channels = shape[0], x.shape[-1]
    # (B, S, C) -> (S, B, C) -> NHWC (1, S, 1, B*C): each (sample, channel) becomes one batch-norm channel.
    xt = tf.reshape(tf.transpose(tf.reshape(x, [batch, -1, channels]), [1, 0, 2]), [1, -1, 1, batch * channels])
    gamma = tf.ones([channels], tf.float32) if gamma is None else tf.cast(gamma, tf.float32)
    beta = tf.zeros([channels], tf.float32) if beta is None else tf.cast(beta, tf.float32)
    y, _, _ = tf.compat.v1.nn.fused_batch_norm(xt, tf.tile(gamma, [batch]), tf.tile(beta, [batch]),
                                               epsilon=epsilon, is_training=True)
    return tf.reshape(tf.transpose(tf.reshape(y, [-1, batch, channels]), [1, 0, 2]), shape)


@keras.saving.register_keras_serializable(package="medtf")
class GroupNormalization(keras.layers.GroupNormalization):
    """Drop-in ``keras.layers.GroupNormalization`` whose one-channel-per-group case (instance norm) is fused.

    With ``groups=-1`` (or ``groups`` equal to the channel count) and channels-last inputs the computation is
    :func:`fused_instance_norm` (statistics in float32, output in the compute dtype, only the input kept for the
    backward pass); otherwise it is the Keras code. Same variables (``gamma``, ``beta``), config and outputs (to
    float rounding) as the Keras layer. The class keeps the Keras name on purpose: ``.keras`` files address the
    layers of a model by class name, so models saved with ``keras.layers.GroupNormalization`` load unchanged.

    Args:
        groups: number of groups; ``-1`` for instance normalisation.
        **kwargs: ``keras.layers.GroupNormalization`` arguments (``epsilon``, ``center``, ``scale``, ...).

    Example:
        >>> norm = GroupNormalization(groups=-1, name="enc0_norm0")
        >>> norm(np.ones((1, 4, 4, 4, 2), "float32")).shape
        TensorShape([1, 4, 4, 4, 2])

    Reference:
        Ulyanov et al., "Instance Normalization: The Missing Ingredient for Fast Stylization", arXiv:1607.08022;
        Wu & He, "Group Normalization", ECCV 2018.
    """

    def call(self, inputs):
        channels_last = self.axis in (-1, len(inputs.shape) - 1)
        if not (channels_last and self.groups == inputs.shape[-1]):  # build() turned groups=-1 into C
            return super().call(inputs)
        outputs = fused_instance_norm(inputs, self.gamma if self.scale else None, self.beta if self.center else None,
                                      self.epsilon)
        return tf.cast(outputs, self.compute_dtype)
