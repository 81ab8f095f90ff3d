"""Flow-encoder variants (Stage-1 constructor arguments) and named presets.

A variant builds the Stage-1 `FlowEncoderBackbone`; Stage 2 (`flow_cfm` task) takes its
own arguments (`FLOW_CFM_VARIANTS`, the `FlowCFMTask` kwargs that go with each variant).
"""

# MedARC's default_feature_encoding.yaml: 5 streams (Llama-3.2-3B l11, Whisper l12,
# Qwen2.5-Omni-3B l20, InternVL3-14B l30, V-JEPA2; widths as the research note assumes),
# 1000 Schaefer parcels, 4 subjects, embed 192, kernel 45 non-causal, avg pooling.
FLOW_ENCODER_VARIANTS = {
    "flow_encoder_algonauts": dict(
        feature_dims=(3072, 1280, 2048, 5120, 1408), num_subjects=4, target_dim=1000,
        embed_dim=192, num_frames=64,
        stream_names=("llama", "whisper", "qwen_omni", "internvl", "vjepa2"),
        global_pool="avg", encoder_kernel_size=45, encoder_causal=False),
    # a few small streams, 2 subjects, 12 parcels, 16-TR windows: unit tests
    "flow_encoder_tiny": dict(
        feature_dims=(6, (2, 4)), num_subjects=2, target_dim=12, embed_dim=8, num_frames=16,
        global_pool="avg", encoder_kernel_size=5),
}

FLOW_CFM_VARIANTS = {
    "flow_encoder_algonauts": dict(
        latent_dim=128, subject_embed_dim=64, num_steps=25,
        estimator=dict(channels=(256, 256), head_dim=64, num_heads=2, num_blocks=1,
                       num_mid_blocks=2, activation="snakebeta", dropout_rate=0.05)),
    "flow_encoder_tiny": dict(
        latent_dim=8, subject_embed_dim=4, num_steps=4,
        estimator=dict(channels=(16, 16), head_dim=8, num_heads=2, num_blocks=1,
                       num_mid_blocks=1, activation="snakebeta", dropout_rate=0.0)),
}

FLOW_ENCODER_PRESETS = {}  # nothing upstream is released for this model
