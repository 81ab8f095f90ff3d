"""Upstream BiXT (PyTorch, timm fork) weights -> tfbrain Keras models.

Reads the torch-named state dicts of `timm.models.bixt.BiXT` and
`timm.models.bixt_convtok.BiXTConvTok` (the fixtures' .npz, or the released `model_best.pth.tar`
files from upstream's figshare zips) and maps every tensor, buffers included
(`fourier_pos_encode.pos`, BatchNorm running stats), onto a `BiXTBackbone`, wrapped in an
`FMRIClassifier` when the state dict has a classification head.

Layouts: Linear (out, in) -> Dense (in, out); Conv2d (out, in, kh, kw) -> (kh, kw, in, out); the
1x1 `token_projection` Conv2d -> Dense; the `pos` buffer (k*32, Gh, Gw) -> (Gh, Gw, k*32).
"""

import re
import warnings

import numpy as np

from tfbrain.conversion.porter import StateDictPorter
from tfbrain.models.bixt.bixt_backbone import BiXTBackbone
from tfbrain.models.bixt.bixt_presets import BIXT_VARIANTS, UPSTREAM_MODEL_ALIASES
from tfbrain.models.registry import UpstreamInfo

UPSTREAM = UpstreamInfo("mrkshllr/BiXT", "4ce7caeab7197fc8a825e47826e3e67af140e161",
                        "Hiller, Ehinger, Drummond, NeurIPS 2024, arXiv 2402.12138")

# upstream `embed_layer` -> (tokenizer, stride divisor of the patch)
EMBED_LAYERS = {"PatchEmbed": ("linear", 1), "PatchEmbedHalfStride": ("linear", 2),
                "PatchEmbedQuarterStride": ("linear", 4), "ConvPatchEmbed": ("conv", 1)}

# upstream constructor kwarg -> BiXTBackbone kwarg (value unchanged)
_RENAMES = {
    "num_latents": "num_latents", "embed_dim_lat": "latent_dim", "embed_dim_pat": "token_dim",
    "embed_dim_attn": "attention_dim", "depth": "depth", "sa_num_heads": "sa_num_heads",
    "ca_num_heads": "ca_num_heads", "sa_mlp_ratio": "sa_mlp_ratio",
    "ca_lat_mlp_ratio": "ca_latent_mlp_ratio", "ca_pat_mlp_ratio": "ca_token_mlp_ratio",
    "qkv_bias": "qkv_bias", "rv_bias": "rv_bias", "init_values": "layer_scale_init",
    "sa_drop_rate": "sa_dropout_rate", "ca_drop_rate": "ca_dropout_rate",
    "sa_attn_drop_rate": "sa_attention_dropout_rate",
    "ca_attn_drop_rate": "ca_attention_dropout_rate", "sa_drop_path_rate": "sa_drop_path_rate",
    "ca_drop_path_rate": "ca_drop_path_rate",
}
# accepted and checked, or irrelevant to inference
_KNOWN = {"img_size", "patch_size", "in_chans", "num_classes", "embed_layer", "global_pool",
          "fc_norm", "posenc_type_pat", "weight_init", "latinit", "model_name", "arch",
          "pretrained_strict", "norm_layer", "act_layer", "block_fn"}


def _pair(value):
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),) * 2


def bixt_kwargs_from_upstream(upstream: dict, state_dict: dict | None = None) -> dict:
    """Map upstream `BiXT(**kwargs)` / `BiXTConvTok(**kwargs)` (or `{"model_name": ...}`, an
    upstream model name, plus overrides) to `BiXTBackbone` kwargs.

    The tokenizer comes from `embed_layer` (a class name) or the model name; failing both, from
    the state dict: conv-tokenizer keys mean `ConvPatchEmbed`, and the `pos` buffer's grid gives
    the stride of the linear tokenizer (p16s8 and p16s4 share Ti/16's weight shapes).
    """
    upstream = dict(upstream)
    unknown = sorted(set(upstream) - set(_RENAMES) - _KNOWN)
    if unknown:
        # timm passes extra keys around (pretrained_cfg, tokenizer kwargs); the state dict's
        # shapes still catch any that would change the architecture
        warnings.warn(f"ignoring upstream BiXT kwargs {unknown}; known: "
                      f"{sorted(set(_RENAMES) | _KNOWN)}", stacklevel=2)
    posenc = upstream.get("posenc_type_pat", "fourier2d_embadd_proj")
    if posenc not in ("fourier2d_embadd_proj", "fourier2d_embadd_proj_dyn"):
        raise ValueError("upstream BiXT has the position encodings 'fourier2d_embadd_proj' and "
                         f"'fourier2d_embadd_proj_dyn'. Received: posenc_type_pat={posenc!r}")
    if upstream.get("global_pool", "avg") != "avg":
        raise ValueError("upstream BiXT supports global_pool='avg' only. "
                         f"Received: global_pool={upstream.get('global_pool')!r}")
    name = upstream.get("model_name") or upstream.get("arch")
    if name:
        name = UPSTREAM_MODEL_ALIASES.get(name, name)
        if name not in BIXT_VARIANTS or len(BIXT_VARIANTS[name]["volume_shape"]) != 3:
            known = sorted(k for k, v in BIXT_VARIANTS.items() if len(v["volume_shape"]) == 3)
            raise ValueError(f"unknown upstream BiXT model {name!r}; known: {known}")
        kwargs = dict(BIXT_VARIANTS[name])
    else:
        kwargs = dict(BIXT_VARIANTS["bixt_ti_l64_p16"])  # upstream's constructor defaults
    kwargs.update({_RENAMES[k]: v for k, v in upstream.items() if k in _RENAMES})
    if "img_size" in upstream or "in_chans" in upstream:
        height, width, channels = kwargs["volume_shape"]
        height, width = _pair(upstream.get("img_size", (height, width)))
        kwargs["volume_shape"] = (height, width, int(upstream.get("in_chans", channels)))
    patch = _pair(upstream["patch_size"]) if "patch_size" in upstream else \
        _pair(kwargs["patch_size"])
    kwargs["patch_size"] = patch
    embed_layer = upstream.get("embed_layer")
    if embed_layer is not None:
        # a class, its name, a dotted path or its repr ("<class 'timm.layers....PatchEmbed'>")
        embed_layer = getattr(embed_layer, "__name__", embed_layer)
        embed_layer = re.sub(r"['>]+$", "", str(embed_layer)).rsplit(".", 1)[-1]
        if embed_layer not in EMBED_LAYERS:
            raise ValueError(f"unknown upstream embed_layer {embed_layer!r}; known: "
                             f"{sorted(EMBED_LAYERS)}")
        tokenizer, divisor = EMBED_LAYERS[embed_layer]
        kwargs["tokenizer"] = tokenizer
        kwargs["patch_stride"] = tuple(p // divisor for p in patch)
    elif not name and state_dict is not None:
        if any(k.startswith("patch_embed.proj.0.") for k in state_dict):
            kwargs["tokenizer"] = "conv"
            kwargs["patch_stride"] = patch
        elif "fourier_pos_encode.pos" in state_dict:
            grid = np.shape(state_dict["fourier_pos_encode.pos"])[1:]
            kwargs["patch_stride"] = tuple(
                size // g for size, g in zip(kwargs["volume_shape"][:2], grid))
    if kwargs.get("tokenizer") == "conv":
        kwargs["patch_size"] = patch[0]
        kwargs.pop("patch_stride", None)
    if not upstream.get("fc_norm", True):  # upstream norms the latents (`norm_lat`) instead
        kwargs["latent_norm"] = True
    return kwargs


def port_backbone(porter: StateDictPorter, backbone: BiXTBackbone) -> None:
    """Queue every backbone tensor (upstream names of `BiXT` / `BiXTConvTok`)."""
    porter.port(backbone.get_layer("latents").latents, "latents")
    embed = backbone.get_layer("patch_embed")
    if backbone.tokenizer == "conv":
        for stage, (conv, norm) in enumerate(zip(embed.convs, embed.norms)):
            porter.conv(conv, f"patch_embed.proj.{2 * stage}.0")
            porter.norm(norm, f"patch_embed.proj.{2 * stage}.1")
    else:
        porter.conv(embed.proj, "patch_embed.proj")
    encode = backbone.get_layer("fourier_pos_encode")
    if porter.has("fourier_pos_encode.pos"):  # the `_dyn` (ft384) models recompute it
        porter.port(encode.pos, "fourier_pos_encode.pos",
                    lambda a: np.moveaxis(a, 0, -1))  # (k*F, Gh, Gw) -> (Gh, Gw, k*F)
    porter.port(encode.token_projection.kernel, "fourier_pos_encode.token_projection.weight",
                lambda a: a[:, :, 0, 0].T)  # 1x1 Conv2d (C, k*F, 1, 1) -> Dense (k*F, C)
    porter.port(encode.token_projection.bias, "fourier_pos_encode.token_projection.bias")
    if backbone.latent_norm:
        porter.norm(backbone.get_layer("norm_lat"), "norm_lat")
    for i in range(backbone.depth):
        block = backbone.get_layer(f"blocks_{i}")
        prefix = f"blocks.{i}.cross_attention_latents_token"
        cross = block.cross_attention
        sides = [("lat", cross.latent_side)]
        if cross.one_sided:
            porter.norm(cross.token_side["norm1"], f"{prefix}.norm1_pat")
        else:
            sides.append(("pat", cross.token_side))
        for side, layers in sides:
            for norm in ("norm1", "norm2"):
                porter.norm(layers[norm], f"{prefix}.{norm}_{side}")
            porter.dense(layers["mlp"].linear1, f"{prefix}.mlp_{side}.fc1")
            porter.dense(layers["mlp"].linear2, f"{prefix}.mlp_{side}.fc2")
            for scale in ("ls1", "ls2"):
                if layers[scale] is not None:
                    porter.port(layers[scale].gamma, f"{prefix}.{scale}_{side}.gamma")
        attn = cross.attn
        porter.dense(attn.rv_latents, f"{prefix}.attn.{attn.rv_latents.name}")
        porter.dense(attn.rv_patches, f"{prefix}.attn.rv_patches")
        porter.dense(attn.proj_lat, f"{prefix}.attn.proj_lat")
        if not cross.one_sided:
            porter.dense(attn.proj_pat, f"{prefix}.attn.proj_pat")
        sa = block.self_attention
        prefix = f"blocks.{i}.self_attention_latents"
        porter.norm(sa.norm1, f"{prefix}.norm1")
        porter.dense(sa.attn.qkv, f"{prefix}.attn.qkv")
        porter.dense(sa.attn.proj, f"{prefix}.attn.proj")
        porter.norm(sa.norm2, f"{prefix}.norm2")
        porter.dense(sa.mlp.linear1, f"{prefix}.mlp.fc1")
        porter.dense(sa.mlp.linear2, f"{prefix}.mlp.fc2")
        for scale in ("ls1", "ls2"):
            layer = getattr(sa, scale)
            if layer is not None:
                porter.port(layer.gamma, f"{prefix}.{scale}.gamma")


def convert_bixt(state_dict: dict, upstream_kwargs: dict, task: str | None = None):
    """Upstream BiXT state dict -> `BiXTBackbone`, or an `FMRIClassifier`/`FMRIRegressor` around
    it when the state dict has the head (`fc_norm.*` + `head.*`).

    Args:
        state_dict: torch-named arrays (a timm training checkpoint's `state_dict`).
        upstream_kwargs: upstream constructor kwargs, or `{"model_name": "bixt_ti_l64_p16s8"}`.
        task: None (classification if there is a head, else the backbone), "classification",
            "regression" or "backbone" (drop the head).
    """
    from tfbrain.models.registry import get_task_class

    if task not in (None, "classification", "regression", "backbone"):
        raise ValueError("`task` must be None, 'classification', 'regression' or 'backbone'. "
                         f"Received: task={task!r}")
    has_head = "head.weight" in state_dict
    if task in ("classification", "regression") and not has_head:
        raise ValueError(f"task={task!r} requested but the state dict has no head.weight "
                         "(upstream num_classes=0)")
    kwargs = bixt_kwargs_from_upstream(upstream_kwargs, state_dict)
    backbone = BiXTBackbone(**kwargs)
    # fc_norm/head stay unused for a bare backbone; fc_norm is unused when num_classes=0
    ignored = ("fc_norm.", "head.") if task == "backbone" or not has_head else ()
    model = backbone
    if has_head and task != "backbone":
        num_outputs = int(np.shape(state_dict["head.weight"])[0])
        if task == "regression":
            model = get_task_class("regression")(backbone, num_outputs=num_outputs)
        else:
            model = get_task_class("classification")(backbone, num_classes=num_outputs)
    porter = StateDictPorter(state_dict, "BiXT", ignored_prefixes=ignored)
    port_backbone(porter, backbone)
    if model is not backbone:
        if not backbone.latent_norm:
            porter.norm(model.get_layer("head_norm"), "fc_norm")
        porter.dense(model.get_layer("head"), "head")
    porter.finish()
    return model
