"""A tiny task model that follows the task-model contract, for export and serving tests.

Contract (the part of `tfbrain.models.task.Task` that export and serving use): a
registered functional `keras.Model` with one input named "fmri", shape (B, D, H, W, T, C)
float32, a dict output ({"logits"}, {"prediction"} or {"embedding"}), a `.backbone`
functional model with the same input and a (B, D', H', W', T', C') output,
`serving_outputs(outputs)`, `task_metadata()` and `embed(inputs)`.

Letters: B batch, D/H/W space, T frames, C channels.
"""

import keras
from keras import ops

from tfbrain.models.backbone import save_preset


@keras.saving.register_keras_serializable(package="tfbrain_tests")
class ToyMeanTokens(keras.layers.Layer):
    """Mean over every token axis: (B, D, H, W, T, C) -> (B, C)."""

    def call(self, tokens):
        return ops.mean(tokens, axis=(1, 2, 3, 4))

    def compute_output_shape(self, tokens_shape):
        return (tokens_shape[0], tokens_shape[-1])


@keras.saving.register_keras_serializable(package="tfbrain_tests")
class ToyFMRITask(keras.Model):
    """Per-voxel MLP backbone and a pooled linear head.

    Args:
        volume_shape: tuple. (D, H, W, T, C) of one window.
        task_type: str. "classification", "regression" or "contrastive".
        num_classes: int. Logit count for classification.
        hidden_dim: int. Token width C' of the backbone output.
    """

    def __init__(self, volume_shape=(4, 4, 4, 3, 1), task_type="classification",
                 num_classes=1, hidden_dim=6, **kwargs):
        if task_type not in ("classification", "regression", "contrastive"):
            raise ValueError(f"Unknown `task_type`. Received: task_type={task_type!r}")
        fmri = keras.Input(shape=tuple(volume_shape), name="fmri")  # (B, D, H, W, T, C)
        tokens = keras.layers.Dense(hidden_dim, activation="gelu", name="embed_0")(fmri)
        tokens = keras.layers.Dense(hidden_dim, name="embed_1")(tokens)  # (B, D, H, W, T, C')
        backbone = keras.Model(fmri, tokens, name="toy_backbone")
        pooled = ToyMeanTokens(name="pool")(backbone.output)  # (B, C')
        if task_type == "classification":
            outputs = {"logits": keras.layers.Dense(num_classes, name="logits")(pooled)}
        elif task_type == "regression":
            outputs = {"prediction": keras.layers.Dense(1, name="prediction")(pooled)}
        else:
            projected = keras.layers.Dense(hidden_dim, name="projection")(pooled)
            outputs = {"embedding": keras.layers.UnitNormalization(name="embedding")(projected)}
        super().__init__(inputs=fmri, outputs=outputs, **kwargs)
        # === Config ===
        self.backbone = backbone
        self.volume_shape = tuple(volume_shape)
        self.task_type = task_type
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim

    def serving_outputs(self, outputs):
        if self.task_type != "classification":
            return dict(outputs)
        logits = outputs["logits"]
        return {"logits": logits, "probabilities": ops.sigmoid(logits) if self.num_classes == 1
                else ops.softmax(logits, axis=-1)}

    def task_metadata(self):
        return {"type": self.task_type, "num_classes": self.num_classes}

    def embed(self, fmri):
        return ops.mean(self.backbone(fmri), axis=(1, 2, 3, 4))

    def get_config(self):
        return {"name": self.name, "volume_shape": list(self.volume_shape),
                "task_type": self.task_type, "num_classes": self.num_classes,
                "hidden_dim": self.hidden_dim}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def make_toy_task(task_type: str = "classification", num_classes: int = 1,
                  volume_shape=(4, 4, 4, 3, 1), hidden_dim: int = 6, seed: int = 0) -> ToyFMRITask:
    keras.utils.set_random_seed(seed)
    return ToyFMRITask(volume_shape=volume_shape, task_type=task_type,
                       num_classes=num_classes, hidden_dim=hidden_dim)


def save_toy_preset(model: ToyFMRITask, preset_dir) -> None:
    save_preset(model, preset_dir, extra_metadata={
        "task": {"type": model.task_type, "num_classes": model.num_classes}})
