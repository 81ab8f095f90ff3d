"""The on-disk format: one `tf.train.Example` per frame, and `dataset.json` beside the shards.

Two storages (dataset.json `storage`; documented in docs/tfrecords_tools.md):

* `brain_only` (schema_version 2, the default): a frame record holds only the run's in-mask
  voxels (`brain`), in C order of the mask; the run's mask and its constant background value
  are stored once, in a one-record mask file (`masks/<run>.tfrecord[.gz]`), listed with its
  size and sha256 in the run's dataset.json entry (`brain_mask`). Lossless: the writer checks
  that every voxel outside the mask holds exactly the background value.
* `dense` (schema_version 1; what folders without a `storage` key hold): the whole frame.

Frame record features (readable with plain TensorFlow):

    volume       bytes   dense: raw little-endian `dtype` values of one frame, C order, shape (D, H, W)
    brain        bytes   brain_only: raw little-endian `dtype` values of the in-mask voxels, (N,)
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
import os
import posixpath
import uuid
from typing import Optional

import numpy as np

SCHEMA_VERSION = 1  # dense storage; kept so that old readers read (and new ones resume) such folders
BRAIN_ONLY_SCHEMA_VERSION = 2
STORAGES = ("brain_only", "dense")
DEFAULT_STORAGE = "brain_only"
FORMAT_NAME = "tfbrain.tfrecords_tools"
DATASET_JSON = "dataset.json"
CONVERSION_JSON = "conversion.json"
SPLITS_JSON = "splits.json"
SHARD_DIR = "shards"
RUN_DIR = "runs"
MASK_DIR = "masks"
SHARD_SUFFIX = {"GZIP": ".tfrecord.gz", "": ".tfrecord"}
STORAGE_DTYPES = ("float16", "float32")


def join(*parts: str) -> str:
    """Join path pieces with `/`, which works for local paths and gs:// alike."""
    return posixpath.join(*[str(p) for p in parts])


def schema_version(storage: str) -> int:
    """The dataset.json `schema_version` of a storage: 1 for dense, 2 for brain_only."""
    return BRAIN_ONLY_SCHEMA_VERSION if storage == "brain_only" else SCHEMA_VERSION


def frame_example(volume: np.ndarray, *, subject: str, run: str, frame: int,
                  frame_label: int = -1, label: float = float("nan"),
                  brain_mask: Optional[np.ndarray] = None) -> bytes:
    """Serialise one (D, H, W) frame as a `tf.train.Example`.

    With `brain_mask` (a (D, H, W) bool array), only the in-mask voxels are stored, as the
    `brain` feature (brain_only storage); the caller checks that the rest is background.
    """
    import tensorflow as tf

    volume = np.ascontiguousarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"`volume` must be a (D, H, W) frame. Received: shape={volume.shape}")
    dtype = volume.dtype.newbyteorder("<")
    if brain_mask is None:
        values_key, values = "volume", volume
    else:
        if brain_mask.shape != volume.shape:
            raise ValueError(f"`brain_mask` must have the frame's shape {volume.shape}. "
                             f"Received: shape={brain_mask.shape}")
        values_key, values = "brain", volume[brain_mask]  # (N,), C order of the mask
    feature = {
        values_key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[values.astype(dtype).tobytes()])),
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


def mask_example(brain_mask: np.ndarray, background: np.ndarray, *, run: str) -> bytes:
    """Serialise a run's (D, H, W) bool mask and its background value (a 0-d array in the
    storage dtype, stored as its raw bytes so the reader fills with exactly that value)."""
    import tensorflow as tf

    brain_mask = np.ascontiguousarray(brain_mask, dtype=bool)
    background = np.asarray(background)
    feature = {
        "mask": tf.train.Feature(bytes_list=tf.train.BytesList(value=[brain_mask.astype(np.uint8).tobytes()])),
        "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=list(brain_mask.shape))),
        "num_voxels": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(brain_mask.sum())])),
        "background": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[background.astype(background.dtype.newbyteorder("<")).tobytes()])),
        "dtype": tf.train.Feature(bytes_list=tf.train.BytesList(value=[background.dtype.name.encode()])),
        "run": tf.train.Feature(bytes_list=tf.train.BytesList(value=[run.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def mask_feature_spec() -> dict:
    """`tf.io.parse_single_example` spec for a run's mask record."""
    import tensorflow as tf

    return {
        "mask": tf.io.FixedLenFeature([], tf.string),
        "shape": tf.io.FixedLenFeature([3], tf.int64),
        "num_voxels": tf.io.FixedLenFeature([], tf.int64),
        "background": tf.io.FixedLenFeature([], tf.string),
        "dtype": tf.io.FixedLenFeature([], tf.string),
        "run": tf.io.FixedLenFeature([], tf.string),
    }


def feature_spec(storage: str = "dense") -> dict:
    """`tf.io.parse_example` spec for the frame records of a storage."""
    import tensorflow as tf

    return {
        "brain" if storage == "brain_only" else "volume": tf.io.FixedLenFeature([], tf.string),
        "shape": tf.io.FixedLenFeature([3], tf.int64),
        "dtype": tf.io.FixedLenFeature([], tf.string),
        "subject": tf.io.FixedLenFeature([], tf.string),
        "run": tf.io.FixedLenFeature([], tf.string),
        "frame": tf.io.FixedLenFeature([], tf.int64),
        "frame_label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
        "label": tf.io.FixedLenFeature([], tf.float32, default_value=float("nan")),
    }


def parse_frame(serialized, frame_shape, dtype: str = "float16", storage: str = "dense",
                brain_grid: Optional[tuple] = None) -> dict:
    """Parse one serialised record into a dict with `volume` (D, H, W) decoded.

    For brain_only records, `brain_grid` is `read_brain_mask(...)` of the run's mask file;
    the in-mask values are put back on the grid.
    """
    import tensorflow as tf

    features = tf.io.parse_single_example(serialized, feature_spec(storage))
    if storage == "brain_only":
        gather_index, background, _ = brain_grid
        values = tf.io.decode_raw(features.pop("brain"), tf.as_dtype(dtype), little_endian=True)  # (N,)
        volume = brain_to_grid(values[None], gather_index, background, frame_shape)  # (D, H, W, 1)
        features["volume"] = volume[..., 0]  # (D, H, W)
        return features
    volume = tf.io.decode_raw(features["volume"], tf.as_dtype(dtype), little_endian=True)
    features["volume"] = tf.reshape(volume, tuple(frame_shape))  # (D, H, W)
    return features


def read_brain_mask(path, compression: str, frame_shape, dtype: str, run_key=None):
    """`(gather_index, background, num_voxels)` of a run's mask file, as graph ops (usable
    inside tf.data).

    gather_index: (D * H * W,) int32: voxel v in C order -> its rank among the in-mask voxels,
        or N (the padding slot that holds the background) outside the mask.
    background: () `dtype`, the value of every voxel outside the mask.
    num_voxels: () int32, N.
    When `run_key` is given, the record must be that run's and of `frame_shape`; a mismatch
    stops reading with a message naming the mask file.
    """
    import tensorflow as tf

    serialized = tf.data.TFRecordDataset(path, compression_type=compression).get_single_element()
    record = tf.io.parse_single_example(serialized, mask_feature_spec())
    mask = tf.io.decode_raw(record["mask"], tf.uint8) > 0  # (D * H * W,)
    num_voxels = int(np.prod(frame_shape))
    checks = [tf.equal(tf.size(mask, out_type=tf.int64), num_voxels),
              tf.reduce_all(tf.equal(record["shape"], tf.constant(frame_shape, tf.int64))),
              tf.equal(record["num_voxels"], tf.math.count_nonzero(mask))]
    if run_key is not None:
        checks.append(tf.equal(record["run"], run_key))
    message = tf.strings.join([
        "mask file ", path, ": not the mask of run ", run_key if run_key is not None else "?",
        " of shape " + "x".join(map(str, frame_shape)), ", found run ", record["run"], " of shape ",
        tf.strings.reduce_join(tf.strings.as_string(record["shape"]), separator="x"), " with ",
        tf.strings.as_string(record["num_voxels"]), " brain voxels (replaced or re-converted file: re-run "
        "`tfbrain prepare`)"])
    with tf.control_dependencies([tf.debugging.Assert(tf.reduce_all(tf.stack(checks)), [message], summarize=1)]):
        mask = tf.reshape(mask, (num_voxels,))
    rank = tf.cumsum(tf.cast(mask, tf.int32), exclusive=True)  # (D * H * W,)
    gather_index = tf.where(mask, rank, tf.cast(record["num_voxels"], tf.int32))
    background = tf.reshape(tf.io.decode_raw(record["background"], tf.as_dtype(dtype), little_endian=True), ())
    return gather_index, background, tf.cast(record["num_voxels"], tf.int32)


def brain_to_grid(values, gather_index, background, frame_shape):
    """In-mask values (..., T, N) -> channels-last frames (..., D, H, W, T) on the grid.

    A gather from the values padded with the background (measured as fast as
    `tf.tensor_scatter_nd_update` into a filled grid for float32, ~20% faster for float16;
    `benchmarks/pipeline.py --scatter-only`); the
    values are transposed while still compact (N is ~27% of D * H * W for an MNI crop), so
    the full-size window is written once, already channels-last.
    """
    import tensorflow as tf

    values = tf.convert_to_tensor(values)
    rank = len(values.shape)
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    compact = tf.transpose(values, perm)  # (..., N, T)
    pad = tf.broadcast_to(tf.cast(background, compact.dtype),
                          tf.concat([tf.shape(compact)[:-2], [1], tf.shape(compact)[-1:]], 0))
    padded = tf.concat([compact, pad], axis=-2)  # (..., N + 1, T)
    grid = tf.gather(padded, gather_index, axis=rank - 2)  # (..., D * H * W, T)
    return tf.reshape(grid, tf.concat([tf.shape(grid)[:-2], tuple(frame_shape), tf.shape(grid)[-1:]], 0))


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


def temp_suffix() -> str:
    """`.tmp-<pid>-<random>`: unique per write, also across machines (Beam workers, and a
    retried or speculative bundle writing the same run on two workers with equal pids)."""
    return f".tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def write_json_atomic(path: str, payload: dict) -> None:
    """Write JSON to `path + temp_suffix()`, then rename, so readers never see half a file."""
    import tensorflow as tf

    tmp = path + temp_suffix()
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
    version = info.get("schema_version")
    if info.get("format") != FORMAT_NAME or version not in (SCHEMA_VERSION, BRAIN_ONLY_SCHEMA_VERSION):
        raise ValueError(f"{path}: format {info.get('format')!r} version {version!r} is not {FORMAT_NAME!r} "
                         f"version {SCHEMA_VERSION} or {BRAIN_ONLY_SCHEMA_VERSION}")
    storage = info.setdefault("storage", "dense")  # folders written before brain_only storage: dense
    if storage not in STORAGES or version != schema_version(storage):
        raise ValueError(f"{path}: storage {storage!r} with schema_version {version!r} is not one of "
                         f"{', '.join(f'{s!r} (version {schema_version(s)})' for s in STORAGES)}")
    return info
