"""Blocks of the Matcha-TTS 1D U-Net (flow-matching estimator), channels-last.

Upstream: shivammehta25/Matcha-TTS @ 108906c6, `matcha/models/components/decoder.py` and
`transformer.py` (a copy of diffusers 0.25 `BasicTransformerBlock`), and lucidrains
`conformer` 0.3.2 (`ConformerBlock`, used through Matcha's `ConformerWrapper`).

How this port differs from upstream: tensors are `(B, T, C)` throughout (upstream's
convolutions run on `(B, C, T)`), masks are `(B, T)` float 0/1 (upstream `(B, 1, T)`).
Numerics follow upstream, including one quirk worth knowing:

  * Additive-mask quirk (`MatchaTransformerBlock`): the decoder hands diffusers' attention
    its float 0/1 mask, which `scaled_dot_product_attention` *adds* to the logits: valid
    keys get +1, padded keys +0. Padded keys are only slightly down-weighted, not excluded.
    With an all-ones mask (fixed-length TR windows) this is a no-op; the port reproduces it
    so trained Matcha weights give upstream's numbers on padded batches.
  * The conformer block excludes padded query/key pairs properly (lucidrains masks with
    -finfo.max), so a padded query row attends uniformly to every key, as upstream.

Letters: B batch, T frames (TRs), C channels, h heads, d head width.
"""

import math

import keras
import numpy as np
from keras import ops

from tfbrain.layers.attention import attention_core, merge_heads, split_heads
from tfbrain.layers.torch_compat import TORCH_LAYER_NORM_EPSILON, torch_conv_padding

FEED_FORWARD_ACTIVATIONS = ("snakebeta", "gelu", "gelu-approximate", "geglu",
                            "geglu-approximate")
TORCH_NORM_EPSILON = 1e-5  # GroupNorm and BatchNorm1d defaults


def mish(x):
    """x · tanh(softplus(x)) (torch `nn.Mish`)."""
    return x * ops.tanh(ops.softplus(x))


def _dense(units, layer, name, use_bias=True):
    return keras.layers.Dense(units, use_bias=use_bias, dtype=layer.dtype_policy, name=name)


def _conv(filters, kernel_size, layer, name, strides=1):
    return keras.layers.Conv1D(filters, kernel_size, strides=strides, padding="valid",
                               dtype=layer.dtype_policy, name=name)


def sinusoidal_time_embedding(t, dim, scale=1000.0):
    """Matcha's `SinusoidalPosEmb`: [sin(scale·t·f), cos(scale·t·f)], f_i = 10000^(-i/(half-1)).

    Args:
        t: `(B,)` or a scalar flow time in [0, 1].
        dim: int, even. Upstream uses the decoder's input channel count.

    Returns:
        `(B, dim)`, or `(1, dim)` for a scalar t (it broadcasts over the batch later).
    """
    half = dim // 2
    # float32 exponent, exp correctly rounded: bit-identical to torch's float32 frequencies
    exponent = np.arange(half, dtype=np.float32) * np.float32(-(math.log(10000) / (half - 1)))
    freqs = np.exp(exponent.astype(np.float64)).astype(np.float32)
    t = ops.reshape(ops.cast(t, "float32"), (-1, 1))  # (B, 1)
    arg = scale * t * ops.convert_to_tensor(freqs.astype(np.float32))[None, :]  # (B, half)
    return ops.concatenate([ops.sin(arg), ops.cos(arg)], axis=-1)


class MatchaBlock1D(keras.layers.Layer):
    """Conv1d(k=3, pad 1) -> GroupNorm(8) -> Mish on the masked input, output masked.

    Args:
        filters: int. Output channels (divisible by `groups`).
        groups: int. GroupNorm groups (8 upstream).

    Call arguments:
        x: `(B, T, C_in)`; mask: `(B, T)`. Returns `(B, T, filters)`.
    """

    def __init__(self, filters, groups=8, **kwargs):
        super().__init__(**kwargs)
        if filters % groups:
            raise ValueError("`filters` must be divisible by `groups` (GroupNorm). "
                             f"Received: filters={filters}, groups={groups}")
        self.filters = filters
        self.groups = groups

    def build(self, x_shape, mask_shape=None):
        self.conv = _conv(self.filters, 3, self, "conv")
        self.conv.build(tuple(x_shape))
        self.norm = keras.layers.GroupNormalization(self.groups, epsilon=TORCH_NORM_EPSILON,
                                                    dtype=self.dtype_policy, name="norm")
        self.norm.build(tuple(x_shape[:-1]) + (self.filters,))

    def call(self, x, mask):
        mask = ops.cast(mask, x.dtype)[..., None]  # (B, T, 1)
        h = self.conv(torch_conv_padding(x * mask, 1, 1))
        return mish(self.norm(h)) * mask

    def compute_output_shape(self, x_shape, mask_shape=None):
        return tuple(x_shape[:-1]) + (self.filters,)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "groups": self.groups}


class MatchaResnetBlock1D(keras.layers.Layer):
    """Two `MatchaBlock1D`s with the time embedding added between them, plus a 1x1 residual.

    Args:
        filters: int. Output channels.
        groups: int. GroupNorm groups.

    Call arguments:
        x: `(B, T, C_in)`; mask: `(B, T)`; time_embedding: `(B, E)` or `(1, E)`.
        Returns `(B, T, filters)` (not re-masked, as upstream).
    """

    def __init__(self, filters, groups=8, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.groups = groups

    def build(self, x_shape, mask_shape=None, time_shape=None):
        out_shape = tuple(x_shape[:-1]) + (self.filters,)
        self.block1 = MatchaBlock1D(self.filters, self.groups, dtype=self.dtype_policy,
                                    name="block1")
        self.block1.build(x_shape)
        self.block2 = MatchaBlock1D(self.filters, self.groups, dtype=self.dtype_policy,
                                    name="block2")
        self.block2.build(out_shape)
        self.time_proj = _dense(self.filters, self, "time_proj")  # upstream `mlp.1`
        self.time_proj.build(tuple(time_shape))
        self.res_conv = _conv(self.filters, 1, self, "res_conv")
        self.res_conv.build(tuple(x_shape))

    def call(self, x, mask, time_embedding):
        h = self.block1(x, mask)
        h = h + self.time_proj(mish(time_embedding))[:, None, :]  # (B or 1, 1, C)
        h = self.block2(h, mask)
        return h + self.res_conv(x * ops.cast(mask, x.dtype)[..., None])

    def compute_output_shape(self, x_shape, mask_shape=None, time_shape=None):
        return tuple(x_shape[:-1]) + (self.filters,)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "groups": self.groups}


class MatchaUpsample1D(keras.layers.Layer):
    """torch `ConvTranspose1d(C, C, kernel 4, stride 2, padding 1)`: T -> 2T.

    The Keras kernel is `(4, C_out, C_in)`: torch's `(C_in, C_out, 4)` transposed, no flip.

    Call arguments:
        x: `(B, T, C)`. Returns `(B, 2T, filters)`.
    """

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters

    def build(self, x_shape):
        self.conv = keras.layers.Conv1DTranspose(self.filters, 4, strides=2, padding="valid",
                                                 dtype=self.dtype_policy, name="conv")
        self.conv.build(tuple(x_shape))

    def call(self, x):
        y = self.conv(x)  # (B, 2T + 2, C): "valid" output, torch's padding=1 crops one each side
        return y[:, 1:-1, :]

    def compute_output_shape(self, x_shape):
        length = None if x_shape[1] is None else 2 * x_shape[1]
        return (x_shape[0], length, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


class MatchaFeedForward(keras.layers.Layer):
    """diffusers/Matcha `FeedForward` (mult 4): activation-with-projection, dropout, Linear.

    Activations: "snakebeta" (Linear then x + sin²(e^α x)/(e^β + 1e-9), α, β per feature in
    log scale), "gelu" (exact), "gelu-approximate" (tanh), "geglu" (Linear to 2·inner,
    value · gelu(gate)), "geglu-approximate" (diffusers `ApproximateGELU`: x·σ(1.702x)).

    Args:
        hidden_dim: int. Input and output width.
        activation: one of `FEED_FORWARD_ACTIVATIONS`.
        mult: int. Inner width multiplier.
        dropout_rate: float.

    Call arguments:
        x: `(B, T, C)`. Returns the same shape.
    """

    def __init__(self, hidden_dim, activation="snakebeta", mult=4, dropout_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        if activation not in FEED_FORWARD_ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {FEED_FORWARD_ACTIVATIONS} (Matcha's "
                             f"default 'snake' is not handled upstream either). "
                             f"Received: activation={activation!r}")
        self.hidden_dim = hidden_dim
        self.activation = activation
        self.mult = mult
        self.dropout_rate = dropout_rate

    def build(self, x_shape):
        inner = int(self.hidden_dim * self.mult)
        proj_units = 2 * inner if self.activation == "geglu" else inner
        self.proj = _dense(proj_units, self, "proj")  # upstream `net.0.proj`
        self.proj.build(tuple(x_shape))
        if self.activation == "snakebeta":
            self.alpha = self.add_weight(shape=(inner,), initializer="zeros", name="alpha")
            self.beta = self.add_weight(shape=(inner,), initializer="zeros", name="beta")
        self.dropout = keras.layers.Dropout(self.dropout_rate, dtype=self.dtype_policy)
        self.out = _dense(self.hidden_dim, self, "out")  # upstream `net.2`
        self.out.build(tuple(x_shape[:-1]) + (inner,))

    def _activate(self, x):
        h = self.proj(x)
        if self.activation == "snakebeta":
            alpha = ops.exp(ops.cast(self.alpha, h.dtype))
            beta = ops.exp(ops.cast(self.beta, h.dtype))
            return h + (1.0 / (beta + 1e-9)) * ops.square(ops.sin(h * alpha))
        if self.activation == "gelu":
            return keras.activations.gelu(h, approximate=False)
        if self.activation == "gelu-approximate":
            return keras.activations.gelu(h, approximate=True)
        if self.activation == "geglu":
            value, gate = ops.split(h, 2, axis=-1)
            return value * keras.activations.gelu(gate, approximate=False)
        return h * ops.sigmoid(1.702 * h)  # geglu-approximate

    def call(self, x, training=False):
        return self.out(self.dropout(self._activate(x), training=training))

    def compute_output_shape(self, x_shape):
        return x_shape

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim,
                "activation": self.activation, "mult": self.mult,
                "dropout_rate": self.dropout_rate}


class MatchaTransformerBlock(keras.layers.Layer):
    """Matcha's copy of diffusers `BasicTransformerBlock` as the decoder configures it:
    LN -> self-attention (q/k/v without bias, out with bias) -> residual; LN -> FeedForward
    -> residual. The float mask is *added* to the logits (see the module docstring).

    Args:
        hidden_dim: int. Channel width C.
        num_heads: int.
        head_dim: int. Attention inner width is `num_heads * head_dim` (may differ from C).
        activation: feed-forward activation.
        dropout_rate: float. After the attention output projection and in the FF.

    Call arguments:
        x: `(B, T, C)`; mask: `(B, T)` float 0/1. Returns `(B, T, C)`.
    """

    def __init__(self, hidden_dim, num_heads, head_dim, activation="snakebeta",
                 dropout_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.activation = activation
        self.dropout_rate = dropout_rate

    def build(self, x_shape, mask_shape=None):
        inner = self.num_heads * self.head_dim
        x_shape = tuple(x_shape)
        self.norm1 = keras.layers.LayerNormalization(epsilon=TORCH_LAYER_NORM_EPSILON,
                                                     dtype=self.dtype_policy, name="norm1")
        self.norm1.build(x_shape)
        self.to_q = _dense(inner, self, "to_q", use_bias=False)
        self.to_k = _dense(inner, self, "to_k", use_bias=False)
        self.to_v = _dense(inner, self, "to_v", use_bias=False)
        for layer in (self.to_q, self.to_k, self.to_v):
            layer.build(x_shape)
        self.to_out = _dense(self.hidden_dim, self, "to_out")
        self.to_out.build(x_shape[:-1] + (inner,))
        self.norm3 = keras.layers.LayerNormalization(epsilon=TORCH_LAYER_NORM_EPSILON,
                                                     dtype=self.dtype_policy, name="norm3")
        self.norm3.build(x_shape)
        self.ff = MatchaFeedForward(self.hidden_dim, self.activation, 4, self.dropout_rate,
                                    dtype=self.dtype_policy, name="ff")
        self.ff.build(x_shape)
        self.dropout = keras.layers.Dropout(self.dropout_rate, dtype=self.dtype_policy)

    def call(self, x, mask, training=False):
        h = self.norm1(x)
        q = split_heads(self.to_q(h), self.num_heads)  # (B, h, T, d)
        k = split_heads(self.to_k(h), self.num_heads)
        v = split_heads(self.to_v(h), self.num_heads)
        additive = ops.cast(mask, "float32")[:, None, None, :]  # (B, 1, 1, T): +1 valid, +0 pad
        attn = merge_heads(attention_core(q, k, v, additive_mask=additive))  # (B, T, h*d)
        x = x + self.dropout(self.to_out(attn), training=training)
        return x + self.ff(self.norm3(x), training=training)

    def compute_output_shape(self, x_shape, mask_shape=None):
        return x_shape

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads, "head_dim": self.head_dim,
                "activation": self.activation, "dropout_rate": self.dropout_rate}


class ConformerBlock(keras.layers.Layer):
    """lucidrains `ConformerBlock` (0.3.2) as Matcha configures it (ff_mult 1, conv expansion
    2, kernel 31): x += ½FF(LN x); x += MHSA(LN x) with Shaw relative positions; x += Conv(x);
    x += ½FF(LN x); LN.

    Args:
        hidden_dim: int. C.
        num_heads: int.
        head_dim: int.
        ff_mult: int.
        conv_expansion_factor: int.
        conv_kernel_size: int.
        max_relative_position: int. Rel-pos table has `2·max + 1` rows (512 upstream).
        dropout_rate: float.

    Call arguments:
        x: `(B, T, C)`; mask: `(B, T)` (nonzero = valid). Returns `(B, T, C)`.
    """

    def __init__(self, hidden_dim, num_heads, head_dim, ff_mult=1, conv_expansion_factor=2,
                 conv_kernel_size=31, max_relative_position=512, dropout_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.ff_mult = ff_mult
        self.conv_expansion_factor = conv_expansion_factor
        self.conv_kernel_size = conv_kernel_size
        self.max_relative_position = max_relative_position
        self.dropout_rate = dropout_rate

    def _norm(self, name, shape):
        norm = keras.layers.LayerNormalization(epsilon=TORCH_LAYER_NORM_EPSILON,
                                               dtype=self.dtype_policy, name=name)
        norm.build(shape)
        return norm

    def build(self, x_shape, mask_shape=None):
        x_shape = tuple(x_shape)
        c = self.hidden_dim
        attn_inner = self.num_heads * self.head_dim
        conv_inner = c * self.conv_expansion_factor
        ff_inner = c * self.ff_mult
        for name in ("ff1", "ff2"):
            setattr(self, f"{name}_norm", self._norm(f"{name}_norm", x_shape))
            fc1 = _dense(ff_inner, self, f"{name}_fc1")
            fc1.build(x_shape)
            fc2 = _dense(c, self, f"{name}_fc2")
            fc2.build(x_shape[:-1] + (ff_inner,))
            setattr(self, f"{name}_fc1", fc1)
            setattr(self, f"{name}_fc2", fc2)
        self.attn_norm = self._norm("attn_norm", x_shape)
        self.to_q = _dense(attn_inner, self, "to_q", use_bias=False)
        self.to_q.build(x_shape)
        self.to_kv = _dense(2 * attn_inner, self, "to_kv", use_bias=False)
        self.to_kv.build(x_shape)
        self.to_out = _dense(c, self, "to_out")
        self.to_out.build(x_shape[:-1] + (attn_inner,))
        self.rel_pos_emb = self.add_weight(
            shape=(2 * self.max_relative_position + 1, self.head_dim), name="rel_pos_emb",
            initializer=keras.initializers.RandomNormal(stddev=1.0))
        self.conv_norm = self._norm("conv_norm", x_shape)
        self.conv_in = _conv(2 * conv_inner, 1, self, "conv_in")
        self.conv_in.build(x_shape)
        self.depthwise = keras.layers.DepthwiseConv1D(self.conv_kernel_size, padding="valid",
                                                      dtype=self.dtype_policy, name="depthwise")
        self.depthwise.build((x_shape[0], None, conv_inner))  # T padded by kernel - 1
        self.batch_norm = keras.layers.BatchNormalization(epsilon=TORCH_NORM_EPSILON,
                                                          momentum=0.9, dtype=self.dtype_policy,
                                                          name="batch_norm")
        self.batch_norm.build(x_shape[:-1] + (conv_inner,))
        self.conv_out = _conv(c, 1, self, "conv_out")
        self.conv_out.build(x_shape[:-1] + (conv_inner,))
        self.post_norm = self._norm("post_norm", x_shape)
        self.dropout = keras.layers.Dropout(self.dropout_rate, dtype=self.dtype_policy)

    def _feed_forward(self, name, x, training):
        norm, fc1, fc2 = (getattr(self, f"{name}_{part}") for part in ("norm", "fc1", "fc2"))
        h = self.dropout(ops.silu(fc1(norm(x))), training=training)
        return self.dropout(fc2(h), training=training)

    def _attention(self, x, mask, training):
        h = self.attn_norm(x)
        q = split_heads(self.to_q(h), self.num_heads)  # (B, h, T, d)
        k, v = ops.split(self.to_kv(h), 2, axis=-1)
        k, v = split_heads(k, self.num_heads), split_heads(v, self.num_heads)
        scale = self.head_dim ** -0.5
        length = ops.shape(x)[1]
        positions = ops.arange(length)
        distance = ops.clip(positions[:, None] - positions[None, :], -self.max_relative_position,
                            self.max_relative_position) + self.max_relative_position  # (T, T)
        rel = ops.take(ops.cast(self.rel_pos_emb, q.dtype), distance, axis=0)  # (T, T, d)
        scores = (ops.einsum("bhnd,bhmd->bhnm", q, k)
                  + ops.einsum("bhnd,nmd->bhnm", q, rel)) * scale
        scores = ops.cast(scores, "float32")
        valid = ops.cast(mask, "bool")
        pair = ops.logical_and(valid[:, None, :, None], valid[:, None, None, :])  # (B,1,T,T)
        scores = ops.where(pair, scores, -np.finfo(np.float32).max)
        weights = ops.cast(ops.softmax(scores, axis=-1), v.dtype)
        weights = self.dropout(weights, training=training)  # upstream drops attention weights
        out = merge_heads(ops.matmul(weights, v))  # (B, T, h*d)
        return self.to_out(out)

    def _convolution(self, x, training):
        h = self.conv_in(self.conv_norm(x))  # (B, T, 2·inner)
        value, gate = ops.split(h, 2, axis=-1)
        h = value * ops.sigmoid(gate)  # GLU over channels
        pad = self.conv_kernel_size // 2
        h = ops.pad(h, [(0, 0), (pad, pad - (self.conv_kernel_size + 1) % 2), (0, 0)])
        h = ops.silu(self.batch_norm(self.depthwise(h), training=training))
        return self.dropout(self.conv_out(h), training=training)

    def call(self, x, mask, training=False):
        x = x + 0.5 * self._feed_forward("ff1", x, training)
        x = x + self._attention(x, mask, training)
        x = x + self._convolution(x, training)
        x = x + 0.5 * self._feed_forward("ff2", x, training)
        return self.post_norm(x)

    def compute_output_shape(self, x_shape, mask_shape=None):
        return x_shape

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads, "head_dim": self.head_dim, "ff_mult": self.ff_mult,
                "conv_expansion_factor": self.conv_expansion_factor,
                "conv_kernel_size": self.conv_kernel_size,
                "max_relative_position": self.max_relative_position,
                "dropout_rate": self.dropout_rate}
