"""Memory-efficient (blockwise, online-softmax) attention, for sequences whose L x L score
matrix does not fit: BrainMT attends over 1 + 252 * 200 = 50,401 tokens, where one float32
score matrix of 2 heads is 20 GB.

`blockwise_attention` walks the keys in blocks of `block_size` with a running max and sum
(Rabe & Staats 2021; FlashAttention's forward), so the forward pass holds `(B, h, N,
block_size)` scores at a time. Its gradient is hand-written (`tf.custom_gradient`) and
recomputes each block's probabilities from the saved log-sum-exp (FlashAttention's backward),
so the backward pass never holds an N x M matrix either. Why TF and not `keras.ops`: autodiff
through a `while_loop` would keep every block's scores for the backward pass, which is the
memory this layer exists to avoid; the hand-written reverse loop is the same approach as
`tfbrain.layers.selective_scan`. The loops are plain `tf.while_loop`s with static trip
counts: they run eagerly, in graphs, under XLA (CPU, GPU, TPU) and in a SavedModel.

Letters: B batch, h heads, N query tokens, M key tokens, d head width, K key blocks,
S = block_size.
"""

import math

import keras
import tensorflow as tf
from keras import ops

from tfbrain.layers.attention import MultiHeadSelfAttention, attention_core

IMPLEMENTATIONS = ("auto", "plain", "blockwise")
DEFAULT_BLOCK_SIZE = 1024
# "auto" materialises the scores when one sample's (h, N, N) float32 matrix is at most this
DEFAULT_MAX_PLAIN_SCORE_BYTES = 1 << 30


def _key_blocks(x, num_blocks, block_size):
    """`(B, h, M, d)` -> `(K, B, h, S, d)`, zero-padded at the end to K * S keys."""
    pad = num_blocks * block_size - x.shape[2]
    x = tf.pad(x, [[0, 0], [0, 0], [0, pad], [0, 0]])  # (B, h, K*S, d)
    shape = tf.shape(x)
    x = tf.reshape(x, [shape[0], shape[1], num_blocks, block_size, x.shape[-1]])  # (B, h, K, S, d)
    return tf.transpose(x, [2, 0, 1, 3, 4])  # (K, B, h, S, d)


def _unblock(x, num_keys):
    """`(K, B, h, S, d)` -> `(B, h, M, d)` (the padding dropped)."""
    x = tf.transpose(x, [1, 2, 0, 3, 4])  # (B, h, K, S, d)
    shape = tf.shape(x)
    x = tf.reshape(x, [shape[0], shape[1], x.shape[2] * x.shape[3], x.shape[4]])  # (B, h, K*S, d)
    return x[:, :, :num_keys]


def blockwise_attention(query, key, value, scale=None, block_size=DEFAULT_BLOCK_SIZE):
    """softmax(q kᵀ · scale) v without materialising the `(B, h, N, M)` scores.

    Equal to `tfbrain.layers.attention.attention_core` (no mask, no dropout) within float32
    rounding, forward and backward. Arithmetic is float32 whatever the input dtype; the
    output has `value`'s dtype.

    Args:
        query: `(B, h, N, d)`.
        key: `(B, h, M, d)`; M must be static.
        value: `(B, h, M, d_v)`.
        scale: float, default `d ** -0.5`.
        block_size: int. Keys per block S; the last block is padded and masked.

    Returns:
        `(B, h, N, d_v)`.
    """
    if block_size < 1:
        raise ValueError(f"`block_size` must be positive. Received: block_size={block_size}")
    num_keys = key.shape[2]
    if num_keys is None:
        raise ValueError("blockwise_attention needs a static number of keys. "
                         f"Received: key.shape={key.shape}")
    block_size = min(int(block_size), num_keys)
    num_blocks = math.ceil(num_keys / block_size)
    scale = float(query.shape[-1] ** -0.5 if scale is None else scale)
    out_dtype = value.dtype
    # additive bias per key: 0 for real keys, -inf for the padding of the last block
    key_index = tf.range(num_blocks * block_size)
    bias = tf.where(key_index < num_keys, 0.0, -float("inf"))
    bias = tf.reshape(bias, [num_blocks, 1, 1, 1, block_size])  # (K, 1, 1, 1, S)

    @tf.custom_gradient
    def attend(q, k, v):
        q_scaled = tf.cast(q, tf.float32) * scale  # (B, h, N, d)
        k_blocks = _key_blocks(tf.cast(k, tf.float32), num_blocks, block_size)  # (K, B, h, S, d)
        v_blocks = _key_blocks(tf.cast(v, tf.float32), num_blocks, block_size)  # (K, B, h, S, dv)

        def scores(j):
            s = tf.einsum("bhnd,bhsd->bhns", q_scaled, tf.gather(k_blocks, j))
            return s + tf.gather(bias, j)  # (B, h, N, S)

        def forward_body(j, running_max, running_sum, acc):
            s = scores(j)
            new_max = tf.maximum(running_max, tf.reduce_max(s, axis=-1))  # (B, h, N)
            p = tf.exp(s - new_max[..., None])
            correction = tf.exp(running_max - new_max)  # 0 on the first block (max was -inf)
            running_sum = running_sum * correction + tf.reduce_sum(p, axis=-1)
            acc = acc * correction[..., None] + tf.einsum("bhns,bhsd->bhnd", p,
                                                          tf.gather(v_blocks, j))
            return j + 1, new_max, running_sum, acc

        stats_shape = tf.shape(q_scaled)[:3]
        acc_shape = tf.concat([stats_shape, [v.shape[-1]]], axis=0)
        _, running_max, running_sum, acc = tf.while_loop(
            lambda j, *_: j < num_blocks, forward_body,
            (tf.constant(0), tf.fill(stats_shape, -float("inf")), tf.zeros(stats_shape),
             tf.zeros(acc_shape)), maximum_iterations=num_blocks)
        out = acc / running_sum[..., None]  # (B, h, N, dv)
        log_sum_exp = running_max + tf.math.log(running_sum)  # (B, h, N)

        def grad(grad_out):
            grad_out = tf.cast(grad_out, tf.float32)
            delta = tf.reduce_sum(grad_out * out, axis=-1)  # (B, h, N): rowsum(dO * O)

            def backward_body(j, grad_q, grad_k, grad_v):
                p = tf.exp(scores(j) - log_sum_exp[..., None])  # (B, h, N, S), recomputed
                grad_v = grad_v.write(j, tf.einsum("bhns,bhnd->bhsd", p, grad_out))
                grad_p = tf.einsum("bhnd,bhsd->bhns", grad_out, tf.gather(v_blocks, j))
                grad_s = p * (grad_p - delta[..., None])
                grad_q = grad_q + tf.einsum("bhns,bhsd->bhnd", grad_s, tf.gather(k_blocks, j))
                grad_k = grad_k.write(j, tf.einsum("bhns,bhnd->bhsd", grad_s, q_scaled))
                return j + 1, grad_q, grad_k, grad_v

            _, grad_q, grad_k, grad_v = tf.while_loop(
                lambda j, *_: j < num_blocks, backward_body,
                (tf.constant(0), tf.zeros_like(q_scaled),
                 tf.TensorArray(tf.float32, size=num_blocks, element_shape=k_blocks.shape[1:]),
                 tf.TensorArray(tf.float32, size=num_blocks, element_shape=v_blocks.shape[1:])),
                maximum_iterations=num_blocks)
            return (tf.cast(grad_q * scale, q.dtype),
                    tf.cast(_unblock(grad_k.stack(), num_keys), k.dtype),
                    tf.cast(_unblock(grad_v.stack(), num_keys), v.dtype))

        return tf.cast(out, out_dtype), grad

    return attend(query, key, value)


def plain_score_bytes(num_heads: int, num_queries: int, num_keys: int) -> int:
    """Bytes of one sample's float32 `(h, N, M)` score matrix."""
    return 4 * num_heads * num_queries * num_keys


@keras.saving.register_keras_serializable(package="tfbrain")
class BlockwiseSelfAttention(MultiHeadSelfAttention):
    """timm-style self-attention (fused `qkv`, `proj`, torch names as `MultiHeadSelfAttention`)
    that switches to `blockwise_attention` when the score matrix would not fit.

    Args:
        hidden_dim, num_heads, qkv_bias, dropout_rate: as `MultiHeadSelfAttention`.
        attention_dropout_rate: float. Dropout on the weights; only the plain path has
            weights to drop, so it must be 0 unless `implementation="plain"`.
        implementation: "auto" (plain while one sample's float32 scores take at most
            `max_plain_score_bytes`, blockwise beyond), "plain" or "blockwise".
        block_size: int. Keys per block of the blockwise path.
        max_plain_score_bytes: int. The "auto" threshold (default 1 GiB).

    Call arguments:
        tokens: `(B, N, C)`, N static. No attention mask (BrainMT attends over everything).
    """

    def __init__(self, hidden_dim, num_heads, qkv_bias=True, attention_dropout_rate=0.0,
                 dropout_rate=0.0, implementation="auto", block_size=DEFAULT_BLOCK_SIZE,
                 max_plain_score_bytes=DEFAULT_MAX_PLAIN_SCORE_BYTES, **kwargs):
        super().__init__(hidden_dim, num_heads, qkv_bias=qkv_bias,
                         attention_dropout_rate=attention_dropout_rate,
                         dropout_rate=dropout_rate, **kwargs)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"`implementation` must be one of {IMPLEMENTATIONS}. "
                             f"Received: implementation={implementation!r}")
        if attention_dropout_rate and implementation != "plain":
            raise ValueError("`attention_dropout_rate` needs implementation='plain' (the "
                             "blockwise path never forms the weights). Received: "
                             f"attention_dropout_rate={attention_dropout_rate}, "
                             f"implementation={implementation!r}")
        if block_size < 1:
            raise ValueError(f"`block_size` must be positive. Received: block_size={block_size}")
        self.implementation = implementation
        self.block_size = block_size
        self.max_plain_score_bytes = max_plain_score_bytes

    def uses_blockwise(self, num_tokens: int) -> bool:
        """Whether a call on `num_tokens` tokens takes the blockwise path."""
        if self.implementation != "auto":
            return self.implementation == "blockwise"
        score_bytes = plain_score_bytes(self.num_heads, num_tokens, num_tokens)
        return score_bytes > self.max_plain_score_bytes

    def call(self, tokens, training=False):
        num_tokens = tokens.shape[1]
        qkv = ops.reshape(self.qkv(tokens), (-1, num_tokens, 3, self.num_heads, self.head_dim))
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # (3, B, h, N, d)
        if self.uses_blockwise(num_tokens):
            out = blockwise_attention(qkv[0], qkv[1], qkv[2], block_size=self.block_size)
        else:
            out = attention_core(qkv[0], qkv[1], qkv[2], dropout=self.attention_dropout,
                                 training=training)  # (B, h, N, d)
        out = ops.reshape(ops.transpose(out, (0, 2, 1, 3)),
                          (-1, num_tokens, self.hidden_dim))  # (B, N, C)
        return self.output_dropout(self.proj(out), training=training)

    def get_config(self):
        return {**super().get_config(), "implementation": self.implementation,
                "block_size": self.block_size,
                "max_plain_score_bytes": self.max_plain_score_bytes}
