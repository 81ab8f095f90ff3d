"""Base class of every tfbrain backbone: functional Keras models with preset folders.

A preset folder (keras-hub layout) holds:
  config.json        {"class_name": registered name, "config": constructor arguments}
  model.weights.h5   Keras weights
  metadata.json      versions, parameter_count, input spec (name, shape, dtype) and
                     provenance (source, upstream hash, conversion date)
Data and serving code read only metadata.json, never a model class.
"""

import keras

from tfbrain.presets import save_preset


class Backbone(keras.Model):
    """A functional model whose constructor arguments are its whole config.

    Subclasses set `pooling` (see `tfbrain.layers.pooling`): how a Task turns the backbone's
    output into one vector per sample, for heads, `Task.embed` and the export's `embed`
    signature alike.
    """

    pooling = "token_mean"

    def __init__(self, *args, dtype=None, **kwargs):
        super().__init__(*args, dtype=dtype, **kwargs)
        if dtype is not None:
            # a functional Model does not keep the `dtype` it is given (its layers do); keep it
            # so that get_config, and so a preset and an export, record e.g. mixed_bfloat16
            self.dtype_policy = keras.dtype_policies.get(dtype)

    def serving_overrides(self) -> dict:
        """Constructor arguments that a serving graph needs changed (for example an XLA-only
        code path switched off: TF-Serving refuses functions that must be XLA-compiled).
        `tfbrain export` rebuilds the backbone with them and the same weights."""
        return {}

    def for_serving(self):
        """This backbone, or a rebuilt copy with `serving_overrides()` and the same weights."""
        overrides = self.serving_overrides()
        if not overrides:
            return self
        clone = type(self).from_config({**self.get_config(), **overrides})
        clone.set_weights(self.get_weights())
        return clone

    def pool(self, features):
        """Backbone output -> `(B, C)` as `self.pooling` says."""
        from tfbrain.layers.pooling import pool_features

        return pool_features(features, self.pooling)

    def get_config(self):
        # Functional models serialise their graph; a backbone is rebuilt from its
        # constructor arguments instead, as keras-hub does.
        return {"name": self.name, "trainable": self.trainable,
                "dtype": keras.dtype_policies.serialize(self.dtype_policy)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)

    def save_to_preset(self, preset_dir, extra_metadata: dict | None = None):
        """Write config.json, model.weights.h5 and metadata.json atomically into `preset_dir`."""
        save_preset(self, preset_dir, extra_metadata)

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Load a backbone (or task model) from a preset name or folder."""
        from tfbrain.models.loading import load_preset_as  # imports every family

        return load_preset_as(cls, preset, load_weights=load_weights, **kwargs)


def check_volume_geometry(volume_shape, patch_size, num_stages, max_frames) -> None:
    """Constructor checks shared by the 4D Swin backbones (SwiFT, NeuroSTORM)."""
    if len(volume_shape) != 5:
        raise ValueError("`volume_shape` must be (D, H, W, T, C_in). "
                         f"Received: volume_shape={volume_shape}")
    if len(patch_size) != 4 or patch_size[3] != 1:
        raise ValueError("`patch_size` must be (pd, ph, pw, 1): time is not patched. "
                         f"Received: patch_size={patch_size}")
    if num_stages < 1:
        raise ValueError("`depths` needs at least one stage.")
    grid = [volume_shape[a] // patch_size[a] for a in range(3)]
    for a in range(3):
        if volume_shape[a] % patch_size[a]:
            raise ValueError(f"volume_shape axis {a} ({volume_shape[a]}) must be a multiple of "
                             f"patch_size ({patch_size[a]}). Received: volume_shape={volume_shape}, "
                             f"patch_size={patch_size}")
        if grid[a] % 2 ** (num_stages - 1):
            raise ValueError(f"The patch grid {tuple(grid)} must be divisible by 2 at each of the "
                             f"{num_stages - 1} merges. Received: volume_shape={volume_shape}, "
                             f"patch_size={patch_size}, {num_stages} stages")
    if volume_shape[3] > max_frames:
        raise ValueError(f"volume_shape has T={volume_shape[3]} frames but max_frames={max_frames}; "
                         "the temporal position table cannot cover longer windows.")


def check_fmri_input(model_name: str, fmri, volume_shape, max_frames,
                     axes: str = "(B, D, H, W, T, C)") -> None:
    """Clear errors for the usual input mistakes, before Keras' generic input check.
    `axes` names the six axes in the message (BrainMT reads NIfTI axes: B, X, Y, Z, T, C)."""
    shape = getattr(fmri, "shape", None)
    if shape is None:
        return
    expected = f"(batch, {', '.join(str(v) for v in volume_shape)})"
    if len(shape) != 6:
        raise ValueError(f"{model_name} expects fmri windows of shape {expected} "
                         f"{axes}, channels-last; received rank {len(shape)} "
                         f"shape {tuple(shape)}")
    if tuple(shape[1:4]) != tuple(volume_shape[:3]) or shape[5] != volume_shape[4]:
        raise ValueError(f"{model_name} expects fmri windows of shape {expected}; received "
                         f"{tuple(shape)}. The spatial size is fixed by the position tables.")
    if shape[4] is not None and shape[4] > max_frames:
        raise ValueError(f"{model_name} expects at most {max_frames} frames (`max_frames`, the "
                         f"temporal position table's length), shape {expected}; "
                         f"received T={shape[4]} in {tuple(shape)}")
    if shape[4] is not None and shape[4] != volume_shape[3]:
        raise ValueError(f"{model_name} was built for T={volume_shape[3]} frames {expected}; "
                         f"received T={shape[4]}. For shorter windows rebuild it with "
                         f"volume_shape T={shape[4]} and max_frames={max_frames}, then load the "
                         "same weights.")
