"""Reading upstream PyTorch weights without (or, for .ckpt, with) torch.

Formats: `.npz` of torch-named arrays, `.safetensors` (read with the `safetensors`
package's numpy API, no torch needed), and PyTorch / Lightning `.ckpt`/`.pt`/`.pth`
files (needs the `torch` extra; loaded with `weights_only=True`, so no pickled code runs).

Every floating-point tensor comes back as a numpy float array; bfloat16 (and the float8
kinds) become float32, as `torch.Tensor.float()` does on the .ckpt path, because numpy
has no arithmetic of its own for them and the porter compares and transposes arrays.
"""

import pathlib

import ml_dtypes  # registers bfloat16/float8 with numpy: safetensors' "np" reader needs it for BF16
import numpy as np

# numpy dtypes that exist only through ml_dtypes; widened to float32 on reading
_ML_DTYPES_FLOATS = {np.dtype(getattr(ml_dtypes, name)) for name in
                     ("bfloat16", "float8_e4m3fn", "float8_e5m2") if hasattr(ml_dtypes, name)}


def read_state_dict(path) -> tuple[dict, dict]:
    """Return (state_dict of numpy arrays, hyperparameters or {}) from a weights file."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}, {}
        except (ValueError, OSError) as err:
            raise ValueError(f"{path}: not a readable .npz of arrays ({err})") from err
    if suffix == ".safetensors":
        return read_safetensors(path), {}
    if suffix in (".ckpt", ".pt", ".pth", ".bin") or path.name.lower().endswith(".pth.tar"):
        return _read_torch(path)
    raise ValueError(f"{path}: unsupported weights format {suffix!r}; use .npz, .safetensors "
                     "or a PyTorch .ckpt/.pt (with `pip install tfbrain[torch]`)")


def read_safetensors(path) -> dict:
    """Return {name: numpy array} from a .safetensors file; a bad file raises ValueError naming it."""
    from safetensors import SafetensorError, safe_open

    path = pathlib.Path(path)
    tensors = {}
    try:
        with safe_open(str(path), framework="np") as f:
            for key in f.keys():
                # copy: the arrays would otherwise view a memory map closed with the file
                tensors[key] = _widen(np.array(f.get_tensor(key)))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    except TypeError as err:  # numpy cannot build the dtype (a kind ml_dtypes does not know)
        raise ValueError(f"{path}: a tensor has a dtype numpy cannot hold ({err})") from err
    return tensors


def _widen(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float32) if array.dtype in _ML_DTYPES_FLOATS else array


def _read_torch(path: pathlib.Path) -> tuple[dict, dict]:
    try:
        import torch
    except ImportError as err:
        raise ImportError(f"reading {path} needs PyTorch: pip install 'tfbrain[torch]' "
                          "(or export the state_dict to .npz/.safetensors)") from err
    try:
        import argparse

        # timm training checkpoints (BiXT's `model_best.pth.tar`) pickle their argparse
        # arguments beside the weights: allow that one plain class, nothing else
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for unreadable/unsafe pickles
        raise ValueError(f"{path}: could not load with torch.load(weights_only=True): {err}. "
                         "If the checkpoint pickles custom objects, re-save its state_dict.") from err
    hparams = {}
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:  # Lightning
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        checkpoint = checkpoint["state_dict"]
    elif isinstance(checkpoint, dict) and "model_state_dict" in checkpoint:  # plain training loops
        checkpoint = checkpoint["model_state_dict"]
    elif isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict_ema")
                                                     or checkpoint.get("model"), dict):
        checkpoint = checkpoint.get("model") or checkpoint["state_dict_ema"]  # timm
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected a state_dict (mapping of tensors), got {type(checkpoint)}")
    state_dict = {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy()
                  for k, v in checkpoint.items() if hasattr(v, "detach")}
    return state_dict, hparams
