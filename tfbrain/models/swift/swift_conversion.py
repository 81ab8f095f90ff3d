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


def head_weight_map(task, head_state_dict: dict) -> list:
    """Pair a task model's head variables with an upstream `output_head.*` state dict
    (prefix stripped): clf_mlp v1 `head.*`, clf_mlp_v2 `hidden.*` + `head.*`,
    emb_mlp `fc1.weight` + `bn1.*`."""
    sd = {k: np.asarray(v) for k, v in head_state_dict.items()}
    pairs = []

    def take(key, transform=lambda a: a):
        if key not in sd:
            raise KeyError(f"upstream head state_dict has no tensor {key!r} "
                           f"(has {sorted(sd)}) for a {type(task).__name__} head")
        return transform(sd.pop(key)), key

    def add(variable, key, transform=lambda a: a):
        value, key = take(key, transform)
        pairs.append((variable, value, key))

    if task.task_type in ("classification", "regression"):
        if task.head == "v2":
            hidden = task.get_layer("hidden")
            add(hidden.kernel, "hidden.weight", np.transpose)
            add(hidden.bias, "hidden.bias")
        head = task.get_layer("head")
        add(head.kernel, "head.weight", np.transpose)
        add(head.bias, "head.bias")
    else:
        add(task.get_layer("fc1").kernel, "fc1.weight", np.transpose)
        bn = task.get_layer("bn1")
        add(bn.gamma, "bn1.weight")
        add(bn.beta, "bn1.bias")
        add(bn.moving_mean, "bn1.running_mean")
        add(bn.moving_variance, "bn1.running_var")
        sd.pop("bn1.num_batches_tracked", None)
    if sd:
        raise ValueError(f"upstream head tensors left unused: {sorted(sd)}")
    return pairs


def infer_head(head_state_dict: dict) -> dict:
    """Which task head an upstream `output_head.*` state dict holds, and its size."""
    keys = set(head_state_dict)
    if "fc1.weight" in keys:
        return {"task": "contrastive",
                "embedding_dim": int(np.shape(head_state_dict["fc1.weight"])[0])}
    if "head.weight" in keys:
        return {"task": "classification",
                "head": "v2" if "hidden.weight" in keys else "v1",
                "num_classes": int(np.shape(head_state_dict["head.weight"])[0])}
    raise ValueError(f"cannot tell the head type from upstream keys {sorted(keys)}")


def convert_swift(state_dict: dict, upstream_kwargs: dict, task: str | None = None):
    """Upstream SwiFT state dict (plain or Lightning) -> Keras backbone or task model.

    Args:
        state_dict: torch-named arrays. Lightning keys (`model.`, `output_head.`) are split.
        upstream_kwargs: `SwinTransformer4D` constructor kwargs (or Lightning hparams).
        task: "classification" | "regression" | "contrastive" to force the task when the
            head keys are ambiguous (upstream regression uses the clf_mlp head). None:
            inferred from `output_head.*`, or a bare backbone when there is no head.
    """
    backbone_sd, head_sd = split_lightning_state_dict(state_dict)
    backbone = load_upstream_backbone(backbone_sd, swift_kwargs_from_upstream(upstream_kwargs))
    if not head_sd:
        if task:
            raise ValueError(f"task={task!r} requested but the state dict has no output_head.* keys")
        return backbone
    return attach_upstream_head(backbone, head_sd, task)


def attach_upstream_head(backbone, head_state_dict: dict, task: str | None = None):
    """Wrap `backbone` in the task model its upstream head (prefix stripped) describes and
    load the head's weights. `task` forces the task (regression reuses clf_mlp's keys)."""
    from tfbrain.models.task import FMRIClassifier, FMRIContrastive, FMRIRegressor

    head = infer_head(head_state_dict)
    task = task or head["task"]
    if task == "contrastive":
        model = FMRIContrastive(backbone, embedding_dim=head["embedding_dim"])
    elif task == "classification":
        model = FMRIClassifier(backbone, num_classes=head["num_classes"], head=head["head"])
    elif task == "regression":
        model = FMRIRegressor(backbone, num_outputs=head["num_classes"], head=head["head"])
    else:
        raise ValueError(f"unknown task {task!r}; expected classification, regression or contrastive")
    assign_pairs(head_weight_map(model, head_state_dict))
    return model
