"""`tfbrain train`: model.fit on tf.data windows, resumable, watched in TensorBoard.

Layout of a run folder (`[run] output_dir`):
  config.json          the resolved config
  state/               resumable state: weights, optimizer slots, step (atomic swaps)
  best/                best checkpoint by the monitored metric, as a preset folder
  final/               the model after the last step, as a preset folder
  tensorboard/         event files (scalars, histograms, images, projector)
  history.json         per-epoch logs
  report.json          subject-level evaluation of `best` on the val and test splits

Resuming: training runs one `fit` call per epoch over a dataset that depends only on
(seed, epoch), so a run that restarts from `state/` at global step s rebuilds epoch
s // S, skips its first s % S batches, and continues: no step is lost or repeated.
"""

import json
import os
import pathlib
import tempfile

import keras
import numpy as np

from tfbrain.training.config import TrainConfig


class SimulatedInterruption(RuntimeError):
    """Raised by `stop_after_steps` to stop training as a kill would (testing aid)."""


def make_strategy(name: str):
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in ("chief", None) or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


# --------------------------------------------------------------------------- labels


class LabelSpec:
    """How dataset labels become training targets (class groups, regression scaling)."""

    def __init__(self, config: TrainConfig, info: dict, dataset_dir: str):
        import tfrecords_tools

        self.task_type = config.task.type
        labels = info["labels"]
        self.kind = labels["kind"]
        vocabulary = list(labels.get("vocabulary") or [])
        self.class_names = vocabulary
        self.mapping = None
        if config.data.label_groups:
            self.class_names = list(config.data.label_groups)
            index = {}
            for group_id, (group, members) in enumerate(config.data.label_groups.items()):
                for member in members:
                    if member not in vocabulary:
                        raise ValueError(f"[data] label_groups: {member!r} (group {group!r}) is not "
                                         f"a label of {dataset_dir}; labels: {vocabulary}")
                    index[member] = group_id
            missing = [v for v in vocabulary if v not in index]
            if missing:
                raise ValueError(f"[data] label_groups leaves labels {missing} of {dataset_dir} "
                                 "without a group")
            self.mapping = np.array([index[v] for v in vocabulary], np.int32)
        self.target_mean, self.target_std = 0.0, 1.0
        if self.task_type == "classification":
            if self.kind not in ("categorical", "events"):
                raise ValueError(f"{dataset_dir} has {self.kind} labels; classification needs "
                                 "categorical labels or events")
            if len(self.class_names) < 2:
                raise ValueError(f"{dataset_dir}: classification needs >= 2 classes, got {self.class_names}")
        if self.task_type == "regression":
            if self.kind != "numeric":
                raise ValueError(f"{dataset_dir} has {self.kind} labels; regression needs numeric labels")
            splits_file = config.data.splits_file or None
            split = None if config.data.time_split else config.data.train_split
            targets, weights = [], []
            for run in _runs_of_split(info, dataset_dir, split, splits_file):
                count = max(0, (run["num_frames"] - config.data.window) // config.data.stride + 1)
                targets.append(run["label"])
                weights.append(count)
            targets, weights = np.asarray(targets, np.float64), np.asarray(weights, np.float64)
            # mean/std over training windows, as upstream
            self.target_mean = float(np.average(targets, weights=weights))
            self.target_std = float(np.sqrt(np.average((targets - self.target_mean) ** 2,
                                                       weights=weights))) or 1.0
        del tfrecords_tools

    @property
    def num_outputs(self) -> int:
        if self.task_type == "classification":
            return 1 if len(self.class_names) == 2 else len(self.class_names)
        return 1

    def target(self, label):
        """Dataset label tensor -> training target tensor."""
        import tensorflow as tf

        if self.task_type == "classification":
            if self.mapping is not None:
                label = tf.gather(tf.constant(self.mapping), label)
            return tf.cast(label, tf.float32)[..., None] if self.num_outputs == 1 else label
        return ((tf.cast(label, tf.float32) - self.target_mean) / self.target_std)[..., None]

    def window_class_counts(self, info: dict, datasets: "Datasets") -> np.ndarray:
        """Training windows per class, from dataset.json alone (no shard is read)."""
        from tfrecords_tools import events as events_lib
        from tfrecords_tools.reader import frame_span

        data = datasets.config.data
        split, frames = datasets.selection(data.train_split)
        vocabulary = len(info["labels"].get("vocabulary") or [])
        counts = np.zeros(len(self.class_names), np.int64)
        for run in _runs_of_split(info, data.dataset_dir, split, datasets.splits_file):
            first, stop = frame_span(run["num_frames"], frames)
            for start in range(first, stop - data.window + 1, data.stride):
                if self.kind == "events":
                    label = events_lib.window_label(
                        np.asarray(run["frame_labels"][start:start + data.window]), vocabulary)
                else:
                    label = run["label"]
                if label is None or label < 0:
                    continue
                counts[self.mapping[label] if self.mapping is not None else label] += 1
        return counts

    def metadata(self) -> dict:
        return {"class_names": self.class_names, "target_mean": self.target_mean,
                "target_std": self.target_std, "label_kind": self.kind}


def _runs_of_split(info, dataset_dir, split, splits_file):
    from tfrecords_tools import reader

    return reader._select_runs(info, dataset_dir, split, splits_file, None)


# --------------------------------------------------------------------------- model


def build_model(config: TrainConfig, labels: LabelSpec, volume_shape) -> keras.Model:
    """The task model: from a preset (backbone or task) or a SwiFT variant."""
    from tfbrain.models.swift import SWIFT_VARIANTS, SwiFTBackbone
    from tfbrain.models.task import FMRIClassifier, FMRIContrastive, FMRIRegressor, Task
    from tfbrain.models.loading import load_preset

    if config.model.preset:
        loaded = load_preset(config.model.preset)
        backbone = loaded.backbone if isinstance(loaded, Task) else loaded
        if isinstance(loaded, Task) and loaded.task_type == config.task.type:
            model = loaded  # continue training the same task, head included
            backbone.trainable = not config.model.freeze_backbone
            return model
    else:
        if config.model.variant not in SWIFT_VARIANTS:
            raise ValueError(f"[model] variant {config.model.variant!r} unknown; known: "
                             f"{sorted(SWIFT_VARIANTS)}")
        kwargs = {**SWIFT_VARIANTS[config.model.variant], "volume_shape": volume_shape,
                  **config.model.backbone}
        kwargs["volume_shape"] = tuple(kwargs["volume_shape"])
        backbone = SwiFTBackbone(**kwargs)
    expected = tuple(backbone.input.shape[1:])
    if expected != tuple(volume_shape):
        raise ValueError(f"the model expects windows of shape {expected} but the dataset gives "
                         f"{tuple(volume_shape)} (frame grid + [data] window); set [data] window "
                         "or [model] backbone.volume_shape to agree")
    backbone.trainable = not config.model.freeze_backbone
    if config.task.type == "classification":
        return FMRIClassifier(backbone, num_classes=labels.num_outputs, head=config.model.head,
                              dropout_rate=config.model.dropout_rate)
    if config.task.type == "regression":
        return FMRIRegressor(backbone, head=config.model.head, dropout_rate=config.model.dropout_rate)
    return FMRIContrastive(backbone, embedding_dim=config.task.embedding_dim)


def contrastive_pair_model(model: keras.Model) -> keras.Model:
    """`(B, 2, D, H, W, T, C)` two views -> `(B, 2, E)` embeddings, sharing `model`."""
    views = keras.Input(shape=(2,) + tuple(model.input.shape[1:]), name="views")
    first = model(keras.layers.Lambda(lambda v: v[:, 0], name="view_0")(views))["embedding"]
    second = model(keras.layers.Lambda(lambda v: v[:, 1], name="view_1")(views))["embedding"]
    pair = keras.layers.Lambda(lambda e: keras.ops.stack(e, axis=1), name="pair")([first, second])
    return keras.Model(views, pair, name="contrastive_pairs")


def compile_model(config: TrainConfig, train_model: keras.Model, labels: LabelSpec, total_steps: int):
    from tfbrain.losses import NTXentLoss
    from tfbrain.training.schedule import WarmupCosineRestarts

    optim = config.optim
    schedule = WarmupCosineRestarts(
        optim.learning_rate, total_steps, warmup_steps=int(optim.warmup_fraction * total_steps),
        cycle_steps=int(optim.restart_cycle * total_steps), gamma=optim.restart_gamma,
        min_learning_rate=optim.min_learning_rate)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=optim.weight_decay,
                                       global_clipnorm=optim.clip_norm or None)
    if config.task.type == "classification":
        if labels.num_outputs == 1:
            loss = {"logits": keras.losses.BinaryCrossentropy(from_logits=True)}
            metrics = {"logits": [keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")]}
        else:
            loss = {"logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}
            metrics = {"logits": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]}
    elif config.task.type == "regression":
        loss = {"prediction": keras.losses.MeanSquaredError()}
        metrics = {"prediction": [keras.metrics.MeanAbsoluteError(name="mae")]}
    else:
        loss, metrics = NTXentLoss(config.task.temperature), None
    train_model.compile(optimizer=optimizer, loss=loss, metrics=metrics,
                        jit_compile=bool(optim.jit_compile))


# --------------------------------------------------------------------------- data


class Datasets:
    """Builds the per-epoch training dataset and the evaluation datasets."""

    def __init__(self, config: TrainConfig, labels: LabelSpec):
        import tfrecords_tools

        self.config = config
        self.labels = labels
        self.class_weights = None
        data = config.data
        self.splits_file = data.splits_file or None
        info = tfrecords_tools.load_dataset_info(data.dataset_dir)
        self.window_shape = (*info["frame_shape"], data.window, 1)  # (D, H, W, T, 1)
        split, frames = self.selection(data.train_split)
        self.windows_per_epoch = tfrecords_tools.num_windows(
            data.dataset_dir, split, window=data.window, stride=data.stride,
            splits_file=self.splits_file, frames=frames)
        if config.task.type == "contrastive":
            self.windows_per_epoch //= 2
        self.steps_per_epoch = config.optim.steps_per_epoch or self.windows_per_epoch // data.batch_size
        if config.task.balance_classes and config.task.type == "classification":
            counts = labels.window_class_counts(info, self)
            # weight_c = N / (K * n_c): each class contributes equally to the loss
            self.class_weights = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)),
                                          0.0).astype(np.float32)
        if self.steps_per_epoch < 1:
            raise ValueError(f"{data.dataset_dir}: the {data.train_split!r} split has "
                             f"{self.windows_per_epoch} training windows, fewer than one batch of "
                             f"{data.batch_size}")

    def selection(self, split: str):
        """(split name for the reader, frames fractions): by subject, or by time within runs."""
        data = self.config.data
        if not data.time_split:
            return split, None
        names = [data.train_split, data.val_split, data.test_split]
        if split not in names:
            raise ValueError(f"with [data] time_split, splits are {names}; got {split!r}")
        bounds = np.concatenate([[0.0], np.cumsum(data.time_split)])
        index = names.index(split)
        return None, (float(bounds[index]), float(min(bounds[index + 1], 1.0)))

    def train(self, epoch: int, skip_batches: int = 0):
        """Epoch `epoch`'s batches, fixed by (seed, epoch): `((x, y))` pairs for fit."""
        import tensorflow as tf

        import tfrecords_tools

        data = self.config.data
        contrastive = self.config.task.type == "contrastive"
        augment = None
        if data.noise_std > 0 or data.max_shift > 0 or data.smoothing_sigma > 0:
            from tfrecords_tools.augment import Augment

            augment = Augment(max_shift=data.max_shift, noise_std=data.noise_std,
                              smoothing_sigma=data.smoothing_sigma,
                              probability=data.augment_probability)
        split, frames = self.selection(data.train_split)
        ds = tfrecords_tools.windows(
            data.dataset_dir, split, window=data.window, stride=data.stride,
            batch_size=data.batch_size, shuffle=True, seed=self.config.run.seed * 100_003 + epoch,
            pairs=contrastive, augment=augment, repeat=True,
            shuffle_buffer=data.shuffle_buffer, splits_file=self.splits_file, prefetch=False,
            frames=frames)
        shape = (data.batch_size,) + ((2,) if contrastive else ()) + self.window_shape
        ds = ds.map(lambda x, label, subject: (tf.ensure_shape(x, shape), label, subject))
        if contrastive:
            ds = ds.map(lambda x, label, subject: (x, tf.zeros_like(label, tf.float32)))
        elif self.class_weights is not None:
            weights = tf.constant(self.class_weights)
            mapping = tf.constant(self.labels.mapping if self.labels.mapping is not None
                                  else np.arange(len(self.class_weights), dtype=np.int32))
            ds = ds.map(lambda x, label, subject: (
                x, {"logits": self.labels.target(label)},
                {"logits": tf.gather(weights, tf.gather(mapping, label))}))
        else:
            key = "logits" if self.config.task.type == "classification" else "prediction"
            ds = ds.map(lambda x, label, subject: (x, {key: self.labels.target(label)}))
        ds = ds.take(self.steps_per_epoch).skip(skip_batches)
        return ds.prefetch(2)

    def evaluation(self, split: str, pairs: bool = False):
        """Unshuffled `(window, label, subject)` batches of a split (last batch kept), or None."""
        import tensorflow as tf

        import tfrecords_tools

        data = self.config.data
        reader_split, frames = self.selection(split)
        try:
            ds = tfrecords_tools.windows(
                data.dataset_dir, reader_split, window=data.window, stride=data.eval_stride,
                shuffle=False, seed=0, pairs=pairs, cache=False, splits_file=self.splits_file,
                frames=frames)
        except ValueError:
            return None  # the split is empty or has no run long enough
        shape = ((2,) if pairs else ()) + self.window_shape
        return ds.map(lambda x, label, subject: (tf.ensure_shape(x, shape), label, subject)).batch(
            data.eval_batch_size)


# --------------------------------------------------------------------------- state


class TrainingState:
    """Resumable state in `<output_dir>/state`: weights, optimizer slots and the step.

    Written into a temporary folder and swapped in with renames, so a kill at any
    moment leaves either the previous or the new state, never a torn one.
    """

    def __init__(self, directory):
        self.directory = pathlib.Path(directory)

    def exists(self) -> bool:
        return (self.directory / "state.json").exists()

    def save(self, model: keras.Model, extra: dict) -> None:
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=".state.tmp-", dir=self.directory.parent))
        model.save_weights(str(tmp / "model.weights.h5"))
        slots = {f"v{i}": np.asarray(v) for i, v in enumerate(model.optimizer.variables)}
        np.savez(tmp / "optimizer.npz", **slots)
        (tmp / "state.json").write_text(json.dumps(
            {**extra, "global_step": int(model.optimizer.iterations.numpy())}))
        old = self.directory.with_name(self.directory.name + ".old")
        if self.directory.exists():
            if old.exists():
                _rmtree(old)
            os.replace(self.directory, old)
        os.replace(tmp, self.directory)
        if old.exists():
            _rmtree(old)

    def restore(self, model: keras.Model) -> dict:
        state_dir = self.directory
        if not (state_dir / "state.json").exists():
            old = state_dir.with_name(state_dir.name + ".old")  # killed between the two renames
            if (old / "state.json").exists():
                state_dir = old
        state = json.loads((state_dir / "state.json").read_text())
        model.load_weights(str(state_dir / "model.weights.h5"))
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        with np.load(state_dir / "optimizer.npz") as slots:
            variables = model.optimizer.variables
            if len(slots.files) != len(variables):
                raise ValueError(f"{state_dir}: saved optimizer has {len(slots.files)} variables, "
                                 f"this model's has {len(variables)}; the config changed?")
            for i, variable in enumerate(variables):
                variable.assign(slots[f"v{i}"])
        return state


def _rmtree(path):
    import shutil

    shutil.rmtree(path, ignore_errors=True)


class StateCheckpoint(keras.callbacks.Callback):
    """Saves `TrainingState` every `every` global steps; can simulate a kill."""

    def __init__(self, state: TrainingState, every: int, stop_after: int = 0, write: bool = True):
        super().__init__()
        self.state, self.every, self.stop_after, self.write = state, every, stop_after, write

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if self.every and step % self.every == 0:
            self.state.save(self.model, {}) if self.write else None
        if self.stop_after and step >= self.stop_after:
            raise SimulatedInterruption(f"stopped after {step} steps (run.stop_after_steps)")


# --------------------------------------------------------------------------- evaluation


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


def evaluate_model(model, datasets: Datasets, labels: LabelSpec, split: str, jit_compile: bool):
    """Subject-level report of a task model on one split, or None if the split is empty."""
    from tfbrain.training import metrics

    task_type = datasets.config.task.type
    if task_type == "contrastive":
        return None
    dataset = datasets.evaluation(split)
    if dataset is None:
        return None
    key = "logits" if task_type == "classification" else "prediction"
    outputs, raw_labels, subjects = predict_split(model, dataset, jit_compile, key)
    if task_type == "classification":
        targets = raw_labels if labels.mapping is None else labels.mapping[raw_labels]
        return metrics.subject_level_report(task_type, subjects, outputs, targets)
    return metrics.subject_level_report(task_type, subjects, outputs, raw_labels,
                                        labels.target_mean, labels.target_std)


class SubjectEvaluation(keras.callbacks.Callback):
    """Subject-level validation metrics at the end of every epoch, added to the logs
    (`val_subject_auroc`, `val_subject_accuracy`, `val_window_accuracy`, ...)."""

    def __init__(self, task_model, datasets: Datasets, labels: LabelSpec, jit_compile: bool):
        super().__init__()
        self.task_model, self.datasets, self.labels = task_model, datasets, labels
        self.jit_compile = jit_compile

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        config = self.datasets.config
        if config.task.type == "contrastive":
            dataset = self.datasets.evaluation(config.data.val_split, pairs=True)
            if dataset is not None:
                from tfbrain.losses import NTXentLoss

                loss_fn, values = NTXentLoss(config.task.temperature), []
                for views, _, _ in dataset:
                    if views.shape[0] < 2:
                        continue
                    pair = self.model(views, training=False)
                    values.append(float(keras.ops.mean(loss_fn.call(None, pair))))
                if values:
                    logs["val_loss"] = float(np.mean(values))
            return
        report = evaluate_model(self.task_model, self.datasets, self.labels, config.data.val_split,
                                self.jit_compile)
        if report is None:
            return
        for level in ("window", "subject"):
            for name, value in report[level].items():
                if name != "count":
                    logs[f"val_{level}_{name}"] = value


class BestPreset(keras.callbacks.Callback):
    """Writes the task model as a preset folder whenever the monitored metric improves."""

    def __init__(self, task_model, directory, monitor: str, mode: str, metadata: dict,
                 best: float | None = None, write: bool = True):
        super().__init__()
        self.task_model, self.directory, self.monitor, self.mode = task_model, directory, monitor, mode
        self.metadata, self.best, self.write = metadata, best, write

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            value = (logs or {}).get("loss") if self.monitor == "val_loss" else None
        if value is None or not np.isfinite(value):
            return
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best = float(value)
            if self.write:
                self.task_model.save_to_preset(self.directory, extra_metadata={
                    **self.metadata, "best": {"monitor": self.monitor, "value": self.best,
                                              "epoch": epoch + 1}})


# --------------------------------------------------------------------------- train


def _build_before_distributed_fit(train_model: keras.Model, datasets: "Datasets") -> None:
    """Build losses and metrics from one local batch, then skip Keras' own symbolic build.

    Keras 3.15's `fit` first reduces a distributed batch with `strategy.reduce(...)` to
    build them; MultiWorkerMirroredStrategy cannot reduce a nested (x, {name: y}) batch
    and fails. Building here, from an undistributed batch, makes that step unnecessary.
    Only used under a distribution strategy.
    """
    import tensorflow as tf

    batch = next(iter(datasets.train(0).take(1)))
    train_model._symbolic_build(data_batch=batch)
    train_model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    # Keras then reduces each scalar log with strategy.reduce("MEAN", v, axis=0), which
    # fails on 0-d tensors under MultiWorkerMirroredStrategy (tensorflow/tensorflow#72388);
    # giving the logs shape (1,) makes that reduction the intended mean over workers.
    step = train_model.train_step
    train_model.train_step = lambda data: {k: tf.reshape(v, (1,)) for k, v in step(data).items()}



def train(config: TrainConfig, verbose: int = 1) -> dict:
    """Train (or resume) a run; returns a summary dict (paths, history, report)."""
    import tensorflow as tf

    import tfrecords_tools
    from tfbrain.training import metrics as metrics_lib
    from tfbrain.training.tensorboard import tensorboard_callbacks, write_embeddings

    keras.utils.set_random_seed(config.run.seed)
    keras.mixed_precision.set_global_policy(config.optim.mixed_precision)
    try:
        out = pathlib.Path(config.run.output_dir)
        strategy = make_strategy(config.run.strategy)
        chief = is_chief(strategy)
        # every worker saves (collectives may need all), but only the chief into the run folder
        work_dir = out if chief else out / f".worker-{strategy.cluster_resolver.task_id}"
        work_dir.mkdir(parents=True, exist_ok=True)
        if chief:
            (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))

        info = tfrecords_tools.load_dataset_info(config.data.dataset_dir)
        labels = LabelSpec(config, info, config.data.dataset_dir)
        volume_shape = (*info["frame_shape"], config.data.window, 1)
        datasets = Datasets(config, labels)
        steps = datasets.steps_per_epoch
        total_steps = steps * config.optim.epochs
        with strategy.scope():
            model = build_model(config, labels, volume_shape)
            train_model = contrastive_pair_model(model) if config.task.type == "contrastive" else model
            compile_model(config, train_model, labels, total_steps)
            train_model.optimizer.build(train_model.trainable_variables)
            if config.run.strategy != "default":
                _build_before_distributed_fit(train_model, datasets)
        state = TrainingState(work_dir / "state")
        start_step = state.restore(train_model)["global_step"] if state.exists() else 0
        history_path = work_dir / "history.json"
        history = json.loads(history_path.read_text()) if start_step and history_path.exists() else []
        monitor, mode = config.monitor()
        previous_best = None
        if start_step and (out / "best" / "metadata.json").exists():
            previous_best = json.loads((out / "best" / "metadata.json").read_text())["best"]["value"]
        preset_metadata = {"task_labels": labels.metadata(), "train_config": config.to_dict()}
        callbacks = [SubjectEvaluation(model, datasets, labels, bool(config.optim.jit_compile)),
                     BestPreset(model, work_dir / "best", monitor, mode, preset_metadata,
                                best=previous_best, write=chief),
                     StateCheckpoint(state, config.run.checkpoint_every_steps,
                                     config.run.stop_after_steps, write=True)]
        if config.tensorboard.enabled:
            callbacks += tensorboard_callbacks(config, work_dir / "tensorboard", datasets)
        if verbose:
            print(f"training {model.count_params():,}-parameter {type(model).__name__} "
                  f"({config.task.type}) on {datasets.windows_per_epoch} windows/epoch, "
                  f"{steps} steps/epoch x {config.optim.epochs} epochs, "
                  f"{strategy.num_replicas_in_sync} replica(s), jit_compile={config.optim.jit_compile}"
                  + (f"; resuming at step {start_step}" if start_step else ""))
        try:
            for epoch in range(start_step // steps, config.optim.epochs):
                skip = start_step - epoch * steps if epoch == start_step // steps else 0
                fit = train_model.fit(datasets.train(epoch, skip), initial_epoch=epoch,
                                      epochs=epoch + 1, steps_per_epoch=steps - skip,
                                      callbacks=callbacks, verbose=verbose)
                logs = {k: float(v[-1]) for k, v in fit.history.items()}
                logs["learning_rate"] = float(train_model.optimizer.learning_rate)
                history.append({"epoch": epoch + 1, **logs})
                if chief:
                    history_path.write_text(json.dumps(history, indent=2))
                state.save(train_model, {"epoch": epoch + 1})
        except SimulatedInterruption as stop:
            return {"interrupted": True, "reason": str(stop), "output_dir": str(out),
                    "global_step": int(train_model.optimizer.iterations.numpy())}

        model.save_to_preset(work_dir / "final", extra_metadata=preset_metadata)
        # no validation split (or no finite monitored value): the final model is the best
        best_dir = work_dir / "best" if (work_dir / "best").exists() else work_dir / "final"
        summary = {"interrupted": False, "output_dir": str(out), "history": history,
                   "best": str(best_dir), "final": str(work_dir / "final"),
                   "tensorboard": str(out / "tensorboard"), "global_step": total_steps}
        if config.task.type != "contrastive":
            from tfbrain.models.loading import load_preset

            best = load_preset(best_dir)
            report = {"model": str(best_dir)}
            for split in (config.data.val_split, config.data.test_split):
                result = evaluate_model(best, datasets, labels, split, bool(config.optim.jit_compile))
                if result is not None:
                    report[split] = result
            if chief:
                metrics_lib.write_report(out / "report.json", report)
            summary["report"] = report
        if config.tensorboard.enabled and config.tensorboard.embeddings and chief:
            write_embeddings(model, datasets, labels, work_dir / "tensorboard")
        return summary
    finally:
        keras.mixed_precision.set_global_policy("float32")
        del tf
