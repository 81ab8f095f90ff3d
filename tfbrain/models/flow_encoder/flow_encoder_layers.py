"""Blocks of MedARC's Stage-1 encoder (`MultiSubjectConvLinearEncoder`), channels-last.

Upstream: MedARC-AI/algonauts2025 @ 77840e14, `src/models.py` (`LinearConv`,
`MultiSubjectConvLinearEncoder`) and `src/layers.py` (`DepthConv1d`, `LinearPoolLatent`).
Order matters: each stream is projected by a Linear **first**, then filtered in time by a
depthwise Conv1d ('same' padding).

Letters: B batch, L layers (tokens) of a stream, T frames (TRs), D stream width,
d embedding width, S subjects, V parcels.
"""

import keras
from keras import ops


class MedARCDepthConv1D(keras.layers.Layer):
    """MedARC `DepthConv1d`: depthwise temporal conv with 'same' padding and options.

    Args:
        kernel_size: int. Odd when `causal`.
        causal: bool. Zero the taps after the centre (only present and past frames).
        positive: bool. Use |w|.
        blockwise: bool. One kernel shared by every channel.

    Call arguments:
        x: `(..., T, C)`. Returns the same shape.
    """

    def __init__(self, kernel_size, causal=False, positive=False, blockwise=False, **kwargs):
        super().__init__(**kwargs)
        if causal and kernel_size % 2 != 1:
            raise ValueError("A causal MedARCDepthConv1D needs an odd `kernel_size`. "
                             f"Received: kernel_size={kernel_size}")
        self.kernel_size = kernel_size
        self.causal = causal
        self.positive = positive
        self.blockwise = blockwise

    def build(self, x_shape):
        channels = x_shape[-1]
        self.kernel = self.add_weight(
            shape=(self.kernel_size, 1 if self.blockwise else channels), name="kernel",
            initializer=keras.initializers.TruncatedNormal(stddev=0.02))
        self.bias = self.add_weight(shape=(channels,), name="bias", initializer="zeros")

    def tap_mask(self):
        """`(k,)` 1/0 taps (upstream buffer `attn_mask`)."""
        mask = [1.0] * self.kernel_size
        if self.causal:
            mask = [1.0 if i <= self.kernel_size // 2 else 0.0 for i in range(self.kernel_size)]
        return mask

    def call(self, x):
        shape = ops.shape(x)
        length, channels = x.shape[-2] or shape[-2], x.shape[-1]
        h = ops.reshape(x, (-1, length, channels))  # (N, T, C)
        kernel = ops.cast(self.kernel, x.dtype) * ops.convert_to_tensor(
            self.tap_mask(), x.dtype)[:, None]
        if self.positive:
            kernel = ops.abs(kernel)
        kernel = ops.broadcast_to(kernel, (self.kernel_size, channels))[:, :, None]  # (k, C, 1)
        # torch padding="same": (k - 1) // 2 before, the rest after
        left = (self.kernel_size - 1) // 2
        h = ops.pad(h, [(0, 0), (left, self.kernel_size - 1 - left), (0, 0)])
        h = ops.depthwise_conv(h, kernel, strides=1, padding="valid")
        h = h + ops.cast(self.bias, x.dtype)
        return ops.reshape(h, shape)

    def compute_output_shape(self, x_shape):
        return x_shape

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size, "causal": self.causal,
                "positive": self.positive, "blockwise": self.blockwise}


class MedARCStreamEmbedding(keras.layers.Layer):
    """One feature stream -> embeddings: Linear (D -> d), then `MedARCDepthConv1D` over time
    (upstream `LinearConv`; a plain Linear when `kernel_size <= 1`).

    Args:
        embed_dim: int. d.
        kernel_size, causal, positive, blockwise: as `MedARCDepthConv1D`.

    Call arguments:
        stream: `(B, L, T, D)`. Returns `(B, L, T, d)`.
    """

    def __init__(self, embed_dim, kernel_size=45, causal=False, positive=False,
                 blockwise=False, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.kernel_size = kernel_size
        self.causal = causal
        self.positive = positive
        self.blockwise = blockwise

    def build(self, stream_shape):
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        self.fc = keras.layers.Dense(self.embed_dim, kernel_initializer=init,
                                     dtype=self.dtype_policy, name="fc")
        self.fc.build(tuple(stream_shape))
        self.conv = None
        if self.kernel_size > 1:
            self.conv = MedARCDepthConv1D(self.kernel_size, self.causal, self.positive,
                                          self.blockwise, dtype=self.dtype_policy, name="conv")
            self.conv.build(tuple(stream_shape[:-1]) + (self.embed_dim,))

    def call(self, stream):
        h = self.fc(stream)
        return h if self.conv is None else self.conv(h)

    def compute_output_shape(self, stream_shape):
        return tuple(stream_shape[:-1]) + (self.embed_dim,)

    def get_config(self):
        return {**super().get_config(), "embed_dim": self.embed_dim,
                "kernel_size": self.kernel_size, "causal": self.causal,
                "positive": self.positive, "blockwise": self.blockwise}


class MedARCStreamPool(keras.layers.Layer):
    """Pool per-stream embeddings into one `(B, T, d)` sequence.

    "avg": Σ over streams of each stream's mean over its L layers (a sum over streams, as
    upstream). "linear": a learned weight per (stream layer slot, channel), summed over all
    ΣL slots (upstream `LinearPoolLatent`, weight `(ΣL, d)`).

    Args:
        mode: "avg" or "linear".
        num_slots: int. ΣL_i (used by "linear").
        positive: bool. |w| for "linear" (upstream default False).

    Call arguments:
        embeddings: list of `(B, L_i, T, d)`. Returns `(B, T, d)`.
    """

    def __init__(self, mode="avg", num_slots=1, positive=False, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("avg", "linear"):
            raise ValueError("`mode` must be 'avg' or 'linear' (upstream 'attn' pooling "
                             f"raises in MedARC's own code). Received: mode={mode!r}")
        self.mode = mode
        self.num_slots = num_slots
        self.positive = positive

    def build(self, embeddings_shape):
        if self.mode == "linear":
            self.weight = self.add_weight(
                shape=(self.num_slots, embeddings_shape[0][-1]), name="weight",
                initializer=keras.initializers.TruncatedNormal(stddev=0.02))

    def call(self, embeddings):
        if self.mode == "avg":
            pooled = ops.mean(embeddings[0], axis=1)
            for embedding in embeddings[1:]:
                pooled = pooled + ops.mean(embedding, axis=1)
            return pooled
        h = ops.concatenate(embeddings, axis=1)  # (B, ΣL, T, d)
        weight = ops.cast(self.weight, h.dtype)
        if self.positive:
            weight = ops.abs(weight)
        return ops.einsum("bltd,ld->btd", h, weight)

    def compute_output_shape(self, embeddings_shape):
        first = embeddings_shape[0]
        return (first[0], first[2], first[3])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "num_slots": self.num_slots,
                "positive": self.positive}


class MedARCSubjectDecoders(keras.layers.Layer):
    """A shared Linear (d -> V) broadcast to every subject plus one Linear per subject.

    Args:
        num_subjects: int. S.
        target_dim: int. V.
        use_shared: bool. Upstream `with_shared_decoder`.
        use_subject: bool. Upstream `with_subject_decoders`.

    Call arguments:
        embedding: `(B, T, d)`. Returns `(B, S, T, V)`.
    """

    def __init__(self, num_subjects, target_dim, use_shared=True, use_subject=True, **kwargs):
        super().__init__(**kwargs)
        if not (use_shared or use_subject):
            raise ValueError("At least one of `use_shared` and `use_subject` must be True.")
        self.num_subjects = num_subjects
        self.target_dim = target_dim
        self.use_shared = use_shared
        self.use_subject = use_subject

    def build(self, embedding_shape):
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        d = embedding_shape[-1]
        if self.use_shared:
            self.shared = keras.layers.Dense(self.target_dim, kernel_initializer=init,
                                             dtype=self.dtype_policy, name="shared")
            self.shared.build(tuple(embedding_shape))
        if self.use_subject:
            self.subject_kernel = self.add_weight(
                shape=(self.num_subjects, d, self.target_dim), name="subject_kernel",
                initializer=init)
            self.subject_bias = self.add_weight(shape=(self.num_subjects, self.target_dim),
                                                name="subject_bias", initializer="zeros")

    def call(self, embedding):
        out = 0.0
        if self.use_subject:
            kernel = ops.cast(self.subject_kernel, embedding.dtype)
            out = (ops.einsum("btd,sdv->bstv", embedding, kernel)
                   + ops.cast(self.subject_bias, embedding.dtype)[None, :, None, :])
        if self.use_shared:
            shared = self.shared(embedding)[:, None]  # (B, 1, T, V)
            out = out + shared if self.use_subject else ops.repeat(shared, self.num_subjects, 1)
        return out

    def compute_output_shape(self, embedding_shape):
        return (embedding_shape[0], self.num_subjects, embedding_shape[1], self.target_dim)

    def get_config(self):
        return {**super().get_config(), "num_subjects": self.num_subjects,
                "target_dim": self.target_dim, "use_shared": self.use_shared,
                "use_subject": self.use_subject}
