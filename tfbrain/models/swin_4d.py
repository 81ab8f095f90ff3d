"""The 4D Swin topology shared by SwiFT and NeuroSTORM.

Both upstream models (Transconnectome/SwiFT `swin4d_transformer_ver7.py`, NeuroSTORM's
`SwinTransformer4D`) stack: linear patch embedding, then per stage the absolute
position tables, `depths[i]` blocks (odd blocks shifted), and a 2x2x2 spatial patch
merge except after the last stage. Only the block differs (window attention or a Mamba
mixer), so the families pass a block factory.

Letters: B batch, D/H/W space, T frames, C channels.
"""

import keras
import numpy as np

from tfbrain.layers.drop_path import DropPath
from tfbrain.layers.mlp import MLP
from tfbrain.layers.patch_4d import PatchEmbed4D, PatchMerging4D, PositionEmbedding4D
from tfbrain.layers.torch_compat import TORCH_LAYER_NORM_EPSILON
from tfbrain.layers.window_4d import effective_window_and_shift, windowed_apply


def swin_4d_stage_plan(volume_shape, patch_size, hidden_dim, depths, first_window_size,
                     window_size, c_multiplier, last_layer_full_msa):
    """Per-stage grid, width, window and shift, following upstream's rules.

    Returns:
        list of dicts with keys index, grid (D, H, W, T), hidden_dim, window, shift (the
        configured shift of odd blocks), merge (bool).
    """
    grid = [volume_shape[0] // patch_size[0], volume_shape[1] // patch_size[1],
            volume_shape[2] // patch_size[2], volume_shape[3]]
    plan = []
    num_stages = len(depths)
    for i in range(num_stages):
        last = i == num_stages - 1
        if last and last_layer_full_msa:
            # "full MSA": spatially the whole grid, time in fixed chunks, never shifted
            window = (grid[0], grid[1], grid[2], window_size[3])
            shift = (0, 0, 0, 0)
        else:
            window = tuple(first_window_size if i == 0 else window_size)
            shift = tuple(w // 2 for w in window)
        plan.append({"index": i, "grid": tuple(grid), "hidden_dim": hidden_dim * c_multiplier ** i,
                     "window": window, "shift": shift, "merge": not last})
        if not last:
            grid = [grid[0] // 2, grid[1] // 2, grid[2] // 2, grid[3]]
    return plan


def swin_4d_stages(fmri, plan, patch_size, hidden_dim, depths, max_frames, c_multiplier,
                   dropout_rate, drop_path_rate, make_block, dtype=None):
    """Apply the topology to the `fmri` input tensor `(B, D, H, W, T, C_in)`.

    Args:
        plan: from `swin_4d_stage_plan`.
        make_block: `(stage, shift_size, drop_path_rate, name) -> layer`, where `stage`
            is the plan entry and `shift_size` is the configured shift (zeros for even
            blocks).

    Returns:
        the last stage's output `(B, D', H', W', T, C')`.
    """
    x = PatchEmbed4D(hidden_dim, patch_size, dtype=dtype, name="patch_embed")(fmri)
    if dropout_rate:
        x = keras.layers.Dropout(dropout_rate, dtype=dtype, name="pos_drop")(x)
    # drop-path rises linearly from 0 to drop_path_rate over all blocks, as upstream
    rates = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()
    block_index = 0
    for i, stage in enumerate(plan):
        x = PositionEmbedding4D(max_frames, dtype=dtype, name=f"pos_embed_{i}")(x)
        for j in range(depths[i]):
            shift = stage["shift"] if j % 2 else (0, 0, 0, 0)
            x = make_block(stage, shift, rates[block_index], f"stage_{i}_block_{j}")(x)
            block_index += 1
        if stage["merge"]:
            x = PatchMerging4D(c_multiplier * stage["hidden_dim"], dtype=dtype,
                               name=f"stage_{i}_merge")(x)
    return x


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
        self.norm1 = keras.layers.LayerNormalization(epsilon=TORCH_LAYER_NORM_EPSILON,
                                                     dtype=self.dtype_policy, name="norm1")
        self.norm1.build(x_shape)
        self.build_mixer(grid)
        self.norm2 = keras.layers.LayerNormalization(epsilon=TORCH_LAYER_NORM_EPSILON,
                                                     dtype=self.dtype_policy, name="norm2")
        self.norm2.build(x_shape)
        self.mlp = MLP(self.hidden_dim, int(self.hidden_dim * self.mlp_ratio), self.dropout_rate,
                       dtype=self.dtype_policy, name="mlp")
        self.mlp.build(x_shape)
        self.drop_path = DropPath(self.drop_path_rate, dtype=self.dtype_policy)

    def build_mixer(self, grid):
        """Create the mixer's weights; `self.effective_window/shift` are set."""
        raise NotImplementedError

    def window_region_labels(self):
        """numpy `(nW, N)` region labels of the rolled grid when the mixer masks attention
        across regions (shifted Swin windows), else None."""
        return None

    def mix(self, windows, mask, training=False):
        """`(B * n, N, C)` -> `(B * n, N, C)`; `mask` is an additive `(n, N, N)` or None."""
        raise NotImplementedError

    def call(self, x, training=False):
        mixed = windowed_apply(self.norm1(x), lambda w, m: self.mix(w, m, training=training),
                               self.effective_window, self.effective_shift,
                               self.window_region_labels())
        x = x + self.drop_path(mixed, training=training)
        return x + self.drop_path(self.mlp(self.norm2(x), training=training), training=training)

    def compute_output_shape(self, x_shape):
        return x_shape

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim,
                "window_size": self.window_size, "shift_size": self.shift_size,
                "mlp_ratio": self.mlp_ratio, "dropout_rate": self.dropout_rate,
                "drop_path_rate": self.drop_path_rate}
