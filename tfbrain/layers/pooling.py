"""Pooling a backbone's features to one vector per sample; the backbone says which.

  "token_mean"  mean over every axis but batch and channels: `(B, ..., C)` -> `(B, C)`
                (SwiFT, NeuroSTORM: the mean of the last stage's tokens)
  "cls_token"   the first token: `(B, N, C)` -> `(B, C)` (BrainMT)
  "latent_mean" mean over latents: `(B, L, C)` -> `(B, C)` (BiXT)
"""

import keras
from keras import ops

POOLING_MODES = ("token_mean", "cls_token", "latent_mean")


def pool_features(features, mode: str):
    """Pool `features` as `mode` says (see the module docstring)."""
    if mode in ("token_mean", "latent_mean"):
        return ops.mean(features, axis=tuple(range(1, len(features.shape) - 1)))
    if mode == "cls_token":
        return features[:, 0]
    raise ValueError(f"`pooling` must be one of {POOLING_MODES}. Received: pooling={mode!r}")


@keras.saving.register_keras_serializable(package="tfbrain")
class FeaturePool(keras.layers.Layer):
    """`pool_features` as a layer.

    Args:
        mode: one of "token_mean", "cls_token", "latent_mean".
    """

    def __init__(self, mode="token_mean", **kwargs):
        super().__init__(**kwargs)
        if mode not in POOLING_MODES:
            raise ValueError(f"`mode` must be one of {POOLING_MODES}. Received: mode={mode!r}")
        self.mode = mode

    def call(self, features):
        return pool_features(features, self.mode)

    def compute_output_shape(self, features_shape):
        return (features_shape[0], features_shape[-1])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
