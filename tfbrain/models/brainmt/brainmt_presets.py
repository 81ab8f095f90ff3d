"""BrainMT variants (constructor arguments) and named presets.

Upstream released no checkpoint (the README's table has placeholder entries), so the presets
only say how to make one with `tfbrain convert brainmt` from weights trained upstream.
"""

# The released Hydra config (`configs/model/brain_mt.yaml`): MNI 2 mm windows of 200 frames,
# embed_dim 512, depth [12, 8], 2 heads. 39,104,448 backbone parameters (+ 513 for the
# Linear(512 -> 1) head = upstream's 39,104,961; research/mamba.md section 5).
BRAINMT_VARIANTS = {
    "brainmt_paper": dict(volume_shape=(91, 109, 91, 200, 1), hidden_dim=512, depths=(12, 8),
                          num_heads=2, mlp_ratio=2.0, drop_path_rate=0.1),
    # The `brainmt_small` parity fixture: the paper's widths, depth [2, 2], 4 frames.
    "brainmt_small": dict(volume_shape=(91, 109, 91, 4, 1), hidden_dim=512, depths=(2, 2),
                          num_heads=2, mlp_ratio=2.0, drop_path_rate=0.1),
    # 32^3 x 4 windows (2 x 2 x 2 tokens per frame, L = 33), width 16: unit tests and the
    # registry contract tests.
    "brainmt_tiny": dict(volume_shape=(32, 32, 32, 4, 1), hidden_dim=16, depths=(1, 1),
                         num_heads=2, mlp_ratio=2.0, drop_path_rate=0.0),
}

# No upstream checkpoint is published (README: "Release Model checkpoints" unchecked), so no
# named preset exists; `tfbrain convert brainmt --state-dict <your upstream state_dict>
# --upstream-kwargs <kwargs.json> --out DIR` makes a preset folder from weights trained upstream.
BRAINMT_PRESETS = {}
