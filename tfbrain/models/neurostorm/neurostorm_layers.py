"""NeuroSTORM blocks: the 4D shifted-window block with a Mamba mixer, and the decoder's
patch expansion.

Upstream: CUHK-AIM-Group/NeuroSTORM @ a8dc38f, `models/neurostorm.py`
(`SwinTransformerBlock4D`, `PatchExpanding`).

Letters: B batch, D/H/W space, T frames, C channels, N tokens per window,
nW windows per sample, k prompt tokens.
"""

import keras
from keras import ops

from tfbrain.layers.mamba_block import MambaBlock
from tfbrain.layers.torch_compat import TORCH_LAYER_NORM_EPSILON
from tfbrain.models.swin_4d import WindowBlock4D


@keras.saving.register_keras_serializable(package="tfbrain")
class NeuroSTORMBlock4D(WindowBlock4D):
    """x <- x + DropPath(Mamba-in-windows(LN(x))); x <- x + DropPath(MLP(LN(x))).

    SwiFT's 4D Swin block with the window attention swapped for a unidirectional Mamba
    (v1) mixer. Each (padded, possibly rolled) 4D window is one sequence, its tokens in
    (D, H, W, T) row-major order: time fastest, then spatial raster order, exactly
    `window_partition_4d`'s order. As released, shifted blocks roll the grid but use **no
    mask**: the Swin mask upstream computes is never handed to Mamba, so tokens rolled
    around the border share a sequence with unrelated ones. The shrink rule of
    `effective_window_and_shift` applies to the actual grid at build time.

    Args:
        hidden_dim: int. Token width C.
        window_size: 4-tuple. Configured (D, H, W, T) window.
        shift_size: 4-tuple. Configured shift (0s for unshifted blocks).
        mlp_ratio: float. MLP width = mlp_ratio * C.
        dropout_rate: float. Dropout inside the MLP.
        drop_path_rate: float. Stochastic depth of both residual branches.
        prompt_len: int. Learned prompt tokens `(1, k, C)` prepended to every window's
            sequence before the Mamba call and dropped after it (upstream task-specific
            prompt tuning); 0 disables them.
        state_dim, conv_kernel_size, expand: Mamba sizes (upstream fixes 16, 4, 2).
        scan_chunk_size: int or None. The selective scan's chunk (None: its default).
        scan_jit: None, "auto", True or False. The selective scan's jit switch.

    Call arguments:
        x: `(B, D, H, W, T, C)`. Returns the same shape.
    """

    def __init__(self, hidden_dim, window_size, shift_size=(0, 0, 0, 0), mlp_ratio=4.0,
                 dropout_rate=0.0, drop_path_rate=0.0, prompt_len=0, state_dim=16,
                 conv_kernel_size=4, expand=2, scan_chunk_size=None, scan_jit=None, **kwargs):
        super().__init__(hidden_dim, window_size, shift_size, mlp_ratio, dropout_rate,
                         drop_path_rate, **kwargs)
        if int(prompt_len) < 0:
            raise ValueError(f"`prompt_len` must be >= 0. Received: prompt_len={prompt_len}")
        self.prompt_len = int(prompt_len)
        self.state_dim = state_dim
        self.conv_kernel_size = conv_kernel_size
        self.expand = expand
        self.scan_chunk_size = scan_chunk_size
        self.scan_jit = scan_jit

    def build_mixer(self, grid):
        window_volume = 1
        for w in self.effective_window:
            window_volume *= w
        self.mamba = MambaBlock(self.hidden_dim, state_dim=self.state_dim,
                                conv_kernel_size=self.conv_kernel_size, expand=self.expand,
                                chunk_size=self.scan_chunk_size, jit=self.scan_jit,
                                dtype=self.dtype_policy, name="mamba")
        self.mamba.build((None, self.prompt_len + window_volume, self.hidden_dim))
        self.prompt = None
        if self.prompt_len:
            self.prompt = self.add_weight(
                name="prompt", shape=(1, self.prompt_len, self.hidden_dim),
                initializer=keras.initializers.TruncatedNormal(stddev=0.02))

    def mix(self, windows, unused_mask=None, training=False):
        """Mamba over each window's sequence: `(B * nW, N, C)` -> `(B * nW, N, C)`.

        `unused_mask` is accepted and ignored, as upstream ignores its Swin mask.
        """
        if self.prompt is None:
            return self.mamba(windows)
        prompt = ops.broadcast_to(ops.cast(self.prompt, windows.dtype),
                                  (ops.shape(windows)[0], self.prompt_len, self.hidden_dim))
        mixed = self.mamba(ops.concatenate([prompt, windows], axis=1))  # (B*nW, k + N, C)
        return mixed[:, self.prompt_len:]

    def get_config(self):
        return {**super().get_config(), "prompt_len": self.prompt_len,
                "state_dim": self.state_dim, "conv_kernel_size": self.conv_kernel_size,
                "expand": self.expand, "scan_chunk_size": self.scan_chunk_size,
                "scan_jit": self.scan_jit}


@keras.saving.register_keras_serializable(package="tfbrain")
class NeuroSTORMPatchExpanding(keras.layers.Layer):
    """Inverse of a 2x2x2 spatial merge for the MAE decoder: Linear(C -> 4C, no bias),
    each token's 4C split into a 2x2x2 block of C/2-wide tokens, then LayerNorm(C/2).

    The 4C vector is read as (p1, p2, p3, C/2) with C/2 fastest, as upstream's
    rearrange does. Time is never expanded.

    Args:
        hidden_dim: int. Input width C (even). Output width is C / 2.

    Call arguments:
        x: `(B, D, H, W, T, C)`. Returns `(B, 2D, 2H, 2W, T, C/2)`.
    """

    def __init__(self, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        if hidden_dim % 2:
            raise ValueError(f"`hidden_dim` must be even. Received: hidden_dim={hidden_dim}")
        self.hidden_dim = hidden_dim

    def build(self, x_shape):
        self.expand = keras.layers.Dense(4 * self.hidden_dim, use_bias=False,
                                         dtype=self.dtype_policy, name="expand")
        self.expand.build(x_shape)
        out_shape = self.compute_output_shape(x_shape)
        self.norm = keras.layers.LayerNormalization(epsilon=TORCH_LAYER_NORM_EPSILON,
                                                    dtype=self.dtype_policy, name="norm")
        self.norm.build(out_shape)

    def call(self, x):
        _, d, h, w, t, c = x.shape
        half = c // 2
        x = ops.reshape(self.expand(x), (-1, d, h, w, t, 2, 2, 2, half))
        # (B, D, p1, H, p2, W, p3, T, C/2)
        x = ops.transpose(x, (0, 1, 5, 2, 6, 3, 7, 4, 8))
        x = ops.reshape(x, (-1, 2 * d, 2 * h, 2 * w, t, half))
        return self.norm(x)

    def compute_output_shape(self, x_shape):
        b, d, h, w, t, c = x_shape
        return (b, 2 * d, 2 * h, 2 * w, t, c // 2)

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim}
