"""The two training stages of the flow-matching fMRI encoder as Task models.

  `flow_stage1`  `FlowStage1Task`: features -> {"prediction": (B, S, T, V)}, MSE over
                 everything (MedARC's loss), monitored by voxel-wise Pearson r.
  `flow_cfm`     `FlowCFMTask`: features -> frozen Stage 1 -> {"mean": (B, S, T, V)}; the
                 loss (`compute_loss`) is OT-CFM in a latent of the parcels plus the
                 auxiliary reconstruction loss; `sample(...)` draws responses with Euler steps.

Stage 2 (`FlowMatchingHead`), per subject s: x1 = proj_in(target_s), mu = proj_in(mean_s)
(Linear V -> latent, shared), subject embedding e_s (Matcha's `spks`), OT-CFM with a Matcha
U-Net in the latent (estimator input 2·latent + subject_embed_dim), samples mapped back by
proj_out (latent -> V); aux loss = MSE(proj_out(proj_in(target)), target), weight 0.1;
the CFM loss does not back-propagate into proj_in(target) (`detach_target_latent`).
The upstream Stage-2 code was not published; these choices follow tfbrain's specification
(research note §2.8).

Letters: B batch, S subjects, T frames, V parcels, Z latent width.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfbrain.layers.flow_matching import FlowMatching
from tfbrain.metrics.encoding import PearsonR, encoding_pearson
from tfbrain.models.flow_encoder.flow_encoder_backbone import FlowEncoderBackbone
from tfbrain.models.registry import register_task
from tfbrain.models.task import Task

DEFAULT_ESTIMATOR = dict(channels=(256, 256), dropout_rate=0.05, head_dim=64, num_blocks=1,
                         num_mid_blocks=2, num_heads=2, activation="snakebeta",
                         down_block_type="transformer", mid_block_type="transformer",
                         up_block_type="transformer")


def stream_specs(backbone) -> list:
    """One named `tf.TensorSpec` per stream, `(None, T, D)` or `(None, T, L, D)`."""
    return [tf.TensorSpec((None, backbone.num_frames) + ((d,) if isinstance(d, int) else tuple(d)),
                          tf.float32, name=name)
            for name, d in zip(backbone.stream_names, backbone.feature_dims)]


def _serving_function(body, specs):
    """A traced, non-jit `tf.function` over flat named tensors (SavedModel signatures take
    flat keyword inputs; the names come from the specs)."""
    fn = tf.function(body, input_signature=specs, jit_compile=False, autograph=False)
    fn.get_concrete_function()
    return fn


def _check_backbone(backbone):
    if not isinstance(backbone, FlowEncoderBackbone):
        raise ValueError("`backbone` must be a FlowEncoderBackbone (Stage 1). Received: "
                         f"{type(backbone).__name__}")


@register_task("flow_stage1")
@keras.saving.register_keras_serializable(package="tfbrain")
class FlowStage1Task(Task):
    """Stage 1: the MedARC encoder trained with MSE on `(B, S, T, V)` targets.

    Args:
        backbone: a `FlowEncoderBackbone`.
    """

    output_key = "prediction"
    target_kind = "value"
    evaluator = "encoding"
    monitor = ("val_pearson_r", "max")

    def __init__(self, backbone, **kwargs):
        _check_backbone(backbone)
        super().__init__(backbone, lambda features: {"prediction": features}, **kwargs)

    def __call__(self, inputs, *args, **kwargs):
        return super().__call__(self.backbone.as_stream_dict(inputs), *args, **kwargs)

    def embed(self, inputs):
        """Time-mean of the pooled stimulus embedding `(B, d)`."""
        return ops.mean(self.backbone.pooled_embedding(inputs), axis=1)

    def default_loss(self):
        return {"prediction": keras.losses.MeanSquaredError()}

    def default_metrics(self):
        return {"prediction": [PearsonR(self.backbone.num_subjects, self.backbone.target_dim)]}

    def serving_outputs(self, outputs):
        return {"prediction": outputs["prediction"]}

    def serving_functions(self) -> dict:
        """{"predict_mean": streams -> {"prediction": (B, S, T, V)}} for the export."""
        names = self.backbone.stream_names

        def predict_mean(*streams):
            return {"prediction": self.backbone(dict(zip(names, streams)), training=False)}

        return {"predict_mean": _serving_function(predict_mean, stream_specs(self.backbone))}

    def task_metadata(self):
        return {"type": self.task_type, "output_key": self.output_key,
                "num_subjects": self.backbone.num_subjects,
                "target_dim": self.backbone.target_dim}


@keras.saving.register_keras_serializable(package="tfbrain")
class FlowMatchingHead(keras.layers.Layer):
    """Stage 2 head: latent bottleneck, subject embeddings and OT-CFM.

    Args:
        num_subjects: int. S.
        target_dim: int. V.
        latent_dim: int. Z (128 in the Algonauts config).
        subject_embed_dim: int. Width of the subject embedding fed as `spks` (0: none).
        estimator: dict of `MatchaDecoder` kwargs except in/out channels.
        sigma_min: float.
        aux_loss_weight: float. Weight of the reconstruction loss.
        num_frames: int or None. T.
        detach_target_latent: bool. Stop the CFM loss's gradient into proj_in(target), so
            only the reconstruction loss (and the condition path) shapes the latent. Without
            it the CFM loss shrinks the latent it has to match (measured on the synthetic
            cohort: one-sample r fell to 0.05 and the latent collapsed; with it 0.39, mean
            of 8 samples 0.56, Stage 1 0.66). Default True.
    """

    def __init__(self, num_subjects, target_dim, latent_dim=128, subject_embed_dim=64,
                 estimator=None, sigma_min=1e-4, aux_loss_weight=0.1, num_frames=64,
                 detach_target_latent=True, **kwargs):
        super().__init__(**kwargs)
        estimator = {**DEFAULT_ESTIMATOR, **dict(estimator or {})}
        estimator["channels"] = tuple(estimator["channels"])
        for key in ("in_channels", "out_channels"):
            if key in estimator:
                raise ValueError(f"`estimator` sets {key} itself from latent_dim and "
                                 f"subject_embed_dim. Received: estimator[{key!r}]")
        self.num_subjects = num_subjects
        self.target_dim = target_dim
        self.latent_dim = latent_dim
        self.subject_embed_dim = subject_embed_dim
        self.estimator = estimator
        self.sigma_min = sigma_min
        self.aux_loss_weight = aux_loss_weight
        self.num_frames = num_frames
        self.detach_target_latent = detach_target_latent
        self.proj_in = keras.layers.Dense(latent_dim, dtype=self.dtype_policy, name="proj_in")
        self.proj_out = keras.layers.Dense(target_dim, dtype=self.dtype_policy, name="proj_out")
        self.subject_embedding = None
        if subject_embed_dim:
            self.subject_embedding = keras.layers.Embedding(
                num_subjects, subject_embed_dim, dtype=self.dtype_policy,
                name="subject_embedding")
        self.cfm = FlowMatching(
            {**estimator, "in_channels": 2 * latent_dim + subject_embed_dim,
             "out_channels": latent_dim}, sigma_min=sigma_min, dtype=self.dtype_policy,
            name="cfm")

    def build(self, input_shape=None):
        t = self.num_frames
        self.proj_in.build((None, t, self.target_dim))
        self.proj_out.build((None, t, self.latent_dim))
        if self.subject_embedding is not None:
            self.subject_embedding.build((None,))
        shapes = {"x": (None, t, self.latent_dim), "mask": (None, t),
                  "mu": (None, t, self.latent_dim), "t": (None,)}
        if self.subject_embed_dim:
            shapes["spks"] = (None, self.subject_embed_dim)
        self.cfm.build(shapes)

    def call(self, mean):
        # Identity in the task's graph: it makes the head (and its weights) part of the
        # functional model; the head's work happens in `loss` and `sample`.
        return mean

    # === Helpers ===

    def _subject_vectors(self, subject_index):
        if self.subject_embedding is None:
            return None
        return self.subject_embedding(subject_index)

    def check_subject_index(self, subject_index):
        """Clear error for a subject index outside [0, S) (eager: ValueError; in a graph,
        e.g. a served signature: an assertion that fails with the same message)."""
        message = (f"subject_index must be in [0, {self.num_subjects}) (the model has "
                   f"{self.num_subjects} subjects)")
        if tf.is_symbolic_tensor(subject_index):
            index = tf.cast(subject_index, tf.int32)
            return [tf.debugging.assert_non_negative(index, message=message),
                    tf.debugging.assert_less(index, self.num_subjects, message=message)]
        try:
            values = np.asarray(subject_index)
        except (TypeError, ValueError, NotImplementedError):
            return None
        if values.dtype.kind in "iu" and values.size and (values.min() < 0
                                                           or values.max() >= self.num_subjects):
            raise ValueError(f"{message}. Received: {values.tolist()}")
        return None

    def _flatten_subjects(self, x):
        """`(B, S, T, C)` -> `(B·S, T, C)` and the matching subject index `(B·S,)`."""
        batch = ops.shape(x)[0]
        t, c = x.shape[2], x.shape[3]
        flat = ops.reshape(x, (-1, t if t is not None else ops.shape(x)[2], c))  # (B·S, T, C)
        index = ops.tile(ops.arange(self.num_subjects, dtype="int32"), (batch,))  # (B·S,)
        return flat, index

    # === Loss and sampling ===

    def loss(self, target, mean, seed=None, t=None, noise=None, training=False,
             return_parts=False):
        """OT-CFM in the latent + aux_loss_weight · reconstruction MSE.

        Args:
            target: `(B, S, T, V)` responses.
            mean: `(B, S, T, V)` Stage-1 mean anchor (treated as a constant).
            seed: int or stateless seed `(2,)` for t and the noise.
            t, noise: optional fixed flow times `(B·S,)` and latent noise `(B·S, T, Z)`.
        """
        target = ops.convert_to_tensor(target, self.compute_dtype)
        mean = ops.stop_gradient(ops.convert_to_tensor(mean, self.compute_dtype))
        target_latent = self.proj_in(target)
        if self.detach_target_latent:  # the CFM loss cannot shrink the latent it must match
            target_latent = ops.stop_gradient(target_latent)
        x1, subject_index = self._flatten_subjects(target_latent)  # (B·S, T, Z)
        mu, _ = self._flatten_subjects(self.proj_in(mean))
        cfm_loss = self.cfm.loss(x1, None, mu, self._subject_vectors(subject_index), t=t,
                                 noise=noise, seed=seed, training=training)
        reconstruction = self.proj_out(self.proj_in(target))
        aux_loss = ops.mean(ops.square(reconstruction - target))
        total = cfm_loss + self.aux_loss_weight * aux_loss
        if return_parts:
            return total, {"cfm_loss": cfm_loss, "aux_loss": aux_loss}
        return total

    def sample(self, mean, num_steps=25, temperature=1.0, seed=None, noise=None,
               subject_index=None):
        """Draw responses with the Euler sampler.

        Args:
            mean: `(B, S, T, V)` (every subject), or `(B, T, V)` with `subject_index` `(B,)`.
            num_steps: int. Euler steps (static).
            temperature: float or scalar tensor. Scales the initial noise.
            seed: int or stateless `(2,)` seed. noise: optional `(B·S | B, T, Z)` noise.
            subject_index: `(B,)` int, for `(B, T, V)` means.

        Returns:
            Samples of the same shape as `mean`.
        """
        mean = ops.convert_to_tensor(mean, self.compute_dtype)
        if subject_index is None:
            if len(mean.shape) != 4 or mean.shape[1] != self.num_subjects:
                raise ValueError(f"`mean` must be (B, {self.num_subjects}, T, "
                                 f"{self.target_dim}) without subject_index. Received: "
                                 f"{tuple(mean.shape)}")
            mu, index = self._flatten_subjects(self.proj_in(mean))
        else:
            if len(mean.shape) != 3:
                raise ValueError(f"with subject_index, `mean` must be (B, T, {self.target_dim})."
                                 f" Received: {tuple(mean.shape)}")
            checks = self.check_subject_index(subject_index)
            with tf.control_dependencies(checks or []):
                index = tf.identity(tf.cast(subject_index, tf.int32))
            mu = self.proj_in(mean)
        latent = self.cfm.sample(mu, None, num_steps, temperature,
                                 self._subject_vectors(index), noise=noise, seed=seed)
        samples = self.proj_out(latent)  # (B·S | B, T, V)
        return ops.reshape(samples, ops.shape(mean))

    def get_config(self):
        return {**super().get_config(), "num_subjects": self.num_subjects,
                "target_dim": self.target_dim, "latent_dim": self.latent_dim,
                "subject_embed_dim": self.subject_embed_dim,
                "estimator": {k: list(v) if isinstance(v, tuple) else v
                              for k, v in self.estimator.items()},
                "sigma_min": self.sigma_min, "aux_loss_weight": self.aux_loss_weight,
                "num_frames": self.num_frames, "detach_target_latent": self.detach_target_latent}


@register_task("flow_cfm")
@keras.saving.register_keras_serializable(package="tfbrain")
class FlowCFMTask(Task):
    """Stage 2: per-subject conditional flow matching on Stage 1's frozen mean anchor.

    `fit(features, targets)` trains the head (the backbone is frozen unless
    `freeze_backbone=False`); outputs `{"mean": (B, S, T, V)}`; `sample(features, ...)`
    draws `(B, S, T, V)` responses.

    Args:
        backbone: a trained `FlowEncoderBackbone`.
        latent_dim, subject_embed_dim, estimator, sigma_min, aux_loss_weight: see
            `FlowMatchingHead`.
        num_steps: int. Default Euler steps (25).
        temperature: float. Default sampling temperature.
        freeze_backbone: bool.
        detach_target_latent: bool. See `FlowMatchingHead`.
        seed: int or None. Seeds the training draws of t and noise.
    """

    output_key = "mean"
    target_kind = "value"
    evaluator = "encoding"
    monitor = ("val_loss", "min")

    def __init__(self, backbone, latent_dim=128, subject_embed_dim=64, estimator=None,
                 sigma_min=1e-4, aux_loss_weight=0.1, num_steps=25, temperature=1.0,
                 freeze_backbone=True, detach_target_latent=True, seed=None, **kwargs):
        _check_backbone(backbone)
        head = FlowMatchingHead(backbone.num_subjects, backbone.target_dim, latent_dim,
                                subject_embed_dim, estimator, sigma_min, aux_loss_weight,
                                backbone.num_frames, detach_target_latent, name="flow_head")
        levels = head.cfm.estimator.time_downsampling
        if backbone.num_frames is not None and backbone.num_frames % levels:
            raise ValueError(f"The U-Net halves T {levels.bit_length() - 1} time(s): the "
                             f"window (num_frames={backbone.num_frames}) must be divisible by "
                             f"{levels}.")
        super().__init__(backbone, lambda features: {"mean": head(features)}, **kwargs)
        self.flow_head = head
        self.latent_dim = latent_dim
        self.subject_embed_dim = subject_embed_dim
        self.estimator = head.estimator
        self.sigma_min = sigma_min
        self.aux_loss_weight = aux_loss_weight
        self.num_steps = num_steps
        self.temperature = temperature
        self.freeze_backbone = freeze_backbone
        self.detach_target_latent = detach_target_latent
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="flow_seed")
        if freeze_backbone:
            backbone.trainable = False

    def __call__(self, inputs, *args, **kwargs):
        return super().__call__(self.backbone.as_stream_dict(inputs), *args, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if isinstance(y, dict):  # `tfbrain train` keys targets by the output
            y = y[self.output_key]
        loss = self.flow_head.loss(y, y_pred["mean"], seed=self.seed_generator.next(),
                                   training=training)
        for extra in self.losses:
            loss = loss + ops.cast(extra, loss.dtype)
        return loss

    def embed(self, inputs):
        return ops.mean(self.backbone.pooled_embedding(inputs), axis=1)

    def predict_mean(self, inputs):
        """Stage 1's mean anchor `(B, S, T, V)`."""
        return self.backbone(inputs, training=False)

    def sample(self, inputs, num_steps=None, temperature=None, seed=None, noise=None):
        """Features -> mean anchor -> `(B, S, T, V)` samples (Euler, `num_steps`)."""
        return self.flow_head.sample(
            self.predict_mean(inputs), num_steps or self.num_steps,
            self.temperature if temperature is None else temperature, seed=seed, noise=noise)

    def encoding_report(self, inputs, targets, num_samples=4, seed=0, num_steps=None,
                        temperature=None) -> dict:
        """Pearson r of Stage 1's mean and of Stage 2's samples against `targets`.

        Args:
            inputs: streams of N windows. targets: `(N, S, T, V)`.
            num_samples: K samples per window for the mean-of-K score.

        Returns:
            {"mean_anchor" | "one_sample" | "mean_of_samples": {"map": (S, V) r,
            "mean": float}} (time = every frame of the N windows, as upstream scores).
        """
        mean = np.asarray(self.predict_mean(inputs))
        samples = [np.asarray(self.flow_head.sample(
            mean, num_steps or self.num_steps,
            self.temperature if temperature is None else temperature, seed=int(seed) + k))
            for k in range(num_samples)]
        report = {}
        for name, prediction in (("mean_anchor", mean), ("one_sample", samples[0]),
                                 ("mean_of_samples", np.mean(samples, axis=0))):
            rmap, score = encoding_pearson(np.asarray(targets), prediction)
            report[name] = {"map": rmap, "mean": score}
        return report

    def serving_outputs(self, outputs):
        return {"mean": outputs["mean"]}

    def serving_functions(self, num_steps=None) -> dict:
        """Traced, non-jit functions for the export (fixed step count, stateless draws):

          predict_mean      streams -> {"mean": (B, S, T, V)}
          sample            streams, temperature (), seed (2,) int32 -> {"samples": (B, S, T, V)}
          sample_from_mean  mean (B, T, V), subject_index (B,) int32, temperature, seed
                            -> {"samples": (B, T, V)}
        """
        num_steps = int(num_steps or self.num_steps)
        names, head = self.backbone.stream_names, self.flow_head
        scalars = [tf.TensorSpec((), tf.float32, name="temperature"),
                   tf.TensorSpec((2,), tf.int32, name="seed")]

        def predict_mean(*streams):
            return {"mean": self.backbone(dict(zip(names, streams)), training=False)}

        def sample(*args):
            *streams, temperature, seed = args
            mean = self.backbone(dict(zip(names, streams)), training=False)
            return {"samples": head.sample(mean, num_steps, temperature, seed=seed)}

        def sample_from_mean(mean, subject_index, temperature, seed):
            return {"samples": head.sample(mean, num_steps, temperature, seed=seed,
                                           subject_index=subject_index)}

        mean_specs = [tf.TensorSpec((None, self.backbone.num_frames, self.backbone.target_dim),
                                    tf.float32, name="mean"),
                      tf.TensorSpec((None,), tf.int32, name="subject_index")]
        specs = stream_specs(self.backbone)
        return {"predict_mean": _serving_function(predict_mean, specs),
                "sample": _serving_function(sample, specs + scalars),
                "sample_from_mean": _serving_function(sample_from_mean, mean_specs + scalars)}

    def task_metadata(self):
        return {"type": self.task_type, "output_key": self.output_key,
                "num_subjects": self.backbone.num_subjects,
                "target_dim": self.backbone.target_dim, "num_steps": self.num_steps,
                "latent_dim": self.latent_dim}

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim,
                "subject_embed_dim": self.subject_embed_dim,
                "estimator": {k: list(v) if isinstance(v, tuple) else v
                              for k, v in self.estimator.items()},
                "sigma_min": self.sigma_min, "aux_loss_weight": self.aux_loss_weight,
                "num_steps": self.num_steps, "temperature": self.temperature,
                "freeze_backbone": self.freeze_backbone,
                "detach_target_latent": self.detach_target_latent, "seed": self.seed}
