"""BiXT blocks: tokenizers, the Fourier position encoding, the latent array and the BiXT layer.

Upstream: github.com/mrkshllr/BiXT @ 4ce7cae, `timm/models/bixt.py` (`CABlock`,
`CAOneSidedBlock`, `SABlock`, `BiXTBlock`), `timm/models/bixt_convtok.py`,
`timm/layers/pos_encoding.py` (`PositionalEncodingFourierXCiTEff`), `timm/layers/patch_embed.py`
(`PatchEmbed`, `PatchEmbedHalfStride`, `PatchEmbedQuarterStride`) and
`timm/layers/xcit_lpi_convtok.py` (`ConvPatchEmbed`).

Letters: B batch, H/W image rows/columns, D/H/W space and T frames of fMRI windows, C channels,
N tokens, M latents, G grid size along one axis.
"""

import math

import keras
import numpy as np
from keras import ops

from tfbrain.layers.attention import LayerScale
from tfbrain.layers.cross_attention import BiXTCrossAttention
from tfbrain.layers.drop_path import DropPath
from tfbrain.layers.mlp import MLP
from tfbrain.layers.torch_compat import torch_conv_padding
from tfbrain.layers.transformer_block import TransformerBlock

BIXT_LAYER_NORM_EPSILON = 1e-6  # upstream norm_layer = partial(nn.LayerNorm, eps=1e-6)
TORCH_BATCH_NORM_EPSILON = 1e-5
CONV_TOKENIZER_PATCH_SIZES = (4, 8, 16)


def fourier_position_table(grid_shape, num_features=32, temperature=10000.0) -> np.ndarray:
    """XCiT/DETR sine encoding of a regular grid, in float32 as upstream computes it.

    Along each axis a with G_a cells, cell g (1-based) sits at g / (G_a + 1e-6) * 2π; feature i
    (of `num_features`) divides it by temperature^(2*floor(i/2)/num_features); even features take
    the sine and odd ones the cosine (interleaved pairs). The per-axis blocks are concatenated in
    axis order, so for an image (rows, cols) the row block comes first, as upstream's (y, x).

    Args:
        grid_shape: tuple of ints, the token grid (G_1, ..., G_k).
        num_features: int. Features per axis (upstream `hidden_dim` = 32).
        temperature: float.

    Returns:
        `(*grid_shape, k * num_features)` float32, channels-last.
    """
    grid_shape = tuple(int(g) for g in grid_shape)
    dim_t = np.arange(num_features, dtype=np.float32)
    dim_t = np.power(np.float32(temperature),
                     (np.float32(2) * np.floor(dim_t / np.float32(2))) / np.float32(num_features),
                     dtype=np.float32)
    blocks = []
    for axis, size in enumerate(grid_shape):
        position = np.arange(1, size + 1, dtype=np.float32)
        position = position / (np.float32(size) + np.float32(1e-6)) * np.float32(2 * math.pi)
        angles = position[:, None] / dim_t  # (G_a, F)
        features = np.stack((np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])), axis=2)
        features = features.reshape(size, num_features)  # (G_a, F): sin, cos interleaved
        shape = [1] * len(grid_shape) + [num_features]
        shape[axis] = size
        blocks.append(np.broadcast_to(features.reshape(shape), grid_shape + (num_features,)))
    return np.concatenate(blocks, axis=-1).astype(np.float32)


def fourier_coordinate_table(coordinates, num_features=32, temperature=10000.0) -> np.ndarray:
    """The same sine encoding for scattered points (e.g. parcel centroids in mm).

    Each axis is mapped affinely from its [min, max] to [0.05, 0.95] · 2π (a margin so that the
    extreme points do not meet on the lowest frequency), then encoded as in
    `fourier_position_table`.

    Args:
        coordinates: `(N, k)` point coordinates.
        num_features: int. Features per axis.
        temperature: float.

    Returns:
        `(N, k * num_features)` float32.
    """
    coordinates = np.asarray(coordinates, np.float64)
    if coordinates.ndim != 2:
        raise ValueError("`coordinates` must be (N, k). "
                         f"Received: coordinates of shape {coordinates.shape}")
    dim_t = temperature ** (2 * np.floor(np.arange(num_features) / 2) / num_features)
    low, high = coordinates.min(axis=0), coordinates.max(axis=0)
    position = 0.05 + 0.9 * (coordinates - low) / np.where(high > low, high - low, 1.0)
    angles = position[:, :, None] * 2 * np.pi / dim_t  # (N, k, F)
    features = np.where(np.arange(num_features) % 2 == 0, np.sin(angles), np.cos(angles))
    return features.reshape(len(coordinates), -1).astype(np.float32)


@keras.saving.register_keras_serializable(package="tfbrain")
class BiXTFourierEncoding(keras.layers.Layer):
    """Adds the projected Fourier encoding of the token grid (row-major tokens) or of the tokens'
    coordinates (point sets such as parcels) to the tokens.

    The fixed table (upstream buffer `fourier_pos_encode.pos`) is a non-trainable weight `pos`, so
    a converted checkpoint carries its own; it starts as `fourier_position_table(grid_shape)`.
    `token_projection` (upstream a 1x1 Conv) is a Dense from `k * num_features` to C.

    Args:
        grid_shape: tuple of ints. Token grid (rows, cols) or (D', H', W', T').
        hidden_dim: int. Token width C.
        num_features: int. Fourier features per axis.
        temperature: float.
        coordinates: `(N, k)` nested list, instead of `grid_shape`: one point per token (see
            `fourier_coordinate_table`).

    Call arguments:
        tokens: `(B, N, C)` with N = prod(grid_shape), row-major over the grid, or N points.
    """

    def __init__(self, grid_shape=None, hidden_dim=None, num_features=32, temperature=10000.0,
                 coordinates=None, **kwargs):
        super().__init__(**kwargs)
        if (grid_shape is None) == (coordinates is None):
            raise ValueError("Give exactly one of `grid_shape` and `coordinates`. Received: "
                             f"grid_shape={grid_shape}, coordinates of "
                             f"{None if coordinates is None else np.shape(coordinates)}")
        self.grid_shape = None if grid_shape is None else tuple(int(g) for g in grid_shape)
        self.coordinates = None if coordinates is None else [
            [float(c) for c in point] for point in coordinates]
        self.hidden_dim = hidden_dim
        self.num_features = num_features
        self.temperature = temperature

    def build(self, tokens_shape):
        if self.coordinates is not None:
            num_tokens, where = len(self.coordinates), f"{len(self.coordinates)} coordinates"
            table = fourier_coordinate_table(self.coordinates, self.num_features,
                                             self.temperature)
        else:
            num_tokens = math.prod(self.grid_shape)
            where = f"grid {self.grid_shape} has {num_tokens} cells"
            table = fourier_position_table(self.grid_shape, self.num_features, self.temperature)
        if tokens_shape[1] is not None and tokens_shape[1] != num_tokens:
            raise ValueError(f"{self.name}: {where}. Received: tokens_shape={tokens_shape}")
        self.pos = self.add_weight(shape=table.shape, name="pos", trainable=False,
                                   initializer=keras.initializers.Constant(table))
        self.token_projection = keras.layers.Dense(self.hidden_dim, dtype=self.dtype_policy,
                                                   name="token_projection")
        self.token_projection.build((num_tokens, table.shape[-1]))

    def call(self, tokens):
        table = ops.reshape(self.pos, (-1, self.pos.shape[-1]))  # (N, k*F), row-major grid
        return tokens + ops.cast(self.token_projection(table), tokens.dtype)[None]

    def compute_output_shape(self, tokens_shape):
        return tokens_shape

    def get_config(self):
        return {**super().get_config(), "grid_shape": self.grid_shape,
                "hidden_dim": self.hidden_dim, "num_features": self.num_features,
                "temperature": self.temperature, "coordinates": self.coordinates}


# Kernel = stride tokenizers multiply flattened patches by the conv kernel instead of running
# the conv: the same numbers, and TensorFlow's CPU Conv3D filter gradient for kernel = stride is
# ~2,500x slower than the matmul (10 s against 4 ms for a 48x48x24x4 window, measured).


def _project_patches(patches, conv):
    """`(..., k*C_in)` patches flattened in the kernel's (*k, C_in) order -> `(..., C)`."""
    kernel = ops.cast(conv.kernel, patches.dtype)
    kernel = ops.reshape(kernel, (-1, kernel.shape[-1]))  # (prod(k) * C_in, C)
    return ops.matmul(patches, kernel) + ops.cast(conv.bias, patches.dtype)


def _non_overlapping_patches_2d(image, conv, patch_size):
    """Conv2D with kernel = stride = (ph, pw) on `(B, H, W, C_in)` -> `(B, H'W', C)`."""
    _, h, w, c = image.shape
    ph, pw = patch_size
    x = ops.reshape(image, (-1, h // ph, ph, w // pw, pw, c))  # (B, H', ph, W', pw, C_in)
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))  # (B, H', W', ph, pw, C_in)
    x = ops.reshape(x, (-1, (h // ph) * (w // pw), ph * pw * c))  # (B, N, ph*pw*C_in)
    return _project_patches(x, conv)


def _non_overlapping_patches_4d(fmri, conv, patch_size):
    """Per-tubelet Conv3D with kernel = stride on `(B, D, H, W, T, C_in)` -> `(B, N, C)`, the
    pt frames of a tubelet folded into the channels frame-major (the Conv3D's (pt*C_in) axis)."""
    _, d, h, w, t, c = fmri.shape
    pd, ph, pw, pt = patch_size
    grid = (d // pd, h // ph, w // pw, t // pt)
    x = ops.reshape(fmri, (-1, pd, grid[1], ph, grid[2], pw, grid[3], pt, c))  # (B*D', pd, ...)
    x = ops.transpose(x, (0, 2, 4, 6, 1, 3, 5, 7, 8))  # (B*D', H', W', T', pd, ph, pw, pt, C_in)
    x = ops.reshape(x, (-1, math.prod(grid), pd * ph * pw * pt * c))  # (B, N, pd*ph*pw*pt*C_in)
    return _project_patches(x, conv)


def _overlapping_patches_3d(x, conv, patch_size, patch_stride):
    """Conv3D with kernel p = r * s, stride s and padding (p - s) / 2 on `(B', D, H, W, C_in)`,
    as one matmul on the non-overlapping s-cells of the padded input and a sum of r^3 shifted
    slices: output cell g = sum over offsets o of W_o · cell(g + o). The same numbers as the conv,
    without TensorFlow's CPU Conv3D filter gradient (86 s against 0.2 s with XLA, measured on a
    48x48x24x4 window with 8^3 kernels at stride 4).

    Returns `(B', D/s, H/s, W/s, C)`.
    """
    padding = [(p - s) // 2 for p, s in zip(patch_size, patch_stride)]
    x = torch_conv_padding(x, padding, 3)  # (B', D + p - s, ...): whole s-cells
    _, d, h, w, c = x.shape
    sd, sh, sw = patch_stride
    rd, rh, rw = (p // s for p, s in zip(patch_size, patch_stride))
    cells = (d // sd, h // sh, w // sw)
    grid = (cells[0] - rd + 1, cells[1] - rh + 1, cells[2] - rw + 1)
    x = ops.reshape(x, (-1, sd, cells[1], sh, cells[2], sw, c))  # (B'*cells_d, sd, ...)
    x = ops.transpose(x, (0, 2, 4, 1, 3, 5, 6))  # (B'*cells_d, cells_h, cells_w, sd, sh, sw, C_in)
    x = ops.reshape(x, (-1, *cells, sd * sh * sw * c))  # (B', cells_d, cells_h, cells_w, s^3*C_in)
    kernel = ops.cast(conv.kernel, x.dtype)  # (r*sd, r*sh, r*sw, C_in, C)
    out_dim = kernel.shape[-1]
    kernel = ops.reshape(kernel, (rd, sd, rh, sh, rw, sw, c, out_dim))
    kernel = ops.transpose(kernel, (1, 3, 5, 6, 0, 2, 4, 7))  # (sd, sh, sw, C_in, rd, rh, rw, C)
    kernel = ops.reshape(kernel, (sd * sh * sw * c, rd * rh * rw * out_dim))
    y = ops.matmul(x, kernel)  # (B', cells_d, cells_h, cells_w, r^3 * C)
    y = ops.reshape(y, (-1, *cells, rd, rh, rw, out_dim))  # (B', cells..., rd, rh, rw, C)
    out = None
    for od in range(rd):
        for oh in range(rh):
            for ow in range(rw):
                term = y[:, od:od + grid[0], oh:oh + grid[1], ow:ow + grid[2], od, oh, ow]
                out = term if out is None else out + term
    return out + ops.cast(conv.bias, out.dtype)  # (B', D/s, H/s, W/s, C)


def patch_padding(patch_size, patch_stride, name="patch_stride"):
    """Symmetric padding (p - s) / 2 per axis that makes a kernel-p stride-s conv give G / s cells
    (upstream's half- and quarter-stride tokenizers)."""
    padding = []
    for p, s in zip(patch_size, patch_stride):
        if s < 1 or s > p or (p - s) % 2:
            raise ValueError(f"each `{name}` entry must be in [1, patch] with patch - stride even. "
                             f"Received: patch_size={tuple(patch_size)}, "
                             f"{name}={tuple(patch_stride)}")
        padding.append((p - s) // 2)
    return tuple(padding)


@keras.saving.register_keras_serializable(package="tfbrain")
class BiXTPatchEmbed2D(keras.layers.Layer):
    """Linear image tokenizer: Conv2D with kernel p, stride s, symmetric padding (p - s) / 2, then
    row-major flattening. s = p is ViT's PatchEmbed, s = p/2 "p16s8", s = p/4 "p16s4".

    Args:
        hidden_dim: int. Token width C.
        patch_size: 2-tuple (ph, pw).
        patch_stride: 2-tuple (sh, sw).

    Call arguments:
        image: `(B, H, W, C_in)` with H, W multiples of the stride. Returns `(B, N, C)`.
    """

    def __init__(self, hidden_dim, patch_size, patch_stride, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.patch_size = tuple(int(p) for p in patch_size)
        self.patch_stride = tuple(int(s) for s in patch_stride)
        self.padding = patch_padding(self.patch_size, self.patch_stride)

    def build(self, image_shape):
        self.proj = keras.layers.Conv2D(self.hidden_dim, self.patch_size, self.patch_stride,
                                        padding="valid", dtype=self.dtype_policy, name="proj")
        padded = tuple(image_shape[1 + a] + 2 * self.padding[a] for a in range(2))
        self.proj.build((image_shape[0],) + padded + (image_shape[-1],))

    def call(self, image):
        if self.patch_stride == self.patch_size:
            return _non_overlapping_patches_2d(image, self.proj, self.patch_size)
        x = self.proj(torch_conv_padding(image, self.padding, 2))  # (B, H', W', C)
        return ops.reshape(x, (-1, x.shape[1] * x.shape[2], self.hidden_dim))  # (B, N, C)

    def compute_output_shape(self, image_shape):
        grid = [image_shape[1 + a] // self.patch_stride[a] for a in range(2)]
        return (image_shape[0], grid[0] * grid[1], self.hidden_dim)

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim,
                "patch_size": self.patch_size, "patch_stride": self.patch_stride}


@keras.saving.register_keras_serializable(package="tfbrain")
class BiXTConvPatchEmbed(keras.layers.Layer):
    """XCiT-style conv tokenizer: log2(p) stages of 3x3 stride-2 Conv2D (no bias, padding 1) +
    BatchNorm, GELU between stages (not after the last); widths C/2^(k-1), ..., C/2, C.

    Sublayer names follow upstream's `proj` Sequential: `proj_{i}_conv`, `proj_{i}_bn` with
    i = 0, 2, 4, 6 (the GELUs sit at the odd indices).

    Args:
        hidden_dim: int. Token width C (divisible by p / 2).
        patch_size: int. One of 4, 8, 16.

    Call arguments:
        image: `(B, H, W, C_in)` with H, W multiples of p. Returns `(B, N, C)`.
    """

    def __init__(self, hidden_dim, patch_size, **kwargs):
        super().__init__(**kwargs)
        if patch_size not in CONV_TOKENIZER_PATCH_SIZES:
            raise ValueError(f"The conv tokenizer supports `patch_size` in "
                             f"{CONV_TOKENIZER_PATCH_SIZES} (as upstream). "
                             f"Received: patch_size={patch_size}")
        self.hidden_dim = hidden_dim
        self.patch_size = patch_size
        self.num_stages = int(math.log2(patch_size))
        widths = [hidden_dim // 2 ** (self.num_stages - 1 - i) for i in range(self.num_stages)]
        if widths[0] * 2 ** (self.num_stages - 1) != hidden_dim:
            raise ValueError(f"`hidden_dim` must be divisible by {2 ** (self.num_stages - 1)} for "
                             f"patch {patch_size}. Received: hidden_dim={hidden_dim}")
        self.widths = widths

    def build(self, image_shape):
        dtype = self.dtype_policy
        self.convs, self.norms = [], []
        shape = tuple(image_shape)
        for stage, width in enumerate(self.widths):
            conv = keras.layers.Conv2D(width, 3, 2, padding="valid", use_bias=False, dtype=dtype,
                                       name=f"proj_{2 * stage}_conv")
            conv.build((shape[0], shape[1] + 2, shape[2] + 2, shape[3]))
            shape = (shape[0], shape[1] // 2, shape[2] // 2, width)
            # torch BatchNorm2d: eps 1e-5, momentum 0.1 (Keras momentum 0.9)
            norm = keras.layers.BatchNormalization(epsilon=TORCH_BATCH_NORM_EPSILON, momentum=0.9,
                                                   dtype=dtype, name=f"proj_{2 * stage}_bn")
            norm.build(shape)
            self.convs.append(conv)
            self.norms.append(norm)

    def call(self, image, training=False):
        x = image
        for stage, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            if stage:
                x = keras.activations.gelu(x, approximate=False)
            x = norm(conv(torch_conv_padding(x, 1, 2)), training=training)  # (B, H/2^k, W/2^k, w)
        return ops.reshape(x, (-1, x.shape[1] * x.shape[2], self.hidden_dim))  # (B, N, C)

    def compute_output_shape(self, image_shape):
        grid = [image_shape[1 + a] // self.patch_size for a in range(2)]
        return (image_shape[0], grid[0] * grid[1], self.hidden_dim)

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim,
                "patch_size": self.patch_size}


@keras.saving.register_keras_serializable(package="tfbrain")
class BiXTPatchEmbed4D(keras.layers.Layer):
    """fMRI tokenizer: space x time tubelets of `(B, D, H, W, T, C_in)` windows.

    Time is cut into non-overlapping groups of pt frames that are folded into the channels; each
    group is a Conv3D over space with kernel (pd, ph, pw), stride (sd, sh, sw) and symmetric
    padding (p - s) / 2 (kernel = stride by default; half stride as upstream's p16s8). pt = 1 is
    a Conv3D per frame. Tokens are flattened row-major over (D', H', W', T').

    Args:
        hidden_dim: int. Token width C.
        patch_size: 4-tuple (pd, ph, pw, pt).
        patch_stride: 4-tuple (sd, sh, sw, pt); the time stride must equal pt.

    Call arguments:
        fmri: `(B, D, H, W, T, C_in)`, each spatial axis a multiple of its stride, T of pt.
            Returns `(B, D'H'W'T', C)`.
    """

    def __init__(self, hidden_dim, patch_size, patch_stride, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.patch_size = tuple(int(p) for p in patch_size)
        self.patch_stride = tuple(int(s) for s in patch_stride)
        if len(self.patch_size) != 4 or len(self.patch_stride) != 4:
            raise ValueError("`patch_size` and `patch_stride` must be (pd, ph, pw, pt). Received: "
                             f"patch_size={patch_size}, patch_stride={patch_stride}")
        if self.patch_stride[3] != self.patch_size[3]:
            raise ValueError("Time tubelets do not overlap: patch_stride[3] must equal "
                             f"patch_size[3]. Received: patch_size={patch_size}, "
                             f"patch_stride={patch_stride}")
        self.padding = patch_padding(self.patch_size[:3], self.patch_stride[:3])

    def build(self, fmri_shape):
        self.proj = keras.layers.Conv3D(self.hidden_dim, self.patch_size[:3],
                                        self.patch_stride[:3], padding="valid",
                                        dtype=self.dtype_policy, name="proj")
        padded = tuple(fmri_shape[1 + a] + 2 * self.padding[a] for a in range(3))
        self.proj.build((None,) + padded + (self.patch_size[3] * fmri_shape[-1],))

    def call(self, fmri):
        _, d, h, w, t, c = fmri.shape
        pt = self.patch_size[3]
        if self.patch_stride == self.patch_size:
            return _non_overlapping_patches_4d(fmri, self.proj, self.patch_size)
        x = ops.reshape(fmri, (-1, d, h, w, t // pt, pt * c))  # (B, D, H, W, T', pt*C)
        x = ops.transpose(x, (0, 4, 1, 2, 3, 5))  # (B, T', D, H, W, pt*C)
        x = ops.reshape(x, (-1, d, h, w, pt * c))  # (B*T', D, H, W, pt*C)
        if all(p % s == 0 for p, s in zip(self.patch_size[:3], self.patch_stride[:3])):
            x = _overlapping_patches_3d(x, self.proj, self.patch_size[:3],
                                        self.patch_stride[:3])  # (B*T', D', H', W', C)
        else:
            x = self.proj(torch_conv_padding(x, self.padding, 3))  # (B*T', D', H', W', C)
        grid = x.shape[1:4]
        x = ops.reshape(x, (-1, t // pt, *grid, self.hidden_dim))  # (B, T', D', H', W', C)
        x = ops.transpose(x, (0, 2, 3, 4, 1, 5))  # (B, D', H', W', T', C)
        return ops.reshape(x, (-1, math.prod(grid) * (t // pt), self.hidden_dim))  # (B, N, C)

    def compute_output_shape(self, fmri_shape):
        grid = [fmri_shape[1 + a] // self.patch_stride[a] for a in range(4)]
        return (fmri_shape[0], math.prod(grid), self.hidden_dim)

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim,
                "patch_size": self.patch_size, "patch_stride": self.patch_stride}


@keras.saving.register_keras_serializable(package="tfbrain")
class BiXTLatents(keras.layers.Layer):
    """The learned latent array (upstream `latents`, `(1, M, C)`, trunc-normal std 0.02), tiled to
    the batch of its input. Upstream broadcasts the batch-1 array inside the first layer; tiling
    first gives the same numbers.

    Args:
        num_latents: int. M.
        hidden_dim: int. C.

    Call arguments:
        tokens: any `(B, ...)` tensor; only its batch size is used. Returns `(B, M, C)`.
    """

    def __init__(self, num_latents, hidden_dim, **kwargs):
        super().__init__(**kwargs)
        self.num_latents = num_latents
        self.hidden_dim = hidden_dim

    def build(self, tokens_shape):
        self.latents = self.add_weight(
            shape=(1, self.num_latents, self.hidden_dim), name="latents",
            initializer=keras.initializers.TruncatedNormal(stddev=0.02))

    def call(self, tokens):
        batch = ops.shape(tokens)[0]
        latents = ops.cast(self.latents, self.compute_dtype)
        return ops.tile(latents, (batch, 1, 1))  # (B, M, C)

    def compute_output_shape(self, tokens_shape):
        return (tokens_shape[0], self.num_latents, self.hidden_dim)

    def get_config(self):
        return {**super().get_config(), "num_latents": self.num_latents,
                "hidden_dim": self.hidden_dim}


@keras.saving.register_keras_serializable(package="tfbrain")
class BiXTCrossAttentionBlock(keras.layers.Layer):
    """Pre-norm residual wrapper of `BiXTCrossAttention` with an MLP per side (upstream `CABlock`;
    `CAOneSidedBlock` when `one_sided`):

        l', t' = CA(LN1_lat(l), LN1_pat(t))
        l <- l + DP(LS1_lat(l')); l <- l + DP(LS2_lat(MLP_lat(LN2_lat(l))))
        t <- t + DP(LS1_pat(t')); t <- t + DP(LS2_pat(MLP_pat(LN2_pat(t))))   (not one-sided)

    Args:
        latent_dim, token_dim, attention_dim, num_heads: ints, as `BiXTCrossAttention`.
        latent_mlp_ratio, token_mlp_ratio: floats. MLP widths relative to each side's width.
        use_bias: bool. Reference/value projection bias.
        dropout_rate: float. After the output projections and inside the MLPs.
        attention_dropout_rate: float.
        drop_path_rate: float.
        layer_scale_init: optional float; None disables LayerScale.
        one_sided: bool. Update the latents only (the tokens pass unchanged).
        layer_norm_epsilon: float.

    Call arguments:
        latents: `(B, M, latent_dim)`.
        tokens: `(B, N, token_dim)`.

    Returns:
        `(latents, tokens)`, or the latents only when `one_sided`.
    """

    def __init__(self, latent_dim, token_dim, attention_dim, num_heads, latent_mlp_ratio=4.0,
                 token_mlp_ratio=4.0, use_bias=True, dropout_rate=0.0, attention_dropout_rate=0.0,
                 drop_path_rate=0.0, layer_scale_init=None, one_sided=False,
                 layer_norm_epsilon=BIXT_LAYER_NORM_EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = latent_dim
        self.token_dim = token_dim
        self.attention_dim = attention_dim
        self.num_heads = num_heads
        self.latent_mlp_ratio = latent_mlp_ratio
        self.token_mlp_ratio = token_mlp_ratio
        self.use_bias = use_bias
        self.dropout_rate = dropout_rate
        self.attention_dropout_rate = attention_dropout_rate
        self.drop_path_rate = drop_path_rate
        self.layer_scale_init = layer_scale_init
        self.one_sided = one_sided
        self.layer_norm_epsilon = layer_norm_epsilon

    def _side(self, side, width, mlp_ratio, shape):
        """Norms, MLP and LayerScales of one side, upstream names with suffix `side`."""
        dtype = self.dtype_policy
        layers = {}
        for norm in ("norm1", "norm2"):
            layers[norm] = keras.layers.LayerNormalization(
                epsilon=self.layer_norm_epsilon, dtype=dtype, name=f"{norm}_{side}")
            layers[norm].build(shape)
        layers["mlp"] = MLP(width, int(width * mlp_ratio), self.dropout_rate, dtype=dtype,
                            name=f"mlp_{side}")
        layers["mlp"].build(shape)
        for scale in ("ls1", "ls2"):
            layers[scale] = None
            if self.layer_scale_init is not None:
                layers[scale] = LayerScale(self.layer_scale_init, dtype=dtype,
                                           name=f"{scale}_{side}")
                layers[scale].build(shape)
        return layers

    def build(self, latents_shape, tokens_shape):
        self.attn = BiXTCrossAttention(
            self.latent_dim, self.token_dim, self.attention_dim, self.num_heads, self.use_bias,
            self.attention_dropout_rate, self.dropout_rate, self.one_sided,
            dtype=self.dtype_policy, name="attn")
        self.attn.build(latents_shape, tokens_shape)
        self.latent_side = self._side("lat", self.latent_dim, self.latent_mlp_ratio, latents_shape)
        if self.one_sided:
            # upstream's one-sided block still norms the tokens before their reference/value
            # projection (`norm1_pat`), but has no token MLP
            norm = keras.layers.LayerNormalization(
                epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name="norm1_pat")
            norm.build(tokens_shape)
            self.token_side = {"norm1": norm}
        else:
            self.token_side = self._side("pat", self.token_dim, self.token_mlp_ratio, tokens_shape)
        self.drop_path = DropPath(self.drop_path_rate, dtype=self.dtype_policy)

    def _residual(self, x, branch, scale, training):
        if scale is not None:
            branch = scale(branch)
        return x + self.drop_path(branch, training=training)

    def _refine(self, x, update, side, training):
        x = self._residual(x, update, side["ls1"], training)
        branch = side["mlp"](side["norm2"](x), training=training)
        return self._residual(x, branch, side["ls2"], training)

    def call(self, latents, tokens, training=False):
        normed_latents = self.latent_side["norm1"](latents)
        normed_tokens = self.token_side["norm1"](tokens)
        if self.one_sided:
            latent_update = self.attn(normed_latents, normed_tokens, training=training)
            return self._refine(latents, latent_update, self.latent_side, training)
        latent_update, token_update = self.attn(normed_latents, normed_tokens, training=training)
        latents = self._refine(latents, latent_update, self.latent_side, training)
        tokens = self._refine(tokens, token_update, self.token_side, training)
        return latents, tokens

    def compute_output_shape(self, latents_shape, tokens_shape):
        return tuple(latents_shape) if self.one_sided else (tuple(latents_shape),
                                                            tuple(tokens_shape))

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim,
                "token_dim": self.token_dim, "attention_dim": self.attention_dim,
                "num_heads": self.num_heads, "latent_mlp_ratio": self.latent_mlp_ratio,
                "token_mlp_ratio": self.token_mlp_ratio, "use_bias": self.use_bias,
                "dropout_rate": self.dropout_rate,
                "attention_dropout_rate": self.attention_dropout_rate,
                "drop_path_rate": self.drop_path_rate, "layer_scale_init": self.layer_scale_init,
                "one_sided": self.one_sided, "layer_norm_epsilon": self.layer_norm_epsilon}


@keras.saving.register_keras_serializable(package="tfbrain")
class BiXTBlock(keras.layers.Layer):
    """One BiXT layer: cross-attention block first, then self-attention over the latents
    (upstream `BiXTBlock`; sublayers `cross_attention_latents_token`, `self_attention_latents`).

    Args:
        latent_dim, token_dim, attention_dim: ints.
        sa_num_heads, ca_num_heads: ints. Heads of the latent self-attention / cross-attention.
        sa_mlp_ratio, ca_latent_mlp_ratio, ca_token_mlp_ratio: floats.
        qkv_bias, rv_bias: bools.
        sa_dropout_rate, ca_dropout_rate, sa_attention_dropout_rate, ca_attention_dropout_rate,
        sa_drop_path_rate, ca_drop_path_rate: floats.
        layer_scale_init: optional float.
        one_sided: bool. One-sided cross-attention (the tokens are returned unchanged).
        layer_norm_epsilon: float.

    Call arguments:
        latents: `(B, M, latent_dim)`.
        tokens: `(B, N, token_dim)`.

    Returns:
        `(latents, tokens)`, or the latents only when `one_sided`.
    """

    def __init__(self, latent_dim, token_dim, attention_dim, sa_num_heads, ca_num_heads,
                 sa_mlp_ratio=4.0, ca_latent_mlp_ratio=4.0, ca_token_mlp_ratio=4.0, qkv_bias=True,
                 rv_bias=True, sa_dropout_rate=0.0, ca_dropout_rate=0.0,
                 sa_attention_dropout_rate=0.0, ca_attention_dropout_rate=0.0,
                 sa_drop_path_rate=0.0, ca_drop_path_rate=0.0, layer_scale_init=None,
                 one_sided=False, layer_norm_epsilon=BIXT_LAYER_NORM_EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = latent_dim
        self.token_dim = token_dim
        self.attention_dim = attention_dim
        self.sa_num_heads = sa_num_heads
        self.ca_num_heads = ca_num_heads
        self.sa_mlp_ratio = sa_mlp_ratio
        self.ca_latent_mlp_ratio = ca_latent_mlp_ratio
        self.ca_token_mlp_ratio = ca_token_mlp_ratio
        self.qkv_bias = qkv_bias
        self.rv_bias = rv_bias
        self.sa_dropout_rate = sa_dropout_rate
        self.ca_dropout_rate = ca_dropout_rate
        self.sa_attention_dropout_rate = sa_attention_dropout_rate
        self.ca_attention_dropout_rate = ca_attention_dropout_rate
        self.sa_drop_path_rate = sa_drop_path_rate
        self.ca_drop_path_rate = ca_drop_path_rate
        self.layer_scale_init = layer_scale_init
        self.one_sided = one_sided
        self.layer_norm_epsilon = layer_norm_epsilon

    def build(self, latents_shape, tokens_shape):
        dtype = self.dtype_policy
        self.cross_attention = BiXTCrossAttentionBlock(
            self.latent_dim, self.token_dim, self.attention_dim, self.ca_num_heads,
            self.ca_latent_mlp_ratio, self.ca_token_mlp_ratio, self.rv_bias, self.ca_dropout_rate,
            self.ca_attention_dropout_rate, self.ca_drop_path_rate, self.layer_scale_init,
            self.one_sided, self.layer_norm_epsilon, dtype=dtype,
            name="cross_attention_latents_token")
        self.cross_attention.build(latents_shape, tokens_shape)
        # upstream's SABlock is a timm ViT block whose attention width is always the latents'
        self.self_attention = TransformerBlock(
            self.latent_dim, self.sa_num_heads, self.sa_mlp_ratio, self.qkv_bias,
            self.sa_dropout_rate, self.sa_attention_dropout_rate, self.sa_drop_path_rate,
            self.layer_scale_init, self.layer_norm_epsilon, dtype=dtype,
            name="self_attention_latents")
        self.self_attention.build(latents_shape)

    def call(self, latents, tokens, training=False):
        if self.one_sided:
            latents = self.cross_attention(latents, tokens, training=training)
            return self.self_attention(latents, training=training)
        latents, tokens = self.cross_attention(latents, tokens, training=training)
        return self.self_attention(latents, training=training), tokens

    def compute_output_shape(self, latents_shape, tokens_shape):
        return tuple(latents_shape) if self.one_sided else (tuple(latents_shape),
                                                            tuple(tokens_shape))

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim,
                "token_dim": self.token_dim, "attention_dim": self.attention_dim,
                "sa_num_heads": self.sa_num_heads, "ca_num_heads": self.ca_num_heads,
                "sa_mlp_ratio": self.sa_mlp_ratio,
                "ca_latent_mlp_ratio": self.ca_latent_mlp_ratio,
                "ca_token_mlp_ratio": self.ca_token_mlp_ratio, "qkv_bias": self.qkv_bias,
                "rv_bias": self.rv_bias, "sa_dropout_rate": self.sa_dropout_rate,
                "ca_dropout_rate": self.ca_dropout_rate,
                "sa_attention_dropout_rate": self.sa_attention_dropout_rate,
                "ca_attention_dropout_rate": self.ca_attention_dropout_rate,
                "sa_drop_path_rate": self.sa_drop_path_rate,
                "ca_drop_path_rate": self.ca_drop_path_rate,
                "layer_scale_init": self.layer_scale_init, "one_sided": self.one_sided,
                "layer_norm_epsilon": self.layer_norm_epsilon}
