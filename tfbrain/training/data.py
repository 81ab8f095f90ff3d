"""Training and evaluation datasets for `tfbrain train`, shaped as the Task asks.

`WindowDatasets` serves the "fmri_window" input kind: `(B, D, H, W, T, 1)` windows from a
folder written by `tfbrain prepare`, with targets by the Task's `target_kind` (see
`tfbrain.training.targets`). Other input kinds register their own dataset class in
`DATASETS_BY_INPUT_KIND`.
"""

import numpy as np

from tfbrain.training.targets import Targets


class WindowDatasets:
    """Per-epoch training batches and evaluation datasets of fMRI windows.

    Args:
        config: TrainConfig.
        task_class: the Task class being trained (its `target_kind`, `output_key`).
    """

    def __init__(self, config, task_class):
        import tfrecords_tools

        self.config = config
        self.task_class = task_class
        data = config.data
        self.splits_file = data.splits_file or None
        self.info = tfrecords_tools.load_dataset_info(data.dataset_dir)
        self.check_split_names()
        self.input_shape = (*self.info["frame_shape"], data.window, 1)  # (D, H, W, T, 1)
        split, frames = self.selection(data.train_split)
        self.train_index = tfrecords_tools.window_index(
            data.dataset_dir, split, window=data.window, stride=data.stride,
            splits_file=self.splits_file, frames=frames)
        self.targets = Targets(config, self.info, task_class.target_kind, self.train_index)
        self.pairs = task_class.target_kind == "pairs"
        self.windows_per_epoch = len(self.train_index) // (2 if self.pairs else 1)
        self.steps_per_epoch = (config.optim.steps_per_epoch
                                or self.windows_per_epoch // data.batch_size)
        if self.steps_per_epoch < 1:
            raise ValueError(f"{data.dataset_dir}: the {data.train_split!r} split has "
                             f"{self.windows_per_epoch} training windows, fewer than one batch "
                             f"of {data.batch_size}")

    def check_split_names(self) -> None:
        """A split name that the dataset does not define is an error, not an empty split."""
        import tfrecords_tools

        data = self.config.data
        if data.time_split:
            return
        known = tfrecords_tools.split_names(data.dataset_dir, self.splits_file)
        for field in ("train_split", "val_split", "test_split"):
            name = getattr(data, field)
            if name and name not in known:
                source = self.splits_file or f"{data.dataset_dir}/splits.json"
                raise ValueError(f"[data] {field} = {name!r} is not a split of {source}; "
                                 f"known: {known} (set it to \"\" to skip)")

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

    def _augment(self):
        data = self.config.data
        if data.noise_std > 0 or data.max_shift > 0 or data.smoothing_sigma > 0:
            from tfrecords_tools.augment import Augment

            return Augment(max_shift=data.max_shift, noise_std=data.noise_std,
                           smoothing_sigma=data.smoothing_sigma,
                           probability=data.augment_probability)
        return None

    def train(self, epoch: int, skip_batches: int = 0):
        """Epoch `epoch`'s batches, fixed by (seed, epoch), as `fit` takes them."""
        import tensorflow as tf

        import tfrecords_tools

        data = self.config.data
        split, frames = self.selection(data.train_split)
        ds = tfrecords_tools.windows(
            data.dataset_dir, split, window=data.window, stride=data.stride,
            batch_size=data.batch_size, shuffle=True, seed=self.config.run.seed * 100_003 + epoch,
            pairs=self.pairs, augment=self._augment(), repeat=True,
            shuffle_buffer=data.shuffle_buffer, splits_file=self.splits_file, prefetch=False,
            frames=frames, dtype=data.dtype)
        shape = (data.batch_size,) + ((2,) if self.pairs else ()) + self.input_shape
        ds = ds.map(lambda x, label, subject: (tf.ensure_shape(x, shape), label))
        kind, key, targets = self.task_class.target_kind, self.task_class.output_key, self.targets
        if kind == "pairs":
            ds = ds.map(lambda x, label: (x, tf.zeros_like(label, tf.float32)))
        elif kind == "none":
            ds = ds.map(lambda x, label: x)
        elif targets.class_weights is not None:
            ds = ds.map(lambda x, label: (x, {key: targets.target(label)},
                                          {key: targets.sample_weight(label)}))
        else:
            ds = ds.map(lambda x, label: (x, {key: targets.target(label)}))
        ds = ds.take(self.steps_per_epoch).skip(skip_batches)
        return ds.prefetch(2)

    def evaluation(self, split: str, pairs: bool = False):
        """Unshuffled `(window, label, subject)` batches of a split (last batch kept), or None
        when the split (a known one) has no window."""
        import tensorflow as tf

        import tfrecords_tools

        data = self.config.data
        if not split:
            return None
        reader_split, frames = self.selection(split)
        if frames is not None and frames[0] >= frames[1]:
            return None  # a time split of zero length (e.g. no validation block)
        if not tfrecords_tools.window_index(data.dataset_dir, reader_split, window=data.window,
                                            stride=data.eval_stride, splits_file=self.splits_file,
                                            frames=frames):
            return None
        try:
            ds = tfrecords_tools.windows(
                data.dataset_dir, reader_split, window=data.window, stride=data.eval_stride,
                shuffle=False, seed=0, pairs=pairs, cache=False, splits_file=self.splits_file,
                frames=frames, dtype=data.dtype)
        except ValueError:
            if not pairs:
                raise
            return None  # no run of the split is long enough for two windows
        shape = ((2,) if pairs else ()) + self.input_shape
        return ds.map(lambda x, label, subject: (tf.ensure_shape(x, shape), label, subject)).batch(
            data.eval_batch_size)

    def example_inputs(self):
        """One training batch's inputs (for TensorBoard images and histograms)."""
        batch = next(iter(self.train(0).take(1)))
        return batch if not isinstance(batch, tuple) else batch[0]

    def backbone_overrides(self) -> dict:
        """What the "fmri_window" families take from the data: the window shape."""
        return {"volume_shape": tuple(self.input_shape)}


class EncodingTargets:
    """Targets of an encoding dataset: per-subject parcel responses, used as they are."""

    kind = "value"

    def __init__(self, info: dict):
        self.subjects = list(info["subjects"])
        self.num_targets = int(info["num_targets"])
        self.class_names = []

    @property
    def num_outputs(self) -> int:
        return self.num_targets

    def metadata(self) -> dict:
        return {"target_kind": self.kind, "subjects": self.subjects,
                "num_targets": self.num_targets}


class EncodingDatasets:
    """The "feature_streams" input kind: windows of `[data] window` TRs of stimulus feature
    streams with every subject's parcel responses, from a folder written by
    `tfrecords_tools.encoding` (splits by run).

    Batches are `(streams dict, {output_key: (B, S, T, V)}, {output_key: (B, S, 1, 1)})`: a
    subject without data in a run (`valid` 0) has zero weight.
    """

    def __init__(self, config, task_class):
        from tfrecords_tools.encoding import load_encoding_info, num_encoding_windows

        self.config = config
        self.task_class = task_class
        data = config.data
        self.info = load_encoding_info(data.dataset_dir)
        known = sorted(self.info["splits"])
        for field in ("train_split", "val_split", "test_split"):
            name = getattr(data, field)
            if name and name not in known:
                raise ValueError(f"[data] {field} = {name!r} is not a split of "
                                 f"{data.dataset_dir}; known: {known}")
        self.targets = EncodingTargets(self.info)
        self.input_shape = None
        self.windows_per_epoch = num_encoding_windows(data.dataset_dir, data.train_split,
                                                      window=data.window, stride=data.stride)
        self.steps_per_epoch = (config.optim.steps_per_epoch
                                or self.windows_per_epoch // data.batch_size)
        if self.steps_per_epoch < 1:
            raise ValueError(f"{data.dataset_dir}: the {data.train_split!r} split has "
                             f"{self.windows_per_epoch} windows of {data.window} TRs, fewer than "
                             f"one batch of {data.batch_size}")

    def backbone_overrides(self) -> dict:
        """What the "feature_streams" families take from the data: stream names and widths,
        subjects, parcels and the window length."""
        return {"stream_names": [s["name"] for s in self.info["streams"]],
                "feature_dims": [s["shape"][0] if len(s["shape"]) == 1 else list(s["shape"])
                                 for s in self.info["streams"]],
                "num_subjects": len(self.info["subjects"]),
                "target_dim": int(self.info["num_targets"]),
                "num_frames": self.config.data.window}

    def train(self, epoch: int, skip_batches: int = 0):
        from tfrecords_tools.encoding import encoding_windows

        data = self.config.data
        key = self.task_class.output_key
        ds = encoding_windows(data.dataset_dir, data.train_split, window=data.window,
                              stride=data.stride, batch_size=data.batch_size, shuffle=True,
                              seed=self.config.run.seed * 100_003 + epoch).repeat()
        ds = ds.map(lambda streams, targets, valid: (
            streams, {key: targets}, {key: valid[:, :, None, None]}))
        return ds.take(self.steps_per_epoch).skip(skip_batches).prefetch(2)

    def evaluation(self, split: str, pairs: bool = False):
        """Unshuffled `(streams, targets, valid)` batches of a split, or None if empty."""
        from tfrecords_tools.encoding import encoding_windows, num_encoding_windows

        data = self.config.data
        if not split or not num_encoding_windows(data.dataset_dir, split, window=data.window,
                                                 stride=data.eval_stride):
            return None
        return encoding_windows(data.dataset_dir, split, window=data.window,
                                stride=data.eval_stride).batch(data.eval_batch_size)

    def example_inputs(self):
        return next(iter(self.train(0).take(1)))[0]


DATASETS_BY_INPUT_KIND = {"fmri_window": WindowDatasets, "feature_streams": EncodingDatasets}


def make_datasets(config, task_class, input_kind: str):
    """The dataset builder for a family's input kind."""
    if input_kind not in DATASETS_BY_INPUT_KIND:
        raise ValueError(f"no training data pipeline for input kind {input_kind!r}; known: "
                         f"{sorted(DATASETS_BY_INPUT_KIND)}")
    return DATASETS_BY_INPUT_KIND[input_kind](config, task_class)
