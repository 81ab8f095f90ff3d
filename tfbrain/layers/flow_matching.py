"""Optimal-transport conditional flow matching (OT-CFM) around a vector-field estimator.

Upstream: shivammehta25/Matcha-TTS @ 108906c6, `matcha/models/components/flow_matching.py`
(`BASECFM`, `CFM`). Channels-last: samples, targets and conditions are `(B, T, C)`, masks
`(B, T)`.

  * Loss (`compute_loss`): t ~ U(0, 1) per sample, z ~ N(0, I);
    y_t = (1 - (1 - σ_min)·t)·z + t·x1, u = x1 - (1 - σ_min)·z;
    loss = Σ (v(y_t, mask, mu, t) - u)² / (Σ mask · C). As upstream, u is not masked, so
    padded frames add a parameter-independent constant to the reported value.
  * Sampling (`forward`/`solve_euler`): x_0 = z·temperature; explicit Euler over
    t_span = linspace(0, 1, n + 1) with a scalar t shared by the batch; t accumulates as
    t + dt and each dt is t_span[k + 1] - t, as upstream does in float32.

Random draws use TF's stateless ops from an explicit seed (or given `t`/`noise`), so exported
samplers are reproducible and a training step can pass a fresh `(2,)` seed tensor
(`keras.random.SeedGenerator.next()`); keras.random takes no tensor seeds.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfbrain.layers.unet_1d import MatchaDecoder


def euler_time_grid(num_steps: int) -> np.ndarray:
    """float32 `(num_steps + 1,)` grid, torch.linspace(0, 1, n + 1) in float32."""
    if int(num_steps) < 1:
        raise ValueError(f"`num_steps` must be >= 1. Received: num_steps={num_steps}")
    return np.linspace(0.0, 1.0, int(num_steps) + 1).astype(np.float32)


class FlowMatching(keras.layers.Layer):
    """OT-CFM with a Matcha U-Net estimator (upstream `CFM`).

    Args:
        estimator: dict of `MatchaDecoder` kwargs (its `in_channels` counts x, mu and the
            subject/speaker embedding), or a `MatchaDecoder`.
        sigma_min: float. σ_min of the OT path (1e-4 upstream).

    Call arguments:
        inputs: the estimator's dict ("x", "mask", "mu", "t"[, "spks"]); returns v.
    """

    def __init__(self, estimator, sigma_min=1e-4, **kwargs):
        super().__init__(**kwargs)
        if isinstance(estimator, MatchaDecoder):
            self.estimator = estimator
        else:
            self.estimator = MatchaDecoder(**dict(estimator), dtype=self.dtype_policy,
                                           name="estimator")
        self.sigma_min = float(sigma_min)

    def build(self, inputs_shape):
        self.estimator.build(inputs_shape)

    def call(self, inputs, training=False):
        return self.estimator(inputs, training=training)

    @staticmethod
    def _mask(mask, like):
        if mask is None:
            return ops.ones(ops.shape(like)[:2], like.dtype)
        mask = ops.cast(mask, like.dtype)
        if len(mask.shape) == 3:  # (B, T, 1) or torch's (B, 1, T)
            mask = ops.reshape(mask, ops.shape(like)[:2])
        return mask

    def loss(self, target, mask, mu, subject_embedding=None, t=None, noise=None, seed=None,
             training=False, return_details=False):
        """The OT-CFM loss (upstream `compute_loss`).

        Args:
            target: x1 `(B, T, C)`.
            mask: `(B, T)` float 0/1, or None for all valid.
            mu: condition `(B, T, C_mu)`.
            subject_embedding: optional `(B, S_dim)` (Matcha's `spks`).
            t: optional flow times with B elements (`(B,)` or torch's `(B, 1, 1)`); drawn
                U(0, 1) from `seed` when None.
            noise: optional z `(B, T, C)`; drawn N(0, I) from `seed` when None.
            seed: int or a stateless seed tensor `(2,)` for the draws.
            return_details: also return {"t", "noise", "y", "u", "estimate"}.

        Returns:
            The scalar loss (and the details).
        """
        target = ops.convert_to_tensor(target)
        batch = ops.shape(target)[0]
        if seed is None:
            seed = np.random.randint(0, 2 ** 31 - 1)
        if t is None:
            t = tf.random.stateless_uniform((batch,), _stateless(seed, 0), dtype=target.dtype)
        if noise is None:
            noise = tf.random.stateless_normal(ops.shape(target), _stateless(seed, 1),
                                               dtype=target.dtype)
        mask = self._mask(mask, target)
        t = ops.reshape(ops.cast(t, target.dtype), (-1,))  # (B,)
        t_b = t[:, None, None]
        y = (1.0 - (1.0 - self.sigma_min) * t_b) * noise + t_b * target
        u = target - (1.0 - self.sigma_min) * noise
        inputs = {"x": y, "mask": mask, "mu": mu, "t": t}
        if subject_embedding is not None:
            inputs["spks"] = subject_embedding
        estimate = self.estimator(inputs, training=training)
        loss = ops.sum(ops.square(estimate - u)) / (ops.sum(mask) * target.shape[-1])
        if return_details:
            return loss, {"t": t, "noise": noise, "y": y, "u": u, "estimate": estimate}
        return loss

    def sample(self, mu, mask, num_steps, temperature=1.0, subject_embedding=None, noise=None,
               seed=None, return_trajectory=False):
        """Euler solve from x_0 = noise·temperature (upstream `forward` + `solve_euler`).

        Args:
            mu: `(B, T, C_mu)`.
            mask: `(B, T)` or None.
            num_steps: int (static; the loop is unrolled).
            temperature: float or scalar tensor.
            subject_embedding: optional `(B, S_dim)`.
            noise: optional z `(B, T, out_channels)`; drawn from `seed` when None.
            seed: int or stateless seed `(2,)`.
            return_trajectory: also return {"x": [...], "t": [...], "v": [...]} per step
                (the estimator's input x, scalar t and output).

        Returns:
            `(B, T, out_channels)` (and the trajectory).
        """
        mu = ops.convert_to_tensor(mu)
        shape = tuple(ops.shape(mu)[:2]) + (self.estimator.out_channels,)
        if noise is None:
            if seed is None:
                seed = np.random.randint(0, 2 ** 31 - 1)
            noise = tf.random.stateless_normal(shape, _stateless(seed, 0), dtype=mu.dtype)
        mask = self._mask(mask, mu)
        x = ops.cast(noise, mu.dtype) * ops.cast(temperature, mu.dtype)
        grid = euler_time_grid(num_steps)
        t = grid[0]
        dt = np.float32(grid[1] - grid[0])
        trajectory = {"x": [], "t": [], "v": []}
        for step in range(1, len(grid)):
            inputs = {"x": x, "mask": mask, "mu": mu, "t": ops.convert_to_tensor(t, mu.dtype)}
            if subject_embedding is not None:
                inputs["spks"] = subject_embedding
            v = self.estimator(inputs, training=False)
            trajectory["x"].append(x)
            trajectory["t"].append(t)
            trajectory["v"].append(v)
            x = x + dt * v
            t = np.float32(t + dt)
            if step < len(grid) - 1:
                dt = np.float32(grid[step + 1] - t)
        return (x, trajectory) if return_trajectory else x

    def get_config(self):
        return {**super().get_config(),
                "estimator": self.estimator.get_config() | {"name": "estimator"},
                "sigma_min": self.sigma_min}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        estimator = {k: v for k, v in config.pop("estimator").items()
                     if k not in ("name", "trainable", "dtype")}
        return cls(estimator=estimator, **config)


def _stateless(seed, offset):
    """A stateless `(2,)` int32 seed for draw `offset` from an int or `(2,)` seed."""
    if isinstance(seed, (int, np.integer)):
        return ops.convert_to_tensor(np.array([int(seed) % (2 ** 31 - 1), offset], np.int32))
    seed = ops.cast(ops.reshape(seed, (-1,)), "int32")
    return ops.stack([seed[0], seed[-1] + offset])
