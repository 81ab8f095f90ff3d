"""BiXT variants (`BiXTBackbone` constructor arguments), the upstream models' constructor kwargs,
and named presets of converted upstream checkpoints.

Image variants carry upstream's model names (github.com/mrkshllr/BiXT, `timm/models/bixt.py`,
`bixt_convtok.py`); each one with a 1000-class `FMRIClassifier` head has upstream's parameter
count (15,121,192 for Ti/16). fMRI variants take `(D, H, W, T, C)` windows.
"""

_TI = dict(num_latents=64, latent_dim=192, depth=12, sa_num_heads=6, ca_num_heads=6)
_ED256 = dict(num_latents=64, latent_dim=256, depth=12, sa_num_heads=8, ca_num_heads=8)

BIXT_VARIANTS = {
    # --- fMRI windows (registered default and tiny) ---
    # 8^3 x 4 windows, 32 tokens, 8 latents: unit tests and the registry contract tests.
    "bixt_tiny": dict(volume_shape=(8, 8, 8, 4, 1), patch_size=(4, 4, 4, 1), num_latents=8,
                      latent_dim=16, depth=2, sa_num_heads=2, ca_num_heads=2),
    # 32^3 x 8 windows, 4^3 x 2 tubelets (2,048 tokens): quick experiments.
    "bixt_fmri_small": dict(volume_shape=(32, 32, 32, 8, 1), patch_size=(4, 4, 4, 2),
                            num_latents=32, latent_dim=64, depth=4, sa_num_heads=2,
                            ca_num_heads=2),
    # BiXT-Ti on a whole 96^3 x 20 window: 8^3 patches per frame = 12^3 x 20 = 34,560 tokens.
    "bixt_fmri_ti": dict(volume_shape=(96, 96, 96, 20, 1), patch_size=(8, 8, 8, 1), **_TI),
    # Half-stride 16^3 kernels (upstream's p16s8 idea): the same 34,560 tokens, overlapping.
    "bixt_fmri_ti_p16s8": dict(volume_shape=(96, 96, 96, 20, 1), patch_size=(16, 16, 16, 1),
                               patch_stride=(8, 8, 8, 1), **_TI),
    # 8^3 x 4 space-time tubelets: 12^3 x 5 = 8,640 tokens.
    "bixt_fmri_ti_tubelet": dict(volume_shape=(96, 96, 96, 20, 1), patch_size=(8, 8, 8, 4), **_TI),
    # SwiFT's budget: the same tubelets at width 96 (3 heads of 32): 27.9 forward GFLOPs and
    # 3.9 M parameters, beside swift_paper's 24.3 GFLOPs and 4.3 M (TF profiler, batch 1).
    "bixt_fmri_d96_tubelet": dict(volume_shape=(96, 96, 96, 20, 1), patch_size=(8, 8, 8, 4),
                                  num_latents=64, latent_dim=96, depth=12, sa_num_heads=3,
                                  ca_num_heads=3),
    # --- images (upstream ImageNet models; `volume_shape` is (H, W, C)) ---
    "bixt_ti_l64_p16": dict(volume_shape=(224, 224, 3), patch_size=16, **_TI),
    "bixt_ti_l64_p16s8": dict(volume_shape=(224, 224, 3), patch_size=16, patch_stride=8, **_TI),
    "bixt_ti_l64_p16s4": dict(volume_shape=(224, 224, 3), patch_size=16, patch_stride=4, **_TI),
    "bixt_ti_l64_p16_ft384": dict(volume_shape=(384, 384, 3), patch_size=16, **_TI),
    "bixt_ti_l64_p16s8_ft384": dict(volume_shape=(384, 384, 3), patch_size=16, patch_stride=8,
                                    **_TI),
    "bixt_ti_l64_p16s4_ft384": dict(volume_shape=(384, 384, 3), patch_size=16, patch_stride=4,
                                    **_TI),
    "bixt_ti_l64_d13_p16": dict(volume_shape=(224, 224, 3), patch_size=16, **{**_TI, "depth": 13}),
    "bixt_ti_l64_d13_p16s8": dict(volume_shape=(224, 224, 3), patch_size=16, patch_stride=8,
                                  **{**_TI, "depth": 13}),
    "bixt_ti_l64_d13_p16s4": dict(volume_shape=(224, 224, 3), patch_size=16, patch_stride=4,
                                  **{**_TI, "depth": 13}),
    "bixt_conv_ti_l64_p16": dict(volume_shape=(224, 224, 3), patch_size=16, tokenizer="conv",
                                 **_TI),
    "bixt_ed256_l64_p16": dict(volume_shape=(224, 224, 3), patch_size=16, **_ED256),
    "bixt_ed256LS_l64_p16s8": dict(volume_shape=(224, 224, 3), patch_size=16, patch_stride=8,
                                   layer_scale_init=1e-5, **_ED256),
    "bixt_ed256LS_l64_p16s8_ft384": dict(volume_shape=(384, 384, 3), patch_size=16,
                                         patch_stride=8, layer_scale_init=1e-5, **_ED256),
}

# Upstream parameter counts (`sum(p.numel() for p in model.parameters())`, 1000 classes), from
# ../shared/research/bixt_cfm.md §1.9; the variant with a 1000-class head has the same count.
UPSTREAM_PARAMETER_COUNTS = {
    "bixt_ti_l64_p16": 15_121_192, "bixt_ti_l64_p16s8": 15_121_192,
    "bixt_ti_l64_p16s4": 15_121_192, "bixt_ti_l64_d13_p16": 16_381_672,
    "bixt_ed256_l64_p16": 26_682_088,
    "bixt_ed256LS_l64_p16s8": 26_700_008, "bixt_conv_ti_l64_p16": 15_192_640,
}

# Upstream registers the conv model as `bixt_ti_cnv_l64_p16`; MODEL_WEIGHTS.md calls it
# `bixt_conv_ti_l64_p16`.
UPSTREAM_MODEL_ALIASES = {"bixt_ti_cnv_l64_p16": "bixt_conv_ti_l64_p16"}

_WEIGHTS = "github.com/mrkshllr/BiXT/blob/main/MODEL_WEIGHTS.md"
# The zips hold timm training checkpoints (`model_best.pth.tar`) that pickle an
# argparse.Namespace, which torch.load(weights_only=True) refuses: re-save the state_dict first.
_HOW = ("download the {model} zip from " + _WEIGHTS + " yourself and unzip it; re-save its "
        "state_dict (a file you trust): python -c \"import torch, numpy as np; "
        "sd = torch.load('model_best.pth.tar', map_location='cpu', weights_only=False)"
        "['state_dict']; np.savez('{model}.npz', **{{k: v.numpy() for k, v in sd.items()}})\"; "
        "then: echo '{{\"model_name\": \"{model}\"}}' > kwargs.json && tfbrain convert bixt "
        "--state-dict {model}.npz --upstream-kwargs kwargs.json "
        "--out ~/.cache/tfbrain/presets/{name}")

_RELEASED = {
    "bixt_ti_l64_p16": "BiXT-Ti/16, ImageNet-1k top-1 80.10",
    "bixt_ti_l64_p16s8": "BiXT-Ti/8 (p16s8), ImageNet-1k top-1 81.88",
    "bixt_ti_l64_p16s4": "BiXT-Ti/4 (p16s4), ImageNet-1k top-1 82.70",
    "bixt_ti_l64_p16_ft384": "BiXT-Ti/16 fine-tuned at 384 px, top-1 81.85",
    "bixt_ti_l64_p16s8_ft384": "BiXT-Ti/8 fine-tuned at 384 px, top-1 82.77",
    "bixt_ti_l64_p16s4_ft384": "BiXT-Ti/4 fine-tuned at 384 px, top-1 83.15",
    "bixt_conv_ti_l64_p16": "BiXT-Ti/16 with the conv tokenizer, top-1 81.00",
    "bixt_ed256_l64_p16": "BiXT-d256/16, top-1 81.74",
    "bixt_ed256LS_l64_p16s8": "BiXT-d256/8 with LayerScale, top-1 83.24",
    "bixt_ed256LS_l64_p16s8_ft384": "BiXT-d256/8 LayerScale fine-tuned at 384 px, top-1 83.89",
    "bixt_ti_l64_d13_p16": "BiXT-Ti/16, 13 layers (drop the last for dense tasks), top-1 80.44",
    "bixt_ti_l64_d13_p16s8": "BiXT-Ti/8, 13 layers, top-1 82.44",
    "bixt_ti_l64_d13_p16s4": "BiXT-Ti/4, 13 layers, top-1 83.04",
}

BIXT_PRESETS = {
    f"bixt.{model}.in1k": {"description": f"{text} (converted upstream checkpoint)",
                           "how_to_make": _HOW.format(model=model, name=f"bixt.{model}.in1k")}
    for model, text in _RELEASED.items()
}
