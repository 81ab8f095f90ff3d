"""The Matcha-TTS 1D U-Net decoder (the flow-matching vector-field estimator), channels-last.

Upstream: shivammehta25/Matcha-TTS @ 108906c6, `matcha/models/components/decoder.py`
(`Decoder`). Layout for channels (c_0, ..., c_{L-1}):

  1. x = concat[x, mu, spks repeated over T] on channels (upstream `pack`, x first);
  2. down stage i: ResnetBlock1D -> `num_blocks` transformer/conformer blocks -> keep the
     skip -> Downsample1D (conv k3 s2) of x·mask, or a plain conv k3 at the last stage;
     the mask is subsampled `mask[:, ::2]` after every stage;
  3. `num_mid_blocks` x [ResnetBlock1D + blocks] at the deepest scale;
  4. up stage j: ResnetBlock1D(concat[x, skip]) -> blocks -> ConvTranspose upsample of
     x·mask (plain conv k3 at the last stage);
  5. final Block1D, 1x1 conv of x·mask, output·mask.

The flow time goes through `sinusoidal_time_embedding` (x1000, dim = in_channels) and an
MLP (Linear -> SiLU -> Linear, width 4·c_0). T must be divisible by 2^(L-1).

Letters: B batch, T frames, C channels.
"""

import keras
from keras import ops

from tfbrain.layers.torch_compat import torch_conv_padding
from tfbrain.layers.unet_1d_blocks import (FEED_FORWARD_ACTIVATIONS, ConformerBlock,
                                           MatchaBlock1D, MatchaResnetBlock1D,
                                           MatchaTransformerBlock, MatchaUpsample1D,
                                           sinusoidal_time_embedding)

BLOCK_TYPES = ("transformer", "conformer")


class MatchaDecoder(keras.layers.Layer):
    """Matcha's 1D U-Net estimator v(x, mask, mu, t[, spks]).

    Args:
        in_channels: int. Channels of concat[x, mu, spks] (upstream `in_channels`).
        out_channels: int. Channels of x and of the output.
        channels: tuple of ints. Width per U-Net level (each divisible by 8).
        dropout_rate: float. Upstream `dropout` (blocks only).
        head_dim: int. Upstream `attention_head_dim`.
        num_blocks: int. Transformer/conformer blocks per level (upstream `n_blocks`).
        num_mid_blocks: int.
        num_heads: int.
        activation: feed-forward activation of transformer blocks (upstream `act_fn`).
        down_block_type, mid_block_type, up_block_type: "transformer" or "conformer".

    Call arguments:
        inputs: dict with "x" `(B, T, out_channels)`, "mask" `(B, T)` float 0/1, "mu"
            `(B, T, C_mu)`, "t" `(B,)` or a scalar, and optionally "spks" `(B, S_dim)`.
        return_intermediates: also return a dict of every block output, named as the
            upstream modules (`down_blocks.0.0`, ...), channels-last.

    Returns `(B, T, out_channels)`.
    """

    def __init__(self, in_channels, out_channels, channels=(256, 256), dropout_rate=0.05,
                 head_dim=64, num_blocks=1, num_mid_blocks=2, num_heads=4,
                 activation="snakebeta", down_block_type="transformer",
                 mid_block_type="transformer", up_block_type="transformer", **kwargs):
        super().__init__(**kwargs)
        channels = tuple(int(c) for c in channels)
        for name, value in (("down_block_type", down_block_type),
                            ("mid_block_type", mid_block_type),
                            ("up_block_type", up_block_type)):
            if value not in BLOCK_TYPES:
                raise ValueError(f"`{name}` must be one of {BLOCK_TYPES}. Received: "
                                 f"{name}={value!r}")
        if activation not in FEED_FORWARD_ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {FEED_FORWARD_ACTIVATIONS}. "
                             f"Received: activation={activation!r}")
        if not channels or any(c % 8 for c in channels):
            raise ValueError("`channels` needs at least one level, each divisible by 8 "
                             f"(GroupNorm(8)). Received: channels={channels}")
        if in_channels % 2:
            raise ValueError("`in_channels` sets the sinusoidal time embedding width and must "
                             f"be even. Received: in_channels={in_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = channels
        self.dropout_rate = dropout_rate
        self.head_dim = head_dim
        self.num_blocks = num_blocks
        self.num_mid_blocks = num_mid_blocks
        self.num_heads = num_heads
        self.activation = activation
        self.down_block_type = down_block_type
        self.mid_block_type = mid_block_type
        self.up_block_type = up_block_type
        self.time_downsampling = 2 ** (len(channels) - 1)

    # === Construction ===

    def _block(self, block_type, width, name):
        if block_type == "conformer":
            return ConformerBlock(width, self.num_heads, self.head_dim, ff_mult=1,
                                  conv_expansion_factor=2, conv_kernel_size=31,
                                  dropout_rate=self.dropout_rate, dtype=self.dtype_policy,
                                  name=name)
        return MatchaTransformerBlock(width, self.num_heads, self.head_dim, self.activation,
                                      self.dropout_rate, dtype=self.dtype_policy, name=name)

    def build(self, inputs_shape):
        batch = inputs_shape["x"][0]
        length = inputs_shape["x"][1]
        time_dim = 4 * self.channels[0]
        self.time_linear_1 = keras.layers.Dense(time_dim, dtype=self.dtype_policy,
                                                name="time_linear_1")
        self.time_linear_1.build((None, self.in_channels))
        self.time_linear_2 = keras.layers.Dense(time_dim, dtype=self.dtype_policy,
                                                name="time_linear_2")
        self.time_linear_2.build((None, time_dim))
        time_shape = (None, time_dim)

        def seq(width, scale):
            return (batch, None if length is None else length // scale, width)

        self.down_resnets, self.down_blocks, self.downsamples = [], [], []
        previous, scale = self.in_channels, 1
        skip_widths = []
        for i, width in enumerate(self.channels):
            resnet = MatchaResnetBlock1D(width, dtype=self.dtype_policy, name=f"down_{i}_resnet")
            resnet.build(seq(previous, scale), None, time_shape)
            self.down_resnets.append(resnet)
            for j in range(self.num_blocks):
                block = self._block(self.down_block_type, width, f"down_{i}_block_{j}")
                block.build(seq(width, scale))
                self.down_blocks.append(block)
            is_last = i == len(self.channels) - 1
            conv = keras.layers.Conv1D(width, 3, strides=1 if is_last else 2, padding="valid",
                                       dtype=self.dtype_policy, name=f"down_{i}_sample")
            conv.build(seq(width, scale))
            self.downsamples.append(conv)
            skip_widths.append(width)
            previous = width
            if not is_last:
                scale *= 2

        self.mid_resnets, self.mid_blocks = [], []
        for i in range(self.num_mid_blocks):
            resnet = MatchaResnetBlock1D(self.channels[-1], dtype=self.dtype_policy,
                                         name=f"mid_{i}_resnet")
            resnet.build(seq(self.channels[-1], scale), None, time_shape)
            self.mid_resnets.append(resnet)
            for j in range(self.num_blocks):
                block = self._block(self.mid_block_type, self.channels[-1], f"mid_{i}_block_{j}")
                block.build(seq(self.channels[-1], scale))
                self.mid_blocks.append(block)

        up_widths = self.channels[::-1] + (self.channels[0],)
        self.up_resnets, self.up_blocks, self.upsamples = [], [], []
        for i in range(len(self.channels)):
            width_in, width = up_widths[i], up_widths[i + 1]
            resnet = MatchaResnetBlock1D(width, dtype=self.dtype_policy, name=f"up_{i}_resnet")
            resnet.build(seq(2 * width_in, scale), None, time_shape)
            self.up_resnets.append(resnet)
            for j in range(self.num_blocks):
                block = self._block(self.up_block_type, width, f"up_{i}_block_{j}")
                block.build(seq(width, scale))
                self.up_blocks.append(block)
            if i < len(self.channels) - 1:
                sample = MatchaUpsample1D(width, dtype=self.dtype_policy, name=f"up_{i}_sample")
                sample.build(seq(width, scale))
                scale //= 2
            else:
                sample = keras.layers.Conv1D(width, 3, padding="valid", dtype=self.dtype_policy,
                                             name=f"up_{i}_sample")
                sample.build(seq(width, scale))
            self.upsamples.append(sample)

        self.final_block = MatchaBlock1D(self.channels[0], dtype=self.dtype_policy,
                                         name="final_block")
        self.final_block.build(seq(self.channels[0], 1))
        self.final_proj = keras.layers.Conv1D(self.out_channels, 1, dtype=self.dtype_policy,
                                              name="final_proj")
        self.final_proj.build(seq(self.channels[0], 1))

    # === Forward ===

    def time_embedding(self, t):
        """Flow time `(B,)` or scalar -> (sinusoidal `(B|1, in_channels)`, MLP `(B|1, 4·c_0)`)."""
        sinusoidal = ops.cast(sinusoidal_time_embedding(t, self.in_channels), self.compute_dtype)
        return sinusoidal, self.time_linear_2(ops.silu(self.time_linear_1(sinusoidal)))

    def check_inputs(self, inputs):
        """Clear errors for missing keys, channel counts and a T the U-Net cannot halve."""
        if not isinstance(inputs, dict):
            raise ValueError("MatchaDecoder expects a dict with 'x', 'mask', 'mu', 't' (and "
                             f"optionally 'spks'). Received: {type(inputs).__name__}")
        missing = [k for k in ("x", "mask", "mu", "t") if k not in inputs]
        if missing:
            raise ValueError(f"MatchaDecoder inputs lack {missing}; expected keys 'x' (B, T, "
                             f"{self.out_channels}), 'mask' (B, T), 'mu' (B, T, C_mu), 't' (B,) "
                             f"or scalar. Received keys: {sorted(inputs)}")
        x_shape = tuple(inputs["x"].shape)
        mu_shape = tuple(inputs["mu"].shape)
        spks = inputs.get("spks")
        spk_dim = 0 if spks is None else spks.shape[-1]
        if len(x_shape) != 3 or len(mu_shape) != 3:
            raise ValueError("MatchaDecoder expects channels-last 'x' and 'mu' of rank 3 "
                             f"(B, T, C). Received: x {x_shape}, mu {mu_shape}")
        if x_shape[-1] + mu_shape[-1] + spk_dim != self.in_channels:
            raise ValueError(f"MatchaDecoder was built for in_channels={self.in_channels} = "
                             "C_x + C_mu (+ spks dim). Received: x channels "
                             f"{x_shape[-1]}, mu channels {mu_shape[-1]}, spks dim {spk_dim}")
        length = x_shape[1]
        if length is not None and length % self.time_downsampling:
            raise ValueError(f"MatchaDecoder with {len(self.channels)} levels halves T "
                             f"{len(self.channels) - 1} time(s): T must be divisible by "
                             f"{self.time_downsampling}. Received: T={length} (x shape "
                             f"{x_shape}); pad the window to a multiple and mask the padding.")

    def call(self, inputs, training=False, return_intermediates=False):
        self.check_inputs(inputs)
        x, mu, mask = inputs["x"], inputs["mu"], ops.cast(inputs["mask"], inputs["x"].dtype)
        out = {}
        sinusoidal, t_emb = self.time_embedding(inputs["t"])
        out["time_sinusoidal"], out["time_mlp"] = sinusoidal, t_emb
        h = ops.concatenate([x, ops.cast(mu, x.dtype)], axis=-1)  # (B, T, C_x + C_mu)
        spks = inputs.get("spks")
        if spks is not None:
            spks = ops.cast(spks, x.dtype)[:, None, :] * ops.ones_like(x[..., :1])  # (B, T, S)
            h = ops.concatenate([h, spks], axis=-1)

        skips, masks = [], [mask]
        for i in range(len(self.channels)):
            mask_i = masks[-1]
            h = self.down_resnets[i](h, mask_i, t_emb)
            out[f"down_blocks.{i}.0"] = h
            for j in range(self.num_blocks):
                h = self.down_blocks[i * self.num_blocks + j](h, mask_i, training=training)
                out[f"down_blocks.{i}.1.{j}"] = h
            skips.append(h)
            h = self.downsamples[i](torch_conv_padding(h * mask_i[..., None], 1, 1))
            out[f"down_blocks.{i}.2"] = h
            masks.append(mask_i[:, ::2])
        masks = masks[:-1]

        mask_mid = masks[-1]
        for i in range(self.num_mid_blocks):
            h = self.mid_resnets[i](h, mask_mid, t_emb)
            out[f"mid_blocks.{i}.0"] = h
            for j in range(self.num_blocks):
                h = self.mid_blocks[i * self.num_blocks + j](h, mask_mid, training=training)
                out[f"mid_blocks.{i}.1.{j}"] = h

        for i in range(len(self.channels)):
            mask_up = masks.pop()
            h = self.up_resnets[i](ops.concatenate([h, skips.pop()], axis=-1), mask_up, t_emb)
            out[f"up_blocks.{i}.0"] = h
            for j in range(self.num_blocks):
                h = self.up_blocks[i * self.num_blocks + j](h, mask_up, training=training)
                out[f"up_blocks.{i}.1.{j}"] = h
            h = h * mask_up[..., None]
            if i < len(self.channels) - 1:
                h = self.upsamples[i](h)
            else:
                h = self.upsamples[i](torch_conv_padding(h, 1, 1))
            out[f"up_blocks.{i}.2"] = h

        h = self.final_block(h, mask_up)
        y = self.final_proj(h * mask_up[..., None]) * mask[..., None]
        return (y, out) if return_intermediates else y

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape["x"][:-1]) + (self.out_channels,)

    def get_config(self):
        return {**super().get_config(), "in_channels": self.in_channels,
                "out_channels": self.out_channels, "channels": self.channels,
                "dropout_rate": self.dropout_rate, "head_dim": self.head_dim,
                "num_blocks": self.num_blocks, "num_mid_blocks": self.num_mid_blocks,
                "num_heads": self.num_heads, "activation": self.activation,
                "down_block_type": self.down_block_type, "mid_block_type": self.mid_block_type,
                "up_block_type": self.up_block_type}
