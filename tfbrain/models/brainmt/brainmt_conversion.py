"""Upstream BrainMT (PyTorch) weights -> tfbrain Keras models.

Upstream names (`BrainMT.state_dict()`; `train.py` saves it under `model_state_dict`):
  * stem: `patch_embed.conv_down.{0,2}.weight`, `conv_block{0,1}.{conv1,norm1,conv2,norm2}.*`,
    `downsample{0,1}.reduction.0.weight`;
  * embedding: `cls_token` (1, 1, C), `pos_embed` (1, 1 + N, C), `temporal_pos_embedding`
    (1, num_frames, C);
  * Mamba stage: `layers.{i}.mixer.*` (mamba_ssm names, `tfbrain.conversion.mamba`),
    `layers.{i}.norm.weight`, `norm_f.weight`;
  * transformer stage: `blocks.{i}.{qkv,proj}.*`, the shared `norm.*` and `mlp.fc{1,2}.*`;
  * head: `head.{weight,bias}` (Linear on the cls feature) -> the v1 head of
    `FMRIClassifier` / `FMRIRegressor` on cls pooling.
A DistributedDataParallel `module.` prefix is stripped. The published fixture keeps the stem
in a second file: `merge_state_dicts` joins such parts (a key in two parts is an error).
"""

from tfbrain.conversion.heads import attach_upstream_head
from tfbrain.conversion.mamba import port_mamba
from tfbrain.conversion.porter import StateDictPorter
from tfbrain.models.brainmt.brainmt_backbone import BrainMTBackbone
from tfbrain.models.registry import UpstreamInfo

UPSTREAM = UpstreamInfo("arunkumar-kannan/BrainMT-fMRI", "977e4864cd9e63b9b34cf696e0ef80c74472d86b",
                        paper="arXiv:2506.22591 (MICCAI 2025)")
_SSM_KEYS = {"d_state": "state_dim", "d_conv": "conv_kernel_size", "expand": "expand"}


def brainmt_kwargs_from_upstream(upstream: dict) -> dict:
    """Map `BrainMT(**kwargs)` (upstream defaults for what is missing) to `BrainMTBackbone`
    kwargs. `img_size` is upstream's MNI (X, Y, Z) (unused upstream, which hard-codes its
    91 x 109 x 91 grid); the window has `num_frames` frames."""
    if not upstream.get("rms_norm", True):
        raise ValueError("rms_norm=False (LayerNorm in the Mamba stage) is not ported; "
                         "BrainMT's released config uses RMSNorm. Received: rms_norm=False")
    if float(upstream.get("attn_drop_rate", 0.0)):
        raise ValueError("attn_drop_rate > 0 is not ported (upstream passes it to SDPA even "
                         "in eval mode). Received: "
                         f"attn_drop_rate={upstream.get('attn_drop_rate')}")
    ssm_cfg = dict(upstream.get("ssm_cfg") or {})
    unknown = sorted(set(ssm_cfg) - set(_SSM_KEYS))
    if unknown:
        raise ValueError(f"ssm_cfg keys {unknown} are not ported; supported: "
                         f"{sorted(_SSM_KEYS)}. Received: ssm_cfg={ssm_cfg}")
    depth = tuple(int(d) for d in upstream.get("depth", (12, 8)))
    img_size = tuple(int(s) for s in upstream.get("img_size", (91, 109, 91)))
    frames = int(upstream.get("num_frames", 200))
    kwargs = {
        "volume_shape": (*img_size, frames, int(upstream.get("in_chans", 1))),
        "hidden_dim": int(upstream.get("embed_dim", 512)),
        "depths": depth,
        "num_heads": int(upstream.get("num_heads", 2)),
        "qkv_bias": bool(upstream.get("qkv_bias", True)),
        "mlp_ratio": 2.0,  # upstream: Mlp(hidden_features=int(embed_dim * 2))
        "max_frames": frames,
        "norm_epsilon": float(upstream.get("norm_epsilon", 1e-5)),
        "dropout_rate": float(upstream.get("drop_rate", 0.0)),
        "drop_path_rate": float(upstream.get("drop_path_rate", 0.1)),
    }
    kwargs.update({ours: int(ssm_cfg[theirs]) for theirs, ours in _SSM_KEYS.items()
                   if theirs in ssm_cfg})
    return kwargs


def merge_state_dicts(*parts: dict) -> dict:
    """One state dict from several files (the fixture's stem file + trunk file)."""
    merged = {}
    for part in parts:
        clash = sorted(set(merged) & set(part))
        if clash:
            raise ValueError(f"upstream state_dict parts both hold {clash[:5]}; each key must "
                             "come from one file")
        merged.update(part)
    return merged


def split_state_dict(state_dict: dict) -> tuple[dict, dict]:
    """(backbone, head) with DDP's `module.` prefix stripped; the head keeps its `head.`."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    head = {k: v for k, v in state_dict.items() if k.startswith("head.")}
    backbone = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
    return backbone, head


def port_backbone(porter: StateDictPorter, backbone: BrainMTBackbone) -> None:
    """Queue every backbone tensor from upstream `BrainMT` names."""
    stem = backbone.get_layer("stem")
    porter.conv(stem.patch_conv1, "patch_embed.conv_down.0")
    porter.conv(stem.patch_conv2, "patch_embed.conv_down.2")
    for i, (block, down) in enumerate(((stem.conv_block0, stem.downsample0),
                                       (stem.conv_block1, stem.downsample1))):
        for part in ("conv1", "conv2"):
            porter.conv(getattr(block, part), f"conv_block{i}.{part}")
        for part in ("norm1", "norm2"):
            porter.norm(getattr(block, part), f"conv_block{i}.{part}")
        porter.conv(down, f"downsample{i}.reduction.0")
    embedding = backbone.get_layer("embedding")
    porter.port(embedding.cls_token, "cls_token", lambda a: a.reshape(a.shape[-1]))  # (1,1,C)
    porter.port(embedding.pos_embed, "pos_embed", lambda a: a[0])  # (1, 1+N, C) -> (1+N, C)
    porter.port(embedding.temporal_pos_embed, "temporal_pos_embedding", lambda a: a[0])
    for i in range(backbone.depths[0]):
        layer = backbone.get_layer(f"mamba_layer_{i}")
        porter.port(layer.norm.scale, f"layers.{i}.norm.weight")
        port_mamba(porter, layer.mixer, f"layers.{i}.mixer.")
    porter.port(backbone.get_layer("norm_f").scale, "norm_f.weight")
    for i in range(backbone.depths[1]):
        attention = backbone.get_layer(f"attention_{i}")
        porter.dense(attention.qkv, f"blocks.{i}.qkv")
        porter.dense(attention.proj, f"blocks.{i}.proj")
    if backbone.depths[1]:
        porter.norm(backbone.get_layer("norm"), "norm")
        mlp = backbone.get_layer("mlp")
        porter.dense(mlp.linear1, "mlp.fc1")
        porter.dense(mlp.linear2, "mlp.fc2")
    elif porter.has("norm.weight"):  # built upstream but unused without attention blocks
        for key in ("norm.weight", "norm.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                    "mlp.fc2.weight", "mlp.fc2.bias"):
            porter.take(key)


def load_upstream_backbone(state_dict: dict, backbone_kwargs: dict) -> BrainMTBackbone:
    """Build a `BrainMTBackbone` and load upstream backbone tensors into it (every key must be
    used and fit)."""
    backbone = BrainMTBackbone(**backbone_kwargs)
    porter = StateDictPorter(state_dict, "BrainMT")
    port_backbone(porter, backbone)
    porter.finish()
    return backbone


def convert_brainmt(state_dict: dict, upstream_kwargs: dict, task: str | None = None):
    """Upstream BrainMT state dict -> Keras backbone, or task model when it has a head.

    Args:
        state_dict: torch-named arrays (every upstream key; join split files with
            `merge_state_dicts`).
        upstream_kwargs: `BrainMT` constructor kwargs (missing ones take upstream defaults).
        task: "classification" or "regression": the head `head.*` is a Linear on the cls
            token either way (upstream trains sex with BCE, intelligence with MSE), so keys
            alone say classification. None: classification when there is a head, a bare
            backbone otherwise.
    """
    backbone_sd, head_sd = split_state_dict(state_dict)
    backbone = load_upstream_backbone(backbone_sd, brainmt_kwargs_from_upstream(upstream_kwargs))
    if not head_sd:
        if task:
            raise ValueError(f"task={task!r} requested but the state dict has no head keys "
                             "(head.weight, head.bias)")
        return backbone
    if task == "contrastive":
        raise ValueError("BrainMT's upstream head is a Linear on the cls token (classification "
                         "or regression). Received: task='contrastive'")
    model = attach_upstream_head(backbone, head_sd, task)
    dropout = float(upstream_kwargs.get("fc_drop_rate", 0.0))
    if dropout:  # upstream head_drop; rebuild the task with it (no weights of its own)
        config = {"num_classes": model.num_classes} if task != "regression" else {
            "num_outputs": model.num_outputs}
        rebuilt = type(model)(backbone, head="v1", dropout_rate=dropout, **config)
        rebuilt.get_layer("head").set_weights(model.get_layer("head").get_weights())
        model = rebuilt
    return model
