"""Task models: a backbone plus a head, with named dict outputs.

Every task model is a functional `keras.Model` with one input, `fmri`
`(B, D, H, W, T, C)`, and a dict output:
  classification -> {"logits": (B, num_classes)}  (binary: num_classes = 1)
  regression     -> {"prediction": (B, num_outputs)}
  contrastive    -> {"embedding": (B, E)}  (L2-normalised)
It keeps `.backbone` and `.task_type`; `embed(fmri)` is the token-mean backbone
embedding `(B, C')`. Export and serving rely on exactly this surface.

Heads follow SwiFT (Transconnectome/SwiFT `project/module/models/`): `clf_mlp`
(v1: mean over tokens -> Linear), `clf_mlp_v2` (mean -> Linear(4C) -> Linear, no
activation between, as released), `emb_mlp` (mean -> Linear no bias -> BatchNorm
-> L2 normalise). They work on any backbone whose output is `(B, ..., C)`.
"""

import keras
from keras import ops

from tfbrain.layers.pooling import FeaturePool, pool_features
from tfbrain.models.registry import register_task
from tfbrain.presets import save_preset


@keras.saving.register_keras_serializable(package="tfbrain")
class L2Normalize(keras.layers.Layer):
    """x / max(||x||, eps) along the last axis (torch F.normalize semantics)."""

    def __init__(self, epsilon=1e-12, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, x):
        norm = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))
        return x / ops.maximum(norm, self.epsilon)

    def compute_output_shape(self, x_shape):
        return x_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def backbone_pooling(backbone) -> str:
    """The backbone's pooling mode (a plain functional model pools its tokens' mean)."""
    return getattr(backbone, "pooling", "token_mean")


def task_inputs_like(backbone):
    """Fresh `keras.Input`s with the backbone's input names, shapes and structure (one tensor
    or a dict of them)."""
    struct = getattr(backbone, "_inputs_struct", None)
    if isinstance(struct, dict):
        return {name: keras.Input(shape=t.shape[1:], dtype=t.dtype, name=name)
                for name, t in struct.items()}
    tensor = backbone.inputs[0]
    return keras.Input(shape=tensor.shape[1:], dtype=tensor.dtype,
                       name=tensor.name.split(":")[0])


def backbone_head_norm_epsilon(backbone):
    """Epsilon of the LayerNorm the backbone's upstream head applies after pooling, or None."""
    return getattr(backbone, "head_norm_epsilon", None)


class Task(keras.Model):
    """Base of task models: a backbone plus a head, with a dict output.

    A Task owns what the rest of tfbrain must know about it, so the trainer, evaluation,
    attribution and export never branch on a task type:
      `output_key`         the main output (`{"logits": ...}` -> "logits")
      `target_kind`        what the data gives as targets: "class", "value", "pairs" (two
                           views, no labels) or "none" (self-supervised)
      `evaluator`          name of the evaluator in `tfbrain.training.evaluation`
      `monitor`            (metric, "max"|"min") that selects `best/`
      `default_loss()`, `default_metrics()`, `serving_outputs(outputs)`, `embed(inputs)`

    Subclasses build the head in their constructor through `outputs_fn(features)`. Inputs
    are taken from the backbone (names, shapes; a dict is allowed).
    """

    task_type = None
    output_key = None
    target_kind = "none"
    evaluator = None
    monitor = ("loss", "min")

    def __init__(self, backbone, outputs_fn, dtype=None, **kwargs):
        inputs = task_inputs_like(backbone)
        features = backbone(inputs)
        super().__init__(inputs=inputs, outputs=outputs_fn(features), dtype=dtype, **kwargs)
        self.backbone = backbone

    # === What the rest of tfbrain asks ===

    @property
    def input_names(self) -> list[str]:
        return [t.name.split(":")[0] for t in self.inputs]

    def embed(self, inputs):
        """Pooled backbone embedding `(B, C')` (the backbone's own pooling)."""
        return pool_features(self.backbone(inputs, training=False), backbone_pooling(self.backbone))

    def default_loss(self):
        """Loss for `compile` (a dict keyed by output), or None when `compute_loss` is
        overridden."""
        return None

    def default_metrics(self):
        return None

    def serving_outputs(self, outputs: dict) -> dict:
        """Named tensors a served model returns, from the model's outputs."""
        return dict(outputs)

    def task_metadata(self) -> dict:
        return {"type": self.task_type, "output_key": self.output_key,
                "pooling": backbone_pooling(self.backbone)}

    def save_to_preset(self, preset_dir, extra_metadata: dict | None = None):
        """Write the task model as a preset folder (metadata.json gains a "task" entry)."""
        save_preset(self, preset_dir, extra_metadata)

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Load a task model from a preset name or folder."""
        from tfbrain.models.loading import load_preset  # imports every family

        model = load_preset(preset, load_weights=load_weights, **kwargs)
        if not isinstance(model, cls):
            raise ValueError(f"Preset {preset!r} holds a {type(model).__name__}, "
                             f"not a {cls.__name__}.")
        return model

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable,
                "backbone": keras.saving.serialize_keras_object(self.backbone)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


def linear_head(output_name, num_outputs, head, dropout_rate, width, pooling="token_mean",
                norm_epsilon=None):
    """SwiFT's clf_mlp heads: token mean -> [LayerNorm] -> [dropout] -> [Linear(4C) (v2)] -> Linear.

    The LayerNorm (`head_norm`) is there when `norm_epsilon` is set: backbones whose upstream head
    normalises the pooled features (BiXT's `fc_norm`) say so with a `head_norm_epsilon` attribute.

    Returns a function `(B, ..., C) features -> {output_name: (B, num_outputs)}`.
    """
    if head not in ("v1", "v2"):
        raise ValueError(f"`head` must be one of ('v1', 'v2'). Received: head={head!r}")

    def outputs_fn(features):
        x = FeaturePool(pooling, name="pool")(features)
        if norm_epsilon is not None:
            x = keras.layers.LayerNormalization(epsilon=norm_epsilon, name="head_norm")(x)
        if dropout_rate:
            x = keras.layers.Dropout(dropout_rate, name="head_dropout")(x)
        if head == "v2":
            x = keras.layers.Dense(4 * width, name="hidden")(x)  # no activation, as released
        return {output_name: keras.layers.Dense(num_outputs, name="head")(x)}

    return outputs_fn


@register_task("classification")
@keras.saving.register_keras_serializable(package="tfbrain")
class FMRIClassifier(Task):
    """Classification: `{"logits": (B, num_classes)}`; one logit for binary tasks.

    Args:
        backbone: a tfbrain backbone.
        num_classes: int. Number of logits (1 for binary, sigmoid/BCE).
        head: "v1" (mean -> Linear) or "v2" (mean -> Linear(4C) -> Linear).
        dropout_rate: float. Dropout on the pooled features (0 upstream).
    """


    def __init__(self, backbone, num_classes=1, head="v1", dropout_rate=0.0, **kwargs):
        outputs_fn = linear_head("logits", num_classes, head, dropout_rate,
                                 backbone.output.shape[-1], backbone_pooling(backbone),
                                 backbone_head_norm_epsilon(backbone))
        super().__init__(backbone, outputs_fn, **kwargs)
        self.num_classes = num_classes
        self.head = head
        self.dropout_rate = dropout_rate

    def task_metadata(self):
        return {"type": self.task_type, "num_classes": self.num_classes,
                "activation": "sigmoid" if self.num_classes == 1 else "softmax"}

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "head": self.head,
                "dropout_rate": self.dropout_rate}


@register_task("regression")
@keras.saving.register_keras_serializable(package="tfbrain")
class FMRIRegressor(Task):
    """Regression: `{"prediction": (B, num_outputs)}` (upstream reg_mlp = clf_mlp v1 head).

    Args:
        backbone: a tfbrain backbone.
        num_outputs: int.
        head: "v1" or "v2" as for the classifier.
        dropout_rate: float.
    """


    def __init__(self, backbone, num_outputs=1, head="v1", dropout_rate=0.0, **kwargs):
        outputs_fn = linear_head("prediction", num_outputs, head, dropout_rate,
                                 backbone.output.shape[-1], backbone_pooling(backbone),
                                 backbone_head_norm_epsilon(backbone))
        super().__init__(backbone, outputs_fn, **kwargs)
        self.num_outputs = num_outputs
        self.head = head
        self.dropout_rate = dropout_rate

    def task_metadata(self):
        return {"type": self.task_type, "num_outputs": self.num_outputs}

    def get_config(self):
        return {**super().get_config(), "num_outputs": self.num_outputs, "head": self.head,
                "dropout_rate": self.dropout_rate}


@register_task("contrastive")
@keras.saving.register_keras_serializable(package="tfbrain")
class FMRIContrastive(Task):
    """Contrastive projection: `{"embedding": (B, embedding_dim)}`, L2-normalised.

    Args:
        backbone: a tfbrain backbone.
        embedding_dim: int. Projection width (128 upstream).
    """


    def __init__(self, backbone, embedding_dim=128, **kwargs):
        def outputs_fn(features):
            x = FeaturePool(backbone_pooling(backbone), name="pool")(features)
            x = keras.layers.Dense(embedding_dim, use_bias=False, name="fc1")(x)
            # torch BatchNorm1d defaults: eps 1e-5, momentum 0.1 (= Keras momentum 0.9)
            x = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="bn1")(x)
            return {"embedding": L2Normalize(name="l2_normalize")(x)}

        super().__init__(backbone, outputs_fn, **kwargs)
        self.embedding_dim = embedding_dim

    def task_metadata(self):
        return {"type": self.task_type, "embedding_dim": self.embedding_dim}

    def get_config(self):
        return {**super().get_config(), "embedding_dim": self.embedding_dim}
