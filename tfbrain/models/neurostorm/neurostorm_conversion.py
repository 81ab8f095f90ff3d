"""Upstream NeuroSTORM (PyTorch) weights -> tfbrain Keras models.

Reads torch-named state dicts (from .npz, .safetensors, or a Lightning .ckpt with the
`torch` extra), maps every tensor onto the Keras variables by name and checks that
nothing is left over on either side. Upstream layouts: Linear weights are (out, in);
position tables are (1, C, D, H, W, 1) and (1, C, 1, 1, 1, T); the Mamba tensors are
mamba_ssm's (`tfbrain.conversion.mamba.port_mamba` maps them).

Key families:
  * backbone `patch_embed.*`, `pos_embeds.*`, `layers.*` (bare, or under `model.` in a
    Lightning checkpoint);
  * task head under `output_head.` (Lightning) or `head.` (a bare dict, as in the
    parity fixture). `ClsHead`/`RegHead` wrap their Linear in one more `head.`;
    `EmbHead` does not;
  * MAE pretraining extras: `mask_token`, `window_mask_token`, `atlas_mask_token`,
    `first_patch_expanding.*`, `layers_up.*`, `norm_up.*`, `decoder_pred.*`.
"""

from tfbrain.conversion.heads import attach_upstream_head
from tfbrain.conversion.mamba import port_mamba
from tfbrain.conversion.porter import StateDictPorter, split_by_prefix
from tfbrain.models.neurostorm.neurostorm_backbone import NeuroSTORMBackbone
from tfbrain.models.registry import UpstreamInfo

UPSTREAM = UpstreamInfo("CUHK-AIM-Group/NeuroSTORM", "a8dc38f665b104fc7559404def44695c332b47b4")
MAE_PREFIXES = ("mask_token", "window_mask_token", "atlas_mask_token", "atlas_map",
                "first_patch_expanding.", "layers_up.", "norm_up.", "decoder_pred.")


def neurostorm_kwargs_from_upstream(upstream: dict) -> dict:
    """Map `NeuroSTORM(**kwargs)` (or Lightning hparams) to `NeuroSTORMBackbone` kwargs."""
    img_size = list(upstream["img_size"])
    if len(img_size) == 3:  # Lightning hparams keep T separately
        img_size.append(int(upstream["sequence_length"]))
    window_size = tuple(int(w) for w in upstream["window_size"])
    return {
        "volume_shape": (*[int(v) for v in img_size], int(upstream.get("in_chans", 1))),
        "patch_size": tuple(int(p) for p in upstream["patch_size"]),
        "hidden_dim": int(upstream["embed_dim"]),
        "depths": tuple(int(d) for d in upstream["depths"]),
        "first_window_size": tuple(int(w) for w in upstream.get("first_window_size",
                                                                 window_size)),
        "window_size": window_size,
        "c_multiplier": int(upstream.get("c_multiplier", 2)),
        "last_layer_full_msa": bool(upstream.get("last_layer_full_MSA", False)),
        "mlp_ratio": float(upstream.get("mlp_ratio", 4.0)),
        "dropout_rate": float(upstream.get("drop_rate", 0.0)),
        "drop_path_rate": float(upstream.get("drop_path_rate", 0.0)),
        "prompt_len": int(upstream.get("prompt_len", 0) or 0),
    }


def split_state_dict(state_dict: dict) -> tuple[dict, dict]:
    """Split into (backbone-or-MAE, head) dicts with prefixes stripped.

    Lightning: `model.` -> backbone, `output_head.` -> head. A bare dict: `head.` -> head,
    the rest -> backbone.
    """
    if any(k.startswith(("model.", "output_head.")) for k in state_dict):
        parts = split_by_prefix(state_dict, {"model.": "backbone", "output_head.": "head"})
    else:
        parts = split_by_prefix(state_dict, {"head.": "head"}, rest="backbone")
    return parts["backbone"], parts["head"]


def port_backbone(porter: StateDictPorter, backbone: NeuroSTORMBackbone) -> None:
    """Queue every backbone tensor (torch names of upstream `NeuroSTORM`)."""
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
            porter.norm(block.norm2, f"{prefix}.norm2")
            porter.dense(block.mlp.linear1, f"{prefix}.mlp.linear1")
            porter.dense(block.mlp.linear2, f"{prefix}.mlp.linear2")
            if block.prompt is not None:
                porter.port(block.prompt, f"{prefix}.prompt")
            port_mamba(porter, block.mamba, f"{prefix}.mamba.")
        if i < len(backbone.depths) - 1:
            merge = backbone.get_layer(f"stage_{i}_merge")
            porter.norm(merge.norm, f"layers.{i}.downsample.norm")
            porter.dense(merge.reduction, f"layers.{i}.downsample.reduction")


def load_upstream_backbone(state_dict: dict, backbone_kwargs: dict) -> NeuroSTORMBackbone:
    """Build a `NeuroSTORMBackbone` and load an upstream backbone (or MAE encoder) into it.

    The MAE-only tensors (mask tokens, decoder) of a pretraining checkpoint are skipped.
    """
    backbone = NeuroSTORMBackbone(**backbone_kwargs)
    porter = StateDictPorter(state_dict, "NeuroSTORM", MAE_PREFIXES)
    port_backbone(porter, backbone)
    porter.finish()
    return backbone


def _unwrap_head(head_sd: dict) -> dict:
    """Drop the `ClsHead`/`RegHead` wrapper level (`head.head.weight` -> `head.weight`)."""
    if head_sd and all(k.startswith("head.") for k in head_sd):
        inner = {k[len("head."):]: v for k, v in head_sd.items()}
        if "weight" not in inner:  # a wrapper, not a bare Linear named `head`
            return inner
    return head_sd


def convert_neurostorm(state_dict: dict, upstream_kwargs: dict, task: str | None = None):
    """Upstream NeuroSTORM state dict (plain, Lightning, or MAE) -> Keras backbone or task.

    Args:
        state_dict: torch-named arrays; see the module docstring for the key families.
        upstream_kwargs: `NeuroSTORM` constructor kwargs (or Lightning hparams).
        task: "classification" | "regression" | "contrastive" to force the task when the
            head keys are ambiguous (upstream RegHead v1 has ClsHead v1's keys). None:
            inferred from the head keys, or a bare backbone when there are none.
    """

    backbone_sd, head_sd = split_state_dict(state_dict)
    head_sd = _unwrap_head(head_sd)
    backbone = load_upstream_backbone(backbone_sd,
                                      neurostorm_kwargs_from_upstream(upstream_kwargs))
    if not head_sd:
        if task:
            raise ValueError(f"task={task!r} requested but the state dict has no head keys "
                             "(output_head.* or head.*)")
        return backbone
    if any(k.startswith(("cls_token", "transformer", "layers.")) for k in head_sd):
        raise ValueError("the state dict holds a ClsHead v3 (transformer head), which tfbrain "
                         f"does not port; head keys: {sorted(head_sd)[:5]}")
    return attach_upstream_head(backbone, head_sd, task)
