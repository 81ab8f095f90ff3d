"""The two-layer transformer MLP shared by every family."""

import keras

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")


class MLP(keras.layers.Layer):
    """Linear -> activation -> dropout -> Linear -> dropout.

    With the defaults this is MONAI's MLPBlock ("swin" mode) and timm's `Mlp`: exact (erf)
    GELU, as torch's `nn.GELU()`.

    Args:
        hidden_dim: int. Input and output width C.
        mlp_dim: int. Inner width.
        dropout_rate: float. After the activation and after the second Linear.
        activation: one of "gelu" (exact), "gelu_tanh", "relu", "silu".
        use_bias: bool.

    Call arguments:
        x: `(..., C)`. Returns the same shape.
    """

    def __init__(self, hidden_dim, mlp_dim, dropout_rate=0.0, activation="gelu", use_bias=True,
                 **kwargs):
        super().__init__(**kwargs)
        if activation not in ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {ACTIVATIONS}. "
                             f"Received: activation={activation!r}")
        self.hidden_dim = hidden_dim
        self.mlp_dim = mlp_dim
        self.dropout_rate = dropout_rate
        self.activation = activation
        self.use_bias = use_bias

    def build(self, x_shape):
        # sublayer names are the torch names SwiFT uses (linear1/linear2); weights files
        # depend on them
        self.linear1 = keras.layers.Dense(self.mlp_dim, use_bias=self.use_bias,
                                          dtype=self.dtype_policy, name="linear1")
        self.linear1.build(x_shape)
        self.linear2 = keras.layers.Dense(self.hidden_dim, use_bias=self.use_bias,
                                          dtype=self.dtype_policy, name="linear2")
        self.linear2.build(tuple(x_shape[:-1]) + (self.mlp_dim,))
        self.dropout = keras.layers.Dropout(self.dropout_rate, dtype=self.dtype_policy)

    def _activate(self, x):
        if self.activation == "gelu":
            return keras.activations.gelu(x, approximate=False)
        if self.activation == "gelu_tanh":
            return keras.activations.gelu(x, approximate=True)
        return keras.activations.get(self.activation)(x)

    def call(self, x, training=False):
        x = self.dropout(self._activate(self.linear1(x)), training=training)
        return self.dropout(self.linear2(x), training=training)

    def compute_output_shape(self, x_shape):
        return x_shape

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim, "mlp_dim": self.mlp_dim,
                "dropout_rate": self.dropout_rate, "activation": self.activation,
                "use_bias": self.use_bias}
