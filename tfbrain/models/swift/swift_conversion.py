"""Upstream SwiFT (PyTorch) weights -> tfbrain Keras models.

Reads torch-named state dicts (from .npz, .safetensors, or a Lightning .ckpt with
the `torch` extra), maps every tensor onto the Keras variables by name and checks
that nothing is left over on either side. Upstream layouts: Linear weights are
(out, in); position tables are (1, C, D, H, W, 1) and (1, C, 1, 1, 1, T).
"""

import numpy as np

from tfbrain.models.swift.swift_backbone import SwiFTBackbone

# Upstream tensors that have no Keras counterpart on purpose.
IGNORED_PREFIXES = (
    "norm.",  # final LayerNorm: built upstream, never applied
    "head.",  # classification head of pre-PR#5 checkpoints, superseded by output_head
)


def swift_kwargs_from_upstream(upstream: dict) -> dict:
    """Map `SwinTransformer4D(**kwargs)` (or Lightning hparams) to `SwiFTBackbone` kwargs."""
    img_size = list(upstream["img_size"])
    if len(img_size) == 3:  # Lightning hparams keep T separately
        img_size.append(int(upstream["sequence_length"]))
    in_chans = int(upstream.get("in_chans", 1))
    drop = float(upstream.get("drop_rate", 0.0))
    return {
        "volume_shape": (*[int(v) for v in img_size], in_chans),
        "patch_size": tuple(int(p) for p in upstream["patch_size"]),
        "hidden_dim": int(upstream["embed_dim"]),
        "depths": tuple(int(d) for d in upstream["depths"]),
        "num_heads": tuple(int(h) for h in upstream["num_heads"]),
        "first_window_size": tuple(int(w) for w in upstream.get("first_window_size",
                                                                 upstream["window_size"])),
        "window_size": tuple(int(w) for w in upstream["window_size"]),
        "c_multiplier": int(upstream.get("c_multiplier", 2)),
        "last_layer_full_msa": bool(upstream.get("last_layer_full_MSA", False)),
        "mlp_ratio": float(upstream.get("mlp_ratio", 4.0)),
        "qkv_bias": bool(upstream.get("qkv_bias", True)),
        "dropout_rate": drop,
        "attention_dropout_rate": float(upstream.get("attn_drop_rate", 0.0)),
        "drop_path_rate": float(upstream.get("drop_path_rate", 0.0)),
    }


def split_lightning_state_dict(state_dict: dict) -> tuple[dict, dict]:
    """Split a Lightning state dict into (backbone, head) dicts with prefixes stripped.

    Keys under `model.` belong to the backbone and `output_head.` to the task head;
    a plain backbone state dict (no prefixes) is returned as is with an empty head.
    """
    if not any(k.startswith(("model.", "output_head.")) for k in state_dict):
        return dict(state_dict), {}
    backbone = {k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")}
    head = {k[len("output_head."):]: v for k, v in state_dict.items()
            if k.startswith("output_head.")}
    return backbone, head


def backbone_weight_map(backbone: SwiFTBackbone, state_dict: dict) -> list:
    """Pair each Keras variable with its converted upstream tensor.

    Returns:
        list of (keras variable, numpy value, torch key). Raises KeyError/ValueError
        naming the key on missing, unexpected or mis-shaped tensors.
    """
    sd = {k: np.asarray(v) for k, v in state_dict.items() if not k.startswith(IGNORED_PREFIXES)}
    used = set()
    pairs = []

    def take(key, transform=lambda a: a):
        if key not in sd:
            raise KeyError(f"upstream state_dict has no tensor {key!r}; is it a SwiFT "
                           "SwinTransformer4D checkpoint of the configured size?")
        used.add(key)
        return transform(sd[key])

    def dense(layer, prefix, bias=True):
        pairs.append((layer.kernel, take(f"{prefix}.weight", np.transpose), f"{prefix}.weight"))
        if bias:
            pairs.append((layer.bias, take(f"{prefix}.bias"), f"{prefix}.bias"))

    def norm(layer, prefix):
        pairs.append((layer.gamma, take(f"{prefix}.weight"), f"{prefix}.weight"))
        pairs.append((layer.beta, take(f"{prefix}.bias"), f"{prefix}.bias"))

    dense(backbone.get_layer("patch_embed").fc, "patch_embed.fc")
    for i, depth in enumerate(backbone.depths):
        pos = backbone.get_layer(f"pos_embed_{i}")
        # (1, C, D, H, W, 1) -> (D, H, W, C); (1, C, 1, 1, 1, T) -> (T, C)
        pairs.append((pos.pos_embed, take(f"pos_embeds.{i}.pos_embed",
                                          lambda a: a[0, ..., 0].transpose(1, 2, 3, 0)),
                      f"pos_embeds.{i}.pos_embed"))
        pairs.append((pos.time_embed, take(f"pos_embeds.{i}.time_embed",
                                           lambda a: a[0, :, 0, 0, 0, :].T),
                      f"pos_embeds.{i}.time_embed"))
        for j in range(depth):
            block = backbone.get_layer(f"stage_{i}_block_{j}")
            prefix = f"layers.{i}.blocks.{j}"
            norm(block.norm1, f"{prefix}.norm1")
            dense(block.attn.qkv, f"{prefix}.attn.qkv", bias=block.qkv_bias)
            dense(block.attn.proj, f"{prefix}.attn.proj")
            norm(block.norm2, f"{prefix}.norm2")
            dense(block.mlp.linear1, f"{prefix}.mlp.linear1")
            dense(block.mlp.linear2, f"{prefix}.mlp.linear2")
        if i < len(backbone.depths) - 1:
            merge = backbone.get_layer(f"stage_{i}_merge")
            norm(merge.norm, f"layers.{i}.downsample.norm")
            dense(merge.reduction, f"layers.{i}.downsample.reduction", bias=False)
    unused = sorted(set(sd) - used)
    if unused:
        raise ValueError(f"upstream state_dict has {len(unused)} tensors with no place in the "
                         f"configured SwiFTBackbone, e.g. {unused[:5]}; check the upstream kwargs.")
    return pairs


def assign_pairs(pairs: list) -> None:
    """Assign converted values, checking shapes against the Keras variables."""
    for variable, value, key in pairs:
        if tuple(variable.shape) != tuple(value.shape):
            raise ValueError(f"{key}: upstream tensor converts to shape {tuple(value.shape)} but "
                             f"Keras variable {variable.path} has shape {tuple(variable.shape)}; "
                             "the upstream kwargs do not match the checkpoint.")
        variable.assign(value.astype(variable.dtype))


def load_upstream_backbone(state_dict: dict, backbone_kwargs: dict) -> SwiFTBackbone:
    """Build a `SwiFTBackbone` and load an upstream backbone state dict into it."""
    backbone = SwiFTBackbone(**backbone_kwargs)
    assign_pairs(backbone_weight_map(backbone, state_dict))
    return backbone
