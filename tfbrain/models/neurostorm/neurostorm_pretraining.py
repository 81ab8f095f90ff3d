"""NeuroSTORM masked-autoencoding (MAE) pretraining: masking, decoder and loss.

Upstream: CUHK-AIM-Group/NeuroSTORM @ a8dc38f, `models/neurostorm.py::NeuroSTORMMAE`,
with the released pretraining config (`scripts/configs/models/neurostorm.yaml`:
spatial_mask "window", time_mask "random", mask_ratio 0.5).

What the objective is, as released:
  * the input is patch-embedded; then, per sample, exactly int(N * mask_ratio) of the
    N masking units are replaced by a learned token. Units are the 4D windows of
    `window_size` ("window" spatial mask; each position in the window has its own token,
    `window_mask_token` (wd*wh*ww*wt, C)) or single patch tokens ("random"; one
    `mask_token` (C)). Masked tokens stay in the sequence (Swin style), and the
    position tables are added after masking, before every stage, as in the encoder;
  * the encoder is the NeuroSTORM backbone, sharing its layers here;
  * the decoder: PatchExpanding (Linear C -> 4C, no bias; a 2x2x2 block of C/2 tokens;
    LayerNorm), then for each earlier stage, from deep to shallow, that stage's depth of
    NeuroSTORM blocks (window `window_size`, shift window // 2 on odd blocks, no mask)
    followed by a PatchExpanding except at stage 0; LayerNorm; Linear(C0 -> pd*ph*pw*C_in)
    back to voxels;
  * the loss is the voxel MSE against the raw input, averaged over each patch token,
    then over the masked tokens only (every window holds the same number of tokens, so
    this equals upstream's per-window form).

Not ported: "atlas" spatial masking (needs upstream's atlas file) and "tube" time masking
(upstream's loss for it does not broadcast), spatiotemporal redundancy dropout (off by
default), and any masking-free inference path (upstream always masks).

Letters: B batch, D/H/W space, T frames, C channels, P voxels per patch (pd*ph*pw*C_in).
"""

import keras
import numpy as np
from keras import ops

from tfbrain.layers.torch_compat import TORCH_LAYER_NORM_EPSILON
from tfbrain.models.neurostorm.neurostorm_backbone import NeuroSTORMBackbone
from tfbrain.models.neurostorm.neurostorm_layers import NeuroSTORMBlock4D, NeuroSTORMPatchExpanding
from tfbrain.models.registry import register_task
from tfbrain.models.task import Task

MASKING_MODES = (("window", "random"), ("random", "random"))


@keras.saving.register_keras_serializable(package="tfbrain")
class NeuroSTORMMasking(keras.layers.Layer):
    """Replace a fixed share of patch tokens (or 4D windows of them) by learned tokens.

    Args:
        mask_ratio: float in [0, 1). Exactly int(N * mask_ratio) units per sample.
        spatial_mask: "window" (units are `window_size` windows) or "random" (tokens).
        time_mask: "random" (the only time mode ported).
        window_size: 4-tuple. The masking window (upstream `window_size`).
        seed: int or None. Seeds the draws; the same seed gives the same sequence of masks.

    Call arguments:
        tokens: `(B, D, H, W, T, C)` patch embeddings.
    Returns:
        (masked tokens `(B, D, H, W, T, C)`, token mask `(B, D, H, W, T)`, 1.0 = masked).
    """

    def __init__(self, mask_ratio=0.5, spatial_mask="window", time_mask="random",
                 window_size=(4, 4, 4, 4), seed=None, **kwargs):
        super().__init__(**kwargs)
        if (spatial_mask, time_mask) not in MASKING_MODES:
            raise ValueError(f"(spatial_mask, time_mask) must be one of {MASKING_MODES}. "
                             f"Received: spatial_mask={spatial_mask!r}, time_mask={time_mask!r}")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"`mask_ratio` must be in [0, 1). Received: mask_ratio={mask_ratio}")
        self.mask_ratio = float(mask_ratio)
        self.spatial_mask = spatial_mask
        self.time_mask = time_mask
        self.window_size = tuple(int(w) for w in window_size)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, tokens_shape):
        grid, width = tuple(tokens_shape[1:5]), tokens_shape[5]
        unit = self.window_size if self.spatial_mask == "window" else (1, 1, 1, 1)
        if any(g % u for g, u in zip(grid, unit)):
            raise ValueError(f"Window masking needs the patch grid {grid} to be a multiple of "
                             f"window_size={self.window_size}.")
        self.unit = unit
        self.unit_grid = tuple(g // u for g, u in zip(grid, unit))
        num_units = 1
        for n in self.unit_grid:
            num_units *= n
        self.num_units = num_units
        self.num_masked = int(num_units * self.mask_ratio)
        if self.spatial_mask == "window":
            window_volume = unit[0] * unit[1] * unit[2] * unit[3]
            self.window_mask_token = self.add_weight(
                name="window_mask_token", shape=(window_volume, width), initializer="zeros")
        else:
            self.mask_token = self.add_weight(name="mask_token", shape=(width,),
                                              initializer="zeros")

    def call(self, tokens):
        batch = ops.shape(tokens)[0]
        noise = keras.random.uniform((batch, self.num_units), seed=self.seed_generator)
        ranks = ops.argsort(ops.argsort(noise, axis=-1), axis=-1)  # a random permutation
        unit_mask = ops.cast(ranks < self.num_masked, tokens.dtype)  # (B, units)
        mask = ops.reshape(unit_mask, (-1, *self.unit_grid))  # (B, nD, nH, nW, nT)
        for axis, size in enumerate(self.unit):
            if size > 1:
                mask = ops.repeat(mask, size, axis=axis + 1)  # (B, D, H, W, T) at the end
        if self.spatial_mask == "window":
            # the per-position token, tiled so every window sees the same (wd, wh, ww, wt) table
            table = ops.reshape(ops.cast(self.window_mask_token, tokens.dtype),
                                (*self.unit, -1))  # (wd, wh, ww, wt, C)
            fill = ops.tile(table, (*self.unit_grid, 1))[None]  # (1, D, H, W, T, C)
        else:
            fill = ops.cast(self.mask_token, tokens.dtype)
        return ops.where(mask[..., None] > 0, fill, tokens), mask

    def compute_output_shape(self, tokens_shape):
        return tokens_shape, tokens_shape[:-1]

    def get_config(self):
        return {**super().get_config(), "mask_ratio": self.mask_ratio,
                "spatial_mask": self.spatial_mask, "time_mask": self.time_mask,
                "window_size": self.window_size, "seed": self.seed}


@keras.saving.register_keras_serializable(package="tfbrain")
class NeuroSTORMUnpatchify(keras.layers.Layer):
    """`(B, D', H', W', T, pd*ph*pw*C)` patch vectors, C fastest -> `(B, D, H, W, T, C)`."""

    def __init__(self, patch_size, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = tuple(int(p) for p in patch_size)

    def call(self, patches):
        _, d, h, w, t, p = patches.shape
        pd, ph, pw = self.patch_size[:3]
        channels = p // (pd * ph * pw)
        x = ops.reshape(patches, (-1, d, h, w, t, pd, ph, pw, channels))
        x = ops.transpose(x, (0, 1, 5, 2, 6, 3, 7, 4, 8))  # (B, D', pd, H', ph, W', pw, T, C)
        return ops.reshape(x, (-1, d * pd, h * ph, w * pw, t, channels))

    def compute_output_shape(self, patches_shape):
        b, d, h, w, t, p = patches_shape
        pd, ph, pw = self.patch_size[:3]
        return (b, d * pd, h * ph, w * pw, t, p // (pd * ph * pw))

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size}


def patchify(fmri, patch_size):
    """`(B, D, H, W, T, C)` -> `(B, D', H', W', T, pd*ph*pw*C)` (C fastest)."""
    _, d, h, w, t, c = fmri.shape
    pd, ph, pw = patch_size[:3]
    x = ops.reshape(fmri, (-1, d // pd, pd, h // ph, ph, w // pw, pw, t, c))
    x = ops.transpose(x, (0, 1, 3, 5, 7, 2, 4, 6, 8))  # (B, D', H', W', T, pd, ph, pw, C)
    return ops.reshape(x, (-1, d // pd, h // ph, w // pw, t, pd * ph * pw * c))


def masked_reconstruction_loss(fmri, reconstruction, token_mask, patch_size):
    """Voxel MSE per patch token, averaged over the masked tokens (upstream forward_loss).

    Args:
        fmri, reconstruction: `(B, D, H, W, T, C)`.
        token_mask: `(B, D', H', W', T)`, 1.0 where the patch token was masked.
    """
    fmri = ops.cast(fmri, "float32")
    reconstruction = ops.cast(reconstruction, "float32")
    error = ops.square(patchify(fmri, patch_size) - patchify(reconstruction, patch_size))
    per_token = ops.mean(error, axis=-1)  # (B, D', H', W', T)
    token_mask = ops.cast(token_mask, "float32")
    return ops.sum(per_token * token_mask) / ops.sum(token_mask)


@register_task("mae")
@keras.saving.register_keras_serializable(package="tfbrain")
class NeuroSTORMMAE(Task):
    """NeuroSTORM MAE pretraining model around a `NeuroSTORMBackbone` (layers shared).

    Outputs `{"reconstruction": (B, D, H, W, T, C_in), "mask": (B, D', H', W', T)}`; the
    loss (`compute_loss`) is the masked reconstruction MSE, so `compile(optimizer=...,
    jit_compile=...)` and `fit(fmri)` need no targets. After pretraining,
    `mae.backbone` carries the trained encoder.

    Args:
        backbone: a `NeuroSTORMBackbone` (c_multiplier 2, as upstream's decoder assumes).
        mask_ratio: float. Defaults to 0.5 (released config).
        spatial_mask, time_mask: ("window", "random") (released) or ("random", "random").
        seed: int or None. Seeds the masking.
    """

    output_key = "reconstruction"
    target_kind = "none"
    evaluator = "model_loss"
    monitor = ("val_loss", "min")

    def __init__(self, backbone, mask_ratio=0.5, spatial_mask="window", time_mask="random",
                 seed=None, dtype=None, **kwargs):
        if not isinstance(backbone, NeuroSTORMBackbone):
            raise ValueError("MAE pretraining needs a NeuroSTORM backbone ([model] family = "
                             f"\"neurostorm\"). Received: backbone={type(backbone).__name__}")
        if backbone.c_multiplier != 2:
            raise ValueError("The MAE decoder expands 2x2x2 and halves the width, so the "
                             "backbone needs c_multiplier=2. Received: "
                             f"c_multiplier={backbone.c_multiplier}")

        # === Encoder: the backbone's own layers, with masking after the patch embedding ===
        fmri = keras.Input(shape=backbone.volume_shape, name="fmri")  # (B, D, H, W, T, C_in)
        x = backbone.get_layer("patch_embed")(fmri)  # upstream skips pos_drop here
        x, token_mask = NeuroSTORMMasking(mask_ratio, spatial_mask, time_mask,
                                          backbone.window_size, seed=seed, dtype=dtype,
                                          name="masking")(x)
        for i, stage in enumerate(backbone.stage_plan):
            x = backbone.get_layer(f"pos_embed_{i}")(x)
            for j in range(backbone.depths[i]):
                x = backbone.get_layer(f"stage_{i}_block_{j}")(x)
            if stage["merge"]:
                x = backbone.get_layer(f"stage_{i}_merge")(x)

        # === Decoder ===
        x = NeuroSTORMPatchExpanding(backbone.output_dim, dtype=dtype,
                                     name="first_patch_expanding")(x)
        window = backbone.window_size
        num_stages = len(backbone.depths)
        for k, i in enumerate(range(num_stages - 2, -1, -1)):  # upstream layers_up.{k}
            width = backbone.stage_plan[i]["hidden_dim"]
            for j in range(backbone.depths[i]):
                x = NeuroSTORMBlock4D(
                    width, window_size=window,
                    shift_size=tuple(w // 2 for w in window) if j % 2 else (0, 0, 0, 0),
                    mlp_ratio=backbone.mlp_ratio, dropout_rate=backbone.dropout_rate,
                    state_dim=backbone.state_dim, conv_kernel_size=backbone.conv_kernel_size,
                    expand=backbone.expand, scan_chunk_size=backbone.scan_chunk_size,
                    scan_jit=backbone.scan_jit, dtype=dtype, name=f"layers_up_{k}_block_{j}")(x)
            if i > 0:
                x = NeuroSTORMPatchExpanding(width, dtype=dtype, name=f"layers_up_{k}_upsample")(x)
        x = keras.layers.LayerNormalization(epsilon=TORCH_LAYER_NORM_EPSILON, dtype=dtype,
                                            name="norm_up")(x)
        patch_volume = backbone.patch_size[0] * backbone.patch_size[1] * backbone.patch_size[2]
        x = keras.layers.Dense(patch_volume * backbone.volume_shape[4], dtype=dtype,
                               name="decoder_pred")(x)  # (B, D', H', W', T, P)
        reconstruction = NeuroSTORMUnpatchify(backbone.patch_size, dtype=dtype,
                                              name="reconstruction")(x)
        # the encoder shares the backbone's layers instead of calling it whole, so the Task
        # constructor is skipped (the next __init__ in the MRO: keras' functional one)
        super(Task, self).__init__(inputs=fmri, outputs={"reconstruction": reconstruction,
                                                         "mask": token_mask},
                                   dtype=dtype, **kwargs)

        # === Config ===
        self.backbone = backbone
        self.mask_ratio = mask_ratio
        self.spatial_mask = spatial_mask
        self.time_mask = time_mask
        self.seed = seed

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        fmri = x["fmri"] if isinstance(x, dict) else x
        loss = masked_reconstruction_loss(fmri, y_pred["reconstruction"], y_pred["mask"],
                                          self.backbone.patch_size)
        for extra in self.losses:  # regularisers, if any were added
            loss = loss + ops.cast(extra, "float32")
        return loss

    def serving_outputs(self, outputs):
        return {"reconstruction": ops.cast(outputs["reconstruction"], "float32"),
                "mask": ops.cast(outputs["mask"], "float32")}

    def visualize(self, inputs, outputs) -> dict:
        """Middle axial slice of the first frame: input, masked tokens, reconstruction, side
        by side (each scaled to [0, 1] on the input's range)."""
        fmri = ops.convert_to_numpy(inputs["fmri"] if isinstance(inputs, dict) else inputs)
        recon = ops.convert_to_numpy(outputs["reconstruction"]).astype("float32")
        mask = ops.convert_to_numpy(outputs["mask"]).astype("float32")  # (B, D', H', W', T)
        depth = fmri.shape[1] // 2
        low, high = float(fmri[0].min()), float(fmri[0].max())
        scale = lambda a: ((a - low) / max(high - low, 1e-6)).clip(0, 1)  # noqa: E731
        patch = self.backbone.patch_size
        token_mask = mask[0, depth // patch[0], :, :, 0]  # (H', W')
        token_mask = token_mask.repeat(patch[1], 0).repeat(patch[2], 1)  # (H, W)
        panels = [scale(fmri[0, depth, :, :, 0, 0]), token_mask,
                  scale(recon[0, depth, :, :, 0, 0])]
        return {"mae_input_mask_reconstruction": np.concatenate(panels, axis=1)[None, ..., None]}

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable,
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "mask_ratio": self.mask_ratio, "spatial_mask": self.spatial_mask,
                "time_mask": self.time_mask, "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
