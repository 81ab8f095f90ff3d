"""Load any tfbrain model (backbone or Task) from a preset name or folder.

Importing this module imports every family (they register their classes and preset names),
then `tfbrain.presets` reads the folder.
"""

import keras

import tfbrain.models  # noqa: F401  (registers every family's classes and preset names)
from tfbrain.presets import instantiate_preset, read_preset_config, registered_presets


def load_preset(preset, load_weights: bool = True, **config_overrides) -> keras.Model:
    """Build the model described by a preset's config.json and load its weights."""
    folder, config = read_preset_config(preset)
    return instantiate_preset(folder, config, load_weights=load_weights, **config_overrides)


def load_preset_as(cls, preset, load_weights: bool = True, **config_overrides) -> keras.Model:
    """`load_preset`, checking that the preset holds a `cls`."""
    model = load_preset(preset, load_weights=load_weights, **config_overrides)
    if not isinstance(model, cls):
        raise ValueError(f"Preset {preset!r} holds a {type(model).__name__}, not a {cls.__name__}.")
    return model


def list_presets() -> dict[str, dict]:
    """Every registered preset name: {name: {"description", "how_to_make"}}."""
    return registered_presets()
