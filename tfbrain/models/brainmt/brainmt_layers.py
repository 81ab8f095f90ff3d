"""BrainMT blocks: the per-frame convolutional stem, the spatio-temporal embedding with its
temporal-first token order, and the fused add + RMSNorm Mamba layer.

Upstream: arunkumar-kannan/BrainMT-fMRI @ 977e486, `src/brainmt/models/brain_mt.py`
(`PatchEmbed`, `ConvBlock`, `Downsample`, `Block`, `BrainMT.forward_features`).

Letters: B batch, T frames, D/H/W the stem's three spatial axes (upstream D, H, W: MNI Y, X,
Z), N = D' * H' * W' tokens per frame, C channels, L = 1 + N * T sequence length.
"""

import keras
from keras import ops

from tfbrain.layers.drop_path import DropPath
from tfbrain.layers.mamba_block import BiMambaBlock, MambaBlock
from tfbrain.layers.torch_compat import (TORCH_LAYER_NORM_EPSILON, torch_conv_output_size,
                                         torch_conv_padding)

# Each stride-2 convolution of the stem: kernel 3, stride 2, padding 1 on both sides (torch).
STEM_KERNEL, STEM_STRIDE, STEM_PADDING = 3, 2, 1
STEM_NUM_DOWNSAMPLES = 4  # two in the patch embedding, then two Downsample blocks


def stem_output_size(size: int) -> int:
    """Spatial extent after the stem's four k3 s2 p1 convolutions (109 -> 7, 91 -> 6)."""
    for _ in range(STEM_NUM_DOWNSAMPLES):
        size = torch_conv_output_size(size, STEM_KERNEL, STEM_STRIDE, STEM_PADDING)
    return size


def stem_widths(hidden_dim: int) -> tuple:
    """Channel widths of the stem stages: upstream 64, 128, 256, 512 for embed_dim 512."""
    return (hidden_dim // 8, hidden_dim // 4, hidden_dim // 2, hidden_dim)


def _conv3d(filters, in_channels, use_bias, strides, dtype, name):
    # "valid" after an explicit symmetric pad: torch's padding=1 is not Keras' "same" for
    # stride 2 on even sizes (Keras pads the end only).
    # torch's default Conv3d init: kernel and bias U(+-1/sqrt(fan_in)), fan_in = 27 * C_in
    limit = 1.0 / (STEM_KERNEL ** 3 * in_channels) ** 0.5
    return keras.layers.Conv3D(
        filters, STEM_KERNEL, strides=strides, padding="valid", use_bias=use_bias,
        kernel_initializer=keras.initializers.RandomUniform(-limit, limit),
        bias_initializer=keras.initializers.RandomUniform(-limit, limit), dtype=dtype, name=name)


def _build_conv(conv, x_shape):
    """Build `conv` on `x_shape` after the symmetric pad; returns its output shape."""
    padded = (x_shape[0], *[None if s is None else s + 2 * STEM_PADDING for s in x_shape[1:4]],
              x_shape[4])  # (B, D + 2, H + 2, W + 2, C)
    conv.build(padded)
    return tuple(conv.compute_output_shape(padded))


@keras.saving.register_keras_serializable(package="tfbrain")
class BrainMTConvBlock(keras.layers.Layer):
    """Residual conv block: conv -> LayerNorm(C) -> tanh-GELU -> conv -> LayerNorm(C) -> + x.

    Both convolutions are k3 s1 p1 with bias; the LayerNorms (eps 1e-5) run over channels.
    Upstream `ConvBlock` (no layer scale, no drop path, as BrainMT builds it).

    Args:
        hidden_dim: int. Channels C (in and out).

    Call arguments:
        x: `(B, D, H, W, C)`. Returns the same shape.
    """

    def __init__(self, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim

    def build(self, x_shape):
        if x_shape[-1] != self.hidden_dim:
            raise ValueError(f"The last axis of `x` must be hidden_dim={self.hidden_dim}. "
                             f"Received: x.shape={x_shape}")
        dtype = self.dtype_policy
        self.conv1 = _conv3d(self.hidden_dim, self.hidden_dim, True, 1, dtype, "conv1")
        self.norm1 = keras.layers.LayerNormalization(epsilon=TORCH_LAYER_NORM_EPSILON,
                                                     dtype=dtype, name="norm1")
        self.conv2 = _conv3d(self.hidden_dim, self.hidden_dim, True, 1, dtype, "conv2")
        self.norm2 = keras.layers.LayerNormalization(epsilon=TORCH_LAYER_NORM_EPSILON,
                                                     dtype=dtype, name="norm2")
        for conv, norm in ((self.conv1, self.norm1), (self.conv2, self.norm2)):
            _build_conv(conv, tuple(x_shape))
            norm.build(x_shape)

    def call(self, x):
        y = self.norm1(self.conv1(torch_conv_padding(x, STEM_PADDING, 3)))  # (B, D, H, W, C)
        y = keras.activations.gelu(y, approximate=True)  # upstream nn.GELU(approximate="tanh")
        y = self.norm2(self.conv2(torch_conv_padding(y, STEM_PADDING, 3)))
        return x + y

    def compute_output_shape(self, x_shape):
        return tuple(x_shape)

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim}


@keras.saving.register_keras_serializable(package="tfbrain")
class BrainMTStem(keras.layers.Layer):
    """The per-frame convolutional stem (upstream `patch_embed`, `conv_block{0,1}`,
    `downsample{0,1}`): 16x spatial downsampling by four k3 s2 p1 convolutions.

    conv(C/8, s2) -> ReLU -> conv(C/4, s2) -> ReLU -> ConvBlock(C/4) -> conv(C/2, s2) ->
    ConvBlock(C/2) -> conv(C, s2); the strided convolutions have no bias. Upstream's widths
    are fixed at 64/128/256/512; here they follow `hidden_dim` (equal at 512).

    Args:
        hidden_dim: int. Output channels C; a multiple of 8.

    Call arguments:
        frames: `(B*T, D, H, W, C_in)`, one frame per row. Returns `(B*T, D', H', W', C)`
        with each spatial extent reduced as `stem_output_size` says.
    """

    def __init__(self, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        if hidden_dim % 8 or hidden_dim < 8:
            raise ValueError("`hidden_dim` must be a positive multiple of 8 (the stem widths "
                             f"are C/8, C/4, C/2, C). Received: hidden_dim={hidden_dim}")
        self.hidden_dim = hidden_dim

    def build(self, frames_shape):
        dtype = self.dtype_policy
        w1, w2, w3, w4 = stem_widths(self.hidden_dim)
        # sublayer names follow upstream's module names, so the converter reads one to one
        self.patch_conv1 = _conv3d(w1, frames_shape[-1], False, 2, dtype,
                                   "patch_embed_conv_down_0")
        self.patch_conv2 = _conv3d(w2, w1, False, 2, dtype, "patch_embed_conv_down_2")
        self.conv_block0 = BrainMTConvBlock(w2, dtype=dtype, name="conv_block0")
        self.downsample0 = _conv3d(w3, w2, False, 2, dtype, "downsample0")
        self.conv_block1 = BrainMTConvBlock(w3, dtype=dtype, name="conv_block1")
        self.downsample1 = _conv3d(w4, w3, False, 2, dtype, "downsample1")
        shape = tuple(frames_shape)
        shape = _build_conv(self.patch_conv1, shape)
        shape = _build_conv(self.patch_conv2, shape)
        self.conv_block0.build(shape)
        shape = _build_conv(self.downsample0, shape)
        self.conv_block1.build(shape)
        _build_conv(self.downsample1, shape)

    def call(self, frames):
        def down(conv, x):
            return conv(torch_conv_padding(x, STEM_PADDING, 3))

        x = ops.relu(down(self.patch_conv1, frames))  # (B*T, D/2, H/2, W/2, C/8)
        x = ops.relu(down(self.patch_conv2, x))  # (B*T, D/4, H/4, W/4, C/4)
        x = down(self.downsample0, self.conv_block0(x))  # (B*T, D/8, H/8, W/8, C/2)
        return down(self.downsample1, self.conv_block1(x))  # (B*T, D/16, H/16, W/16, C)

    def compute_output_shape(self, frames_shape):
        spatial = tuple(None if s is None else stem_output_size(s) for s in frames_shape[1:4])
        return (frames_shape[0], *spatial, self.hidden_dim)

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim}


@keras.saving.register_keras_serializable(package="tfbrain")
class BrainMTEmbedding(keras.layers.Layer):
    """cls token, spatial and temporal position tables, temporal-first token order.

    Upstream `forward_features`: prepend cls, add `pos_embed` (1 + N, C) (the spatial table is
    shared by all frames), drop cls, add `temporal_pos_embedding[t]` to frame t, then lay the
    tokens out temporal-first (position n * T + t: all frames of one spatial token are
    contiguous) and put one cls token (cls_token + pos_embed[0]) in front.

    Args:
        num_frames: int. T, the frames per sample folded into the stem's batch.
        max_frames: int. Rows of the temporal table (upstream `num_frames`); frames use its
            first T rows.

    Call arguments:
        stem_out: `(B*T, D', H', W', C)`, frames of one sample consecutive ((b t) order).
    Returns `(B, 1 + D'*H'*W'*T, C)`.
    """

    def __init__(self, num_frames, max_frames=None, **kwargs):
        super().__init__(**kwargs)
        max_frames = num_frames if max_frames is None else max_frames
        if num_frames < 1 or num_frames > max_frames:
            raise ValueError(f"`num_frames` must be in [1, max_frames={max_frames}]: the "
                             "temporal position table cannot cover longer windows. Received: "
                             f"num_frames={num_frames}")
        self.num_frames = num_frames
        self.max_frames = max_frames

    def build(self, stem_out_shape):
        self.num_tokens = int(stem_out_shape[1] * stem_out_shape[2] * stem_out_shape[3])
        width = stem_out_shape[-1]
        # upstream: cls and temporal table start at zero, pos_embed ~ trunc_normal(std 0.02)
        # with cut-offs at +-2 (absolute), i.e. effectively an untruncated normal
        self.cls_token = self.add_weight(name="cls_token", shape=(width,), initializer="zeros")
        self.pos_embed = self.add_weight(
            name="pos_embed", shape=(1 + self.num_tokens, width),
            initializer=keras.initializers.RandomNormal(stddev=0.02))
        self.temporal_pos_embed = self.add_weight(
            name="temporal_pos_embed", shape=(self.max_frames, width), initializer="zeros")

    def call(self, stem_out):
        frames, width = self.num_frames, stem_out.shape[-1]
        pos_embed = ops.cast(self.pos_embed, stem_out.dtype)
        x = ops.reshape(stem_out, (-1, self.num_tokens, width))  # (B*T, N, C), d, h, w order
        x = x + pos_embed[1:]
        x = ops.reshape(x, (-1, frames, self.num_tokens, width))  # (B, T, N, C)
        x = ops.transpose(x, (0, 2, 1, 3))  # (B, N, T, C)
        x = x + ops.cast(self.temporal_pos_embed[:frames], x.dtype)
        x = ops.reshape(x, (-1, self.num_tokens * frames, width))  # (B, N*T, C), t fastest
        cls = ops.cast(self.cls_token, x.dtype) + pos_embed[0]  # (C,)
        cls = ops.broadcast_to(cls[None, None], (ops.shape(x)[0], 1, width))  # (B, 1, C)
        return ops.concatenate([cls, x], axis=1)  # (B, 1 + N*T, C)

    def compute_output_shape(self, stem_out_shape):
        batch = stem_out_shape[0] // self.num_frames if stem_out_shape[0] is not None else None
        tokens = stem_out_shape[1] * stem_out_shape[2] * stem_out_shape[3]
        return (batch, 1 + tokens * self.num_frames, stem_out_shape[-1])

    def get_config(self):
        return {**super().get_config(), "num_frames": self.num_frames,
                "max_frames": self.max_frames}


@keras.saving.register_keras_serializable(package="tfbrain")
class BrainMTAddRMSNorm(keras.layers.Layer):
    """Fused residual add + RMSNorm, prenorm (mamba_ssm `rms_norm_fn`, `prenorm=True`,
    `residual_in_fp32=True`).

    residual <- residual + DropPath(hidden) (DropPath(hidden) when there is no residual yet);
    normed = residual / sqrt(mean(residual^2) + eps) * weight. The residual stream and the
    norm are float32 even under mixed precision, as upstream; `normed` comes back in the
    compute dtype.

    Args:
        epsilon: float. Defaults to 1e-5 (upstream norm_epsilon).
        drop_path_rate: float. Stochastic depth on `hidden` before the add.
        return_residual: bool. Return `(normed, residual)` (a block's norm) or `normed` only
            (the final `norm_f`).

    Call arguments:
        hidden_states: `(B, L, C)`.
        residual: optional `(B, L, C)` float32 residual stream.
    """

    def __init__(self, epsilon=1e-5, drop_path_rate=0.0, return_residual=True, **kwargs):
        # autocast off: Keras would cast the float32 residual down to the compute dtype
        kwargs["autocast"] = False
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.drop_path_rate = drop_path_rate
        self.return_residual = return_residual
        self.drop_path = DropPath(drop_path_rate, dtype=self.dtype_policy)

    def build(self, hidden_states_shape, residual_shape=None):
        self.scale = self.add_weight(name="scale", shape=(hidden_states_shape[-1],),
                                     initializer="ones", dtype="float32")

    def call(self, hidden_states, residual=None, training=False):
        hidden_states = ops.cast(hidden_states, self.compute_dtype)
        if residual is None:
            # upstream's first block passes hidden as is (its rate is 0); norm_f after zero
            # Mamba blocks drops it
            residual = ops.cast(self.drop_path(hidden_states, training=training), "float32")
        else:
            residual = ops.cast(residual, "float32") + ops.cast(
                self.drop_path(hidden_states, training=training), "float32")
        mean_square = ops.mean(ops.square(residual), axis=-1, keepdims=True)
        normed = residual * ops.rsqrt(mean_square + self.epsilon) * self.scale
        normed = ops.cast(normed, self.compute_dtype)
        return (normed, residual) if self.return_residual else normed

    def compute_output_shape(self, hidden_states_shape, residual_shape=None):
        shape = tuple(hidden_states_shape)
        return (shape, shape) if self.return_residual else shape

    def compute_output_spec(self, hidden_states, residual=None, training=False):
        normed = keras.KerasTensor(hidden_states.shape, dtype=self.compute_dtype)
        if not self.return_residual:
            return normed
        return normed, keras.KerasTensor(hidden_states.shape, dtype="float32")

    def get_config(self):
        config = {**super().get_config(), "epsilon": self.epsilon,
                  "drop_path_rate": self.drop_path_rate, "return_residual": self.return_residual}
        config.pop("autocast", None)
        return config


@keras.saving.register_keras_serializable(package="tfbrain")
class BrainMTMambaLayer(keras.layers.Layer):
    """One Mamba-stage block (upstream `Block` with `fused_add_norm=True`): fused add +
    RMSNorm, then the Mamba mixer. Returns the mixer output and the float32 residual stream,
    which the next block (or the final `norm_f`) adds.

    Args:
        hidden_dim: int. Token width C.
        drop_path_rate: float. Stochastic depth on the incoming `hidden_states` (upstream
            applies block i's rate to block i-1's mixer output).
        epsilon: float. RMSNorm epsilon.
        bidirectional: bool. False: `mamba_simple.Mamba` (the released code). True: the Vision
            Mamba v2 bidirectional mixer the paper describes (`BiMambaBlock`).
        state_dim, conv_kernel_size, expand: Mamba sizes (upstream 16, 4, 2).
        scan_chunk_size, scan_jit: selective-scan options (see `MambaBlock`).

    Call arguments:
        hidden_states: `(B, L, C)`.
        residual: optional `(B, L, C)`; None for the first block.
    Returns `(hidden_states, residual)`, both `(B, L, C)`.
    """

    def __init__(self, hidden_dim, drop_path_rate=0.0, epsilon=1e-5, bidirectional=False,
                 state_dim=16, conv_kernel_size=4, expand=2, scan_chunk_size=None, scan_jit=None,
                 **kwargs):
        kwargs["autocast"] = False  # the residual stays float32
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.drop_path_rate = drop_path_rate
        self.epsilon = epsilon
        self.bidirectional = bidirectional
        self.state_dim = state_dim
        self.conv_kernel_size = conv_kernel_size
        self.expand = expand
        self.scan_chunk_size = scan_chunk_size
        self.scan_jit = scan_jit
        self.norm = BrainMTAddRMSNorm(epsilon, drop_path_rate, dtype=self.dtype_policy,
                                      name="norm")
        mixer_cls = BiMambaBlock if bidirectional else MambaBlock
        self.mixer = mixer_cls(hidden_dim, state_dim=state_dim, conv_kernel_size=conv_kernel_size,
                               expand=expand, chunk_size=scan_chunk_size, jit=scan_jit,
                               dtype=self.dtype_policy, name="mixer")

    def build(self, hidden_states_shape, residual_shape=None):
        self.norm.build(hidden_states_shape)
        self.mixer.build(hidden_states_shape)

    def call(self, hidden_states, residual=None, training=False):
        normed, residual = self.norm(hidden_states, residual, training=training)
        return self.mixer(normed), residual

    def compute_output_shape(self, hidden_states_shape, residual_shape=None):
        return tuple(hidden_states_shape), tuple(hidden_states_shape)

    def compute_output_spec(self, hidden_states, residual=None, training=False):
        return (keras.KerasTensor(hidden_states.shape, dtype=self.compute_dtype),
                keras.KerasTensor(hidden_states.shape, dtype="float32"))

    def get_config(self):
        config = {**super().get_config(), "hidden_dim": self.hidden_dim,
                  "drop_path_rate": self.drop_path_rate, "epsilon": self.epsilon,
                  "bidirectional": self.bidirectional, "state_dim": self.state_dim,
                  "conv_kernel_size": self.conv_kernel_size, "expand": self.expand,
                  "scan_chunk_size": self.scan_chunk_size, "scan_jit": self.scan_jit}
        config.pop("autocast", None)
        return config
