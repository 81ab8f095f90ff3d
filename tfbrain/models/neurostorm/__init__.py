"""NeuroSTORM: 4D shifted-window fMRI foundation model with Mamba mixers."""

from tfbrain.models.neurostorm.neurostorm_backbone import NeuroSTORMBackbone
from tfbrain.models.neurostorm.neurostorm_conversion import UPSTREAM, convert_neurostorm
from tfbrain.models.neurostorm.neurostorm_pretraining import NeuroSTORMMAE
from tfbrain.models.neurostorm.neurostorm_presets import NEUROSTORM_PRESETS, NEUROSTORM_VARIANTS
from tfbrain.models.registry import FamilyEntryPoint, FamilySpec, register_family

register_family(FamilySpec(
    name="neurostorm", backbone_class=NeuroSTORMBackbone, variants=NEUROSTORM_VARIANTS,
    default_variant="neurostorm_paper", tiny_variant="neurostorm_tiny", input_kind="fmri_window",
    upstream=UPSTREAM, converter=convert_neurostorm, presets=NEUROSTORM_PRESETS,
    description="4D shifted windows with Mamba mixers, MAE pretraining (NeuroSTORM)"))


class NeuroSTORM(FamilyEntryPoint):
    """Entry point for NeuroSTORM models.

    `NeuroSTORM.from_pretrained("neurostorm.mae-hcp")` loads a converted preset (a name
    looked up under $TFBRAIN_PRESETS and ~/.cache/tfbrain/presets, or a folder);
    `NeuroSTORM.backbone("neurostorm_paper", **overrides)` builds an untrained variant;
    `NeuroSTORMMAE(backbone, mask_ratio=0.5)` wraps one for MAE pretraining.
    """

    family = "neurostorm"
