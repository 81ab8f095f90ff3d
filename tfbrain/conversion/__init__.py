"""Model-agnostic porting of upstream PyTorch state dicts into Keras weights.

`StateDictPorter` hands out torch-named tensors (with the usual layout transposes), pairs
each with a Keras variable, checks shapes, and fails when a tensor is missing or left
unused. Families build their converters on it (`<family>_conversion.py`); torch is never
imported here (state dicts arrive as NumPy arrays, see `tfbrain.checkpoints`).
"""

from tfbrain.conversion.porter import StateDictPorter, split_by_prefix

__all__ = ["StateDictPorter", "split_by_prefix"]
