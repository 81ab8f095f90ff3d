"""Losses shared by the training recipes."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tfbrain")
class NTXentLoss(keras.losses.Loss):
    """Normalised-temperature cross-entropy (SimCLR), as SwiFT's contrastive pretraining.

    For a batch of N pairs the 2N embeddings are compared by cosine similarity /
    temperature; each row's positive is the other view of its pair and its
    negatives are every other row but itself. The per-row cross-entropies are
    summed and divided by 2N (upstream's normalisation); this returns one value
    per pair (the mean of its two rows), so Keras' mean reduction gives the same.

    Args:
        temperature: float (0.1 upstream).

    Call arguments:
        y_true: ignored (pass zeros of shape (B,)).
        y_pred: `(B, 2, E)`: both views' embeddings of each item.
    """

    def __init__(self, temperature=0.1, name="nt_xent", **kwargs):
        super().__init__(name=name, **kwargs)
        if temperature <= 0:
            raise ValueError(f"`temperature` must be > 0. Received: temperature={temperature}")
        self.temperature = temperature

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        num_pairs = ops.shape(y_pred)[0]
        # rows = [view j; view i], as upstream orders them
        rows = ops.concatenate([y_pred[:, 1], y_pred[:, 0]], axis=0)  # (2N, E)
        rows = rows / ops.maximum(ops.norm(rows, axis=-1, keepdims=True), 1e-8)
        logits = ops.matmul(rows, ops.transpose(rows)) / self.temperature  # (2N, 2N)
        num_rows = 2 * num_pairs
        eye = ops.eye(num_rows, dtype="bool")
        logits = ops.where(eye, ops.cast(-1e9, logits.dtype), logits)  # never your own positive
        partner = ops.concatenate([ops.arange(num_pairs) + num_pairs, ops.arange(num_pairs)], 0)
        per_row = keras.losses.sparse_categorical_crossentropy(partner, logits, from_logits=True)
        return 0.5 * (per_row[:num_pairs] + per_row[num_pairs:])  # (N,)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}
