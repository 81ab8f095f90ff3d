"""Reading upstream PyTorch weights without (or, for .ckpt, with) torch.

Formats: `.npz` of torch-named arrays, `.safetensors` (parsed here: an 8-byte
little-endian header length, a JSON header, then raw little-endian buffers), and
PyTorch / Lightning `.ckpt`/`.pt`/`.pth` files (needs the `torch` extra; loaded with
`weights_only=True`, so no pickled code runs).
"""

import json
import pathlib
import struct

import numpy as np

_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
                       "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


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
    path = pathlib.Path(path)
    raw = path.read_bytes()
    if len(raw) < 8:
        raise ValueError(f"{path}: truncated safetensors file ({len(raw)} bytes)")
    (header_len,) = struct.unpack("<Q", raw[:8])
    if 8 + header_len > len(raw):
        raise ValueError(f"{path}: safetensors header length {header_len} exceeds the file size")
    try:
        header = json.loads(raw[8:8 + header_len])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: corrupt safetensors header ({err})") from err
    body = memoryview(raw)[8 + header_len:]
    tensors = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {key!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        if end > len(body):
            raise ValueError(f"{path}: tensor {key!r} runs past the end of the file (truncated?)")
        array = np.frombuffer(body[start:end], dtype=_SAFETENSORS_DTYPES[info["dtype"]])
        tensors[key] = array.reshape(info["shape"]).copy()
    return tensors


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
