"""Attention U-Net: U-Net whose skip connections are filtered by additive attention gates."""

from __future__ import annotations

import keras

from medtf.layers import conv_layer, upsampling_layer
from medtf.models.registry import register_model
from medtf.models.unet.unet import UNet, _variant


@keras.saving.register_keras_serializable(package="medtf")
class AttentionUNet(UNet):
    """U-Net with additive attention gates on every skip connection, 2D or 3D, channels-last.

    Same arguments, input/output layouts and deep-supervision structure as :class:`UNet`. At decoder level ``i``
    the skip ``x`` (resolution ``S``) is gated by the coarser decoder feature ``g`` (resolution ``S / 2``):

        q = relu(W_x x + up2(W_g g));  alpha = sigmoid(psi(q));  skip' = x * alpha

    with 1x1 convolutions ``W_x``, ``W_g`` (``F_int = max(1, filters_i // 2)`` channels) and ``psi`` (1 channel),
    and ``up2`` nearest-neighbour ×2 upsampling, so the gate lives at the skip resolution. The coefficients
    ``alpha`` of shape ``(B, *S, 1)``, values in [0, 1], are the output of the layer named ``attention_gate{i}``
    (``i = 0`` finest); fetch them with ``keras.Model(model.input, model.get_layer("attention_gate0").output)``.

    Args:
        See :class:`UNet`.

    Example:
        >>> model = AttentionUNet(spatial_dims=2, in_channels=1, num_classes=1, depth=3, base_filters=4)
        >>> model(np.zeros((1, 32, 32, 1))).shape
        TensorShape([1, 32, 32, 1])

    Reference:
        Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018.
    """

    @classmethod
    def _default_name(cls):
        return "attention_unet"

    def _gate_skip(self, skip, gating, level, spatial_dims):
        conv = conv_layer(spatial_dims)
        inter = max(1, int(skip.shape[-1]) // 2)
        theta_x = conv(inter, 1, use_bias=False, name=f"attention{level}_wx")(skip)
        phi_g = conv(inter, 1, use_bias=True, name=f"attention{level}_wg")(gating)
        phi_g = upsampling_layer(spatial_dims)(2, name=f"attention{level}_up")(phi_g)
        q = keras.layers.Add(name=f"attention{level}_add")([theta_x, phi_g])
        q = keras.layers.Activation("relu", name=f"attention{level}_relu")(q)
        psi = conv(1, 1, use_bias=True, name=f"attention{level}_psi")(q)
        alpha = keras.layers.Activation("sigmoid", name=f"attention_gate{level}")(psi)
        return keras.layers.Multiply(name=f"attention{level}_gated")([skip, alpha])


@register_model(model_class=AttentionUNet)
def attention_unet2d_small(**kwargs):
    """Tiny 2D Attention U-Net (depth 3, 8 base filters) — CPU-friendly."""
    return _variant(AttentionUNet, dict(spatial_dims=2, depth=3, base_filters=8, norm="batch"), kwargs)


@register_model(model_class=AttentionUNet)
def attention_unet2d(**kwargs):
    """Standard 2D Attention U-Net (depth 5, 32 base filters, batch norm)."""
    return _variant(AttentionUNet, dict(spatial_dims=2, depth=5, base_filters=32, norm="batch"), kwargs)
