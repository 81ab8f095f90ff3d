"""A TensorFlow Datasets builder over a converted folder (works offline).

    builder = fmri_windows_builder("/data/cohort_tfr", window=20, data_dir="/data/tfds")
    builder.download_and_prepare()            # reads the shards, writes TFDS files; no network
    train = builder.as_dataset(split="train")  # {"window": (D, H, W, T, 1), "label", "subject"}

The builder turns each subject split of `splits.json` into a TFDS split of fixed-length
windows (stored in the dataset's dtype, float16 by default), so TFDS tooling (`tfds.load`
with `data_dir`, `builder.info`, split slicing such as "train[:10%]") works on tfbrain data.
The TFDS copy duplicates the windows on disk; `tfrecords_tools.windows()` streams the
original shards without it and is the faster path for training.
"""

import os

import numpy as np

from tfrecords_tools import reader, schema
from tfrecords_tools import splits as splits_lib


def fmri_windows_builder(dataset_dir: str, *, window: int = 20, stride: int | None = None,
                         data_dir: str | None = None, version: str = "1.0.0"):
    """A `tfds.core.DatasetBuilder` for the windows of `dataset_dir` (not yet prepared)."""
    import tensorflow_datasets as tfds

    info = schema.load_dataset_info(dataset_dir)
    stride = stride or window
    frame_shape = tuple(info["frame_shape"])
    storage = np.float16 if info["dtype"] == "float16" else np.float32
    kind = info["labels"]["kind"]
    label_feature = (tfds.features.Scalar(np.float32) if kind == "numeric"
                     else tfds.features.Scalar(np.int32))
    import tensorflow as tf

    splits_path = schema.join(dataset_dir, schema.SPLITS_JSON)
    has_splits = tf.io.gfile.exists(splits_path)
    split_names = sorted(splits_lib.load_splits(splits_path)) if has_splits else ["train"]
    name = "fmri_windows"

    class FMRIWindows(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version(version)
        RELEASE_NOTES = {version: f"windows of {window} frames, stride {stride}, from {dataset_dir}"}

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=f"fMRI windows of {os.path.abspath(dataset_dir)} (tfbrain prepare)",
                features=tfds.features.FeaturesDict({
                    "window": tfds.features.Tensor(shape=frame_shape + (window, 1), dtype=storage),
                    "label": label_feature,
                    "subject": tfds.features.Text(),
                }),
                supervised_keys=("window", "label"),
                metadata=tfds.core.MetadataDict(
                    {"source": os.path.abspath(dataset_dir), "window": window, "stride": stride,
                     "labels": info["labels"]}),
            )

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing to download: the shards are local (or on any tf.io.gfile path)
            return {split: self._generate_examples(split if has_splits else None)
                    for split in split_names}

        def _generate_examples(self, split):
            try:
                dataset = reader.windows(dataset_dir, split, window=window, stride=stride,
                                         shuffle=False, seed=0, dtype=info["dtype"], prefetch=False)
            except ValueError:
                return  # an empty split (no subject, or no run long enough): no examples
            counts = {}
            for volume, label, subject in dataset.as_numpy_iterator():
                subject = subject.decode()
                index = counts.get(subject, 0)
                counts[subject] = index + 1
                yield f"{subject}-{index}", {"window": volume, "label": label, "subject": subject}

    FMRIWindows.name = name
    return FMRIWindows(data_dir=data_dir)
