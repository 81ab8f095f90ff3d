"""`StateDictPorter`: torch-named arrays -> Keras variables, every key accounted for.

Layout rules (torch -> Keras, channels-last):
  Linear.weight (out, in)                 -> Dense.kernel (in, out)
  Conv{1,2,3}d.weight (out, in/g, *k)     -> Conv kernel (*k, in/g, out)
  depthwise Conv (C, 1, *k)               -> DepthwiseConv kernel (*k, C, 1)
  LayerNorm/BatchNorm weight, bias        -> gamma, beta (+ moving_mean/variance)
"""

import numpy as np


def split_by_prefix(state_dict: dict, prefixes: dict[str, str], rest: str | None = None) -> dict:
    """Split a state dict into parts by key prefix, prefixes stripped.

    Args:
        state_dict: torch-named arrays.
        prefixes: {prefix: part name}, tried in order (e.g. {"model.": "backbone",
            "output_head.": "head"} for a Lightning checkpoint).
        rest: part name for keys with none of the prefixes; None drops them.

    Returns:
        {part name: {stripped key: array}} with every part present (possibly empty).
    """
    parts = {name: {} for name in prefixes.values()}
    if rest is not None:
        parts.setdefault(rest, {})
    for key, value in state_dict.items():
        for prefix, part in prefixes.items():
            if key.startswith(prefix):
                parts[part][key[len(prefix):]] = value
                break
        else:
            if rest is not None:
                parts[rest][key] = value
    return parts


def split_lightning(state_dict: dict, backbone_prefix="model.", head_prefix="output_head."):
    """(backbone, head) of a Lightning checkpoint; a plain dict is all backbone."""
    if not any(k.startswith((backbone_prefix, head_prefix)) for k in state_dict):
        return dict(state_dict), {}
    parts = split_by_prefix(state_dict, {backbone_prefix: "backbone", head_prefix: "head"})
    return parts["backbone"], parts["head"]


def _conv_kernel(array):
    # (out, in/g, *k) -> (*k, in/g, out)
    rank = array.ndim
    return np.transpose(array, tuple(range(2, rank)) + (1, 0))


def _depthwise_kernel(array):
    # (C, 1, *k) -> (*k, C, 1)
    rank = array.ndim
    return np.transpose(array, tuple(range(2, rank)) + (0, 1))


class StateDictPorter:
    """Pairs upstream tensors with Keras variables and assigns them, checking everything.

    Args:
        state_dict: torch-named arrays.
        what: str. What the state dict should be (used in error messages).
        ignored_prefixes: keys starting with these are allowed to stay unused.

    Use `port`, `dense`, `conv`, `norm`, ... then `finish()`, which checks that every key
    was used and every shape fits before assigning anything.
    """

    def __init__(self, state_dict: dict, what: str, ignored_prefixes: tuple = ()):
        self.state_dict = {k: np.asarray(v) for k, v in state_dict.items()}
        self.what = what
        self.ignored_prefixes = tuple(ignored_prefixes)
        self.used: set[str] = set()
        self.pairs: list = []

    def has(self, key: str) -> bool:
        return key in self.state_dict

    def take(self, key: str, transform=None) -> np.ndarray:
        """The array under `key` (transformed), marked as used."""
        if key not in self.state_dict:
            near = sorted(k for k in self.state_dict if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0])
            raise KeyError(f"upstream state_dict has no tensor {key!r}"
                           f"{f' (same module has {near})' if near else ''}; is it a {self.what} "
                           "checkpoint of the configured size?")
        self.used.add(key)
        value = self.state_dict[key]
        return transform(value) if transform is not None else value

    def port(self, variable, key: str, transform=None) -> None:
        """Queue `variable <- transform(state_dict[key])`."""
        self.pairs.append((variable, self.take(key, transform), key))

    def dense(self, layer, prefix: str) -> None:
        """torch Linear `prefix.weight/bias` -> Keras Dense (bias only if the layer has one)."""
        self.port(layer.kernel, f"{prefix}.weight", np.transpose)
        if getattr(layer, "bias", None) is not None:
            self.port(layer.bias, f"{prefix}.bias")

    def conv(self, layer, prefix: str) -> None:
        """torch ConvNd -> Keras ConvND (channels-last)."""
        self.port(layer.kernel, f"{prefix}.weight", _conv_kernel)
        if getattr(layer, "bias", None) is not None:
            self.port(layer.bias, f"{prefix}.bias")

    def depthwise_conv(self, layer, prefix: str) -> None:
        """torch ConvNd(groups=C, out=C) -> Keras DepthwiseConvND."""
        self.port(layer.kernel, f"{prefix}.weight", _depthwise_kernel)
        if getattr(layer, "bias", None) is not None:
            self.port(layer.bias, f"{prefix}.bias")

    def norm(self, layer, prefix: str) -> None:
        """torch LayerNorm / BatchNorm / GroupNorm -> Keras normalization layer."""
        if getattr(layer, "gamma", None) is not None:
            self.port(layer.gamma, f"{prefix}.weight")
        if getattr(layer, "beta", None) is not None:
            self.port(layer.beta, f"{prefix}.bias")
        if hasattr(layer, "moving_mean"):
            self.port(layer.moving_mean, f"{prefix}.running_mean")
            self.port(layer.moving_variance, f"{prefix}.running_var")
            if self.has(f"{prefix}.num_batches_tracked"):
                self.take(f"{prefix}.num_batches_tracked")

    def load_now(self, loader, prefix: str, keys) -> None:
        """Run `loader()` now (a block-level loader such as the Mamba one) and mark
        `prefix + key` for each key as used."""
        for key in keys:
            self.take(prefix + key)
        try:
            loader()
        except (ValueError, KeyError) as err:
            raise ValueError(f"{prefix}*: an upstream tensor does not fit ({err}); the upstream "
                             "kwargs do not match the checkpoint.") from err

    def unused(self) -> list[str]:
        return sorted(k for k in set(self.state_dict) - self.used
                      if not k.startswith(self.ignored_prefixes))

    def finish(self, allow_unused: bool = False) -> None:
        """Check that every key was used (unless `allow_unused`) and every shape fits, then
        assign."""
        unused = self.unused()
        if unused and not allow_unused:
            raise ValueError(f"upstream state_dict has {len(unused)} tensors with no place in the "
                             f"configured {self.what}, e.g. {unused[:5]}; check the upstream "
                             "kwargs.")
        for variable, value, key in self.pairs:
            if tuple(variable.shape) != tuple(value.shape):
                raise ValueError(f"{key}: upstream tensor converts to shape {tuple(value.shape)} "
                                 f"but Keras variable {variable.path} has shape "
                                 f"{tuple(variable.shape)}; the upstream kwargs do not match the "
                                 "checkpoint.")
        for variable, value, key in self.pairs:
            variable.assign(value.astype(variable.dtype))
