"""Patch embedding, absolute 4D position tables and spatial patch merging.

Shared by the 4D Swin family (SwiFT, NeuroSTORM). Letters: B batch, D/H/W space,
T frames, C channels. Layout is channels-last: `(B, D, H, W, T, C)`.
"""

import itertools

import keras
from keras import ops

from tfbrain.layers.torch_compat import TORCH_LAYER_NORM_EPSILON


class PatchEmbed4D(keras.layers.Layer):
    """Linear projection of non-overlapping (pd, ph, pw, 1) patches.

    Equal to a per-frame Conv3D with kernel = stride = patch; written as a Dense on
    patches flattened in (pd, ph, pw, C) order so that upstream's `fc.weight.T`
    is the kernel as is.

    Args:
        hidden_dim: int. Output width.
        patch_size: 4-tuple (pd, ph, pw, pt); pt must be 1 (time is never patched).

    Call arguments:
        fmri: `(B, D, H, W, T, C_in)`, each spatial axis a multiple of its patch.
    """

    def __init__(self, hidden_dim, patch_size, **kwargs):
        super().__init__(**kwargs)
        patch_size = tuple(int(p) for p in patch_size)
        if len(patch_size) != 4 or patch_size[3] != 1:
            raise ValueError("`patch_size` must be (pd, ph, pw, 1): time is not patched. "
                             f"Received: patch_size={patch_size}")
        self.hidden_dim = hidden_dim
        self.patch_size = patch_size

    def build(self, fmri_shape):
        if len(fmri_shape) != 6:
            raise ValueError("PatchEmbed4D expects (B, D, H, W, T, C); "
                             f"received a tensor of shape {tuple(fmri_shape)}")
        for axis in range(3):
            if fmri_shape[1 + axis] % self.patch_size[axis]:
                raise ValueError(f"Spatial axis {axis} of size {fmri_shape[1 + axis]} is not a "
                                 f"multiple of the patch size {self.patch_size[:3]}.")
        patch_volume = self.patch_size[0] * self.patch_size[1] * self.patch_size[2]
        self.fc = keras.layers.Dense(self.hidden_dim, dtype=self.dtype_policy, name="fc")
        self.fc.build((None, patch_volume * fmri_shape[-1]))

    def call(self, fmri):
        _, d, h, w, t, c = fmri.shape
        pd, ph, pw, _ = self.patch_size
        x = ops.reshape(fmri, (-1, d // pd, pd, h // ph, ph, w // pw, pw, t, c))
        x = ops.transpose(x, (0, 1, 3, 5, 7, 2, 4, 6, 8))  # (B, D', H', W', T, pd, ph, pw, C)
        x = ops.reshape(x, (-1, d // pd, h // ph, w // pw, t, pd * ph * pw * c))
        return self.fc(x)

    def compute_output_shape(self, fmri_shape):
        b, d, h, w, t, _ = fmri_shape
        pd, ph, pw, _ = self.patch_size
        return (b, d // pd, h // ph, w // pw, t, self.hidden_dim)

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim,
                "patch_size": self.patch_size}


class PositionEmbedding4D(keras.layers.Layer):
    """Learned absolute position tables: spatial (shared over time) + temporal (shared
    over space). The temporal table covers `max_frames`; shorter inputs use its start.

    Args:
        max_frames: int. Length of the temporal table.

    Call arguments:
        x: `(B, D, H, W, T, C)` with T <= max_frames.
    """

    def __init__(self, max_frames, **kwargs):
        super().__init__(**kwargs)
        self.max_frames = int(max_frames)

    def build(self, x_shape):
        _, d, h, w, _, c = x_shape
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        self.pos_embed = self.add_weight(shape=(d, h, w, c), initializer=init, name="pos_embed")
        self.time_embed = self.add_weight(shape=(self.max_frames, c), initializer=init,
                                          name="time_embed")

    def call(self, x):
        frames = x.shape[4]
        if frames is not None and frames > self.max_frames:
            raise ValueError(f"Input has {frames} frames but the temporal position table covers "
                             f"only max_frames={self.max_frames}; use windows of at most "
                             f"{self.max_frames} frames.")
        x = x + ops.cast(self.pos_embed, x.dtype)[None, :, :, :, None, :]
        return x + ops.cast(self.time_embed[:frames], x.dtype)[None, None, None, None]

    def compute_output_shape(self, x_shape):
        return x_shape

    def get_config(self):
        return {**super().get_config(), "max_frames": self.max_frames}


class PatchMerging4D(keras.layers.Layer):
    """Merge 2x2x2 spatial neighbours (time untouched): concat -> LayerNorm -> Linear.

    The eight sub-grids `x[:, i::2, j::2, k::2]` are concatenated in
    itertools.product order (k fastest), SwiFT's PatchMergingV2 order, which
    differs from 2D Swin's; the reduction has no bias.

    Args:
        output_dim: int. Width after the reduction.

    Call arguments:
        x: `(B, D, H, W, T, C)` with D, H, W even. Returns `(B, D/2, H/2, W/2, T, output_dim)`.
    """

    def __init__(self, output_dim, **kwargs):
        super().__init__(**kwargs)
        self.output_dim = output_dim

    def build(self, x_shape):
        odd = [s for s in x_shape[1:4] if s % 2]
        if odd:
            raise ValueError("PatchMerging4D needs even spatial sizes at every merge; received a "
                             f"grid of {tuple(x_shape[1:4])}. Choose volume/patch sizes divisible "
                             "by 2 per merge.")
        merged = 8 * x_shape[-1]
        self.norm = keras.layers.LayerNormalization(epsilon=TORCH_LAYER_NORM_EPSILON,
                                                    dtype=self.dtype_policy, name="norm")
        self.norm.build(x_shape[:-1] + (merged,))
        self.reduction = keras.layers.Dense(self.output_dim, use_bias=False,
                                            dtype=self.dtype_policy, name="reduction")
        self.reduction.build(x_shape[:-1] + (merged,))

    def call(self, x):
        parts = [x[:, i::2, j::2, k::2] for i, j, k in itertools.product(range(2), repeat=3)]
        return self.reduction(self.norm(ops.concatenate(parts, axis=-1)))

    def compute_output_shape(self, x_shape):
        b, d, h, w, t, _ = x_shape
        return (b, d // 2, h // 2, w // 2, t, self.output_dim)

    def get_config(self):
        return {**super().get_config(), "output_dim": self.output_dim}
