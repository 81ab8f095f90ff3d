"""SwiFT blocks: the pre-norm 4D Swin block (window attention in a `WindowBlock4D`).

Letters: B batch, D/H/W space, T frames, C channels, N tokens per window,
nW windows per sample.
"""

from tfbrain.layers.window_4d import WindowAttention4D, padded_grid_size, shifted_window_labels
from tfbrain.models.swin_4d import WindowBlock4D


class SwinBlock4D(WindowBlock4D):
    """x <- x + DropPath(W-MSA(LN(x))); x <- x + DropPath(MLP(LN(x))), in 4D windows.

    Shifted blocks mask attention between tokens from different regions of the rolled
    grid (-100); the region labels are precomputed at build time, and only the windows
    on the shifted boundary, whose mask is not all zero, get the add
    (`tfbrain.layers.window_4d.mix_interior_and_boundary`).

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

    def window_region_labels(self):
        return self.region_labels  # (nW, N); only boundary windows get the mask

    def mix(self, windows, mask, training=False):
        return self.attn(windows, attention_mask=mask, training=training)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "qkv_bias": self.qkv_bias,
                "attention_dropout_rate": self.attention_dropout_rate}
