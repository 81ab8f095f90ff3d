"""BiXT: Bi-directional Cross-Attention Transformer (Hiller, Ehinger, Drummond, NeurIPS 2024,
arXiv 2402.12138), for images (the released ImageNet models) and whole 4D fMRI windows.

Upstream: github.com/mrkshllr/BiXT @ 4ce7cae, `timm/models/bixt.py` (`BiXT`) and
`timm/models/bixt_convtok.py` (`BiXTConvTok`).

Data flow: input -> tokens `(B, N, C_tok)` + projected Fourier position encoding -> `depth` BiXT
layers, each a bi-directional cross-attention block between a learned latent array `(B, M, C_lat)`
and the tokens, then self-attention over the latents -> latents `(B, M, C_lat)`. The last layer
is one-sided (latents only) unless `dense_output=True`. With M fixed the cost is linear in N.

Three inputs share this one code path (as MONAI's nets do for 2D and 3D):
  * images, `volume_shape=(H, W, C_in)`: upstream's tokenizers (kernel p with stride p, p/2 or
    p/4 and padding (p - s)/2, or the XCiT conv tokenizer) and its 2D Fourier encoding;
  * fMRI windows, `volume_shape=(D, H, W, T, C_in)`, channels-last as `tfrecords_tools.windows`
    gives them: space x time tubelets (a Conv3D over space with kernel (pd, ph, pw) and stride
    (sd, sh, sw), padding (p - s)/2, applied to groups of pt frames folded into the channels;
    pt = 1 tokenizes every frame) and the same Fourier construction with one block of 32
    features per axis of the (D', H', W', T') token grid, projected to C_tok. A 96³x20 window with
    8³x1 patches is 12³x20 = 34,560 tokens, which 64 latents read at linear cost. This 4D design
    is ours: upstream has no fMRI model;
  * point sets, `volume_shape=(N, F)` with `coordinates` `(N, k)`: one token per point (e.g. an
    atlas parcel's time series, `tfrecords_tools.parcels.parcel_time_series`), a Linear F -> C_tok,
    and the Fourier encoding of the points' coordinates (e.g. parcel centroids in mm).

How this port differs from upstream:
  * channels-last input; tokens are row-major over the grid as upstream's `flatten(2)`;
  * the latent array is tiled to the batch before the first layer (upstream broadcasts);
  * the classification head (mean over latents -> LayerNorm -> Linear) lives in the Task:
    a backbone with `head_norm_epsilon` makes `FMRIClassifier`/`FMRIRegressor` put a LayerNorm
    (`head_norm`, upstream `fc_norm`) between the pooling and the Linear, because
    norm(mean(latents)) != mean(norm(latents)) and the backbone must output latents for pooling;
  * `dense_output=True` makes the last layer bidirectional so the tokens get gradients and
    `token_model()` gives dense token outputs (upstream has no such flag).

Letters: B batch, D/H/W space (or image rows/columns), T frames, C channels, N tokens, M latents.
"""

import math

import keras
import numpy as np

from tfbrain.models.backbone import Backbone
from tfbrain.models.bixt.bixt_layers import (BIXT_LAYER_NORM_EPSILON, BiXTBlock,
                                             BiXTConvPatchEmbed, BiXTFourierEncoding,
                                             BiXTLatents, BiXTPatchEmbed2D, BiXTPatchEmbed4D)

TOKENIZERS = ("linear", "conv")


def _as_tuple(value, length, name):
    if isinstance(value, int):
        return (value,) * length
    value = tuple(int(v) for v in value)
    if len(value) != length:
        raise ValueError(f"`{name}` needs {length} entries for this input. "
                         f"Received: {name}={value}")
    return value


def bixt_token_grid(volume_shape, patch_size, patch_stride, tokenizer):
    """Check the input geometry and return the token grid (rows, cols) or (D', H', W', T')."""
    spatial_axes = len(volume_shape) - 1
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"`tokenizer` must be one of {TOKENIZERS}. "
                         f"Received: tokenizer={tokenizer!r}")
    if tokenizer == "conv" and spatial_axes != 2:
        raise ValueError("The conv tokenizer is for images (H, W, C_in). "
                         f"Received: volume_shape={volume_shape}")
    if tokenizer == "conv" and patch_stride != patch_size:
        raise ValueError("The conv tokenizer has stride = patch. Received: "
                         f"patch_size={patch_size}, patch_stride={patch_stride}")
    grid = []
    for axis, (size, stride) in enumerate(zip(volume_shape[:-1], patch_stride)):
        if size % stride:
            raise ValueError(f"volume_shape axis {axis} ({size}) must be a multiple of the patch "
                             f"stride ({stride}). Received: volume_shape={volume_shape}, "
                             f"patch_size={patch_size}, patch_stride={patch_stride}")
        grid.append(size // stride)
    return tuple(grid)


@keras.saving.register_keras_serializable(package="tfbrain")
class BiXTBackbone(Backbone):
    """The BiXT encoder; its output is the latent array.

    Args:
        volume_shape: (H, W, C_in) for images, (D, H, W, T, C_in) for fMRI windows, or (N, F)
            for point sets.
        patch_size: int or tuple, (ph, pw) or (pd, ph, pw, pt); unused for point sets.
        patch_stride: None (= patch_size) or a tuple like `patch_size`; image p16s8 is
            `patch_size=16, patch_stride=8`. For fMRI the time stride must equal pt.
        tokenizer: "linear" (Conv kernel p, stride s) or "conv" (XCiT conv stack, images only,
            p in 4/8/16).
        num_latents: int. M.
        latent_dim: int. Latent width (upstream `embed_dim_lat`).
        token_dim: int or None (= latent_dim). Token width (upstream `embed_dim_pat`).
        attention_dim: int or None (= latent_dim). Cross-attention width (`embed_dim_attn`).
        depth: int. BiXT layers.
        sa_num_heads, ca_num_heads: ints. Self-/cross-attention heads.
        sa_mlp_ratio, ca_latent_mlp_ratio, ca_token_mlp_ratio: floats.
        qkv_bias, rv_bias: bools.
        layer_scale_init: optional float (upstream `init_values`); None disables LayerScale.
        sa_dropout_rate, ca_dropout_rate, sa_attention_dropout_rate, ca_attention_dropout_rate:
            floats. `ca_dropout_rate` also drops the position-encoded tokens, as upstream.
        sa_drop_path_rate, ca_drop_path_rate: floats, rising linearly from 0 over the layers.
        fourier_features: int. Fourier features per axis (32 upstream).
        dense_output: bool. Make the last layer bidirectional (tokens updated; see
            `token_model`).
        coordinates: `(N, k)` coordinates of the points of a point-set input (required then,
            refused otherwise).
        latent_norm: bool. LayerNorm the output latents (upstream `fc_norm=False`, `norm_lat`);
            the task heads then put no LayerNorm after the pooling. Default False: upstream's
            `fc_norm=True`, the head's LayerNorm after the pooling.
        dtype: dtype policy.

    Call arguments:
        inputs: `(B, *volume_shape)`. Returns the latents `(B, M, latent_dim)`.
    """

    pooling = "latent_mean"
    # upstream's head: mean over latents -> LayerNorm(eps 1e-6) (`fc_norm`) -> Linear
    head_norm_epsilon = BIXT_LAYER_NORM_EPSILON

    def __init__(self, volume_shape=(96, 96, 96, 20, 1), patch_size=(8, 8, 8, 1),
                 patch_stride=None, tokenizer="linear", num_latents=64, latent_dim=192,
                 token_dim=None, attention_dim=None, depth=12, sa_num_heads=6, ca_num_heads=6,
                 sa_mlp_ratio=4.0, ca_latent_mlp_ratio=4.0, ca_token_mlp_ratio=4.0,
                 qkv_bias=True, rv_bias=True, layer_scale_init=None, sa_dropout_rate=0.0,
                 ca_dropout_rate=0.0, sa_attention_dropout_rate=0.0,
                 ca_attention_dropout_rate=0.0, sa_drop_path_rate=0.0, ca_drop_path_rate=0.0,
                 fourier_features=32, dense_output=False, coordinates=None, latent_norm=False,
                 dtype=None, **kwargs):
        volume_shape = tuple(int(v) for v in volume_shape)
        spatial_axes = len(volume_shape) - 1
        if spatial_axes not in (1, 2, 4):
            raise ValueError("`volume_shape` must be (H, W, C_in) for images, (D, H, W, T, C_in) "
                             "for fMRI windows or (N, F) for point sets. "
                             f"Received: volume_shape={volume_shape}")
        is_points = spatial_axes == 1
        if is_points:
            if coordinates is None or np.ndim(coordinates) != 2 or \
                    len(coordinates) != volume_shape[0]:
                raise ValueError(f"A point-set input (N, F) = {volume_shape} needs `coordinates` "
                                 f"of shape ({volume_shape[0]}, k). Received: coordinates of "
                                 f"shape {None if coordinates is None else np.shape(coordinates)}")
            if tokenizer != "linear":
                raise ValueError("Point sets are tokenized by a Linear per point. "
                                 f"Received: tokenizer={tokenizer!r}")
            coordinates = [[float(c) for c in point] for point in coordinates]
            patch_size = patch_stride = None
            grid = (volume_shape[0],)
        else:
            if coordinates is not None:
                raise ValueError("`coordinates` is for point-set inputs (N, F). "
                                 f"Received: volume_shape={volume_shape}")
            patch_size = _as_tuple(patch_size, spatial_axes, "patch_size")
            patch_stride = patch_size if patch_stride is None else _as_tuple(
                patch_stride, spatial_axes, "patch_stride")
            grid = bixt_token_grid(volume_shape, patch_size, patch_stride, tokenizer)
        token_dim = token_dim or latent_dim
        attention_dim = attention_dim or latent_dim
        if depth < 1:
            raise ValueError(f"`depth` must be at least 1. Received: depth={depth}")
        for name, heads, width in (("sa_num_heads", sa_num_heads, latent_dim),
                                   ("ca_num_heads", ca_num_heads, attention_dim)):
            if width % heads:
                raise ValueError(f"`{name}` must divide the attention width {width}. "
                                 f"Received: {name}={heads}")
        ca_drop_paths = np.linspace(0.0, ca_drop_path_rate, depth).tolist()
        sa_drop_paths = np.linspace(0.0, sa_drop_path_rate, depth).tolist()

        # === Functional Model ===
        is_image = spatial_axes == 2
        input_name = "points" if is_points else "image" if is_image else "fmri"
        inputs = keras.Input(shape=volume_shape, name=input_name)
        if is_points:
            tokens = keras.layers.Dense(token_dim, dtype=dtype, name="patch_embed")(
                inputs)  # (B, N, C_tok)
        elif tokenizer == "conv":
            tokens = BiXTConvPatchEmbed(token_dim, patch_size[0], dtype=dtype,
                                        name="patch_embed")(inputs)  # (B, N, C_tok)
        elif is_image:
            tokens = BiXTPatchEmbed2D(token_dim, patch_size, patch_stride, dtype=dtype,
                                      name="patch_embed")(inputs)  # (B, N, C_tok)
        else:
            tokens = BiXTPatchEmbed4D(token_dim, patch_size, patch_stride, dtype=dtype,
                                      name="patch_embed")(inputs)  # (B, N, C_tok)
        tokens = BiXTFourierEncoding(None if is_points else grid, token_dim, fourier_features,
                                     coordinates=coordinates, dtype=dtype,
                                     name="fourier_pos_encode")(tokens)
        if ca_dropout_rate:
            tokens = keras.layers.Dropout(ca_dropout_rate, dtype=dtype, name="pos_drop_pat")(tokens)
        latents = BiXTLatents(num_latents, latent_dim, dtype=dtype, name="latents")(tokens)
        for i in range(depth):
            one_sided = i == depth - 1 and not dense_output
            block = BiXTBlock(
                latent_dim, token_dim, attention_dim, sa_num_heads, ca_num_heads, sa_mlp_ratio,
                ca_latent_mlp_ratio, ca_token_mlp_ratio, qkv_bias, rv_bias, sa_dropout_rate,
                ca_dropout_rate, sa_attention_dropout_rate, ca_attention_dropout_rate,
                sa_drop_paths[i], ca_drop_paths[i], layer_scale_init, one_sided, dtype=dtype,
                name=f"blocks_{i}")
            if one_sided:
                latents = block(latents, tokens)  # (B, M, C_lat)
            else:
                latents, tokens = block(latents, tokens)  # (B, M, C_lat), (B, N, C_tok)
        if latent_norm:
            latents = keras.layers.LayerNormalization(
                epsilon=BIXT_LAYER_NORM_EPSILON, dtype=dtype, name="norm_lat")(latents)
        super().__init__(inputs=inputs, outputs=latents, dtype=dtype, **kwargs)
        self._final_tokens = tokens
        if latent_norm:  # upstream fc_norm=False: the latents are normed, the pooled mean is not
            self.head_norm_epsilon = None

        # === Config ===
        self.volume_shape = volume_shape
        self.patch_size = patch_size
        self.patch_stride = patch_stride
        self.tokenizer = tokenizer
        self.num_latents = num_latents
        self.latent_dim = latent_dim
        self.token_dim = token_dim
        self.attention_dim = attention_dim
        self.depth = depth
        self.sa_num_heads = sa_num_heads
        self.ca_num_heads = ca_num_heads
        self.sa_mlp_ratio = sa_mlp_ratio
        self.ca_latent_mlp_ratio = ca_latent_mlp_ratio
        self.ca_token_mlp_ratio = ca_token_mlp_ratio
        self.qkv_bias = qkv_bias
        self.rv_bias = rv_bias
        self.layer_scale_init = layer_scale_init
        self.sa_dropout_rate = sa_dropout_rate
        self.ca_dropout_rate = ca_dropout_rate
        self.sa_attention_dropout_rate = sa_attention_dropout_rate
        self.ca_attention_dropout_rate = ca_attention_dropout_rate
        self.sa_drop_path_rate = sa_drop_path_rate
        self.ca_drop_path_rate = ca_drop_path_rate
        self.fourier_features = fourier_features
        self.dense_output = dense_output
        self.coordinates = coordinates
        self.latent_norm = latent_norm
        self.token_grid = grid
        self.num_tokens = math.prod(grid)

    def __call__(self, inputs, *args, **kwargs):
        shape = getattr(inputs, "shape", None)
        if shape is not None and tuple(shape[1:]) != self.volume_shape:
            kind = {2: "point sets (B, N, F)", 3: "images (B, H, W, C)"}.get(
                len(self.volume_shape), "fmri windows (B, D, H, W, T, C), channels-last")
            raise ValueError(f"BiXTBackbone expects {kind} of shape (batch, "
                             f"{', '.join(str(v) for v in self.volume_shape)}); received rank "
                             f"{len(shape)} shape {tuple(shape)}. The token grid is fixed by the "
                             "position encoding: rebuild with another volume_shape for other "
                             "sizes.")
        return super().__call__(inputs, *args, **kwargs)

    def token_model(self) -> keras.Model:
        """A model from the input to the final tokens `(B, N, token_dim)`, row-major over the
        token grid. Only with `dense_output=True`: otherwise the last layer does not update the
        tokens and they would get no gradient from a latent loss."""
        if not self.dense_output:
            raise ValueError("token_model() needs a backbone built with dense_output=True "
                             "(the default last layer is one-sided and leaves the tokens stale). "
                             "Received: dense_output=False")
        return keras.Model(self.input, self._final_tokens, name=f"{self.name}_tokens")

    def get_config(self):
        return {**super().get_config(), "volume_shape": self.volume_shape,
                "patch_size": self.patch_size, "patch_stride": self.patch_stride,
                "tokenizer": self.tokenizer, "num_latents": self.num_latents,
                "latent_dim": self.latent_dim, "token_dim": self.token_dim,
                "attention_dim": self.attention_dim, "depth": self.depth,
                "sa_num_heads": self.sa_num_heads, "ca_num_heads": self.ca_num_heads,
                "sa_mlp_ratio": self.sa_mlp_ratio,
                "ca_latent_mlp_ratio": self.ca_latent_mlp_ratio,
                "ca_token_mlp_ratio": self.ca_token_mlp_ratio, "qkv_bias": self.qkv_bias,
                "rv_bias": self.rv_bias, "layer_scale_init": self.layer_scale_init,
                "sa_dropout_rate": self.sa_dropout_rate, "ca_dropout_rate": self.ca_dropout_rate,
                "sa_attention_dropout_rate": self.sa_attention_dropout_rate,
                "ca_attention_dropout_rate": self.ca_attention_dropout_rate,
                "sa_drop_path_rate": self.sa_drop_path_rate,
                "ca_drop_path_rate": self.ca_drop_path_rate,
                "fourier_features": self.fourier_features, "dense_output": self.dense_output,
                "coordinates": self.coordinates, "latent_norm": self.latent_norm}
