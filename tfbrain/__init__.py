"""tfbrain: Keras 3 / TensorFlow toolkit for 4D brain-fMRI foundation models.

Importing `tfbrain` is cheap (no TensorFlow): `load_preset`, `list_presets` and
`create_backbone` import the model families on first use.
"""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from tfbrain.version import __version__  # noqa: E402

_LAZY = {
    "load_preset": "tfbrain.models.loading",
    "list_presets": "tfbrain.models.loading",
    "create_backbone": "tfbrain.models.registry",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tfbrain' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
