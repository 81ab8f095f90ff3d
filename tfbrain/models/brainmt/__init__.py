"""BrainMT: conv stem, temporal-first Mamba stage and shared-norm transformer over long fMRI
windows (Kannan et al., MICCAI 2025)."""

from tfbrain.models.brainmt.brainmt_backbone import BrainMTBackbone
from tfbrain.models.brainmt.brainmt_conversion import UPSTREAM, convert_brainmt
from tfbrain.models.brainmt.brainmt_presets import BRAINMT_PRESETS, BRAINMT_VARIANTS
from tfbrain.models.registry import FamilyEntryPoint, FamilySpec, register_family

register_family(FamilySpec(
    name="brainmt", backbone_class=BrainMTBackbone, variants=BRAINMT_VARIANTS,
    default_variant="brainmt_paper", tiny_variant="brainmt_tiny", input_kind="fmri_window",
    upstream=UPSTREAM, converter=convert_brainmt, presets=BRAINMT_PRESETS,
    description="conv stem per frame, Mamba over the temporal-first token sequence, then "
                "attention over the same sequence (BrainMT, MICCAI 2025)"))


class BrainMT(FamilyEntryPoint):
    """Entry point for BrainMT models.

    `BrainMT.from_pretrained(folder)` loads a converted preset folder;
    `BrainMT.backbone("brainmt_paper", **overrides)` builds an untrained variant.
    """

    family = "brainmt"
