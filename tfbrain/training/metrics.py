"""Subject-level evaluation, as SwiFT reports it.

Every window of a subject is scored; the subject's prediction is the mean of its raw
window logits (or regression outputs). Classification: accuracy (logit >= 0, or
argmax), balanced accuracy, AUROC of the mean logit (binary; one-vs-rest macro for
more classes). Regression: MSE, MAE and Pearson r, on the standardised scale and,
given the training mean/std, in original units.
"""

import json

import numpy as np


def group_by_subject(subjects, outputs, labels) -> tuple[list, np.ndarray, np.ndarray]:
    """Mean output and the label of each subject, in first-seen order."""
    order, sums, counts, subject_labels = [], {}, {}, {}
    for subject, output, label in zip(subjects, outputs, labels):
        subject = subject.decode() if isinstance(subject, bytes) else str(subject)
        if subject not in sums:
            order.append(subject)
            sums[subject] = np.zeros_like(np.asarray(output, np.float64))
            counts[subject] = 0
            subject_labels[subject] = label
        sums[subject] += output
        counts[subject] += 1
    means = np.stack([sums[s] / counts[s] for s in order])
    return order, means, np.asarray([subject_labels[s] for s in order])


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum (Mann-Whitney U), ties averaged."""
    scores = np.asarray(scores, np.float64)
    positives = np.asarray(positives, bool)
    num_pos, num_neg = positives.sum(), (~positives).sum()
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    return float((ranks[positives].sum() - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg))


def logit_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Metrics from per-item logits `(N, K)` (K = 1: binary) and int labels `(N,)`."""
    logits = np.asarray(logits, np.float64).reshape(len(labels), -1)
    labels = np.asarray(labels).astype(int)
    if logits.shape[1] == 1:
        predicted = (logits[:, 0] >= 0).astype(int)
        area = auroc(logits[:, 0], labels == 1)
    else:
        predicted = logits.argmax(axis=1)
        areas = [auroc(logits[:, k], labels == k) for k in range(logits.shape[1])
                 if 0 < (labels == k).sum() < len(labels)]
        area = float(np.mean(areas)) if areas else float("nan")
    classes = np.unique(labels)
    recalls = [float((predicted[labels == c] == c).mean()) for c in classes]
    counts = np.bincount(labels) if len(labels) else np.zeros(1)
    return {"accuracy": float((predicted == labels).mean()),
            "balanced_accuracy": float(np.mean(recalls)),
            "auroc": area, "count": int(len(labels)),
            # what always answering the most frequent class scores on the same items
            "majority_accuracy": float(counts.max() / max(len(labels), 1))}


def pearson_r(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def prediction_metrics(predictions, targets, target_mean=0.0, target_std=1.0) -> dict:
    """Standardised-scale and original-unit errors; `targets` are in original units."""
    predictions = np.asarray(predictions, np.float64).ravel()
    targets = np.asarray(targets, np.float64).ravel()
    standardised = (targets - target_mean) / target_std
    original = predictions * target_std + target_mean
    return {"mse": float(np.mean((predictions - standardised) ** 2)),
            "mae": float(np.mean(np.abs(predictions - standardised))),
            "mse_original_units": float(np.mean((original - targets) ** 2)),
            "mae_original_units": float(np.mean(np.abs(original - targets))),
            "pearson_r": pearson_r(predictions, targets), "count": int(len(targets))}


CI_METRICS = ("accuracy", "balanced_accuracy", "auroc", "pearson_r", "mse", "mae")


def bootstrap_ci(metric_fn, outputs, labels, num_resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> dict:
    """Percentile bootstrap confidence intervals (items resampled with replacement) of the
    metrics in `CI_METRICS` that `metric_fn(outputs, labels)` returns: {name: [low, high]}.
    A resample on which a metric is undefined (one class only, for AUROC) is skipped."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    if n < 2:
        return {}
    samples = {}
    for _ in range(num_resamples):
        index = rng.integers(0, n, n)
        for name, value in metric_fn(outputs[index], labels[index]).items():
            if name in CI_METRICS and value is not None and np.isfinite(value):
                samples.setdefault(name, []).append(value)
    tail = 100 * (1 - level) / 2
    return {name: [float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))]
            for name, v in samples.items() if len(v) >= num_resamples // 2}


def subject_level_report(metric_fn, subjects, outputs, labels, num_resamples: int = 1000) -> dict:
    """Window-level and subject-level `metric_fn(outputs, labels)` (a subject's output is
    the mean of its windows'), each with bootstrap 95% intervals (`ci95`)."""
    outputs = np.asarray(outputs, np.float64).reshape(len(labels), -1)
    labels = np.asarray(labels)
    _, subject_outputs, subject_labels = group_by_subject(subjects, outputs, labels)
    report = {}
    for level, (o, y) in (("window", (outputs, labels)), ("subject", (subject_outputs, subject_labels))):
        report[level] = metric_fn(o, y)
        if num_resamples:
            report[level]["ci95"] = bootstrap_ci(metric_fn, o, y, num_resamples)
    return report


def format_report(report: dict) -> str:
    """A printed table: one row per level, one column per metric."""
    levels = [k for k in ("window", "subject") if k in report]
    if not levels:
        return "  ".join(f"{k} {v:.4f}" for k, v in report.items() if isinstance(v, float))
    names = sorted({m for level in levels for m in report[level] if m != "ci95"})
    lines = [f"{'level':8}" + "".join(f"{n:>20}" for n in names)]
    for level in levels:
        cells = []
        for n in names:
            value = report[level].get(n, "")
            cells.append(f"{value:>20}" if isinstance(value, int) else f"{value:>20.4f}"
                         if isinstance(value, float) else f"{value!s:>20}")
        lines.append(f"{level:8}" + "".join(cells))
        intervals = report[level].get("ci95") or {}
        if intervals:
            lines.append(f"{'  95% CI':8}" + "".join(
                f"{'[%.3f, %.3f]' % tuple(intervals[n]):>20}" if n in intervals else f"{'':>20}"
                for n in names))
    return "\n".join(lines)


def strict_json(value):
    """NaN and infinities -> None (JSON has no NaN); numpy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_report(path, report: dict) -> None:
    """Strict JSON (null for undefined metrics), written atomically."""
    from tfbrain.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(strict_json(report), indent=2, allow_nan=False))
