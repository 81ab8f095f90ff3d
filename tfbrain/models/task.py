"""Task models: a backbone plus a head, with named dict outputs, and everything the
family-free trainer, evaluation, attribution and export need to know about the task.

Every task model is a functional `keras.Model` whose inputs are the backbone's (for the
fMRI families one input, `fmri` `(B, D, H, W, T, C)`) and whose output is a dict:
  classification -> {"logits": (B, num_classes)}  (binary: num_classes = 1)
  regression     -> {"prediction": (B, num_outputs)}
  contrastive    -> {"embedding": (B, E)}  (L2-normalised)
It keeps `.backbone` and `.task_type`; `embed(inputs)` is the backbone embedding pooled as
the backbone says (`Backbone.pooling`). Task types register by name
(`tfbrain.models.registry.register_task`), which is what `[task] type` in a training
config names.

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
    monitor = ("val_loss", "min")
    attributable = False  # Integrated Gradients of `output_key` make sense

    def __init__(self, backbone, outputs_fn, dtype=None, **kwargs):
        inputs = task_inputs_like(backbone)
        features = backbone(inputs)
        super().__init__(inputs=inputs, outputs=outputs_fn(features), dtype=dtype, **kwargs)
        self.backbone = backbone

    # === What the rest of tfbrain asks ===

    @classmethod
    def from_train_config(cls, backbone, task_config, model_config, targets):
        """Build the task for `tfbrain train` from its config sections and the dataset's
        targets (`tfbrain.training.targets.Targets`)."""
        return cls(backbone, **task_config.options)

    @property
    def input_names(self) -> list[str]:
        return [t.name.split(":")[0] for t in self.inputs]

    def input_specs(self) -> dict:
        """{input name: (shape without batch, dtype)}."""
        return {t.name.split(":")[0]: (tuple(t.shape[1:]), str(t.dtype)) for t in self.inputs}

    def training_model(self) -> keras.Model:
        """The model `fit` trains (the task itself unless the objective needs a wrapper,
        as the contrastive pairs do)."""
        return self

    def for_serving(self):
        """This task, or a copy whose backbone takes its serving code path (see
        `Backbone.serving_overrides`), with the same weights."""
        backbone = self.backbone.for_serving() if hasattr(self.backbone, "for_serving") else self.backbone
        if backbone is self.backbone:
            return self
        config = {**self.get_config(), "backbone": backbone}
        config.pop("name", None)
        clone = type(self)(**{k: v for k, v in config.items() if k != "trainable"})
        clone.set_weights(self.get_weights())
        return clone

    def default_attribution_unit(self, output) -> int:
        raise ValueError(f"a {self.task_type} model has no output to attribute; Integrated "
                         "Gradients need a classification or regression model")

    def visualize(self, inputs, outputs) -> dict:
        """Optional images for TensorBoard: {name: (N, H, W, 1) float in [0, 1]}."""
        return {}

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
        from tfbrain.models.loading import load_preset_as  # imports every family

        return load_preset_as(cls, preset, load_weights=load_weights, **kwargs)

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


    output_key = "logits"
    target_kind = "class"
    evaluator = "subject_logits"
    monitor = ("val_subject_auroc", "max")
    attributable = True

    @classmethod
    def from_train_config(cls, backbone, task_config, model_config, targets):
        return cls(backbone, num_classes=targets.num_outputs, head=model_config.head,
                   dropout_rate=model_config.dropout_rate, **task_config.options)

    def default_loss(self):
        if self.num_classes == 1:
            return {"logits": keras.losses.BinaryCrossentropy(from_logits=True)}
        return {"logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}

    def default_metrics(self):
        if self.num_classes == 1:
            return {"logits": [keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")]}
        return {"logits": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]}

    def serving_outputs(self, outputs):
        logits = ops.cast(outputs["logits"], "float32")  # (B, K)
        probabilities = (ops.sigmoid(logits) if self.num_classes == 1
                         else ops.softmax(logits, axis=-1))
        return {"logits": logits, "probabilities": probabilities}

    def default_attribution_unit(self, output) -> int:
        """Output unit to attribute for one window's output `(K,)`: the logit of a binary
        task, else the predicted class."""
        return 0 if self.num_classes == 1 else int(ops.convert_to_numpy(ops.argmax(output)))

    def __init__(self, backbone, num_classes=1, head="v1", dropout_rate=0.0, **kwargs):
        outputs_fn = linear_head("logits", num_classes, head, dropout_rate,
                                 backbone.output.shape[-1], backbone_pooling(backbone),
                                 backbone_head_norm_epsilon(backbone))
        super().__init__(backbone, outputs_fn, **kwargs)
        self.num_classes = num_classes
        self.head = head
        self.dropout_rate = dropout_rate

    def task_metadata(self):
        return {**super().task_metadata(), "num_classes": self.num_classes,
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


    output_key = "prediction"
    target_kind = "value"
    evaluator = "subject_predictions"
    monitor = ("val_subject_mse", "min")
    attributable = True

    @classmethod
    def from_train_config(cls, backbone, task_config, model_config, targets):
        return cls(backbone, num_outputs=targets.num_outputs, head=model_config.head,
                   dropout_rate=model_config.dropout_rate, **task_config.options)

    def default_loss(self):
        return {"prediction": keras.losses.MeanSquaredError()}

    def default_metrics(self):
        return {"prediction": [keras.metrics.MeanAbsoluteError(name="mae")]}

    def serving_outputs(self, outputs):
        return {"prediction": ops.cast(outputs["prediction"], "float32")}

    def default_attribution_unit(self, output) -> int:
        return 0

    def __init__(self, backbone, num_outputs=1, head="v1", dropout_rate=0.0, **kwargs):
        outputs_fn = linear_head("prediction", num_outputs, head, dropout_rate,
                                 backbone.output.shape[-1], backbone_pooling(backbone),
                                 backbone_head_norm_epsilon(backbone))
        super().__init__(backbone, outputs_fn, **kwargs)
        self.num_outputs = num_outputs
        self.head = head
        self.dropout_rate = dropout_rate

    def task_metadata(self):
        return {**super().task_metadata(), "num_outputs": self.num_outputs}

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
        temperature: float. NT-Xent temperature of the training loss (0.1 upstream).
    """


    output_key = "embedding"
    target_kind = "pairs"
    evaluator = "view_pair_loss"
    monitor = ("val_loss", "min")

    @classmethod
    def from_train_config(cls, backbone, task_config, model_config, targets):
        return cls(backbone, embedding_dim=task_config.embedding_dim,
                   temperature=task_config.temperature, **task_config.options)

    def training_model(self):
        """`(B, 2, D, H, W, T, C)` two views -> `(B, 2, E)` embeddings, sharing this model."""
        (name, spec), = self.input_specs().items()
        views = keras.Input(shape=(2,) + spec[0], name=f"{name}_views")
        first = self(keras.layers.Lambda(lambda v: v[:, 0], name="view_0")(views))["embedding"]
        second = self(keras.layers.Lambda(lambda v: v[:, 1], name="view_1")(views))["embedding"]
        pair = keras.layers.Lambda(lambda e: ops.stack(e, axis=1), name="pair")([first, second])
        return keras.Model(views, pair, name="contrastive_pairs")

    def default_loss(self):
        from tfbrain.losses import NTXentLoss

        return NTXentLoss(self.temperature)

    def serving_outputs(self, outputs):
        return {"embedding": ops.cast(outputs["embedding"], "float32")}

    def __init__(self, backbone, embedding_dim=128, temperature=0.1, **kwargs):
        def outputs_fn(features):
            x = FeaturePool(backbone_pooling(backbone), name="pool")(features)
            x = keras.layers.Dense(embedding_dim, use_bias=False, name="fc1")(x)
            # torch BatchNorm1d defaults: eps 1e-5, momentum 0.1 (= Keras momentum 0.9)
            x = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="bn1")(x)
            return {"embedding": L2Normalize(name="l2_normalize")(x)}

        super().__init__(backbone, outputs_fn, **kwargs)
        self.embedding_dim = embedding_dim
        self.temperature = temperature

    def task_metadata(self):
        return {**super().task_metadata(), "embedding_dim": self.embedding_dim}

    def get_config(self):
        return {**super().get_config(), "embedding_dim": self.embedding_dim,
                "temperature": self.temperature}
