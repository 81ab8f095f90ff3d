"""Mamba (v1) mixer blocks: `MambaBlock` and the Vision Mamba v2 `BiMambaBlock`.

Ports of state-spaces/mamba@e9594ce1 `mamba_ssm/modules/mamba_simple.py::Mamba` and of the
bidirectional `bimamba_type="v2"` variant in hustvl/Vim@dd0358ad (its `mamba-1p1p1` fork).
Shared by NeuroSTORM (inside 4D windows) and BrainMT (whole sequence), hence in tfbrain/layers.

How the port differs: the scan is `tfbrain.layers.selective_scan` (XLA loops, hand-written
gradient) instead of the CUDA kernel; the causal depthwise conv is written as K shifted
multiply-adds; tensors stay channels-last (B, L, C) throughout; there is no decode-step cache.

Letters: B batch, L sequence length, C = hidden_dim (d_model), E = d_inner = expand * C,
N = state_dim, R = dt_rank, K = conv_kernel_size.
"""

import math

import keras
import numpy as np
from keras import ops

from tfbrain.layers.selective_scan import selective_scan_channels_last

_JIT_CHOICES = (None, "auto", True, False)


def _torch_linear_init():
    """PyTorch's default Linear/Conv init (kaiming-uniform, a=sqrt(5)): U(+-1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in",
                                              distribution="uniform")


@keras.saving.register_keras_serializable(package="tfbrain")
class S4DRealLogInitializer(keras.initializers.Initializer):
    """A_log[e, n] = log(n + 1): A = -exp(A_log) = -[1, ..., N] for every channel (S4D-real)."""

    def __call__(self, shape, dtype=None):
        return ops.log(ops.tile(ops.arange(1, shape[-1] + 1, dtype="float32")[None],
                                (shape[0], 1)))


@keras.saving.register_keras_serializable(package="tfbrain")
class MambaDtBiasInitializer(keras.initializers.Initializer):
    """dt_proj bias = inverse softplus of dt ~ exp(U(log dt_min, log dt_max)), dt >= floor.

    So that softplus(bias) starts log-uniform in [dt_min, dt_max], as upstream.
    """

    def __init__(self, dt_min=1e-3, dt_max=0.1, dt_init_floor=1e-4, seed=None):
        self.dt_min, self.dt_max, self.dt_init_floor, self.seed = (dt_min, dt_max,
                                                                   dt_init_floor, seed)

    def __call__(self, shape, dtype=None):
        uniform = keras.random.uniform(shape, seed=self.seed, dtype="float32")
        dt = ops.exp(uniform * (math.log(self.dt_max) - math.log(self.dt_min))
                     + math.log(self.dt_min))
        dt = ops.maximum(dt, self.dt_init_floor)
        return dt + ops.log(-ops.expm1(-dt))  # inverse of softplus

    def get_config(self):
        return {"dt_min": self.dt_min, "dt_max": self.dt_max,
                "dt_init_floor": self.dt_init_floor, "seed": self.seed}


@keras.saving.register_keras_serializable(package="tfbrain")
class MambaScanBranch(keras.layers.Layer):
    """One direction of the Mamba inner path: causal depthwise conv + SiLU, x_proj, dt_proj,
    selective scan with D skip, z gate, dt bias and softplus.

    Holds `conv_kernel` (K, E), `conv_bias` (E), `x_proj` (E -> R + 2N, no bias),
    `dt_proj` (R -> E, no bias; its bias `dt_bias` (E) is the scan's delta_bias), `A_log`
    (E, N) and `D` (E). Built by `MambaBlock`/`BiMambaBlock`; the arguments mirror theirs.

    Call arguments:
        x: `(B, L, E)` the in_proj "x" half.
        z: `(B, L, E)` the in_proj "z" half (the gate).
    Returns `(B, L, E)`.
    """

    def __init__(self, inner_dim, state_dim=16, conv_kernel_size=4, dt_rank=4,
                 dt_min=1e-3, dt_max=0.1, dt_init="random", dt_scale=1.0,
                 dt_init_floor=1e-4, use_dt_bias_init=True, use_conv_bias=True,
                 chunk_size=None, jit=None, **kwargs):
        super().__init__(**kwargs)
        if dt_init not in ("random", "constant"):
            raise ValueError("`dt_init` must be 'random' or 'constant'. "
                             f"Received: dt_init={dt_init!r}")
        if jit not in _JIT_CHOICES:
            raise ValueError(f"`jit` must be one of {_JIT_CHOICES}. Received: jit={jit!r}")
        self.inner_dim = inner_dim
        self.state_dim = state_dim
        self.conv_kernel_size = conv_kernel_size
        self.dt_rank = dt_rank
        self.dt_min = dt_min
        self.dt_max = dt_max
        self.dt_init = dt_init
        self.dt_scale = dt_scale
        self.dt_init_floor = dt_init_floor
        self.use_dt_bias_init = use_dt_bias_init
        self.use_conv_bias = use_conv_bias
        self.chunk_size = chunk_size
        self.jit = jit

    def build(self, x_shape, z_shape=None):
        inner, kernel = self.inner_dim, self.conv_kernel_size
        conv_limit = 1.0 / math.sqrt(kernel)  # torch default for a depthwise Conv1d: fan_in = K
        self.conv_kernel = self.add_weight(
            name="conv_kernel", shape=(kernel, inner),
            initializer=keras.initializers.RandomUniform(-conv_limit, conv_limit))
        self.conv_bias = (self.add_weight(
            name="conv_bias", shape=(inner,),
            initializer=keras.initializers.RandomUniform(-conv_limit, conv_limit))
            if self.use_conv_bias else None)
        self.x_proj = keras.layers.Dense(self.dt_rank + 2 * self.state_dim, use_bias=False,
                                         kernel_initializer=_torch_linear_init(),
                                         dtype=self.dtype_policy, name="x_proj")
        self.x_proj.build((None, None, inner))
        dt_std = self.dt_rank ** -0.5 * self.dt_scale
        dt_kernel_init = (keras.initializers.Constant(dt_std) if self.dt_init == "constant"
                          else keras.initializers.RandomUniform(-dt_std, dt_std))
        self.dt_proj = keras.layers.Dense(inner, use_bias=False,
                                          kernel_initializer=dt_kernel_init,
                                          dtype=self.dtype_policy, name="dt_proj")
        self.dt_proj.build((None, None, self.dt_rank))
        # Vim's backward branch gets no inverse-softplus init; its model init zeroes that bias.
        dt_bias_init = (MambaDtBiasInitializer(self.dt_min, self.dt_max, self.dt_init_floor)
                        if self.use_dt_bias_init else "zeros")
        self.dt_bias = self.add_weight(name="dt_bias", shape=(inner,), initializer=dt_bias_init)
        # A_log and D stay float32 under mixed precision, as upstream.
        self.A_log = self.add_weight(name="A_log", shape=(inner, self.state_dim),
                                     initializer=S4DRealLogInitializer(), dtype="float32")
        self.D = self.add_weight(name="D", shape=(inner,), initializer="ones", dtype="float32")

    def causal_conv(self, x):
        """Depthwise causal conv: out_t = b + sum_k w[k] * x_{t-(K-1)+k} (zeros before t=0)."""
        kernel = self.conv_kernel_size
        x_padded = ops.pad(x, [[0, 0], [kernel - 1, 0], [0, 0]])  # (B, L + K - 1, E)
        length = ops.shape(x)[1]
        out = 0.0
        for k in range(kernel):
            out = out + x_padded[:, k:k + length] * ops.cast(self.conv_kernel[k], x.dtype)
        if self.conv_bias is not None:
            out = out + ops.cast(self.conv_bias, x.dtype)
        return out

    def call(self, x, z):
        x = ops.silu(self.causal_conv(x))  # (B, L, E)
        x_db = self.x_proj(x)  # (B, L, R + 2N), split in upstream's order dt | B | C
        dt = x_db[..., :self.dt_rank]
        B = x_db[..., self.dt_rank:self.dt_rank + self.state_dim]  # (B, L, N)
        C = x_db[..., self.dt_rank + self.state_dim:]
        delta = self.dt_proj(dt)  # (B, L, E), bias added inside the scan before softplus
        A = -ops.exp(ops.cast(self.A_log, "float32"))  # (E, N)
        y = selective_scan_channels_last(x, delta, A, B, C, D=self.D, z=z,
                                         delta_bias=self.dt_bias, delta_softplus=True,
                                         chunk_size=self.chunk_size, jit=self.jit)
        return ops.cast(y, x.dtype)

    def compute_output_shape(self, x_shape, z_shape=None):
        return tuple(x_shape)

    def get_config(self):
        return {**super().get_config(), "inner_dim": self.inner_dim,
                "state_dim": self.state_dim, "conv_kernel_size": self.conv_kernel_size,
                "dt_rank": self.dt_rank, "dt_min": self.dt_min, "dt_max": self.dt_max,
                "dt_init": self.dt_init, "dt_scale": self.dt_scale,
                "dt_init_floor": self.dt_init_floor, "use_dt_bias_init": self.use_dt_bias_init,
                "use_conv_bias": self.use_conv_bias, "chunk_size": self.chunk_size,
                "jit": self.jit}


@keras.saving.register_keras_serializable(package="tfbrain")
class MambaBlock(keras.layers.Layer):
    """Mamba (v1) mixer, upstream `mamba_simple.Mamba` semantics and initialisation.

    in_proj (C -> 2E, split into x | z), causal depthwise conv (K) + SiLU on x, x_proj to
    [dt | B | C], dt_proj (its bias is the scan's delta_bias, softplus on), S4D-real A,
    D = 1, z gate, out_proj (E -> C).

    Args:
        hidden_dim: int. Token width C (upstream d_model).
        state_dim: int. SSM state size N (d_state). Defaults to 16.
        conv_kernel_size: int. Causal conv width K (d_conv). Defaults to 4.
        expand: int. E = expand * C. Defaults to 2.
        dt_rank: int or "auto" (ceil(C / 16)).
        dt_min, dt_max, dt_init, dt_scale, dt_init_floor: dt initialisation, as upstream.
        use_conv_bias: bool. Bias of the depthwise conv (upstream conv_bias, True).
        use_bias: bool. Bias of in_proj and out_proj (upstream bias, False).
        chunk_size: int or None. Scan steps per loop chunk (None: the scan's default).
        jit: None, "auto", True or False. The scan's jit switch (None follows
            `selective_scan_jit`; see tfbrain/layers/selective_scan.py).

    Call arguments:
        tokens: `(B, L, C)`; L must be known when the call is traced.
    Returns `(B, L, C)`.
    """

    def __init__(self, hidden_dim, state_dim=16, conv_kernel_size=4, expand=2, dt_rank="auto",
                 dt_min=1e-3, dt_max=0.1, dt_init="random", dt_scale=1.0, dt_init_floor=1e-4,
                 use_conv_bias=True, use_bias=False, chunk_size=None, jit=None, **kwargs):
        super().__init__(**kwargs)
        if dt_rank != "auto" and (not isinstance(dt_rank, int) or dt_rank < 1):
            raise ValueError("`dt_rank` must be 'auto' or a positive int. "
                             f"Received: dt_rank={dt_rank!r}")
        if jit not in _JIT_CHOICES:
            raise ValueError(f"`jit` must be one of {_JIT_CHOICES}. Received: jit={jit!r}")
        self.hidden_dim = hidden_dim
        self.state_dim = state_dim
        self.conv_kernel_size = conv_kernel_size
        self.expand = expand
        self.dt_rank = dt_rank
        self.dt_min = dt_min
        self.dt_max = dt_max
        self.dt_init = dt_init
        self.dt_scale = dt_scale
        self.dt_init_floor = dt_init_floor
        self.use_conv_bias = use_conv_bias
        self.use_bias = use_bias
        self.chunk_size = chunk_size
        self.jit = jit
        self.inner_dim = int(expand * hidden_dim)
        self.resolved_dt_rank = (math.ceil(hidden_dim / 16) if dt_rank == "auto" else dt_rank)

    def _branch(self, name, use_dt_bias_init=True):
        return MambaScanBranch(
            self.inner_dim, state_dim=self.state_dim, conv_kernel_size=self.conv_kernel_size,
            dt_rank=self.resolved_dt_rank, dt_min=self.dt_min, dt_max=self.dt_max,
            dt_init=self.dt_init, dt_scale=self.dt_scale, dt_init_floor=self.dt_init_floor,
            use_dt_bias_init=use_dt_bias_init, use_conv_bias=self.use_conv_bias,
            chunk_size=self.chunk_size, jit=self.jit, dtype=self.dtype_policy, name=name)

    def build(self, tokens_shape):
        if tokens_shape[-1] != self.hidden_dim:
            raise ValueError(f"The last axis of `tokens` must be hidden_dim={self.hidden_dim}. "
                             f"Received: tokens.shape={tokens_shape}")
        self.in_proj = keras.layers.Dense(2 * self.inner_dim, use_bias=self.use_bias,
                                          kernel_initializer=_torch_linear_init(),
                                          dtype=self.dtype_policy, name="in_proj")
        self.in_proj.build(tokens_shape)
        inner_shape = (*tokens_shape[:-1], self.inner_dim)
        self.forward_branch = self._branch("forward")
        self.forward_branch.build(inner_shape, inner_shape)
        self.out_proj = keras.layers.Dense(self.hidden_dim, use_bias=self.use_bias,
                                           kernel_initializer=_torch_linear_init(),
                                           dtype=self.dtype_policy, name="out_proj")
        self.out_proj.build(inner_shape)

    def call(self, tokens):
        x, z = ops.split(self.in_proj(tokens), 2, axis=-1)  # each (B, L, E)
        return self.out_proj(self.forward_branch(x, z))

    def compute_output_shape(self, tokens_shape):
        return tuple(tokens_shape)

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim,
                "state_dim": self.state_dim, "conv_kernel_size": self.conv_kernel_size,
                "expand": self.expand, "dt_rank": self.dt_rank, "dt_min": self.dt_min,
                "dt_max": self.dt_max, "dt_init": self.dt_init, "dt_scale": self.dt_scale,
                "dt_init_floor": self.dt_init_floor, "use_conv_bias": self.use_conv_bias,
                "use_bias": self.use_bias, "chunk_size": self.chunk_size, "jit": self.jit}


@keras.saving.register_keras_serializable(package="tfbrain")
class BiMambaBlock(MambaBlock):
    """Bidirectional Mamba mixer, Vision Mamba `bimamba_type="v2"`.

    in_proj, out_proj and the gate z are shared; the backward direction has its own conv,
    x_proj, dt_proj, A_log and D and runs on the time-reversed x and z. The outputs are summed
    in token order and halved when `use_divide_out` (every released Vim model), then projected
    once. The backward dt bias starts at zero: Vim's model init zeroes it (softplus -> 0.693).

    Args:
        use_divide_out: bool. Halve the sum (upstream if_divide_out). Defaults to True.
        Other arguments as `MambaBlock`.

    Call arguments:
        tokens: `(B, L, C)`. Returns `(B, L, C)`.
    """

    def __init__(self, hidden_dim, use_divide_out=True, **kwargs):
        super().__init__(hidden_dim, **kwargs)
        self.use_divide_out = use_divide_out

    def build(self, tokens_shape):
        super().build(tokens_shape)
        inner_shape = (*tokens_shape[:-1], self.inner_dim)
        self.backward_branch = self._branch("backward", use_dt_bias_init=False)
        self.backward_branch.build(inner_shape, inner_shape)

    def call(self, tokens):
        x, z = ops.split(self.in_proj(tokens), 2, axis=-1)  # each (B, L, E)
        y_forward = self.forward_branch(x, z)
        # x and z are both reversed so the gate stays with its token.
        y_backward = self.backward_branch(ops.flip(x, axis=1), ops.flip(z, axis=1))
        y = y_forward + ops.flip(y_backward, axis=1)
        if self.use_divide_out:
            y = y * 0.5
        return self.out_proj(y)

    def get_config(self):
        return {**super().get_config(), "use_divide_out": self.use_divide_out}
