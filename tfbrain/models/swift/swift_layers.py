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


class WindowBlock4D(keras.layers.Layer):
    """Pre-norm residual block in 4D windows, shared by SwiFT and NeuroSTORM:
    x <- x + DropPath(mix(LN(x)) in windows); x <- x + DropPath(MLP(LN(x))).

    Subclasses build the token mixer in `build_mixer` and apply it in `mix`. The window
    and shift given are the configured ones; at build time the shrink rule is applied to
    the actual grid (an axis no bigger than its window uses the whole axis, unshifted).

    Args:
        hidden_dim: int. Token width C.
        window_size: 4-tuple. Configured (D, H, W, T) window.
        shift_size: 4-tuple. Configured shift (0s for unshifted blocks).
        mlp_ratio: float. MLP width = mlp_ratio * C.
        dropout_rate: float. Dropout inside the MLP (and the mixer, if it has one).
        drop_path_rate: float. Stochastic depth of both residual branches.

    Call arguments:
        x: `(B, D, H, W, T, C)`. Returns the same shape.
    """

    def __init__(self, hidden_dim, window_size, shift_size=(0, 0, 0, 0), mlp_ratio=4.0,
                 dropout_rate=0.0, drop_path_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.window_size = tuple(int(w) for w in window_size)
        self.shift_size = tuple(int(s) for s in shift_size)
        if len(self.window_size) != 4 or len(self.shift_size) != 4:
            raise ValueError("`window_size` and `shift_size` must have 4 entries (D, H, W, T). "
                             f"Received: window_size={window_size}, shift_size={shift_size}")
        self.mlp_ratio = mlp_ratio
        self.dropout_rate = dropout_rate
        self.drop_path_rate = drop_path_rate

    def build(self, x_shape):
        grid = tuple(x_shape[1:5])
        if None in grid:
            raise ValueError(f"{type(self).__name__} needs a static grid; received shape "
                             f"{tuple(x_shape)}")
        self.effective_window, self.effective_shift = effective_window_and_shift(
            grid, self.window_size, self.shift_size)
        self.norm1 = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON,
                                                     dtype=self.dtype_policy, name="norm1")
        self.norm1.build(x_shape)
        self.build_mixer(grid)
        self.norm2 = keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON,
                                                     dtype=self.dtype_policy, name="norm2")
        self.norm2.build(x_shape)
        self.mlp = SwiFTMLP(self.hidden_dim, int(self.hidden_dim * self.mlp_ratio),
                            self.dropout_rate, dtype=self.dtype_policy, name="mlp")
        self.mlp.build(x_shape)
        self.drop_path = DropPath(self.drop_path_rate, dtype=self.dtype_policy)

    def build_mixer(self, grid):
        """Create the mixer's weights; `self.effective_window/shift` are set."""
        raise NotImplementedError

    def window_mask(self):
        """Additive `(nW, N, N)` mask for shifted windows, or None."""
        return None

    def mix(self, windows, mask, training=False):
        """`(B * nW, N, C)` -> `(B * nW, N, C)`."""
        raise NotImplementedError

    def call(self, x, training=False):
        mixed = windowed_apply(self.norm1(x), lambda w, m: self.mix(w, m, training=training),
                               self.effective_window, self.effective_shift, self.window_mask())
        x = x + self.drop_path(mixed, training=training)
        return x + self.drop_path(self.mlp(self.norm2(x), training=training), training=training)

    def compute_output_shape(self, x_shape):
        return x_shape

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim,
                "window_size": self.window_size, "shift_size": self.shift_size,
                "mlp_ratio": self.mlp_ratio, "dropout_rate": self.dropout_rate,
                "drop_path_rate": self.drop_path_rate}


class SwinBlock4D(WindowBlock4D):
    """x <- x + DropPath(W-MSA(LN(x))); x <- x + DropPath(MLP(LN(x))), in 4D windows.

    Shifted blocks mask attention between tokens from different regions of the rolled
    grid (-100); the region labels are precomputed at build time.

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
        super().__init__(hidden_dim, window_size, shift_size, mlp_ratio, dropout_rate,
                         drop_path_rate, **kwargs)
        self.num_heads = num_heads
        self.qkv_bias = qkv_bias
        self.attention_dropout_rate = attention_dropout_rate

    def build_mixer(self, grid):
        self.region_labels = None
        if any(self.effective_shift):
            self.region_labels = shifted_window_labels(
                padded_grid_size(grid, self.effective_window), self.effective_window,
                self.effective_shift)
        self.attn = WindowAttention4D(self.hidden_dim, self.num_heads, qkv_bias=self.qkv_bias,
                                      attention_dropout_rate=self.attention_dropout_rate,
                                      dropout_rate=self.dropout_rate, dtype=self.dtype_policy,
                                      name="attn")
        self.attn.build((None, None, self.hidden_dim))

    def window_mask(self):
        if self.region_labels is None:
            return None
        return mask_from_labels(ops.convert_to_tensor(self.region_labels))  # (nW, N, N)

    def mix(self, windows, mask, training=False):
        return self.attn(windows, attention_mask=mask, training=training)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "qkv_bias": self.qkv_bias,
                "attention_dropout_rate": self.attention_dropout_rate}
