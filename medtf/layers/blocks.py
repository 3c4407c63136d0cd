"""Convolution blocks as single Keras layers, optionally rematerialised (gradient checkpointing).

A U-Net block is ``conv → norm → activation`` repeated ``conv_per_block`` times. As one layer it can run its
whole chain through :func:`keras.remat` (``tf.recompute_grad`` on TensorFlow): the forward pass keeps only the
block's input (and its output, which the next layer needs anyway); the backward pass recomputes the chain. In a
3D U-Net at 128^3 the intermediates of each block (conv, norm and activation outputs, plus the norm's float32
internals under mixed precision) are most of the training memory, so this is where remat pays off.
"""

from __future__ import annotations

import keras

from medtf.layers.factories import conv_layer, norm_layer


@keras.saving.register_keras_serializable(package="medtf")
class ConvBlock(keras.layers.Layer):
    """``conv_per_block`` × (conv ``k``×…×``k``, "same" → norm → activation) as one layer, channels-last.

    Input ``(B, *spatial, C_in)`` (2D or 3D), output ``(B, *spatial, filters)`` in the compute dtype. The
    sublayers are named ``{name}_conv{j}``, ``{name}_norm{j}``, ``{name}_act{j}`` like the unrolled blocks of
    :class:`medtf.models.UNet`, and their weights come in the same order, so ``set_weights`` copies between the
    two forms.

    With ``remat=True`` the chain is wrapped in ``keras.remat`` and only the block input is stored for the
    backward pass. Three details make that correct inside a compiled Keras train step:

    - ``tf.recompute_grad`` (graph mode) accepts positional tensors only, so ``training`` is closed over instead
      of passed as a keyword (passing it is what breaks ``RematScope`` around a whole functional model);
    - the sublayers are called through their ``__call__``, which re-enters their autocast scope, so the
      recomputation in the backward pass uses the mixed-precision compute dtype like the forward pass;
    - the recomputation runs inside a ``keras.StatelessScope``, so ``BatchNormalization`` does not update its
      moving statistics a second time (once per step, as without remat).

    Dropout is not part of the block: a recomputed random mask would differ from the forward one.

    Args:
        filters: output channels of every convolution.
        spatial_dims: 2 or 3.
        conv_per_block: number of conv → norm → activation units (>= 1).
        norm: ``"batch"``, ``"group"``, ``"instance"`` or ``"none"`` (the convolutions then use a bias).
        groups: groups for ``norm="group"``.
        activation: Keras activation name.
        kernel_size: convolution kernel size.
        remat: recompute the block in the backward pass instead of storing its intermediates.
        **kwargs: ``keras.layers.Layer`` arguments (``name``, ``dtype``, ``trainable``).

    Example:
        >>> block = ConvBlock(8, spatial_dims=3, norm="instance", remat=True, name="enc0")
        >>> block(np.zeros((1, 16, 16, 16, 1), "float32")).shape
        TensorShape([1, 16, 16, 16, 8])

    Reference:
        Chen et al., "Training Deep Nets with Sublinear Memory Cost", arXiv:1604.06174, 2016.
    """

    def __init__(self, filters, spatial_dims=3, conv_per_block=2, norm="instance", groups=8, activation="relu",
                 kernel_size=3, remat=False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(conv_per_block, int) or conv_per_block < 1:
            raise ValueError(f"conv_per_block must be an int >= 1, got {conv_per_block!r}")
        self.filters = int(filters)
        self.spatial_dims = spatial_dims
        self.conv_per_block = conv_per_block
        self.norm = norm
        self.groups = groups
        self.activation = activation
        self.kernel_size = kernel_size
        self.remat = bool(remat)
        conv = conv_layer(spatial_dims)
        # Sublayers follow the block's dtype policy (not the global one), so a loaded model keeps its precision.
        policy = self.dtype_policy
        self.convs, self.norms, self.acts = [], [], []
        for j in range(conv_per_block):
            self.convs.append(conv(self.filters, kernel_size, padding="same", use_bias=norm == "none",
                                   name=f"{self.name}_conv{j}", dtype=policy))
            # Identity for norm="none": Keras layer lists cannot hold None.
            self.norms.append(norm_layer(norm, groups, name=f"{self.name}_norm{j}", dtype=policy)
                              or keras.layers.Identity(name=f"{self.name}_norm{j}", dtype=policy))
            self.acts.append(keras.layers.Activation(activation, name=f"{self.name}_act{j}", dtype=policy))

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv, norm in zip(self.convs, self.norms):
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            norm.build(shape)
        self.built = True

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape)[:-1], self.filters)

    def _chain(self, x, training):
        for conv, norm, act in zip(self.convs, self.norms, self.acts):
            x = act(norm(conv(x), training=training))
        return x

    def call(self, inputs, training=None):
        if not self.remat:
            return self._chain(inputs, training)
        calls = []  # one entry per execution of `forward`: the first is the forward pass, later ones recompute

        def forward(x):
            calls.append(None)
            if len(calls) == 1:
                return self._chain(x, training)
            with keras.StatelessScope():  # recomputation: drop BatchNorm moving-statistics updates
                return self._chain(x, training)

        return keras.remat(forward)(inputs)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, spatial_dims=self.spatial_dims, conv_per_block=self.conv_per_block,
                      norm=self.norm, groups=self.groups, activation=self.activation, kernel_size=self.kernel_size,
                      remat=self.remat)
        return config
