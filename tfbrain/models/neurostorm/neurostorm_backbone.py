"""NeuroSTORM: a 4D shifted-window fMRI foundation model with Mamba mixers
(arXiv 2506.11167, Nature BME 2026).

Upstream: github.com/CUHK-AIM-Group/NeuroSTORM @ a8dc38f, `models/neurostorm.py`
(`NeuroSTORM`), itself SwiFT's 4D Swin code with the window attention replaced by
`mamba_ssm.Mamba(d_model=C, d_state=16, d_conv=4, expand=2)` inside every 4D window.

The topology is SwiFT's, so the stage plan, patch embedding (a Linear on patches
flattened (pd, ph, pw, C)), per-stage position tables and 2x2x2 merges (i, j, k order,
k fastest) are the shared tfbrain layers. How this port differs from upstream:
  * channels-last: input `(B, D, H, W, T, C)`, output `(B, D', H', W', T, C')`
    (upstream is `(B, C, D, H, W, T)` in and out); D, H, W are upstream's three
    spatial axes in order;
  * the selective scan is tfbrain's XLA loop (`tfbrain.layers.selective_scan`),
    not the CUDA kernel; the NVTX calls are gone;
  * `num_heads` is not an argument: upstream takes it but Mamba never uses it;
  * spatiotemporal redundancy dropout (STRD, an MAE-pretraining option that is off
    by default upstream) is not ported;
  * the temporal position table length (`max_frames`) can exceed the input's T.

Letters: B batch, D/H/W space, T frames, C channels.
"""

import keras

from tfbrain.models.backbone import Backbone, check_fmri_input, check_volume_geometry
from tfbrain.models.neurostorm.neurostorm_layers import NeuroSTORMBlock4D
from tfbrain.models.swin_4d import swin_4d_stage_plan, swin_4d_stages


@keras.saving.register_keras_serializable(package="tfbrain")
class NeuroSTORMBackbone(Backbone):
    """The NeuroSTORM backbone: SwiFT's 4D Swin topology with a Mamba mixer per window.

    Args:
        volume_shape: 5-tuple (D, H, W, T, C_in) of the input windows.
        patch_size: 4-tuple (pd, ph, pw, 1).
        hidden_dim: int. Width of stage 0 (upstream `embed_dim`).
        depths: tuple of ints. Blocks per stage.
        first_window_size: 4-tuple. Window of stage 0.
        window_size: 4-tuple. Window of the later stages.
        c_multiplier: int. Width multiplier at each merge.
        last_layer_full_msa: bool. The last stage uses the whole spatial grid in
            `window_size[3]`-frame windows, unshifted (upstream `last_layer_full_MSA`).
        mlp_ratio: float.
        dropout_rate: float. Dropout after the patch embedding and inside the MLPs.
        drop_path_rate: float. Rises linearly from 0 over all blocks.
        prompt_len: int. Prompt-tuning tokens per block (0: none).
        state_dim, conv_kernel_size, expand: Mamba sizes (upstream: 16, 4, 2).
        scan_chunk_size: int or None. Selective-scan chunk.
        scan_jit: None, "auto", True or False. Selective-scan jit switch (None follows
            `tfbrain.layers.selective_scan_jit`).
        max_frames: int or None. Length of the temporal position tables (default T).
        dtype: dtype policy.

    Call arguments:
        fmri: `(B, D, H, W, T, C_in)`. Returns `(B, D', H', W', T, C')`.
    """

    def __init__(self, volume_shape=(96, 96, 96, 20, 1), patch_size=(6, 6, 6, 1),
                 hidden_dim=36, depths=(2, 2, 6, 2), first_window_size=(4, 4, 4, 4),
                 window_size=(4, 4, 4, 4), c_multiplier=2, last_layer_full_msa=True,
                 mlp_ratio=4.0, dropout_rate=0.0, drop_path_rate=0.0, prompt_len=0,
                 state_dim=16, conv_kernel_size=4, expand=2, scan_chunk_size=None,
                 scan_jit=None, max_frames=None, dtype=None, **kwargs):
        volume_shape = tuple(int(v) for v in volume_shape)
        patch_size, depths = tuple(int(p) for p in patch_size), tuple(int(d) for d in depths)
        first_window_size = tuple(int(w) for w in first_window_size)
        window_size = tuple(int(w) for w in window_size)
        if len(volume_shape) != 5:
            raise ValueError("`volume_shape` must be (D, H, W, T, C_in). "
                             f"Received: volume_shape={volume_shape}")
        max_frames = int(max_frames or volume_shape[3])
        _validate(volume_shape, patch_size, depths, first_window_size, window_size, max_frames)
        plan = swin_4d_stage_plan(volume_shape, patch_size, hidden_dim, depths, first_window_size,
                                  window_size, c_multiplier, last_layer_full_msa)

        def make_block(stage, shift_size, block_drop_path_rate, name):
            return NeuroSTORMBlock4D(
                stage["hidden_dim"], window_size=stage["window"], shift_size=shift_size,
                mlp_ratio=mlp_ratio, dropout_rate=dropout_rate, drop_path_rate=block_drop_path_rate,
                prompt_len=prompt_len, state_dim=state_dim, conv_kernel_size=conv_kernel_size,
                expand=expand, scan_chunk_size=scan_chunk_size, scan_jit=scan_jit, dtype=dtype,
                name=name)

        # === Functional Model ===
        fmri = keras.Input(shape=volume_shape, name="fmri")  # (B, D, H, W, T, C_in)
        x = swin_4d_stages(fmri, plan, patch_size, hidden_dim, depths, max_frames, c_multiplier,
                           dropout_rate, drop_path_rate, make_block, dtype=dtype)
        super().__init__(inputs=fmri, outputs=x, dtype=dtype, **kwargs)

        # === Config ===
        self.volume_shape = volume_shape
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.depths = depths
        self.first_window_size = first_window_size
        self.window_size = window_size
        self.c_multiplier = c_multiplier
        self.last_layer_full_msa = last_layer_full_msa
        self.mlp_ratio = mlp_ratio
        self.dropout_rate = dropout_rate
        self.drop_path_rate = drop_path_rate
        self.prompt_len = prompt_len
        self.state_dim = state_dim
        self.conv_kernel_size = conv_kernel_size
        self.expand = expand
        self.scan_chunk_size = scan_chunk_size
        self.scan_jit = scan_jit
        self.max_frames = max_frames
        self.output_dim = plan[-1]["hidden_dim"]
        self.stage_plan = plan

    def __call__(self, fmri, *args, **kwargs):
        check_fmri_input("NeuroSTORMBackbone", fmri, self.volume_shape, self.max_frames)
        return super().__call__(fmri, *args, **kwargs)

    def stage_output_names(self) -> list:
        """Names of the layers whose outputs are upstream's `layers[i]` outputs."""
        names = []
        for i, stage in enumerate(self.stage_plan):
            last_block = f"stage_{i}_block_{self.depths[i] - 1}"
            names.append(f"stage_{i}_merge" if stage["merge"] else last_block)
        return names

    def serving_overrides(self):
        # the selective scan's XLA loop is marked must-compile; serve its plain loop
        return {} if self.scan_jit is False else {"scan_jit": False}

    def get_config(self):
        return {**super().get_config(), "volume_shape": self.volume_shape,
                "patch_size": self.patch_size, "hidden_dim": self.hidden_dim,
                "depths": self.depths, "first_window_size": self.first_window_size,
                "window_size": self.window_size, "c_multiplier": self.c_multiplier,
                "last_layer_full_msa": self.last_layer_full_msa, "mlp_ratio": self.mlp_ratio,
                "dropout_rate": self.dropout_rate, "drop_path_rate": self.drop_path_rate,
                "prompt_len": self.prompt_len, "state_dim": self.state_dim,
                "conv_kernel_size": self.conv_kernel_size, "expand": self.expand,
                "scan_chunk_size": self.scan_chunk_size, "scan_jit": self.scan_jit,
                "max_frames": self.max_frames}


def _validate(volume_shape, patch_size, depths, first_window_size, window_size, max_frames):
    if len(first_window_size) != 4 or len(window_size) != 4:
        raise ValueError("`first_window_size` and `window_size` must be (D, H, W, T). Received: "
                         f"first_window_size={first_window_size}, window_size={window_size}")
    check_volume_geometry(volume_shape, patch_size, len(depths), max_frames)
