"""Upstream SwiFT (PyTorch) weights -> tfbrain Keras models.

Reads torch-named state dicts (from .npz, .safetensors, or a Lightning .ckpt with
the `torch` extra), maps every tensor onto the Keras variables by name and checks
that nothing is left over on either side. Upstream layouts: Linear weights are
(out, in); position tables are (1, C, D, H, W, 1) and (1, C, 1, 1, 1, T).
"""

from tfbrain.conversion.heads import attach_upstream_head
from tfbrain.conversion.porter import StateDictPorter, split_lightning
from tfbrain.models.registry import UpstreamInfo
from tfbrain.models.swift.swift_backbone import SwiFTBackbone

UPSTREAM = UpstreamInfo("Transconnectome/SwiFT", "0b07cb156d77a7de33078c8f6fe3ddffa7b5ae9c",
                        "Kim et al., NeurIPS 2023, arXiv 2307.05916")

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


def port_backbone(porter: StateDictPorter, backbone: SwiFTBackbone) -> None:
    """Queue every backbone tensor (torch names of `SwinTransformer4D`)."""
    porter.dense(backbone.get_layer("patch_embed").fc, "patch_embed.fc")
    for i, depth in enumerate(backbone.depths):
        pos = backbone.get_layer(f"pos_embed_{i}")
        # (1, C, D, H, W, 1) -> (D, H, W, C); (1, C, 1, 1, 1, T) -> (T, C)
        porter.port(pos.pos_embed, f"pos_embeds.{i}.pos_embed",
                    lambda a: a[0, ..., 0].transpose(1, 2, 3, 0))
        porter.port(pos.time_embed, f"pos_embeds.{i}.time_embed", lambda a: a[0, :, 0, 0, 0, :].T)
        for j in range(depth):
            block = backbone.get_layer(f"stage_{i}_block_{j}")
            prefix = f"layers.{i}.blocks.{j}"
            porter.norm(block.norm1, f"{prefix}.norm1")
            porter.dense(block.attn.qkv, f"{prefix}.attn.qkv")
            porter.dense(block.attn.proj, f"{prefix}.attn.proj")
            porter.norm(block.norm2, f"{prefix}.norm2")
            porter.dense(block.mlp.linear1, f"{prefix}.mlp.linear1")
            porter.dense(block.mlp.linear2, f"{prefix}.mlp.linear2")
        if i < len(backbone.depths) - 1:
            merge = backbone.get_layer(f"stage_{i}_merge")
            porter.norm(merge.norm, f"layers.{i}.downsample.norm")
            porter.dense(merge.reduction, f"layers.{i}.downsample.reduction")


def load_upstream_backbone(state_dict: dict, backbone_kwargs: dict) -> SwiFTBackbone:
    """Build a `SwiFTBackbone` and load an upstream backbone state dict into it."""
    backbone = SwiFTBackbone(**backbone_kwargs)
    porter = StateDictPorter(state_dict, "SwiFT SwinTransformer4D", IGNORED_PREFIXES)
    port_backbone(porter, backbone)
    porter.finish()
    return backbone


def convert_swift(state_dict: dict, upstream_kwargs: dict, task: str | None = None):
    """Upstream SwiFT state dict (plain or Lightning) -> Keras backbone or task model.

    Args:
        state_dict: torch-named arrays. Lightning keys (`model.`, `output_head.`) are split.
        upstream_kwargs: `SwinTransformer4D` constructor kwargs (or Lightning hparams).
        task: "classification" | "regression" | "contrastive" to force the task when the
            head keys are ambiguous (upstream regression uses the clf_mlp head). None:
            inferred from `output_head.*`, or a bare backbone when there is no head.
    """
    backbone_sd, head_sd = split_lightning(state_dict)
    backbone = load_upstream_backbone(backbone_sd, swift_kwargs_from_upstream(upstream_kwargs))
    if not head_sd:
        if task:
            raise ValueError(f"task={task!r} requested but the state dict has no output_head.* keys")
        return backbone
    return attach_upstream_head(backbone, head_sd, task)
