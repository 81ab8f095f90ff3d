"""tfbrain: Keras 3 / TensorFlow toolkit for 4D brain-fMRI foundation models."""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from tfbrain.version import __version__  # noqa: E402
from tfbrain.presets import load_preset, list_presets  # noqa: E402
