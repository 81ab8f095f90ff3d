"""Porting mamba_ssm `Mamba` (v1) and Vim's bidirectional v2 mixers, shared by NeuroSTORM and
BrainMT (and any other family that uses `tfbrain.layers.mamba_block`)."""

import numpy as np

from tfbrain.conversion.porter import StateDictPorter

# (B, E, 1, K) depthwise conv1d (E, 1, K) -> Keras (K, E)
_conv1d_depthwise = lambda a: a[:, 0, :].T  # noqa: E731


def port_mamba(porter: StateDictPorter, block, prefix: str) -> None:
    """Queue every tensor of a built `MambaBlock` or `BiMambaBlock` from `prefix` + torch names
    (`in_proj.weight`, `conv1d.weight`, `x_proj.weight`, `dt_proj.*`, `A_log`, `D`,
    `out_proj.weight`; Vim v2's backward direction uses the `_b` names)."""
    porter.port(block.in_proj.kernel, prefix + "in_proj.weight", np.transpose)
    porter.port(block.out_proj.kernel, prefix + "out_proj.weight", np.transpose)
    if block.use_bias:
        porter.port(block.in_proj.bias, prefix + "in_proj.bias")
        porter.port(block.out_proj.bias, prefix + "out_proj.bias")
    branches = [(block.forward_branch, "")]
    if getattr(block, "backward_branch", None) is not None:
        branches.append((block.backward_branch, "_b"))
    for branch, suffix in branches:
        porter.port(branch.conv_kernel, f"{prefix}conv1d{suffix}.weight", _conv1d_depthwise)
        if branch.conv_bias is not None:
            porter.port(branch.conv_bias, f"{prefix}conv1d{suffix}.bias")
        porter.port(branch.x_proj.kernel, f"{prefix}x_proj{suffix}.weight", np.transpose)
        porter.port(branch.dt_proj.kernel, f"{prefix}dt_proj{suffix}.weight", np.transpose)
        porter.port(branch.dt_bias, f"{prefix}dt_proj{suffix}.bias")
        porter.port(branch.A_log, prefix + ("A_b_log" if suffix else "A_log"))
        porter.port(branch.D, prefix + ("D_b" if suffix else "D"))


def load_mamba(block, state_dict: dict, prefix: str = "") -> None:
    """Load one Mamba block from torch-named arrays right away (tests, small scripts); keys
    that are not this block's are left alone."""
    porter = StateDictPorter(state_dict, type(block).__name__)
    port_mamba(porter, block, prefix)
    porter.finish(allow_unused=True)
