"""NeuroSTORM: 4D shifted-window fMRI foundation model with Mamba mixers."""

from tfbrain.models.neurostorm.neurostorm_backbone import NeuroSTORMBackbone
from tfbrain.models.neurostorm.neurostorm_pretraining import NeuroSTORMMAE
from tfbrain.models.neurostorm.neurostorm_presets import NEUROSTORM_PRESETS, NEUROSTORM_VARIANTS
from tfbrain.presets import load_preset, register_presets

register_presets(NEUROSTORM_PRESETS)


class NeuroSTORM:
    """Entry point for NeuroSTORM models.

    `NeuroSTORM.from_pretrained("neurostorm.mae-hcp")` loads a converted preset (a name
    looked up under $TFBRAIN_PRESETS and ~/.cache/tfbrain/presets, or a folder);
    `NeuroSTORM.backbone("neurostorm_paper", **overrides)` builds an untrained variant;
    `NeuroSTORMMAE(backbone, mask_ratio=0.5)` wraps one for MAE pretraining.
    """

    @staticmethod
    def from_pretrained(preset, load_weights=True, **config_overrides):
        return load_preset(preset, load_weights=load_weights, **config_overrides)

    @staticmethod
    def backbone(variant="neurostorm_paper", **overrides):
        if variant not in NEUROSTORM_VARIANTS:
            raise ValueError(f"unknown NeuroSTORM variant {variant!r}; known: "
                             f"{sorted(NEUROSTORM_VARIANTS)}")
        return NeuroSTORMBackbone(**{**NEUROSTORM_VARIANTS[variant], **overrides})
