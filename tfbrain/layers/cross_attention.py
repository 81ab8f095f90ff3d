"""Bi-directional cross-attention between a small latent array and a long token sequence (BiXT).

Hiller, Ehinger, Drummond, "Perceiving Longer Sequences With Bi-Directional Cross-Attention
Transformers", NeurIPS 2024 (github.com/mrkshllr/BiXT, `timm/models/bixt.py`, `CrossAttention`
and `CrossAttentionOneSided`).

Letters: B batch, h heads, M latents, N tokens, d head width, A = h * d attention width.

Both sides project to a *reference* R and a value V with one Linear each (`rv_latents`,
`rv_patches`: output channels [0, A) are R, [A, 2A) are V, each head-contiguous). One similarity
S = R_lat · R_tokᵀ · d^-1/2 per head serves both directions: softmax over tokens lets the latents
read the tokens, softmax over latents lets the tokens read the latents. The cost is O(B·h·M·N·d):
linear in N for a fixed M. The one-sided form (BiXT's last layer) updates the latents only.

Any model that pairs a latent array with a long input can use it (Perceiver-style encoders), so it
lives here rather than in the BiXT family.
"""

import keras
from keras import ops


def bidirectional_attention(reference_latents, reference_tokens, scale, one_sided=False):
    """The shared similarity softmaxed both ways, in float32.

    Args:
        reference_latents: `(B, h, M, d)`.
        reference_tokens: `(B, h, N, d)`.
        scale: float, applied after the product (as upstream does).
        one_sided: bool. Only the latents' weights.

    Returns:
        `(B, h, M, N)` weights that sum to 1 over N and, unless `one_sided`, `(B, h, N, M)`
        weights that sum to 1 over M.
    """
    scores = ops.matmul(reference_latents, ops.swapaxes(reference_tokens, -1, -2))  # (B, h, M, N)
    scores = ops.cast(scores, "float32") * scale
    latent_weights = ops.softmax(scores, axis=-1)
    if one_sided:
        return latent_weights, None
    token_weights = ops.softmax(ops.swapaxes(scores, -1, -2), axis=-1)  # (B, h, N, M)
    return latent_weights, token_weights


@keras.saving.register_keras_serializable(package="tfbrain")
class BiXTCrossAttention(keras.layers.Layer):
    """BiXT's bi-directional (or one-sided) cross-attention, without norms or residuals.

    Sublayer names are upstream's: `rv_latents` (`r_latents` when one-sided), `rv_patches`,
    `proj_lat`, `proj_pat`.

    Args:
        latent_dim: int. Width of the latents (upstream `dim_lat`).
        token_dim: int. Width of the tokens (upstream `dim_pat`).
        attention_dim: int. Inner width A (upstream `dim_attn`); must be divisible by `num_heads`.
        num_heads: int.
        use_bias: bool. Bias of the reference/value projections (upstream `rv_bias`).
        attention_dropout_rate: float. Dropout on each direction's weights (separate layers, as
            upstream's `attn_drop` and `attn_dropT`).
        dropout_rate: float. Dropout after each output projection.
        one_sided: bool. Latents read tokens; tokens are not updated and no token-side output
            projection exists (upstream `CrossAttentionOneSided`).

    Call arguments:
        latents: `(B, M, latent_dim)`.
        tokens: `(B, N, token_dim)`.

    Returns:
        `(latents, tokens)` updates of shapes `(B, M, latent_dim)` and `(B, N, token_dim)`; only
        the latents' update when `one_sided`.
    """

    def __init__(self, latent_dim, token_dim, attention_dim, num_heads, use_bias=True,
                 attention_dropout_rate=0.0, dropout_rate=0.0, one_sided=False, **kwargs):
        super().__init__(**kwargs)
        if attention_dim % num_heads:
            raise ValueError("`attention_dim` must be divisible by `num_heads`. "
                             f"Received: attention_dim={attention_dim}, num_heads={num_heads}")
        self.latent_dim = latent_dim
        self.token_dim = token_dim
        self.attention_dim = attention_dim
        self.num_heads = num_heads
        self.use_bias = use_bias
        self.attention_dropout_rate = attention_dropout_rate
        self.dropout_rate = dropout_rate
        self.one_sided = one_sided
        self.head_dim = attention_dim // num_heads

    def build(self, latents_shape, tokens_shape):
        dtype = self.dtype_policy
        if latents_shape[-1] != self.latent_dim or tokens_shape[-1] != self.token_dim:
            raise ValueError(f"{self.name} expects latents (B, M, {self.latent_dim}) and tokens "
                             f"(B, N, {self.token_dim}). Received: latents_shape={latents_shape}, "
                             f"tokens_shape={tokens_shape}")
        latent_outputs = self.attention_dim if self.one_sided else 2 * self.attention_dim
        self.rv_latents = keras.layers.Dense(
            latent_outputs, use_bias=self.use_bias, dtype=dtype,
            name="r_latents" if self.one_sided else "rv_latents")
        self.rv_latents.build(latents_shape)
        self.rv_patches = keras.layers.Dense(2 * self.attention_dim, use_bias=self.use_bias,
                                             dtype=dtype, name="rv_patches")
        self.rv_patches.build(tokens_shape)
        attention_shape_latents = tuple(latents_shape[:-1]) + (self.attention_dim,)
        self.proj_lat = keras.layers.Dense(self.latent_dim, dtype=dtype, name="proj_lat")
        self.proj_lat.build(attention_shape_latents)
        self.attention_dropout_latents = keras.layers.Dropout(self.attention_dropout_rate,
                                                              dtype=dtype)
        self.dropout_latents = keras.layers.Dropout(self.dropout_rate, dtype=dtype)
        if not self.one_sided:
            self.proj_pat = keras.layers.Dense(self.token_dim, dtype=dtype, name="proj_pat")
            self.proj_pat.build(tuple(tokens_shape[:-1]) + (self.attention_dim,))
            self.attention_dropout_tokens = keras.layers.Dropout(self.attention_dropout_rate,
                                                                 dtype=dtype)
            self.dropout_tokens = keras.layers.Dropout(self.dropout_rate, dtype=dtype)

    def _heads(self, x, parts):
        """`(B, L, parts*h*d)` -> `parts` tensors `(B, h, L, d)` (part-major, then head)."""
        length = x.shape[1]
        x = ops.reshape(x, (-1, length, parts, self.num_heads, self.head_dim))  # (B, L, p, h, d)
        x = ops.transpose(x, (2, 0, 3, 1, 4))  # (p, B, h, L, d)
        return [x[i] for i in range(parts)]

    def _merge(self, x):
        length = x.shape[2]
        x = ops.transpose(x, (0, 2, 1, 3))  # (B, L, h, d)
        return ops.reshape(x, (-1, length, self.attention_dim))  # (B, L, A)

    def call(self, latents, tokens, training=False):
        if self.one_sided:
            (reference_latents,) = self._heads(self.rv_latents(latents), 1)
        else:
            reference_latents, value_latents = self._heads(self.rv_latents(latents), 2)
        reference_tokens, value_tokens = self._heads(self.rv_patches(tokens), 2)
        latent_weights, token_weights = bidirectional_attention(
            reference_latents, reference_tokens, self.head_dim ** -0.5, self.one_sided)
        latent_weights = self.attention_dropout_latents(
            ops.cast(latent_weights, value_tokens.dtype), training=training)
        latent_update = self._merge(ops.matmul(latent_weights, value_tokens))  # (B, M, A)
        latent_update = self.dropout_latents(self.proj_lat(latent_update), training=training)
        if self.one_sided:
            return latent_update
        token_weights = self.attention_dropout_tokens(
            ops.cast(token_weights, value_latents.dtype), training=training)
        token_update = self._merge(ops.matmul(token_weights, value_latents))  # (B, N, A)
        token_update = self.dropout_tokens(self.proj_pat(token_update), training=training)
        return latent_update, token_update

    def compute_output_shape(self, latents_shape, tokens_shape):
        latents_out = tuple(latents_shape[:-1]) + (self.latent_dim,)
        if self.one_sided:
            return latents_out
        return latents_out, tuple(tokens_shape[:-1]) + (self.token_dim,)

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim,
                "token_dim": self.token_dim, "attention_dim": self.attention_dim,
                "num_heads": self.num_heads, "use_bias": self.use_bias,
                "attention_dropout_rate": self.attention_dropout_rate,
                "dropout_rate": self.dropout_rate, "one_sided": self.one_sided}
