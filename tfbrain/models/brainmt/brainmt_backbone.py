"""BrainMT: a per-frame conv stem, a Mamba stage over the whole temporal-first token sequence,
then a transformer stage over the same sequence (Kannan, Lindquist, Caffo, MICCAI 2025,
arXiv 2506.22591).

Upstream: github.com/arunkumar-kannan/BrainMT-fMRI @ 977e486, `src/brainmt/models/brain_mt.py`
(`BrainMT`), with `mamba_ssm.modules.mamba_simple.Mamba` (state-spaces/mamba 2.2.2) as mixer.

As released (and ported here): the Mamba stage is unidirectional (`bimamba=True` is accepted
and never used), each Mamba block is fused add + RMSNorm (prenorm, float32 residual) around the
mixer, followed by a final add + RMSNorm `norm_f`; the transformer stage is, per block,
h += Attn_i(norm(h)); h += mlp(norm(h)) with ONE LayerNorm `norm` and ONE Mlp shared by all
blocks; the head reads the cls token after the last attention block (no final norm).

How this port differs from upstream:
  * input is tfbrain's channels-last NIfTI order `(B, X, Y, Z, T, C)`. Upstream's loader
    feeds `(B, T, C, Y, X, Z)` (MNI `(91, 109, 91, T)` permuted by `(4, 0, 2, 1, 3)`); the
    backbone applies that axis order inside, so converted weights keep their meaning: the
    stem's D, H, W are MNI Y, X, Z;
  * the token grid follows the input size (upstream hard-codes 7 x 6 x 6 = 252 tokens) and the
    stem widths follow `hidden_dim` (C/8, C/4, C/2, C; upstream 64..512 with C = 512);
  * the temporal table may be longer than the window (`max_frames`); frames use its first rows;
  * `bidirectional=True` swaps in the Vision Mamba v2 mixer the paper describes;
  * attention over long sequences runs blockwise (`tfbrain.layers.blockwise_attention`):
    a 50,401-token score matrix does not fit; SDPA's dropout-at-eval quirk is not ported
    (attention dropout is not supported; upstream's default is 0).

Letters: B batch, X/Y/Z MNI space, T frames, C channels, N tokens per frame, L = 1 + N*T.
"""

import keras
import numpy as np
from keras import ops

from tfbrain.layers.blockwise_attention import (DEFAULT_BLOCK_SIZE, DEFAULT_MAX_PLAIN_SCORE_BYTES,
                                                IMPLEMENTATIONS, BlockwiseSelfAttention)
from tfbrain.layers.drop_path import DropPath
from tfbrain.layers.mlp import MLP
from tfbrain.layers.torch_compat import TORCH_LAYER_NORM_EPSILON
from tfbrain.models.backbone import Backbone, check_fmri_input
from tfbrain.models.brainmt.brainmt_layers import (STEM_NUM_DOWNSAMPLES, BrainMTAddRMSNorm,
                                                   BrainMTEmbedding, BrainMTMambaLayer,
                                                   BrainMTStem, stem_output_size)

# (B, X, Y, Z, T, C) -> upstream's per-frame (B, T, Y, X, Z, C)
_TO_UPSTREAM_FRAME_ORDER = (0, 4, 2, 1, 3, 5)
MIN_SPATIAL_SIZE = 2 ** STEM_NUM_DOWNSAMPLES


def drop_path_rates(drop_path_rate: float, depths: tuple) -> dict:
    """Upstream's stochastic-depth schedule: dpr = linspace(0, rate, sum(depths)); Mamba block
    i gets ([0] + dpr)[i], `norm_f` the full rate, attention block i dpr[depths[0] + i]."""
    dpr = [float(r) for r in np.linspace(0.0, drop_path_rate, sum(depths))]
    return {"mamba": ([0.0] + dpr)[:depths[0]], "norm_f": float(drop_path_rate),
            "attention": dpr[depths[0]:]}


@keras.saving.register_keras_serializable(package="tfbrain")
class BrainMTBackbone(Backbone):
    """The BrainMT backbone: conv stem per frame, Mamba stage, shared-norm transformer stage.

    Args:
        volume_shape: 5-tuple (X, Y, Z, T, C_in) of the input windows. Each spatial axis must
            be at least 16 (the stem halves it four times); the token grid per frame is
            `stem_output_size` of (Y, X, Z) (MNI 91 x 109 x 91 gives 7 x 6 x 6 = 252).
        hidden_dim: int. Token width C (upstream `embed_dim`); a multiple of 8.
        depths: 2-tuple. (Mamba blocks, attention blocks); upstream `depth`, (12, 8).
        num_heads: int. Attention heads (upstream 2).
        qkv_bias: bool.
        mlp_ratio: float. Width of the shared MLP / C (upstream 2).
        max_frames: int or None. Rows of the temporal position table (upstream
            `num_frames`); default T.
        bidirectional: bool. False: unidirectional Mamba mixers, as released. True: Vision
            Mamba v2 bidirectional mixers, as the paper describes.
        state_dim, conv_kernel_size, expand: Mamba sizes (upstream 16, 4, 2).
        norm_epsilon: float. RMSNorm epsilon (upstream 1e-5).
        dropout_rate: float. After the embedding, the attention projection and inside the
            shared MLP (upstream `drop_rate`).
        drop_path_rate: float. Stochastic depth, scheduled as `drop_path_rates` says.
        scan_chunk_size: int or None. Selective-scan chunk.
        scan_jit: None, "auto", True or False. Selective-scan jit switch.
        attention_implementation: "auto", "plain" or "blockwise" (see
            `BlockwiseSelfAttention`); "auto" goes blockwise when one sample's float32 score
            matrix exceeds `attention_max_plain_score_bytes`.
        attention_block_size: int. Keys per block of the blockwise path.
        attention_max_plain_score_bytes: int. The "auto" threshold (1 GiB).
        dtype: dtype policy.

    Call arguments:
        fmri: `(B, X, Y, Z, T, C_in)`. Returns the token sequence `(B, 1 + N*T, C)` after the
        last attention block, cls token first (position 1 + n*T + t: temporal-first).
    """

    pooling = "cls_token"

    def __init__(self, volume_shape=(91, 109, 91, 200, 1), hidden_dim=512, depths=(12, 8),
                 num_heads=2, qkv_bias=True, mlp_ratio=2.0, max_frames=None,
                 bidirectional=False, state_dim=16, conv_kernel_size=4, expand=2,
                 norm_epsilon=1e-5, dropout_rate=0.0, drop_path_rate=0.1, scan_chunk_size=None,
                 scan_jit=None, attention_implementation="auto",
                 attention_block_size=DEFAULT_BLOCK_SIZE,
                 attention_max_plain_score_bytes=DEFAULT_MAX_PLAIN_SCORE_BYTES, dtype=None,
                 **kwargs):
        volume_shape = tuple(int(v) for v in volume_shape)
        depths = tuple(int(d) for d in depths)
        max_frames = int(max_frames or (volume_shape[3] if len(volume_shape) == 5 else 0))
        _validate(volume_shape, hidden_dim, depths, num_heads, max_frames,
                  attention_implementation)
        frames, channels_in = volume_shape[3], volume_shape[4]
        # the stem's (D, H, W) are MNI (Y, X, Z)
        frame_shape = (volume_shape[1], volume_shape[0], volume_shape[2], channels_in)
        rates = drop_path_rates(drop_path_rate, depths)

        # === Functional Model ===
        fmri = keras.Input(shape=volume_shape, name="fmri")  # (B, X, Y, Z, T, C_in)
        x = ops.transpose(fmri, _TO_UPSTREAM_FRAME_ORDER)  # (B, T, Y, X, Z, C_in)
        x = ops.reshape(x, (-1, *frame_shape))  # (B*T, Y, X, Z, C_in), (b t) order
        x = BrainMTStem(hidden_dim, dtype=dtype, name="stem")(x)  # (B*T, D', H', W', C)
        x = BrainMTEmbedding(frames, max_frames, dtype=dtype, name="embedding")(x)  # (B, L, C)
        x = keras.layers.Dropout(dropout_rate, dtype=dtype, name="pos_drop")(x)

        hidden, residual = x, None
        for i in range(depths[0]):
            hidden, residual = BrainMTMambaLayer(
                hidden_dim, drop_path_rate=rates["mamba"][i], epsilon=norm_epsilon,
                bidirectional=bidirectional, state_dim=state_dim,
                conv_kernel_size=conv_kernel_size, expand=expand,
                scan_chunk_size=scan_chunk_size, scan_jit=scan_jit, dtype=dtype,
                name=f"mamba_layer_{i}")(hidden, residual)
        x = BrainMTAddRMSNorm(norm_epsilon, rates["norm_f"], return_residual=False, dtype=dtype,
                              name="norm_f")(hidden, residual)  # (B, L, C)

        # ONE LayerNorm and ONE MLP shared by every attention block, as released
        norm = keras.layers.LayerNormalization(epsilon=TORCH_LAYER_NORM_EPSILON, dtype=dtype,
                                               name="norm")
        mlp = MLP(hidden_dim, int(hidden_dim * mlp_ratio), dropout_rate=dropout_rate,
                  activation="gelu", dtype=dtype, name="mlp")
        for i in range(depths[1]):
            attention = BlockwiseSelfAttention(
                hidden_dim, num_heads, qkv_bias=qkv_bias, dropout_rate=dropout_rate,
                implementation=attention_implementation, block_size=attention_block_size,
                max_plain_score_bytes=attention_max_plain_score_bytes, dtype=dtype,
                name=f"attention_{i}")
            # upstream uses one DropPath module for both residuals of a block
            drop_path = DropPath(rates["attention"][i], dtype=dtype, name=f"drop_path_{i}")
            x = keras.layers.Add(dtype=dtype, name=f"attention_{i}_add")(
                [x, drop_path(attention(norm(x)))])
            x = keras.layers.Add(dtype=dtype, name=f"mlp_{i}_add")([x, drop_path(mlp(norm(x)))])
        super().__init__(inputs=fmri, outputs=x, dtype=dtype, **kwargs)
        apply_upstream_init(self, depths)

        # === Config ===
        self.volume_shape = volume_shape
        self.hidden_dim = hidden_dim
        self.depths = depths
        self.num_heads = num_heads
        self.qkv_bias = qkv_bias
        self.mlp_ratio = mlp_ratio
        self.max_frames = max_frames
        self.bidirectional = bidirectional
        self.state_dim = state_dim
        self.conv_kernel_size = conv_kernel_size
        self.expand = expand
        self.norm_epsilon = norm_epsilon
        self.dropout_rate = dropout_rate
        self.drop_path_rate = drop_path_rate
        self.scan_chunk_size = scan_chunk_size
        self.scan_jit = scan_jit
        self.attention_implementation = attention_implementation
        self.attention_block_size = attention_block_size
        self.attention_max_plain_score_bytes = attention_max_plain_score_bytes
        self.output_dim = hidden_dim
        self.token_grid = tuple(stem_output_size(s) for s in frame_shape[:3])
        self.sequence_length = 1 + int(np.prod(self.token_grid)) * frames

    def __call__(self, fmri, *args, **kwargs):
        check_fmri_input("BrainMTBackbone", fmri, self.volume_shape, self.max_frames,
                         axes="(B, X, Y, Z, T, C)")
        return super().__call__(fmri, *args, **kwargs)

    def serving_overrides(self):
        # the selective scan's XLA loop is marked must-compile; serve its plain loop
        return {} if self.scan_jit is False else {"scan_jit": False}

    def get_config(self):
        return {**super().get_config(), "volume_shape": self.volume_shape,
                "hidden_dim": self.hidden_dim, "depths": self.depths,
                "num_heads": self.num_heads, "qkv_bias": self.qkv_bias,
                "mlp_ratio": self.mlp_ratio, "max_frames": self.max_frames,
                "bidirectional": self.bidirectional, "state_dim": self.state_dim,
                "conv_kernel_size": self.conv_kernel_size, "expand": self.expand,
                "norm_epsilon": self.norm_epsilon, "dropout_rate": self.dropout_rate,
                "drop_path_rate": self.drop_path_rate, "scan_chunk_size": self.scan_chunk_size,
                "scan_jit": self.scan_jit,
                "attention_implementation": self.attention_implementation,
                "attention_block_size": self.attention_block_size,
                "attention_max_plain_score_bytes": self.attention_max_plain_score_bytes}


def apply_upstream_init(backbone, depths) -> None:
    """Re-draw the weights as upstream's `BrainMT.__init__` leaves them (for training from
    scratch; converted weights overwrite them):
      * `segm_init_weights`: every Linear weight ~ N(0, 0.02) (timm's trunc_normal_ cuts at
        +-2 absolute, i.e. 100 std: effectively untruncated), every Linear bias 0; that includes
        the Mamba in_proj, x_proj and dt_proj, so dt_proj's bias is 0 (softplus(0) = 0.693)
        instead of Mamba's inverse-softplus init;
      * `_init_weights`: `out_proj.weight` of every mixer and the shared `mlp.fc2.weight` get
        torch's default kaiming-uniform (U(+-1/sqrt(fan_in))) divided by sqrt(sum(depths)).
    Convolutions, LayerNorms, A_log, D and the depthwise conv1d keep their defaults.
    """
    rescale = float(np.sqrt(max(sum(depths), 1)))

    def normal(dense):
        dense.kernel.assign(keras.initializers.RandomNormal(stddev=0.02)(dense.kernel.shape))
        if getattr(dense, "bias", None) is not None:
            dense.bias.assign(ops.zeros(dense.bias.shape))

    def kaiming_rescaled(dense):
        limit = 1.0 / np.sqrt(dense.kernel.shape[0]) / rescale
        dense.kernel.assign(keras.initializers.RandomUniform(-limit, limit)(dense.kernel.shape))
        if getattr(dense, "bias", None) is not None:
            dense.bias.assign(ops.zeros(dense.bias.shape))

    for i in range(depths[0]):
        mixer = backbone.get_layer(f"mamba_layer_{i}").mixer
        normal(mixer.in_proj)
        kaiming_rescaled(mixer.out_proj)
        branches = [mixer.forward_branch] + [getattr(mixer, "backward_branch", None)]
        for branch in filter(None, branches):
            normal(branch.x_proj)
            normal(branch.dt_proj)
            branch.dt_bias.assign(ops.zeros(branch.dt_bias.shape))
    for i in range(depths[1]):
        attention = backbone.get_layer(f"attention_{i}")
        normal(attention.qkv)
        normal(attention.proj)
    if depths[1]:
        mlp = backbone.get_layer("mlp")
        normal(mlp.linear1)
        kaiming_rescaled(mlp.linear2)


def _validate(volume_shape, hidden_dim, depths, num_heads, max_frames, implementation):
    if len(volume_shape) != 5 or min(volume_shape) < 1:
        raise ValueError("`volume_shape` must be 5 positive ints (X, Y, Z, T, C_in). "
                         f"Received: volume_shape={volume_shape}")
    if min(volume_shape[:3]) < MIN_SPATIAL_SIZE:
        raise ValueError(f"Each spatial axis of `volume_shape` must be at least "
                         f"{MIN_SPATIAL_SIZE} voxels: the conv stem halves it "
                         f"{STEM_NUM_DOWNSAMPLES} times. Received: volume_shape={volume_shape}")
    if volume_shape[3] > max_frames:
        raise ValueError(f"`volume_shape` has T={volume_shape[3]} frames but "
                         f"max_frames={max_frames}: the temporal position table cannot cover "
                         "longer windows.")
    if len(depths) != 2 or min(depths) < 0:
        raise ValueError("`depths` must be (Mamba blocks, attention blocks), both >= 0. "
                         f"Received: depths={depths}")
    if hidden_dim % 8 or hidden_dim % num_heads:
        raise ValueError("`hidden_dim` must be a multiple of 8 (stem widths C/8..C) and of "
                         f"`num_heads`. Received: hidden_dim={hidden_dim}, num_heads={num_heads}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"`attention_implementation` must be one of {IMPLEMENTATIONS}. "
                         f"Received: attention_implementation={implementation!r}")
