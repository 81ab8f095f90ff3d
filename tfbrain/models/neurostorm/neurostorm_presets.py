"""NeuroSTORM variants (constructor arguments) and named pretrained presets.

Variants build untrained models; presets name converted upstream checkpoints,
which tfbrain never downloads: `tfbrain convert neurostorm ...` makes them locally.
"""

# The released yaml (`scripts/configs/models/neurostorm.yaml`): 5,173,020 backbone
# parameters upstream, 96^3 x 20 windows.
NEUROSTORM_VARIANTS = {
    "neurostorm_paper": dict(volume_shape=(96, 96, 96, 20, 1), patch_size=(6, 6, 6, 1),
                             hidden_dim=36, depths=(2, 2, 6, 2), first_window_size=(4, 4, 4, 4),
                             window_size=(4, 4, 4, 4), c_multiplier=2, last_layer_full_msa=True),
    # The `neurostorm_small` parity fixture: 48^3 x 8, embed 24, depths (2, 2, 2, 2).
    "neurostorm_small": dict(volume_shape=(48, 48, 48, 8, 1), patch_size=(6, 6, 6, 1),
                             hidden_dim=24, depths=(2, 2, 2, 2), first_window_size=(4, 4, 4, 4),
                             window_size=(4, 4, 4, 4), c_multiplier=2, last_layer_full_msa=True),
    # 8^3 x 4 windows, two stages: unit tests and the registry contract tests.
    "neurostorm_tiny": dict(volume_shape=(8, 8, 8, 4, 1), patch_size=(2, 2, 2, 1), hidden_dim=12,
                            depths=(1, 1), first_window_size=(2, 2, 2, 2),
                            window_size=(2, 2, 2, 2)),
}

_UPSTREAM = "huggingface.co/zxcvb20001/NeuroSTORM (pretraining/<dataset>/)"
_HOW = ("download {ckpt} from " + _UPSTREAM + " yourself, then run: "
        "pip install 'tfbrain[torch]' && tfbrain convert neurostorm --state-dict {ckpt} "
        "--out ~/.cache/tfbrain/presets/{name}")

# Only per-dataset MAE pretraining checkpoints are published (upstream issue #4);
# converting one keeps the encoder as a NeuroSTORMBackbone (the decoder is dropped).
NEUROSTORM_PRESETS = {
    "neurostorm.mae-hcp": {
        "description": "NeuroSTORM encoder, MAE-pretrained on HCP (yaml config)",
        "how_to_make": _HOW.format(ckpt="<hcp MAE checkpoint>.ckpt", name="neurostorm.mae-hcp"),
    },
    "neurostorm.mae-abcd": {
        "description": "NeuroSTORM encoder, MAE-pretrained on ABCD (yaml config)",
        "how_to_make": _HOW.format(ckpt="<abcd MAE checkpoint>.ckpt", name="neurostorm.mae-abcd"),
    },
}
