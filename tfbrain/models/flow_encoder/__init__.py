"""The two-stage flow-matching fMRI encoder: MedARC Stage 1 + OT-CFM with the Matcha U-Net."""

from tfbrain.models.flow_encoder.flow_encoder_backbone import FlowEncoderBackbone
from tfbrain.models.flow_encoder.flow_encoder_conversion import (MEDARC_UPSTREAM, convert_cfm,
                                                                 convert_matcha_decoder,
                                                                 convert_medarc_stage1)
from tfbrain.models.flow_encoder.flow_encoder_presets import (FLOW_CFM_VARIANTS,
                                                              FLOW_ENCODER_PRESETS,
                                                              FLOW_ENCODER_VARIANTS)
from tfbrain.models.flow_encoder.flow_encoder_tasks import (FlowCFMTask, FlowMatchingHead,
                                                            FlowStage1Task)
from tfbrain.models.registry import FamilySpec, register_family

# `tfbrain convert flow_encoder` (or `medarc_stage1`) converts MedARC Stage 1;
# `tfbrain convert matcha_decoder` and `tfbrain convert cfm` the Stage 2 modules.
CONVERTERS = {"medarc_stage1": convert_medarc_stage1, "matcha_decoder": convert_matcha_decoder,
              "cfm": convert_cfm}

register_family(FamilySpec(
    name="flow_encoder", backbone_class=FlowEncoderBackbone, variants=FLOW_ENCODER_VARIANTS,
    default_variant="flow_encoder_algonauts", tiny_variant="flow_encoder_tiny",
    input_kind="feature_streams", upstream=MEDARC_UPSTREAM, converter=convert_medarc_stage1,
    presets=FLOW_ENCODER_PRESETS, default_task="flow_stage1", converters=CONVERTERS,
    description="Two-stage flow-matching fMRI encoder: MedARC multi-subject conv-linear "
                "encoder (Stage 1) + OT-CFM with a Matcha-TTS 1D U-Net (Stage 2)"))

__all__ = ["CONVERTERS", "FLOW_CFM_VARIANTS", "FlowCFMTask", "FlowEncoderBackbone",
           "FlowMatchingHead", "FlowStage1Task"]
