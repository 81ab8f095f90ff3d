"""Upstream weights (PyTorch state dicts) -> the flow encoder's Keras parts.

Three converters, one per upstream module, all `(state_dict, upstream_kwargs, task=None)`:
  `convert_medarc_stage1`  MedARC `MultiSubjectConvLinearEncoder` -> `FlowEncoderBackbone`
  `convert_matcha_decoder` Matcha `Decoder` -> `MatchaDecoder`
  `convert_cfm`            Matcha `CFM` (keys `estimator.*`) -> `FlowMatching`
`upstream_kwargs` are the upstream constructor kwargs (the fixtures' `constructor_kwargs`).
Layouts: Linear (out, in) -> (in, out); Conv1d (out, in, k) -> (k, in, out); depthwise
Conv1d (C, 1, k) -> (k, C, 1); ConvTranspose1d (in, out, k) -> (k, out, in) (no flip).
"""

import numpy as np

from tfbrain.conversion.porter import StateDictPorter, split_by_prefix
from tfbrain.layers.flow_matching import FlowMatching
from tfbrain.layers.unet_1d import MatchaDecoder
from tfbrain.models.flow_encoder.flow_encoder_backbone import (FlowEncoderBackbone,
                                                               normalize_feature_dims)
from tfbrain.models.registry import UpstreamInfo

MEDARC_UPSTREAM = UpstreamInfo("MedARC-AI/algonauts2025", "77840e142e358d6eaee2d8ce30085c343da58e0b",
                               "Algonauts 2025, MedARC, arXiv 2507.19956")
MATCHA_UPSTREAM = UpstreamInfo("shivammehta25/Matcha-TTS",
                               "108906c603fad5055f2649b3fd71d2bbdf222eac",
                               "Mehta et al., ICASSP 2024, arXiv 2309.03199")


# === Matcha decoder ===

def matcha_decoder_kwargs_from_upstream(upstream: dict) -> dict:
    """`Decoder(**kwargs)` -> `MatchaDecoder` kwargs."""
    act = upstream.get("act_fn", "snake")
    return {
        "in_channels": int(upstream["in_channels"]),
        "out_channels": int(upstream["out_channels"]),
        "channels": tuple(int(c) for c in upstream.get("channels", (256, 256))),
        "dropout_rate": float(upstream.get("dropout", 0.05)),
        "head_dim": int(upstream.get("attention_head_dim", 64)),
        "num_blocks": int(upstream.get("n_blocks", 1)),
        "num_mid_blocks": int(upstream.get("num_mid_blocks", 2)),
        "num_heads": int(upstream.get("num_heads", 4)),
        "activation": act,
        "down_block_type": upstream.get("down_block_type", "transformer"),
        "mid_block_type": upstream.get("mid_block_type", "transformer"),
        "up_block_type": upstream.get("up_block_type", "transformer"),
    }


def _conv_transpose_kernel(array):
    return np.transpose(array, (2, 1, 0))  # (in, out, k) -> (k, out, in)


def _port_resnet(porter, resnet, prefix):
    porter.dense(resnet.time_proj, f"{prefix}.mlp.1")
    for name in ("block1", "block2"):
        block = getattr(resnet, name)
        porter.conv(block.conv, f"{prefix}.{name}.block.0")
        porter.norm(block.norm, f"{prefix}.{name}.block.1")
    porter.conv(resnet.res_conv, f"{prefix}.res_conv")


def _port_transformer(porter, block, prefix):
    porter.norm(block.norm1, f"{prefix}.norm1")
    for name in ("to_q", "to_k", "to_v"):
        porter.dense(getattr(block, name), f"{prefix}.attn1.{name}")
    porter.dense(block.to_out, f"{prefix}.attn1.to_out.0")
    porter.norm(block.norm3, f"{prefix}.norm3")
    porter.dense(block.ff.proj, f"{prefix}.ff.net.0.proj")
    if block.ff.activation == "snakebeta":
        porter.port(block.ff.alpha, f"{prefix}.ff.net.0.alpha")
        porter.port(block.ff.beta, f"{prefix}.ff.net.0.beta")
    porter.dense(block.ff.out, f"{prefix}.ff.net.2")


def _port_conformer(porter, block, prefix):
    for name in ("ff1", "ff2"):
        porter.norm(getattr(block, f"{name}_norm"), f"{prefix}.{name}.fn.norm")
        porter.dense(getattr(block, f"{name}_fc1"), f"{prefix}.{name}.fn.fn.net.0")
        porter.dense(getattr(block, f"{name}_fc2"), f"{prefix}.{name}.fn.fn.net.3")
    porter.norm(block.attn_norm, f"{prefix}.attn.norm")
    porter.dense(block.to_q, f"{prefix}.attn.fn.to_q")
    porter.dense(block.to_kv, f"{prefix}.attn.fn.to_kv")
    porter.dense(block.to_out, f"{prefix}.attn.fn.to_out")
    porter.port(block.rel_pos_emb, f"{prefix}.attn.fn.rel_pos_emb.weight")
    porter.norm(block.conv_norm, f"{prefix}.conv.net.0")
    porter.conv(block.conv_in, f"{prefix}.conv.net.2")
    porter.depthwise_conv(block.depthwise, f"{prefix}.conv.net.4.conv")
    porter.norm(block.batch_norm, f"{prefix}.conv.net.5")
    porter.conv(block.conv_out, f"{prefix}.conv.net.7")
    porter.norm(block.post_norm, f"{prefix}.post_norm")


def _port_blocks(porter, decoder, blocks, block_type, prefix):
    port = _port_conformer if block_type == "conformer" else _port_transformer
    for j in range(decoder.num_blocks):
        port(porter, blocks[j], f"{prefix}.{j}")


def port_matcha_decoder(porter: StateDictPorter, decoder: MatchaDecoder, prefix: str = "") -> None:
    """Queue every tensor of a built `MatchaDecoder` (torch names of Matcha's `Decoder`)."""
    n = decoder.num_blocks
    porter.dense(decoder.time_linear_1, f"{prefix}time_mlp.linear_1")
    porter.dense(decoder.time_linear_2, f"{prefix}time_mlp.linear_2")
    last = len(decoder.channels) - 1
    for i in range(len(decoder.channels)):
        _port_resnet(porter, decoder.down_resnets[i], f"{prefix}down_blocks.{i}.0")
        _port_blocks(porter, decoder, decoder.down_blocks[i * n:(i + 1) * n],
                     decoder.down_block_type, f"{prefix}down_blocks.{i}.1")
        # Downsample1D wraps its conv (`.conv`); the last level's plain Conv1d does not
        porter.conv(decoder.downsamples[i],
                    f"{prefix}down_blocks.{i}.2" + ("" if i == last else ".conv"))
    for i in range(decoder.num_mid_blocks):
        _port_resnet(porter, decoder.mid_resnets[i], f"{prefix}mid_blocks.{i}.0")
        _port_blocks(porter, decoder, decoder.mid_blocks[i * n:(i + 1) * n],
                     decoder.mid_block_type, f"{prefix}mid_blocks.{i}.1")
    for i in range(len(decoder.channels)):
        _port_resnet(porter, decoder.up_resnets[i], f"{prefix}up_blocks.{i}.0")
        _port_blocks(porter, decoder, decoder.up_blocks[i * n:(i + 1) * n],
                     decoder.up_block_type, f"{prefix}up_blocks.{i}.1")
        sample = decoder.upsamples[i]
        if i == last:
            porter.conv(sample, f"{prefix}up_blocks.{i}.2")
        else:
            porter.port(sample.conv.kernel, f"{prefix}up_blocks.{i}.2.conv.weight",
                        _conv_transpose_kernel)
            porter.port(sample.conv.bias, f"{prefix}up_blocks.{i}.2.conv.bias")
    porter.conv(decoder.final_block.conv, f"{prefix}final_block.block.0")
    porter.norm(decoder.final_block.norm, f"{prefix}final_block.block.1")
    porter.conv(decoder.final_proj, f"{prefix}final_proj")


def build_matcha_decoder(kwargs: dict, spk_dim: int = 0, length: int = 16, **layer_kwargs):
    """A built `MatchaDecoder` (x channels = out_channels, mu = the rest minus `spk_dim`)."""
    decoder = MatchaDecoder(**kwargs, **layer_kwargs)
    x_dim = kwargs["out_channels"]
    shapes = {"x": (None, length, x_dim), "mask": (None, length),
              "mu": (None, length, kwargs["in_channels"] - x_dim - spk_dim), "t": (None,)}
    if spk_dim:
        shapes["spks"] = (None, spk_dim)
    decoder.build(shapes)
    return decoder


def convert_matcha_decoder(state_dict: dict, upstream_kwargs: dict, task: str | None = None):
    """Matcha `Decoder` state dict -> built `MatchaDecoder` (a Keras layer).

    The split of `in_channels` between mu and a speaker/subject embedding does not change
    the weights; call the decoder with whatever split sums to `in_channels`.
    """
    if task is not None:
        raise ValueError(f"the Matcha decoder has no task head. Received: task={task!r}")
    kwargs = matcha_decoder_kwargs_from_upstream(upstream_kwargs)
    decoder = build_matcha_decoder(kwargs)
    porter = StateDictPorter(state_dict, "Matcha-TTS Decoder")
    port_matcha_decoder(porter, decoder)
    porter.finish()
    return decoder


# === Matcha CFM ===

def cfm_kwargs_from_upstream(upstream: dict) -> dict:
    """`CFM(in_channels, out_channel, cfm_params, decoder_params, n_spks, spk_emb_dim)` ->
    `FlowMatching` kwargs (+ the spk dim the estimator's input includes, `spk_dim`)."""
    n_spks = int(upstream.get("n_spks", 1))
    spk_dim = int(upstream.get("spk_emb_dim", 64)) if n_spks > 1 else 0
    cfm_params = upstream.get("cfm_params", {}) or {}
    if cfm_params.get("solver", "euler") != "euler":
        raise ValueError("only the Euler solver exists upstream. Received: "
                         f"solver={cfm_params.get('solver')!r}")
    decoder = dict(upstream.get("decoder_params", {}))
    decoder["in_channels"] = int(upstream["in_channels"]) + spk_dim
    decoder["out_channels"] = int(upstream["out_channel"])
    return {"estimator": matcha_decoder_kwargs_from_upstream(decoder),
            "sigma_min": float(cfm_params.get("sigma_min", 1e-4)), "spk_dim": spk_dim}


def convert_cfm(state_dict: dict, upstream_kwargs: dict, task: str | None = None):
    """Matcha `CFM` state dict (`estimator.*` keys) -> built `FlowMatching` layer."""
    if task is not None:
        raise ValueError(f"the CFM has no task head. Received: task={task!r}")
    kwargs = cfm_kwargs_from_upstream(upstream_kwargs)
    spk_dim = kwargs.pop("spk_dim")
    parts = split_by_prefix(state_dict, {"estimator.": "estimator"}, rest="rest")
    if parts["rest"]:
        raise ValueError("a CFM state dict holds only `estimator.*` tensors; found "
                         f"{sorted(parts['rest'])[:5]}")
    decoder = build_matcha_decoder(kwargs["estimator"], spk_dim=spk_dim, name="estimator")
    cfm = FlowMatching(decoder, sigma_min=kwargs["sigma_min"])
    cfm.built = True
    porter = StateDictPorter(parts["estimator"], "Matcha-TTS CFM estimator")
    port_matcha_decoder(porter, decoder)
    porter.finish()
    return cfm


# === MedARC Stage 1 ===

def medarc_kwargs_from_upstream(upstream: dict, num_frames=None) -> dict:
    """`MultiSubjectConvLinearEncoder(**kwargs)` -> `FlowEncoderBackbone` kwargs."""
    if upstream.get("hidden_model") is not None:
        raise ValueError("MedARC `hidden_model` is not ported (null in every released config). "
                         f"Received: hidden_model={upstream['hidden_model']!r}")
    if int(upstream.get("decoder_kernel_size", 0)) > 1:
        raise ValueError("MedARC `decoder_kernel_size > 1` raises upstream (ConvLinear passes "
                         "`groups=` to DepthConv1d) and is not ported. Received: "
                         f"decoder_kernel_size={upstream['decoder_kernel_size']}")
    return {
        "feature_dims": normalize_feature_dims(upstream.get("feat_dims", (2048,))),
        "num_subjects": int(upstream.get("num_subjects", 4)),
        "target_dim": int(upstream.get("target_dim", 1000)),
        "embed_dim": int(upstream.get("embed_dim", 256)),
        "num_frames": num_frames,
        "global_pool": upstream.get("global_pool", "avg"),
        "encoder_kernel_size": int(upstream.get("encoder_kernel_size", 33)),
        "encoder_causal": bool(upstream.get("encoder_causal", True)),
        "encoder_positive": bool(upstream.get("encoder_positive", False)),
        "encoder_blockwise": bool(upstream.get("encoder_blockwise", False)),
        "with_shared_decoder": bool(upstream.get("with_shared_decoder", True)),
        "with_subject_decoders": bool(upstream.get("with_subject_decoders", True)),
    }


def port_medarc_stage1(porter: StateDictPorter, backbone: FlowEncoderBackbone) -> None:
    """Queue every tensor of `MultiSubjectConvLinearEncoder` onto a `FlowEncoderBackbone`."""
    for i in range(len(backbone.feature_dims)):
        embed = backbone.get_layer(f"stream_embed_{i}")
        if embed.conv is None:
            porter.dense(embed.fc, f"feat_embeds.{i}")
            continue
        porter.dense(embed.fc, f"feat_embeds.{i}.fc")
        porter.port(embed.conv.kernel, f"feat_embeds.{i}.conv.weight",
                    lambda a: a[:, 0, :].T)  # (C or 1, 1, k) -> (k, C or 1)
        porter.port(embed.conv.bias, f"feat_embeds.{i}.conv.bias")
        key = f"feat_embeds.{i}.conv.attn_mask"
        if porter.has(key):
            taps = porter.take(key)
            if not np.array_equal(np.asarray(taps, np.float32),
                                  np.asarray(embed.conv.tap_mask(), np.float32)):
                raise ValueError(f"{key} = {taps.tolist()} does not match encoder_causal="
                                 f"{embed.conv.causal}; check the upstream kwargs.")
    pool = backbone.get_layer("stream_pool")
    if pool.mode == "linear":
        porter.port(pool.weight, "feat_pool.weight")
    decoders = backbone.get_layer("decoders")
    if decoders.use_shared:
        porter.dense(decoders.shared, "shared_decoder")
    if decoders.use_subject:
        porter.port(decoders.subject_kernel, "subject_decoders.0.weight", lambda _: np.stack(
            [porter.take(f"subject_decoders.{s}.weight").T for s in range(backbone.num_subjects)]))
        porter.port(decoders.subject_bias, "subject_decoders.0.bias", lambda _: np.stack(
            [porter.take(f"subject_decoders.{s}.bias") for s in range(backbone.num_subjects)]))


def convert_medarc_stage1(state_dict: dict, upstream_kwargs: dict, task: str | None = None,
                          num_frames=None):
    """MedARC `MultiSubjectConvLinearEncoder` state dict -> `FlowEncoderBackbone`, or a
    `flow_stage1` task around it when `task="flow_stage1"`.

    Args:
        num_frames: window length of the Keras model (None: any T).
    """
    if task not in (None, "flow_stage1"):
        raise ValueError("MedARC Stage 1 converts to a backbone or task='flow_stage1'. "
                         f"Received: task={task!r}")
    backbone = FlowEncoderBackbone(**medarc_kwargs_from_upstream(upstream_kwargs, num_frames))
    porter = StateDictPorter(state_dict, "MedARC MultiSubjectConvLinearEncoder")
    port_medarc_stage1(porter, backbone)
    porter.finish()
    if task is None:
        return backbone
    from tfbrain.models.flow_encoder.flow_encoder_tasks import FlowStage1Task

    return FlowStage1Task(backbone)
