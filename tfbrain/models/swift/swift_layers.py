"""SwiFT blocks: the pre-norm 4D Swin block and its MLP.

Letters: B batch, D/H/W space, T frames, C channels, N tokens per window,
nW windows per sample.
"""

import keras
from keras import ops

from tfbrain.layers.patch_4d import LAYER_NORM_EPSILON
from tfbrain.layers.window_4d import (DropPath, WindowAttention4D, effective_window_and_shift,
                                      mask_from_labels, padded_grid_size, shifted_window_labels,
                                      windowed_apply)


class SwiFTMLP(keras.layers.Layer):
    """Linear -> exact (erf) GELU -> dropout -> Linear -> dropout (MONAI's MLPBlock, "swin" mode).

    Args:
        hidden_dim: int. Input and output width C.
        mlp_dim: int. Inner width.
        dropout_rate: float.
    """

    def __init__(self, hidden_dim, mlp_dim, dropout_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.mlp_dim = mlp_dim
        self.dropout_rate = dropout_rate

    def build(self, x_shape):
        self.linear1 = keras.layers.Dense(self.mlp_dim, dtype=self.dtype_policy, name="linear1")
        self.linear1.build(x_shape)
        self.linear2 = keras.layers.Dense(self.hidden_dim, dtype=self.dtype_policy, name="linear2")
        self.linear2.build(tuple(x_shape[:-1]) + (self.mlp_dim,))
        self.dropout = keras.layers.Dropout(self.dropout_rate, dtype=self.dtype_policy)

    def call(self, x, training=False):
        x = keras.activations.gelu(self.linear1(x), approximate=False)
        x = self.dropout(x, training=training)
        return self.dropout(self.linear2(x), training=training)

    def compute_output_shape(self, x_shape):
        return x_shape

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim,
                "mlp_dim": self.mlp_dim, "dropout_rate": self.dropout_rate}


class SwinBlock4D(keras.layers.Layer):
    """x <- x + DropPath(W-MSA(LN(x))); x <- x + DropPath(MLP(LN(x))), in 4D windows.

    The window and shift given are the configured ones; at build time the shrink
    rule is applied to the actual grid (an axis no bigger than its window uses the
    whole axis and no shift), and the shifted-window region labels are precomputed.

    Args:
        hidden_dim: int. Token width C.
        num_heads: int.
        window_size: 4-tuple. Configured (D, H, W, T) window.
        shift_size: 4-tuple. Configured shift (0s for unshifted blocks).
        mlp_ratio: float. MLP width = mlp_ratio * C.
        qkv_bias: bool.
        dropout_rate, attention_dropout_rate, drop_path_rate: floats.

    Call arguments:
        x: `(B, D, H, W, T, C)`.
    """

    def __init__(self, hidden_dim, num_heads, window_size, shift_size=(0, 0, 0, 0),
                 mlp_ratio=4.0, qkv_bias=True, dropout_rate=0.0, attention_dropout_rate=0.0,
                 drop_path_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.window_size = tuple(int(w) for w in window_size)
        self.shift_size = tuple(int(s) for s in shift_size)
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.dropout_rate = dropout_rate
        self.attention_dropout_rate = attention_dropout_rate
        self.drop_path_rate = drop_path_rate
        if len(self.window_size) != 4 or len(self.shift_size) != 4:
            raise ValueError("`window_size` and `shift_size` must have 4 entries (D, H, W, T). "
                             f"Received: window_size={window_size}, shift_size={shift_size}")

    def build(self, x_shape):
        grid = tuple(x_shape[1:5])
        if None in grid:
            raise ValueError(f"SwinBlock4D needs a static grid; received shape {tuple(x_shape)}")
        self.effective_window, self.effective_shift = effective_window_and_shift(
            grid, self.window_size, self.shift_size)
        self.region_labels = None
        if any(self.effective_shift):
            self.region_labels = shifted_window_labels(
                padded_grid_size(grid, self.effective_window), self.effective_window,
                self.effective_shift)
        tokens_shape = (None, None, self.hidden_dim)
        self.norm1 = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON,
                                                     dtype=self.dtype_policy, name="norm1")
        self.norm1.build(x_shape)
        self.attn = WindowAttention4D(self.hidden_dim, self.num_heads, qkv_bias=self.qkv_bias,
                                      attention_dropout_rate=self.attention_dropout_rate,
                                      dropout_rate=self.dropout_rate, dtype=self.dtype_policy,
                                      name="attn")
        self.attn.build(tokens_shape)
        self.norm2 = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON,
                                                     dtype=self.dtype_policy, name="norm2")
        self.norm2.build(x_shape)
        self.mlp = SwiFTMLP(self.hidden_dim, int(self.hidden_dim * self.mlp_ratio),
                            self.dropout_rate, dtype=self.dtype_policy, name="mlp")
        self.mlp.build(x_shape)
        self.drop_path = DropPath(self.drop_path_rate, dtype=self.dtype_policy)

    def call(self, x, training=False):
        mask = None
        if self.region_labels is not None:
            mask = mask_from_labels(ops.convert_to_tensor(self.region_labels))  # (nW, N, N)

        def attend(windows, window_mask):
            return self.attn(windows, attention_mask=window_mask, training=training)

        mixed = windowed_apply(self.norm1(x), attend, self.effective_window,
                               self.effective_shift, mask)
        x = x + self.drop_path(mixed, training=training)
        return x + self.drop_path(self.mlp(self.norm2(x), training=training), training=training)

    def compute_output_shape(self, x_shape):
        return x_shape

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads, "window_size": self.window_size,
                "shift_size": self.shift_size, "mlp_ratio": self.mlp_ratio,
                "qkv_bias": self.qkv_bias, "dropout_rate": self.dropout_rate,
                "attention_dropout_rate": self.attention_dropout_rate,
                "drop_path_rate": self.drop_path_rate}
