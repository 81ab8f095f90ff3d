"""The 4D Swin topology shared by SwiFT and NeuroSTORM.

Both upstream models (Transconnectome/SwiFT `swin4d_transformer_ver7.py`, NeuroSTORM's
`SwinTransformer4D`) stack: linear patch embedding, then per stage the absolute
position tables, `depths[i]` blocks (odd blocks shifted), and a 2x2x2 spatial patch
merge except after the last stage. Only the block differs (window attention or a Mamba
mixer), so the families pass a block factory.

Letters: B batch, D/H/W space, T frames, C channels.
"""

import keras
import numpy as np

from tfbrain.layers.patch_4d import PatchEmbed4D, PatchMerging4D, PositionEmbedding4D


def swin_4d_stage_plan(volume_shape, patch_size, hidden_dim, depths, first_window_size,
                     window_size, c_multiplier, last_layer_full_msa):
    """Per-stage grid, width, window and shift, following upstream's rules.

    Returns:
        list of dicts with keys index, grid (D, H, W, T), hidden_dim, window, shift (the
        configured shift of odd blocks), merge (bool).
    """
    grid = [volume_shape[0] // patch_size[0], volume_shape[1] // patch_size[1],
            volume_shape[2] // patch_size[2], volume_shape[3]]
    plan = []
    num_stages = len(depths)
    for i in range(num_stages):
        last = i == num_stages - 1
        if last and last_layer_full_msa:
            # "full MSA": spatially the whole grid, time in fixed chunks, never shifted
            window = (grid[0], grid[1], grid[2], window_size[3])
            shift = (0, 0, 0, 0)
        else:
            window = tuple(first_window_size if i == 0 else window_size)
            shift = tuple(w // 2 for w in window)
        plan.append({"index": i, "grid": tuple(grid), "hidden_dim": hidden_dim * c_multiplier ** i,
                     "window": window, "shift": shift, "merge": not last})
        if not last:
            grid = [grid[0] // 2, grid[1] // 2, grid[2] // 2, grid[3]]
    return plan


def swin_4d_stages(fmri, plan, patch_size, hidden_dim, depths, max_frames, c_multiplier,
                   dropout_rate, drop_path_rate, make_block, dtype=None):
    """Apply the topology to the `fmri` input tensor `(B, D, H, W, T, C_in)`.

    Args:
        plan: from `swin_4d_stage_plan`.
        make_block: `(stage, shift_size, drop_path_rate, name) -> layer`, where `stage`
            is the plan entry and `shift_size` is the configured shift (zeros for even
            blocks).

    Returns:
        the last stage's output `(B, D', H', W', T, C')`.
    """
    x = PatchEmbed4D(hidden_dim, patch_size, dtype=dtype, name="patch_embed")(fmri)
    if dropout_rate:
        x = keras.layers.Dropout(dropout_rate, dtype=dtype, name="pos_drop")(x)
    # drop-path rises linearly from 0 to drop_path_rate over all blocks, as upstream
    rates = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()
    block_index = 0
    for i, stage in enumerate(plan):
        x = PositionEmbedding4D(max_frames, dtype=dtype, name=f"pos_embed_{i}")(x)
        for j in range(depths[i]):
            shift = stage["shift"] if j % 2 else (0, 0, 0, 0)
            x = make_block(stage, shift, rates[block_index], f"stage_{i}_block_{j}")(x)
            block_index += 1
        if stage["merge"]:
            x = PatchMerging4D(c_multiplier * stage["hidden_dim"], dtype=dtype,
                               name=f"stage_{i}_merge")(x)
    return x
