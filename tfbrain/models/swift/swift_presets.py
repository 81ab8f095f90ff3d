"""SwiFT variants (constructor arguments) and named pretrained presets.

Variants build untrained models; presets name converted upstream checkpoints,
which tfbrain never downloads: `tfbrain convert swift ...` makes them locally.
"""

# The paper / sample-script configuration (4,314,636 parameters, 96^3 x 20 windows).
SWIFT_VARIANTS = {
    "swift_paper": dict(volume_shape=(96, 96, 96, 20, 1), patch_size=(6, 6, 6, 1), hidden_dim=36,
                        depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                        first_window_size=(4, 4, 4, 4), window_size=(4, 4, 4, 4),
                        c_multiplier=2, last_layer_full_msa=True),
    # Same topology on 32^3 x 8 (the `small` parity fixture): for quick experiments.
    "swift_small": dict(volume_shape=(32, 32, 32, 8, 1), patch_size=(2, 2, 2, 1), hidden_dim=12,
                        depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24),
                        first_window_size=(4, 4, 4, 4), window_size=(4, 4, 4, 4),
                        c_multiplier=2, last_layer_full_msa=True),
    # 8^3 x 4 windows, two stages: unit tests and the registry contract tests.
    "swift_tiny": dict(volume_shape=(8, 8, 8, 4, 1), patch_size=(2, 2, 2, 1), hidden_dim=12,
                       depths=(1, 2), num_heads=(2, 4), first_window_size=(2, 2, 2, 2),
                       window_size=(2, 2, 2, 2)),
}

_UPSTREAM = "github.com/Transconnectome/SwiFT, pretrained_models/"
_HOW = ("download {ckpt} from " + _UPSTREAM + " yourself, then run: pip install 'tfbrain[torch]' && "
        "tfbrain convert swift --state-dict {ckpt} --out ~/.cache/tfbrain/presets/{name}")

SWIFT_PRESETS = {
    "swift.hcp-sex": {
        "description": "SwiFT trained from scratch on HCP sex classification (paper config)",
        "how_to_make": _HOW.format(ckpt="hcp_sex_classification.ckpt", name="swift.hcp-sex"),
    },
    "swift.contrastive": {
        "description": "SwiFT contrastively pretrained on HCP+ABCD+UKB (paper config)",
        "how_to_make": _HOW.format(ckpt="contrastive_pretrained.ckpt", name="swift.contrastive"),
    },
}
