"""Window augmentations as TF ops: one random draw per window, applied to all its frames.

Each function takes a (D, H, W, T, 1) float window and a stateless seed of shape (2,), so
results are reproducible under a parallel `map`. `Augment` chains them for `windows(augment=...)`.
"""

import dataclasses

import tensorflow as tf


def random_shift(window: tf.Tensor, seed: tf.Tensor, max_shift: int = 3) -> tf.Tensor:
    """Translate by a random integer voxel offset per spatial axis (the affine jitter we
    support: rotation/scaling would need trilinear resampling of 96^3 x T, too slow for the
    input pipeline). Voxels shifted in take the window's minimum (the background)."""
    shifts = tf.random.stateless_uniform((3,), seed, -max_shift, max_shift + 1, dtype=tf.int32)
    background = tf.reduce_min(window)
    out = window
    for axis in range(3):
        size = tf.shape(window)[axis]
        rolled = tf.roll(out, shifts[axis], axis=axis)
        index = tf.range(size) - shifts[axis]
        valid = (index >= 0) & (index < size)
        shape = [1] * 5
        shape[axis] = -1
        out = tf.where(tf.reshape(valid, shape), rolled, background)
    return out


def gaussian_noise(window: tf.Tensor, seed: tf.Tensor, max_std: float = 0.1) -> tf.Tensor:
    """Add N(0, s^2) noise with s drawn uniformly from [0, max_std] once per window."""
    std = tf.random.stateless_uniform((), seed, 0.0, max_std)
    noise = tf.random.stateless_normal(tf.shape(window), seed + 1, dtype=window.dtype)
    return window + tf.cast(std, window.dtype) * noise


def gaussian_smoothing(window: tf.Tensor, seed: tf.Tensor, max_sigma: float = 1.0, radius: int = 2) -> tf.Tensor:
    """Separable 3D Gaussian blur (sigma in voxels drawn from [0.1, max_sigma]) of every frame."""
    sigma = tf.random.stateless_uniform((), seed, 0.1, max_sigma)
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(taps / sigma))
    kernel = tf.cast(kernel / tf.reduce_sum(kernel), window.dtype)
    x = tf.transpose(window[..., 0], (3, 0, 1, 2))[..., None]  # (T, D, H, W, 1): frames as batch
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[axis] = 2 * radius + 1
        x = tf.nn.conv3d(x, tf.reshape(kernel, shape), strides=[1] * 5, padding="SAME")
    return tf.transpose(x[..., 0], (1, 2, 3, 0))[..., None]  # (D, H, W, T, 1)


@dataclasses.dataclass(frozen=True)
class Augment:
    """Random shift, noise and smoothing, each applied with probability `probability`.

    Use as `windows(..., augment=Augment(max_shift=3, noise_std=0.1))`. Set an amount to
    0 to turn that augmentation off.
    """

    max_shift: int = 3
    noise_std: float = 0.1
    smoothing_sigma: float = 0.0
    probability: float = 0.5

    def __call__(self, window: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        seed = tf.cast(seed, tf.int64)
        steps = [(self.max_shift, lambda w, s: random_shift(w, s, self.max_shift)),
                 (self.noise_std, lambda w, s: gaussian_noise(w, s, self.noise_std)),
                 (self.smoothing_sigma, lambda w, s: gaussian_smoothing(w, s, self.smoothing_sigma))]
        for i, (amount, step) in enumerate(steps):
            if not amount:
                continue
            step_seed = seed + [0, 10 * (i + 1)]
            apply = tf.random.stateless_uniform((), step_seed) < self.probability
            window = tf.cond(apply, lambda w=window, s=step_seed: step(w, s + [0, 1]), lambda w=window: w)
        return window
