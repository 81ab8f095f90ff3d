"""The on-disk format: one `tf.train.Example` per frame, and `dataset.json` beside the shards.

Record features (documented in docs/tfrecords_tools.md; readable with plain TensorFlow):

    volume       bytes   raw little-endian `dtype` values of one frame, C order, shape (D, H, W)
    shape        int64   [D, H, W]
    dtype        bytes   b"float16" or b"float32"
    subject      bytes   subject id, e.g. b"sub-01"
    run          bytes   run key (unique per converted run), e.g. b"sub-01_ses-1_task-rest"
    frame        int64   frame index inside the run (0-based, in acquisition order)
    frame_label  int64   per-frame class index into labels.vocabulary, or -1
    label        float   the run's scalar label (class index or regression target), NaN if none

Letters: B batch, D/H/W space (the NIfTI i/j/k axes of the stored grid), T frames.
"""

import json
import posixpath

import numpy as np

SCHEMA_VERSION = 1
FORMAT_NAME = "tfbrain.tfrecords_tools"
DATASET_JSON = "dataset.json"
CONVERSION_JSON = "conversion.json"
SPLITS_JSON = "splits.json"
SHARD_DIR = "shards"
RUN_DIR = "runs"
SHARD_SUFFIX = {"GZIP": ".tfrecord.gz", "": ".tfrecord"}
STORAGE_DTYPES = ("float16", "float32")


def join(*parts: str) -> str:
    """Join path pieces with `/`, which works for local paths and gs:// alike."""
    return posixpath.join(*[str(p) for p in parts])


def frame_example(volume: np.ndarray, *, subject: str, run: str, frame: int,
                  frame_label: int = -1, label: float = float("nan")) -> bytes:
    """Serialise one (D, H, W) frame as a `tf.train.Example`."""
    import tensorflow as tf

    volume = np.ascontiguousarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"`volume` must be a (D, H, W) frame. Received: shape={volume.shape}")
    dtype = volume.dtype.newbyteorder("<")
    feature = {
        "volume": tf.train.Feature(bytes_list=tf.train.BytesList(value=[volume.astype(dtype).tobytes()])),
        "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=list(volume.shape))),
        "dtype": tf.train.Feature(bytes_list=tf.train.BytesList(value=[volume.dtype.name.encode()])),
        "subject": tf.train.Feature(bytes_list=tf.train.BytesList(value=[subject.encode()])),
        "run": tf.train.Feature(bytes_list=tf.train.BytesList(value=[run.encode()])),
        "frame": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(frame)])),
        "frame_label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(frame_label)])),
        "label": tf.train.Feature(float_list=tf.train.FloatList(value=[float(label)])),
    }
    # deterministic: map fields in key order, so the bytes do not depend on the process (resume, workers)
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def feature_spec() -> dict:
    """`tf.io.parse_example` spec for the frame records."""
    import tensorflow as tf

    return {
        "volume": tf.io.FixedLenFeature([], tf.string),
        "shape": tf.io.FixedLenFeature([3], tf.int64),
        "dtype": tf.io.FixedLenFeature([], tf.string),
        "subject": tf.io.FixedLenFeature([], tf.string),
        "run": tf.io.FixedLenFeature([], tf.string),
        "frame": tf.io.FixedLenFeature([], tf.int64),
        "frame_label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
        "label": tf.io.FixedLenFeature([], tf.float32, default_value=float("nan")),
    }


def parse_frame(serialized, frame_shape, dtype: str = "float16") -> dict:
    """Parse one serialised record into a dict with `volume` (D, H, W) decoded."""
    import tensorflow as tf

    features = tf.io.parse_single_example(serialized, feature_spec())
    volume = tf.io.decode_raw(features["volume"], tf.as_dtype(dtype), little_endian=True)
    features["volume"] = tf.reshape(volume, tuple(frame_shape))  # (D, H, W)
    return features


def shard_path(dataset_dir: str, relative: str) -> str:
    """`dataset_dir/relative` for a shard path from dataset.json, confined to the dataset folder:
    absolute paths, URLs and `..` are refused (a dataset.json must not open other files)."""
    text = str(relative)
    parts = text.replace("\\", "/").split("/")
    if (not text or text.startswith("/") or "://" in text or ".." in parts
            or (len(text) > 1 and text[1] == ":")):
        raise ValueError(f"{join(dataset_dir, DATASET_JSON)}: shard path {text!r} is not inside the "
                         "dataset folder (absolute paths and '..' are refused)")
    return join(dataset_dir, text)


def read_json(path: str) -> dict:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "r") as f:
        return json.load(f)


def write_json_atomic(path: str, payload: dict) -> None:
    """Write JSON to `path + .tmp-<pid>`, then rename, so readers never see half a file."""
    import os

    import tensorflow as tf

    tmp = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=False)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def load_dataset_info(dataset_dir: str) -> dict:
    """Read and check `dataset.json` of a converted folder."""
    import tensorflow as tf

    path = join(dataset_dir, DATASET_JSON)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found: `dataset_dir` must be a folder written by "
                                "`tfbrain prepare` (a conversion that has not finished has no dataset.json)")
    info = read_json(path)
    if info.get("format") != FORMAT_NAME or info.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: format {info.get('format')!r} version {info.get('schema_version')!r} "
                         f"is not {FORMAT_NAME!r} version {SCHEMA_VERSION}")
    return info
