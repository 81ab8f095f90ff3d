"""SwiFT: Swin 4D fMRI Transformer (Kim et al., NeurIPS 2023, arXiv 2307.05916).

Upstream: github.com/Transconnectome/SwiFT @ 0b07cb1,
`project/module/models/swin4d_transformer_ver7.py` (`SwinTransformer4D`).

How this port differs from upstream:
  * channels-last: input `(B, D, H, W, T, C)`, output `(B, D', H', W', T, C')`
    (upstream is `(B, C, D, H, W, T)` in and out);
  * the final LayerNorm that upstream builds but never applies is not built;
  * the temporal position table length (`max_frames`) can exceed the input's T,
    so a model trained on 20-frame windows can be rebuilt for shorter ones.

Letters: B batch, D/H/W space, T frames, C channels.
"""

import keras

from tfbrain.models.backbone import Backbone, check_fmri_input, check_volume_geometry
from tfbrain.models.swift.swift_layers import SwinBlock4D
from tfbrain.models.swin_4d import swin_4d_stage_plan, swin_4d_stages


@keras.saving.register_keras_serializable(package="tfbrain")
class SwiFTBackbone(Backbone):
    """The SwiFT 4D Swin transformer backbone.

    Args:
        volume_shape: 5-tuple (D, H, W, T, C_in) of the input windows.
        patch_size: 4-tuple (pd, ph, pw, 1).
        hidden_dim: int. Width of stage 0 (upstream `embed_dim`).
        depths: tuple of ints. Blocks per stage.
        num_heads: tuple of ints. Attention heads per stage.
        first_window_size: 4-tuple. Window of stage 0.
        window_size: 4-tuple. Window of the later stages.
        c_multiplier: int. Width multiplier at each merge.
        last_layer_full_msa: bool. Last stage attends over the whole spatial grid in
            `window_size[3]`-frame chunks, unshifted.
        mlp_ratio: float.
        qkv_bias: bool.
        dropout_rate, attention_dropout_rate, drop_path_rate: floats. Drop-path rises
            linearly from 0 to `drop_path_rate` over all blocks.
        max_frames: int or None. Length of the temporal position tables (default T).
        dtype: dtype policy.

    Call arguments:
        fmri: `(B, D, H, W, T, C_in)`. Returns `(B, D', H', W', T, C')`.
    """

    def __init__(self, volume_shape=(96, 96, 96, 20, 1), patch_size=(6, 6, 6, 1),
                 hidden_dim=36, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                 first_window_size=(4, 4, 4, 4), window_size=(4, 4, 4, 4), c_multiplier=2,
                 last_layer_full_msa=True, mlp_ratio=4.0, qkv_bias=True, dropout_rate=0.0,
                 attention_dropout_rate=0.0, drop_path_rate=0.0, max_frames=None, dtype=None,
                 **kwargs):
        volume_shape = tuple(int(v) for v in volume_shape)
        patch_size, depths, num_heads = tuple(patch_size), tuple(depths), tuple(num_heads)
        first_window_size, window_size = tuple(first_window_size), tuple(window_size)
        max_frames = int(max_frames or volume_shape[3])
        _validate(volume_shape, patch_size, depths, num_heads, max_frames)
        plan = swin_4d_stage_plan(volume_shape, patch_size, hidden_dim, depths, first_window_size,
                                  window_size, c_multiplier, last_layer_full_msa)

        def make_block(stage, shift_size, block_drop_path_rate, name):
            return SwinBlock4D(
                stage["hidden_dim"], num_heads[stage["index"]], window_size=stage["window"],
                shift_size=shift_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                dropout_rate=dropout_rate, attention_dropout_rate=attention_dropout_rate,
                drop_path_rate=block_drop_path_rate, dtype=dtype, name=name)

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
        self.num_heads = num_heads
        self.first_window_size = first_window_size
        self.window_size = window_size
        self.c_multiplier = c_multiplier
        self.last_layer_full_msa = last_layer_full_msa
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.dropout_rate = dropout_rate
        self.attention_dropout_rate = attention_dropout_rate
        self.drop_path_rate = drop_path_rate
        self.max_frames = max_frames
        self.output_dim = plan[-1]["hidden_dim"]
        self.stage_plan = plan

    def __call__(self, fmri, *args, **kwargs):
        check_fmri_input("SwiFTBackbone", fmri, self.volume_shape, self.max_frames)
        return super().__call__(fmri, *args, **kwargs)

    def get_config(self):
        return {**super().get_config(), "volume_shape": self.volume_shape,
                "patch_size": self.patch_size, "hidden_dim": self.hidden_dim,
                "depths": self.depths, "num_heads": self.num_heads,
                "first_window_size": self.first_window_size, "window_size": self.window_size,
                "c_multiplier": self.c_multiplier,
                "last_layer_full_msa": self.last_layer_full_msa, "mlp_ratio": self.mlp_ratio,
                "qkv_bias": self.qkv_bias, "dropout_rate": self.dropout_rate,
                "attention_dropout_rate": self.attention_dropout_rate,
                "drop_path_rate": self.drop_path_rate, "max_frames": self.max_frames}


def _validate(volume_shape, patch_size, depths, num_heads, max_frames):
    if len(depths) != len(num_heads):
        raise ValueError("`depths` and `num_heads` need one entry per stage. "
                         f"Received: depths={depths}, num_heads={num_heads}")
    check_volume_geometry(volume_shape, patch_size, len(depths), max_frames)
