"""Dataset labels -> training targets, as the Task's `target_kind` asks.

  "class"  categorical or event labels; optional `[data] label_groups` merge them; one logit
           for two classes (sigmoid), K logits otherwise; optional balanced class weights
  "value"  numeric labels, standardised with the mean/std over training windows (upstream)
  "pairs"  two views of one run, no labels (NT-Xent pretraining)
  "none"   no targets (self-supervised: the input is the target)

Window counts and labels come from `tfrecords_tools.window_index`, the reader's own index
of what `windows()` yields; nothing here re-derives them.
"""

import numpy as np

TARGET_KINDS = ("class", "value", "pairs", "none")


class Targets:
    """What a task trains against, for one dataset and config.

    Args:
        config: TrainConfig.
        info: the dataset's dataset.json.
        target_kind: the Task class's `target_kind`.
        train_index: `window_index` entries of the training windows.
    """

    def __init__(self, config, info: dict, target_kind: str, train_index: list[dict]):
        if target_kind not in TARGET_KINDS:
            raise ValueError(f"`target_kind` must be one of {TARGET_KINDS}. "
                             f"Received: target_kind={target_kind!r}")
        dataset_dir = config.data.dataset_dir
        self.kind = target_kind
        labels = info["labels"]
        self.label_kind = labels["kind"]
        vocabulary = list(labels.get("vocabulary") or [])
        self.class_names = vocabulary
        self.mapping = None
        self.target_mean, self.target_std = 0.0, 1.0
        self.class_weights = None
        if target_kind == "class":
            if self.label_kind not in ("categorical", "events"):
                raise ValueError(f"{dataset_dir} has {self.label_kind} labels; a [task] type "
                                 f"{config.task.type!r} needs categorical labels or events")
            if config.data.label_groups:
                self.class_names, self.mapping = _group_labels(config.data.label_groups,
                                                               vocabulary, dataset_dir)
            if len(self.class_names) < 2:
                raise ValueError(f"{dataset_dir}: a [task] type {config.task.type!r} needs >= 2 "
                                 f"classes, got {self.class_names}")
            if config.task.balance_classes:
                counts = self.class_counts(train_index)
                # weight_c = N / (K * n_c): each class contributes equally to the loss
                self.class_weights = np.where(
                    counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)),
                    0.0).astype(np.float32)
        elif target_kind == "value":
            if self.label_kind != "numeric":
                raise ValueError(f"{dataset_dir} has {self.label_kind} labels; a [task] type "
                                 f"{config.task.type!r} needs numeric labels")
            values = np.asarray([w["label"] for w in train_index if w["label"] is not None],
                                np.float64)
            if values.size:  # mean/std over training windows, as upstream
                self.target_mean = float(values.mean())
                self.target_std = float(values.std()) or 1.0

    @property
    def num_outputs(self) -> int:
        if self.kind == "class":
            return 1 if len(self.class_names) == 2 else len(self.class_names)
        return 1

    def class_of(self, label: int) -> int:
        """Dataset label index -> class index (after label_groups)."""
        return int(self.mapping[label]) if self.mapping is not None else int(label)

    def class_counts(self, index: list[dict]) -> np.ndarray:
        counts = np.zeros(len(self.class_names), np.int64)
        for entry in index:
            if entry["label"] is not None and entry["label"] >= 0:
                counts[self.class_of(entry["label"])] += 1
        return counts

    def target(self, label):
        """Dataset label tensor -> training target tensor."""
        import tensorflow as tf

        if self.kind == "class":
            if self.mapping is not None:
                label = tf.gather(tf.constant(self.mapping), label)
            return tf.cast(label, tf.float32)[..., None] if self.num_outputs == 1 else label
        return ((tf.cast(label, tf.float32) - self.target_mean) / self.target_std)[..., None]

    def sample_weight(self, label):
        """Per-window weight tensor (balanced classes), or None."""
        import tensorflow as tf

        if self.class_weights is None:
            return None
        mapping = tf.constant(self.mapping if self.mapping is not None
                              else np.arange(len(self.class_weights), dtype=np.int32))
        return tf.gather(tf.constant(self.class_weights), tf.gather(mapping, label))

    def metadata(self) -> dict:
        return {"target_kind": self.kind, "class_names": self.class_names,
                "target_mean": self.target_mean, "target_std": self.target_std,
                "label_kind": self.label_kind}


def _group_labels(groups: dict, vocabulary: list, dataset_dir: str):
    index = {}
    for group_id, (group, members) in enumerate(groups.items()):
        for member in members:
            if member not in vocabulary:
                raise ValueError(f"[data] label_groups: {member!r} (group {group!r}) is not a "
                                 f"label of {dataset_dir}; labels: {vocabulary}")
            index[member] = group_id
    missing = [v for v in vocabulary if v not in index]
    if missing:
        raise ValueError(f"[data] label_groups leaves labels {missing} of {dataset_dir} "
                         "without a group")
    return list(groups), np.array([index[v] for v in vocabulary], np.int32)
