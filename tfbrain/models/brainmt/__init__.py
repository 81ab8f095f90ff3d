"""BrainMT: conv stem, temporal-first Mamba stage and shared-norm transformer over long fMRI
windows (Kannan et al., MICCAI 2025)."""

from tfbrain.models.brainmt.brainmt_backbone import BrainMTBackbone
from tfbrain.models.brainmt.brainmt_conversion import UPSTREAM, convert_brainmt
from tfbrain.models.brainmt.brainmt_presets import BRAINMT_PRESETS, BRAINMT_VARIANTS
from tfbrain.models.registry import FamilySpec, create_backbone, register_family

register_family(FamilySpec(
    name="brainmt", backbone_class=BrainMTBackbone, variants=BRAINMT_VARIANTS,
    default_variant="brainmt_paper", tiny_variant="brainmt_tiny", input_kind="fmri_window",
    upstream=UPSTREAM, converter=convert_brainmt, presets=BRAINMT_PRESETS,
    description="conv stem per frame, Mamba over the temporal-first token sequence, then "
                "attention over the same sequence (BrainMT, MICCAI 2025)"))


class BrainMT:
    """Entry point for BrainMT models.

    `BrainMT.from_pretrained(folder)` loads a converted preset folder;
    `BrainMT.backbone("brainmt_paper", **overrides)` builds an untrained variant.
    """

    @staticmethod
    def from_pretrained(preset, load_weights=True, **config_overrides):
        from tfbrain.models.loading import load_preset

        return load_preset(preset, load_weights=load_weights, **config_overrides)

    @staticmethod
    def backbone(variant="brainmt_paper", **overrides):
        return create_backbone("brainmt", variant, **overrides)
