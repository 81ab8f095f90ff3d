"""BiXT: bi-directional cross-attention between latents and tokens, linear in the token count."""

from tfbrain.models.bixt.bixt_backbone import BiXTBackbone
from tfbrain.models.bixt.bixt_conversion import UPSTREAM, convert_bixt
from tfbrain.models.bixt.bixt_presets import BIXT_PRESETS, BIXT_VARIANTS
from tfbrain.models.registry import FamilyEntryPoint, FamilySpec, register_family

register_family(FamilySpec(
    name="bixt", backbone_class=BiXTBackbone, variants=BIXT_VARIANTS,
    default_variant="bixt_fmri_ti", tiny_variant="bixt_tiny", input_kind="fmri_window",
    upstream=UPSTREAM, converter=convert_bixt, presets=BIXT_PRESETS,
    description="Bi-directional cross-attention transformer: latents and whole-window 4D tokens "
                "at linear cost (Hiller et al., NeurIPS 2024); image variants for the released "
                "ImageNet checkpoints"))


class BiXT(FamilyEntryPoint):
    """Entry point for BiXT models.

    `BiXT.from_pretrained("bixt.bixt_ti_l64_p16.in1k")` loads a converted preset (a name looked
    up under $TFBRAIN_PRESETS and ~/.cache/tfbrain/presets, or a folder);
    `BiXT.backbone("bixt_fmri_ti", **overrides)` builds an untrained variant.
    """

    family = "bixt"
