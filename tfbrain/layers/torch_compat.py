"""Small helpers for numerical parity with PyTorch modules.

Keras and PyTorch differ in defaults that change numbers: LayerNorm's epsilon (Keras 1e-3,
torch 1e-5), convolution padding (torch pads `padding` on both sides of every axis; Keras'
"same" pads asymmetrically for even sizes with stride 2) and GELU (exact erf in torch's
`nn.GELU()`, tanh approximation with `approximate="tanh"`). Ports state these explicitly.
"""

import keras
from keras import ops

TORCH_LAYER_NORM_EPSILON = 1e-5  # torch.nn.LayerNorm's default


def torch_layer_norm(epsilon=TORCH_LAYER_NORM_EPSILON, **kwargs) -> keras.layers.LayerNormalization:
    """A Keras LayerNormalization over the last axis with torch's default epsilon."""
    return keras.layers.LayerNormalization(epsilon=epsilon, **kwargs)


def torch_conv_padding(x, padding: int | tuple, num_spatial_axes: int):
    """Zero-pad channels-last `x` symmetrically by `padding` on each spatial axis,
    as `torch.nn.ConvNd(padding=p)` does, so that a following "valid" conv matches torch.

    Args:
        x: `(B, *spatial, C)`.
        padding: int or one int per spatial axis.
        num_spatial_axes: 1, 2 or 3.
    """
    if isinstance(padding, int):
        padding = (padding,) * num_spatial_axes
    if len(padding) != num_spatial_axes:
        raise ValueError(f"`padding` needs {num_spatial_axes} entries. Received: padding={padding}")
    if not any(padding):
        return x
    return ops.pad(x, [(0, 0)] + [(p, p) for p in padding] + [(0, 0)])


def torch_conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0,
                           dilation: int = 1) -> int:
    """Output length of a torch convolution along one axis (floor rule)."""
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def gelu(x, approximate: bool = False):
    """GELU with torch's default (exact erf) unless `approximate` asks for tanh."""
    return keras.activations.gelu(x, approximate=approximate)
