"""Evaluation of a trained Task, by the evaluator the Task names (`Task.evaluator`).

  "subject_logits"       subject-level report from the windows' logits (SwiFT's protocol:
                         a subject's logit is the mean of its windows')
  "subject_predictions"  subject-level report from the windows' predictions, in standardised
                         and original units
  "view_pair_loss"       NT-Xent loss over pairs of validation windows -> {"loss"}
  "model_loss"           the model's own loss (`compute_loss`) over validation windows ->
                         {"loss"}
  "encoding"             parcel-wise Pearson r per subject of predicted responses (the
                         Algonauts score) -> {"pearson_r", "loss", per-subject r, the r map}

A subject-level report is `{"window": {...}, "subject": {...}}`; a loss report is
`{"loss": float}`. `ValidationMetrics` puts either into the epoch logs (`val_subject_auroc`,
`val_loss`, ...), which is what `best/` selection monitors.
"""

import keras
import numpy as np

_PREDICT_FUNCTIONS = {}


def predict_function(model: keras.Model, output_key: str, jit_compile: bool):
    """One traced forward function per (model, output, jit), reused across epochs."""
    import tensorflow as tf

    key = (id(model), output_key, jit_compile)
    if key not in _PREDICT_FUNCTIONS or _PREDICT_FUNCTIONS[key][0] is not model:
        function = tf.function(lambda x: model(x, training=False)[output_key],
                               jit_compile=jit_compile, reduce_retracing=True)
        _PREDICT_FUNCTIONS[key] = (model, function)
    return _PREDICT_FUNCTIONS[key][1]


def predict_split(model: keras.Model, dataset, jit_compile: bool, output_key: str):
    """Outputs, labels and subjects of every window of an evaluation dataset."""
    predict = predict_function(model, output_key, jit_compile)
    outputs, labels, subjects = [], [], []
    for window, label, subject in dataset:
        outputs.append(np.asarray(predict(window)))
        labels.append(label.numpy())
        subjects.extend(subject.numpy().tolist())
    return np.concatenate(outputs), np.concatenate(labels), subjects


def _window_loss(model, datasets, outputs, raw_labels) -> float | None:
    """The Task's training loss over the windows (mean), for `val_loss` beside `loss`."""
    import tensorflow as tf

    losses = model.default_loss()
    if not isinstance(losses, dict) or model.output_key not in losses:
        return None
    targets = datasets.targets.target(tf.constant(raw_labels))
    return float(losses[model.output_key](targets, tf.constant(outputs, tf.float32)))


def evaluate_subject_logits(model, datasets, split, jit_compile, num_resamples=1000):
    from tfbrain.training.metrics import logit_metrics, subject_level_report

    dataset = datasets.evaluation(split)
    if dataset is None:
        return None
    outputs, raw_labels, subjects = predict_split(model, dataset, jit_compile, model.output_key)
    keep = raw_labels >= 0  # unlabelled windows (-1) are not scored
    targets = np.asarray([datasets.targets.class_of(label) for label in raw_labels[keep]], np.int64)
    subjects = [s for s, k in zip(subjects, keep) if k]
    if not len(targets):
        return None
    report = subject_level_report(logit_metrics, subjects, outputs[keep], targets, num_resamples)
    report["per_subject"] = _subject_rows(subjects, outputs[keep], targets,
                                          datasets.targets.class_names)
    # the names training logs, so that TensorBoard overlays train and validation curves
    report["loss"] = _window_loss(model, datasets, outputs[keep], raw_labels[keep])
    report["accuracy"] = report["window"]["accuracy"]
    return report


def _subject_rows(subjects, outputs, targets, class_names) -> list[dict]:
    """One row per subject: its class, mean logits, predicted class (by name)."""
    from tfbrain.training.metrics import group_by_subject

    order, means, labels = group_by_subject(subjects, np.asarray(outputs, np.float64), targets)
    rows = []
    for subject, mean, label in zip(order, means, labels):
        predicted = int(mean[0] >= 0) if mean.shape[-1] == 1 else int(mean.argmax())
        rows.append({"subject": subject, "label": class_names[int(label)],
                     "predicted": class_names[predicted],
                     "mean_logits": [float(v) for v in np.ravel(mean)]})
    return rows


def evaluate_subject_predictions(model, datasets, split, jit_compile, num_resamples=1000):
    from tfbrain.training.metrics import prediction_metrics, subject_level_report

    dataset = datasets.evaluation(split)
    if dataset is None:
        return None
    outputs, raw_labels, subjects = predict_split(model, dataset, jit_compile, model.output_key)
    targets = datasets.targets
    metric = lambda o, t: prediction_metrics(o, t, targets.target_mean, targets.target_std)  # noqa: E731
    report = subject_level_report(metric, subjects, outputs, raw_labels, num_resamples)
    report["loss"] = _window_loss(model, datasets, outputs, raw_labels)
    report["mae"] = report["window"]["mae"]
    return report


def evaluate_view_pair_loss(model, datasets, split, jit_compile, num_resamples=0):
    from tfbrain.losses import NTXentLoss

    dataset = datasets.evaluation(split, pairs=True)
    if dataset is None:
        return None
    pair_model = model.training_model()
    loss_fn = NTXentLoss(model.temperature)
    values = []
    for views, _, _ in dataset:
        if views.shape[0] < 2:
            continue
        values.append(float(keras.ops.mean(loss_fn.call(None, pair_model(views, training=False)))))
    return {"loss": float(np.mean(values))} if values else None


def evaluate_model_loss(model, datasets, split, jit_compile, num_resamples=0):
    dataset = datasets.evaluation(split)
    if dataset is None:
        return None
    values, counts = [], []
    for window, _, _ in dataset:
        outputs = model(window, training=False)
        values.append(float(model.compute_loss(x=window, y_pred=outputs, training=False)))
        counts.append(int(window.shape[0]))
    return {"loss": float(np.average(values, weights=counts))} if values else None


def evaluate_encoding(model, datasets, split, jit_compile, num_resamples=0):
    """Voxel-wise (parcel-wise) Pearson r per subject of the Task's mean prediction, and its
    MSE; a Task with `encoding_report` (the flow-matching Stage 2) adds its samples' r."""
    from tfbrain.metrics.encoding import encoding_pearson

    dataset = datasets.evaluation(split)
    if dataset is None:
        return None
    predictions, targets, streams_seen = [], [], []
    for streams, target, _ in dataset:
        predictions.append(np.asarray(model(streams, training=False)[model.output_key]))
        targets.append(target.numpy())
        streams_seen.append(streams)
    predictions, targets = np.concatenate(predictions), np.concatenate(targets)
    r_map, r_mean = encoding_pearson(targets, predictions)
    report = {"pearson_r": float(r_mean), "loss": float(np.mean((predictions - targets) ** 2)),
              "pearson_r_per_subject": {s: float(np.mean(r_map[i]))
                                        for i, s in enumerate(datasets.targets.subjects)},
              "pearson_r_map": r_map.tolist()}
    if hasattr(model, "encoding_report"):
        stacked = {k: np.concatenate([np.asarray(s[k]) for s in streams_seen])
                   for k in streams_seen[0]}
        for name, value in model.encoding_report(stacked, targets).items():
            report[f"pearson_r_{name}"] = float(value["mean"])  # mean_anchor, one_sample, ...
    return report


EVALUATORS = {
    "subject_logits": evaluate_subject_logits,
    "subject_predictions": evaluate_subject_predictions,
    "view_pair_loss": evaluate_view_pair_loss,
    "model_loss": evaluate_model_loss,
    "encoding": evaluate_encoding,
}


class _BatchesWithProgress:
    """An evaluation dataset that advances a progress bar per batch as an evaluator iterates it."""

    def __init__(self, dataset, description: str, batches: int | None = None):
        self.dataset, self.description, self.batches = dataset, description, batches

    def __iter__(self):
        from tfbrain.training.progress import progress_bar

        batches = int(self.dataset.cardinality())
        batches = batches if batches >= 0 else self.batches  # interleaved reads: unknown
        bar = progress_bar(batches, self.description, "batch")
        try:
            for batch in self.dataset:
                yield batch
                bar.update(1)
        finally:
            bar.close()


class _DatasetsWithProgress:
    """`datasets` whose evaluation splits draw a bar (evaluators only iterate them)."""

    def __init__(self, datasets):
        self._datasets = datasets

    def __getattr__(self, name):
        return getattr(self._datasets, name)

    def evaluation(self, split, pairs: bool = False):
        dataset = self._datasets.evaluation(split, pairs=pairs)
        if dataset is None:
            return None
        return _BatchesWithProgress(dataset, f"evaluating {split}", self._batches(split, pairs))

    def _batches(self, split, pairs) -> int | None:
        """Batches of a split of fMRI windows, from dataset.json (what `evaluation` yields), so
        the bar knows the time left; None for other datasets."""
        if not hasattr(self._datasets, "selection"):
            return None
        import tfrecords_tools

        data = self._datasets.config.data
        reader_split, frames = self._datasets.selection(split)
        windows = tfrecords_tools.num_windows(data.dataset_dir, reader_split, window=data.window,
                                              stride=data.eval_stride, pairs=pairs,
                                              splits_file=self._datasets.splits_file,
                                              frames=frames)
        items = windows // 2 if pairs else windows
        return -(-items // data.eval_batch_size)


def evaluate_model(model, datasets, split: str, jit_compile: bool, num_resamples: int = 1000,
                   progress: bool = False):
    """The report of the Task's evaluator on one split, or None if the split is empty.
    `num_resamples` bootstrap resamples give the 95% intervals (0: none); `progress` draws a
    bar with the time left on stderr (when it is a terminal)."""
    if model.evaluator not in EVALUATORS:
        raise ValueError(f"{type(model).__name__} names evaluator {model.evaluator!r}; known: "
                         f"{sorted(EVALUATORS)}")
    if progress:
        datasets = _DatasetsWithProgress(datasets)
    return EVALUATORS[model.evaluator](model, datasets, split, jit_compile, num_resamples)


def report_to_logs(report: dict, prefix: str) -> dict:
    """`{"window": {...}, "subject": {...}}` or `{"loss": x}` -> flat `prefix_...` logs."""
    logs = {}
    for key, value in report.items():
        if isinstance(value, dict):
            logs.update({f"{prefix}_{key}_{name}": v for name, v in value.items()
                         if name not in ("count", "ci95") and isinstance(v, (int, float))})
        elif isinstance(value, (int, float)):
            logs[f"{prefix}_{key}"] = float(value)
    return logs


class ValidationMetrics(keras.callbacks.Callback):
    """The Task's evaluation of the validation split at the end of every epoch, added to
    the logs (`val_subject_auroc`, `val_window_accuracy`, `val_loss`, ...)."""

    def __init__(self, task_model, datasets, jit_compile: bool):
        super().__init__()
        self.task_model, self.datasets, self.jit_compile = task_model, datasets, jit_compile

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        report = evaluate_model(self.task_model, self.datasets, self.datasets.config.data.val_split,
                                self.jit_compile, num_resamples=0)
        if report is not None:
            logs.update(report_to_logs(report, "val"))
