"""Base class of every tfbrain backbone: functional Keras models with preset folders.

A preset folder (keras-hub layout) holds:
  config.json        {"class_name": registered name, "config": constructor arguments}
  model.weights.h5   Keras weights
  metadata.json      versions, parameter_count, input spec (name, shape, dtype) and
                     provenance (source, upstream hash, conversion date)
Data and serving code read only metadata.json, never a model class.
"""

import datetime
import json
import os
import pathlib
import shutil
import tempfile

import keras

from tfbrain.version import __version__

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"


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

    def input_spec_metadata(self) -> dict:
        """Name, shape (batch first, None for batch) and dtype of each model input."""
        return {t.name.split(":")[0]: {"shape": [None] + list(t.shape[1:]),
                                       "dtype": str(t.dtype)}
                for t in self.inputs}

    def save_to_preset(self, preset_dir, extra_metadata: dict | None = None):
        """Write config.json, model.weights.h5 and metadata.json atomically into `preset_dir`."""
        save_preset(self, preset_dir, extra_metadata)

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Load a backbone (or task model) from a preset name or folder."""
        from tfbrain.presets import load_preset  # import cycle: presets resolves classes
        model = load_preset(preset, load_weights=load_weights, **kwargs)
        if not isinstance(model, cls):
            raise ValueError(f"Preset {preset!r} holds a {type(model).__name__}, "
                             f"not a {cls.__name__}.")
        return model


def save_preset(model: keras.Model, preset_dir, extra_metadata: dict | None = None) -> pathlib.Path:
    """Save any registered Keras model as a preset folder (written to a temp dir, then renamed)."""
    preset_dir = pathlib.Path(preset_dir)
    preset_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = pathlib.Path(tempfile.mkdtemp(prefix=f".{preset_dir.name}.tmp-", dir=preset_dir.parent))
    try:
        config = {"class_name": keras.saving.get_registered_name(type(model)),
                  "config": model.get_config()}
        (tmp_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        model.save_weights(str(tmp_dir / WEIGHTS_FILE))
        inputs = {}
        for t in model.inputs:
            inputs[t.name.split(":")[0]] = {"shape": [None] + list(t.shape[1:]), "dtype": str(t.dtype)}
        metadata = {
            "tfbrain_version": __version__,
            "keras_version": keras.__version__,
            "parameter_count": int(model.count_params()),
            "date_saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "class_name": config["class_name"],
            "inputs": inputs,
        }
        metadata.update(extra_metadata or {})
        (tmp_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
        if preset_dir.exists():
            backup = preset_dir.with_name(preset_dir.name + ".old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(preset_dir, backup)
            os.replace(tmp_dir, preset_dir)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp_dir, preset_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return preset_dir
