"""Shared blocks used by more than one model family."""
from tfbrain.layers.selective_scan import selective_scan_jit  # noqa: F401
from tfbrain.layers.mamba_block import BiMambaBlock, MambaBlock  # noqa: F401
