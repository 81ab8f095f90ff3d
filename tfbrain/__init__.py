"""tfbrain: Keras 3 / TensorFlow toolkit for 4D brain-fMRI foundation models.

Importing `tfbrain` is cheap (no TensorFlow): `load_preset`, `list_presets` and
`create_backbone` import the model families on first use.
"""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow's default CPU allocator hands every large buffer back to the OS, so each XLA step
# page-faults its temporaries in afresh: that, not the arithmetic, made SwiFT's attention
# passes 3x slower (docs/models/swift.md). The BFC allocator keeps and reuses them. Read when
# TF first allocates, so it applies if tfbrain is imported before the first op; an explicit
# TF_CPU_ALLOCATOR_USE_BFC=false wins.
_os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

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
