"""SwiFT: Swin 4D fMRI Transformer."""

from tfbrain.models.swift.swift_backbone import SwiFTBackbone
from tfbrain.models.swift.swift_presets import SWIFT_PRESETS, SWIFT_VARIANTS
from tfbrain.presets import load_preset, register_presets

register_presets(SWIFT_PRESETS)


class SwiFT:
    """Entry point for SwiFT models.

    `SwiFT.from_pretrained("swift.hcp-sex")` loads a converted preset (a name
    looked up under $TFBRAIN_PRESETS and ~/.cache/tfbrain/presets, or a folder);
    `SwiFT.backbone("swift_paper", **overrides)` builds an untrained variant.
    """

    @staticmethod
    def from_pretrained(preset, load_weights=True, **config_overrides):
        return load_preset(preset, load_weights=load_weights, **config_overrides)

    @staticmethod
    def backbone(variant="swift_paper", **overrides):
        if variant not in SWIFT_VARIANTS:
            raise ValueError(f"unknown SwiFT variant {variant!r}; known: {sorted(SWIFT_VARIANTS)}")
        return SwiFTBackbone(**{**SWIFT_VARIANTS[variant], **overrides})
