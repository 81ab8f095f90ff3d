"""The attention core every family calls, and a fused-qkv multi-head self-attention.

Letters: B batch (or batch x windows), h heads, N query tokens, M key tokens, d head width.

`attention_core` is the one place where scores are softmaxed: in float32 even under mixed
precision (additive masks such as Swin's -100 and padding masks of -inf-like values need the
range), with an optional additive mask broadcast against `(B, h, N, M)`.
"""

import keras
from keras import ops


def attention_core(query, key, value, additive_mask=None, scale=None, dropout=None,
                   training=False, return_weights=False, normalize_after_values=False):
    """softmax(q kᵀ · scale + mask) v.

    Args:
        query: `(B, h, N, d)`.
        key: `(B, h, M, d)`.
        value: `(B, h, M, d_v)`.
        additive_mask: optional, broadcastable to `(B, h, N, M)`; added to the scores.
        scale: float, default `d ** -0.5`. Applied to the query first (as timm and Swin do).
        dropout: optional Keras Dropout layer applied to the weights.
        return_weights: also return the `(B, h, N, M)` weights.
        normalize_after_values: divide by the softmax denominator after the product with
            `value` (on `(B, h, N, d_v)`) instead of on the `(B, h, N, M)` weights: one pass
            over the scores fewer, and each exp computed once. Equal within float32
            rounding; the row max is held constant for the gradient (the result does not
            depend on it). Not with `return_weights`.

    Returns:
        `(B, h, N, d_v)` (and the weights).
    """
    if scale is None:
        scale = query.shape[-1] ** -0.5
    scores = ops.matmul(query * ops.cast(scale, query.dtype), ops.swapaxes(key, -1, -2))
    scores = ops.cast(scores, "float32")
    if additive_mask is not None:
        scores = scores + ops.cast(additive_mask, "float32")
    if normalize_after_values:
        if return_weights:
            raise ValueError("`return_weights` needs the normalised weights; it cannot be "
                             "combined with `normalize_after_values=True`.")
        # float32 max/exp/sum, one exp per score; softmax is shift-invariant, so the max
        # only guards exp against overflow and carries no gradient
        row_max = ops.stop_gradient(ops.max(scores, axis=-1, keepdims=True))  # (B, h, N, 1)
        weights = ops.cast(ops.exp(scores - row_max), value.dtype)  # (B, h, N, M), unnormalised
        if dropout is not None:
            # the denominator must be the sum of the undropped weights: reduce it apart
            denominator = ops.sum(ops.cast(weights, "float32"), axis=-1, keepdims=True)
            out = ops.cast(ops.matmul(dropout(weights, training=training), value), "float32")
            return ops.cast(out / denominator, value.dtype)
        # a column of ones after the values makes the same product also sum the weights,
        # so the (N, M) weights are read once, by the matmul
        ones = ops.ones(tuple(ops.shape(value)[:-1]) + (1,), value.dtype)
        out = ops.cast(ops.matmul(weights, ops.concatenate([value, ones], axis=-1)), "float32")
        return ops.cast(out[..., :-1] / out[..., -1:], value.dtype)  # (B, h, N, d_v)
    weights = ops.cast(ops.softmax(scores, axis=-1), value.dtype)
    if dropout is not None:
        weights = dropout(weights, training=training)
    out = ops.matmul(weights, value)
    return (out, weights) if return_weights else out


def split_heads(x, num_heads):
    """`(B, N, h*d)` -> `(B, h, N, d)`."""
    head_dim = x.shape[-1] // num_heads
    x = ops.reshape(x, (-1, x.shape[1] if x.shape[1] is not None else ops.shape(x)[1],
                        num_heads, head_dim))  # (B, N, h, d)
    return ops.transpose(x, (0, 2, 1, 3))


def merge_heads(x):
    """`(B, h, N, d)` -> `(B, N, h*d)`."""
    num_heads, head_dim = x.shape[1], x.shape[3]
    x = ops.transpose(x, (0, 2, 1, 3))  # (B, N, h, d)
    return ops.reshape(x, (-1, x.shape[1] if x.shape[1] is not None else ops.shape(x)[1],
                           num_heads * head_dim))


class MultiHeadSelfAttention(keras.layers.Layer):
    """timm-style self-attention: fused `qkv` Linear (q, k, v, each head-contiguous),
    `attention_core`, `proj` Linear. Torch names `qkv.weight`/`proj.weight` map as-is.

    Args:
        hidden_dim: int. Token width C.
        num_heads: int. Must divide `hidden_dim`.
        qkv_bias: bool.
        attention_dropout_rate: float. Dropout on the attention weights.
        dropout_rate: float. Dropout after the output projection.

    Call arguments:
        tokens: `(B, N, C)`.
        attention_mask: optional additive mask broadcastable to `(B, heads, N, N)`.
    """

    def __init__(self, hidden_dim, num_heads, qkv_bias=True, attention_dropout_rate=0.0,
                 dropout_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        if hidden_dim % num_heads:
            raise ValueError("`hidden_dim` must be divisible by `num_heads`. "
                             f"Received: hidden_dim={hidden_dim}, num_heads={num_heads}")
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.qkv_bias = qkv_bias
        self.attention_dropout_rate = attention_dropout_rate
        self.dropout_rate = dropout_rate
        self.head_dim = hidden_dim // num_heads

    def build(self, tokens_shape):
        self.qkv = keras.layers.Dense(3 * self.hidden_dim, use_bias=self.qkv_bias,
                                      dtype=self.dtype_policy, name="qkv")
        self.qkv.build(tokens_shape)
        self.proj = keras.layers.Dense(self.hidden_dim, dtype=self.dtype_policy, name="proj")
        self.proj.build(tuple(tokens_shape[:-1]) + (self.hidden_dim,))
        self.attention_dropout = keras.layers.Dropout(self.attention_dropout_rate,
                                                      dtype=self.dtype_policy)
        self.output_dropout = keras.layers.Dropout(self.dropout_rate, dtype=self.dtype_policy)

    def call(self, tokens, attention_mask=None, training=False):
        num_tokens = tokens.shape[1]
        qkv = ops.reshape(self.qkv(tokens), (-1, num_tokens, 3, self.num_heads, self.head_dim))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # (3, B, h, N, d)
        out = self.attend(qkv[0], qkv[1], qkv[2], attention_mask, training)  # (B, h, N, d)
        out = ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (-1, num_tokens, self.hidden_dim))
        return self.output_dropout(self.proj(out), training=training)

    def attend(self, query, key, value, attention_mask, training):
        """`(B, h, N, d)` each -> `(B, h, N, d)`; subclasses shape the mask here."""
        return attention_core(query, key, value, additive_mask=attention_mask,
                              dropout=self.attention_dropout, training=training)

    def compute_output_shape(self, tokens_shape):
        return tokens_shape

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads, "qkv_bias": self.qkv_bias,
                "attention_dropout_rate": self.attention_dropout_rate,
                "dropout_rate": self.dropout_rate}


class LayerScale(keras.layers.Layer):
    """Per-channel learned scale (CaiT / timm `LayerScale`, torch name `gamma`).

    Args:
        init_values: float. Initial value of every channel's scale.
    """

    def __init__(self, init_values=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.init_values = init_values

    def build(self, x_shape):
        self.gamma = self.add_weight(shape=(x_shape[-1],), name="gamma",
                                     initializer=keras.initializers.Constant(self.init_values))

    def call(self, x):
        return x * ops.cast(self.gamma, x.dtype)

    def compute_output_shape(self, x_shape):
        return x_shape

    def get_config(self):
        return {**super().get_config(), "init_values": self.init_values}
