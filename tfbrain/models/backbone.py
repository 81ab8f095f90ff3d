"""Base class of every tfbrain backbone: functional Keras models with preset folders.

A preset folder (keras-hub layout) holds:
  config.json        {"class_name": registered name, "config": constructor arguments}
  model.weights.h5   Keras weights
  metadata.json      versions, parameter_count, input spec (name, shape, dtype) and
                     provenance (source, upstream hash, conversion date)
Data and serving code read only metadata.json, never a model class.
"""

import keras

from tfbrain.presets import load_preset, save_preset


class Backbone(keras.Model):
    """A functional model whose constructor arguments are its whole config."""

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
        model = load_preset(preset, load_weights=load_weights, **kwargs)
        if not isinstance(model, cls):
            raise ValueError(f"Preset {preset!r} holds a {type(model).__name__}, "
                             f"not a {cls.__name__}.")
        return model
