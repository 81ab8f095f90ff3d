"""Voxel-wise (parcel-wise) Pearson r for encoding models, as MedARC scores Algonauts 2025.

Upstream: MedARC-AI/algonauts2025 @ 77840e14, `src/utils.py` (`pearsonr_score`): per
column, centre over time, divide by (L2 norm + 1e-7), dot product. For `(N, S, T, V)`
predictions the time axis is every (window, frame) of a subject; the map is `(S, V)` and
the score is its mean over parcels, then over subjects.

`pearsonr_score`/`encoding_pearson` work on NumPy arrays (evaluation); `PearsonR` is the
streaming Keras metric (sums of x, y, x², y², xy per subject and parcel, float64), equal to
`encoding_pearson` over everything it has seen up to rounding.
"""

import keras
import numpy as np
from keras import ops

PEARSON_EPSILON = 1e-7  # upstream pearsonr_score's eps


def pearsonr_score(y_true: np.ndarray, y_pred: np.ndarray, eps: float = PEARSON_EPSILON) -> np.ndarray:
    """Pearson r of each column of two `(T, V)` arrays -> `(V,)` (upstream semantics)."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.ndim != 2 or y_true.shape != y_pred.shape:
        raise ValueError("pearsonr_score expects two (T, V) arrays of the same shape. "
                         f"Received: {y_true.shape} and {y_pred.shape}")
    y_true = y_true - y_true.mean(axis=0)
    y_true = y_true / (np.linalg.norm(y_true, axis=0) + eps)
    y_pred = y_pred - y_pred.mean(axis=0)
    y_pred = y_pred / (np.linalg.norm(y_pred, axis=0) + eps)
    return (y_true * y_pred).sum(axis=0)


def encoding_pearson(targets: np.ndarray, predictions: np.ndarray,
                     eps: float = PEARSON_EPSILON) -> tuple[np.ndarray, float]:
    """Per-subject, per-parcel r of `(N, S, T, V)` arrays (time = N·T frames).

    Returns:
        (`(S, V)` map, mean over parcels then subjects).
    """
    targets = np.asarray(targets)
    predictions = np.asarray(predictions)
    if targets.ndim != 4 or targets.shape != predictions.shape:
        raise ValueError("encoding_pearson expects targets and predictions of shape "
                         f"(N, S, T, V). Received: {targets.shape} and {predictions.shape}")
    num_subjects, num_targets = targets.shape[1], targets.shape[3]
    rmap = np.stack([
        pearsonr_score(targets[:, s].reshape(-1, num_targets),
                       predictions[:, s].reshape(-1, num_targets), eps)
        for s in range(num_subjects)])
    return rmap, float(rmap.mean(axis=1).mean())


@keras.saving.register_keras_serializable(package="tfbrain")
class PearsonR(keras.metrics.Metric):
    """Streaming mean voxel-wise Pearson r of `(B, S, T, V)` (or `(B, T, V)`) outputs.

    Args:
        num_subjects: int. S (1 for `(B, T, V)`).
        num_targets: int. V.
        eps: float. As upstream, added to each L2 norm.
    """

    def __init__(self, num_subjects, num_targets, eps=PEARSON_EPSILON, name="pearson_r",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_subjects = num_subjects
        self.num_targets = num_targets
        self.eps = eps
        shape = (num_subjects, num_targets)
        self.sums = {key: self.add_variable(shape=shape, initializer="zeros", dtype="float64",
                                            name=key)
                     for key in ("n", "x", "y", "xx", "yy", "xy")}

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "float64")
        y_pred = ops.cast(y_pred, "float64")
        if len(y_true.shape) == 3:  # (B, T, V) -> (B, 1, T, V)
            y_true, y_pred = y_true[:, None], y_pred[:, None]
        axes = (0, 2)
        updates = {"n": ops.sum(ops.ones_like(y_true), axis=axes),
                   "x": ops.sum(y_pred, axis=axes), "y": ops.sum(y_true, axis=axes),
                   "xx": ops.sum(y_pred * y_pred, axis=axes),
                   "yy": ops.sum(y_true * y_true, axis=axes),
                   "xy": ops.sum(y_pred * y_true, axis=axes)}
        for key, value in updates.items():
            self.sums[key].assign_add(value)

    def pearson_map(self):
        """`(S, V)` r over everything seen."""
        s = self.sums
        n = ops.maximum(s["n"].value, 1.0)
        cxy = s["xy"].value - s["x"].value * s["y"].value / n
        cxx = ops.maximum(s["xx"].value - s["x"].value ** 2 / n, 0.0)
        cyy = ops.maximum(s["yy"].value - s["y"].value ** 2 / n, 0.0)
        return cxy / ((ops.sqrt(cxx) + self.eps) * (ops.sqrt(cyy) + self.eps))

    def result(self):
        return ops.cast(ops.mean(ops.mean(self.pearson_map(), axis=1)), "float32")

    def reset_state(self):
        for variable in self.sums.values():
            variable.assign(ops.zeros_like(variable))

    def get_config(self):
        return {**super().get_config(), "num_subjects": self.num_subjects,
                "num_targets": self.num_targets, "eps": self.eps}
