"""SwiFT: Swin 4D fMRI Transformer."""

from tfbrain.models.registry import FamilyEntryPoint, FamilySpec, UpstreamInfo, register_family
from tfbrain.models.swift.swift_backbone import SwiFTBackbone
from tfbrain.models.swift.swift_conversion import UPSTREAM, convert_swift
from tfbrain.models.swift.swift_presets import SWIFT_PRESETS, SWIFT_VARIANTS

register_family(FamilySpec(
    name="swift", backbone_class=SwiFTBackbone, variants=SWIFT_VARIANTS,
    default_variant="swift_paper", tiny_variant="swift_tiny", input_kind="fmri_window",
    upstream=UPSTREAM, converter=convert_swift, presets=SWIFT_PRESETS,
    description="4D Swin transformer with shifted 4D windows (Kim et al., NeurIPS 2023)"))


class SwiFT(FamilyEntryPoint):
    """Entry point for SwiFT models.

    `SwiFT.from_pretrained("swift.hcp-sex")` loads a converted preset (a name
    looked up under $TFBRAIN_PRESETS and ~/.cache/tfbrain/presets, or a folder);
    `SwiFT.backbone("swift_paper", **overrides)` builds an untrained variant.
    """

    family = "swift"
