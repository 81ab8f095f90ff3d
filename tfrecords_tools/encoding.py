"""Encoding datasets: stimulus feature streams per run + per-subject parcel responses,
aligned per TR, as sharded TFRecords with a `dataset.json`; windows of T TRs via tf.data.

Layout of a dataset folder:

    shards/<run>.tfrecord.gz   one `tf.train.Example` per TR of one run, in frame order
    dataset.json               streams (name, per-TR shape), subjects, V, runs, splits,
                               parcellations (file + label per target column, if any)

Record features (plain TensorFlow can read them):

    run          bytes   run (movie) key
    frame        int64   TR index inside the run
    <stream>     bytes   raw float32 values of that TR, shape `streams[name]` (D,) or (L, D)
    targets      bytes   raw float32 `(S, V)`: every subject's parcel responses at that TR
    valid        bytes   raw uint8 `(S,)`: 1 where the subject has data for this run

Alignment (MedARC's rule): all subjects of a run are trimmed to their common length; feature
streams are truncated or edge-padded to it, and the padding is recorded per run. Splits are
by run (movie), never by TR: `make_run_splits` or an explicit {split: [runs]}.

Targets come as a `(T, V)` array per subject and run (`.npy`, `.npz` with one array, or an
array), or as a 4D NIfTI plus a parcellation NIfTI on the same grid: `parcel_means` averages
the voxels of each nonzero parcel label (sorted labels -> columns).

Letters: T frames (TRs), D stream width, L layers, S subjects, V parcels.
"""

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np

from tfrecords_tools.errors import BadInputError
from tfrecords_tools.schema import DATASET_JSON, read_json, write_json_atomic

ENCODING_FORMAT = "tfbrain.encoding"
ENCODING_SCHEMA_VERSION = 1


@dataclasses.dataclass
class EncodingRun:
    """One run (movie segment) of an encoding dataset.

    Attributes:
        run: unique run key, e.g. "friends_s01e01a".
        features: {stream name: `(T, D)` / `(T, L, D)` array or a `.npy`/`.npz` path}.
        targets: {subject: `(T, V)` array, `.npy`/`.npz` path, or a (bold NIfTI path,
            parcellation NIfTI path) pair}.
    """

    run: str
    features: dict
    targets: dict


def _load_array(source, what: str) -> np.ndarray:
    if isinstance(source, np.ndarray):
        return source
    path = str(source)
    if not os.path.exists(path):
        raise BadInputError(path, f"{what}: file not found")
    if path.endswith(".npz"):
        with np.load(path) as data:
            if len(data.files) != 1:
                raise BadInputError(path, f"{what}: an .npz needs exactly one array, found "
                                          f"{data.files}")
            return data[data.files[0]]
    if path.endswith(".npy"):
        return np.load(path)
    raise BadInputError(path, f"{what}: expected .npy or .npz")


def parcel_means(bold_path: str, parcellation_path: str) -> tuple[np.ndarray, np.ndarray]:
    """Average a 4D NIfTI within each nonzero label of a parcellation on the same grid.

    Returns:
        (`(T, V)` float32 parcel time series, `(V,)` labels in column order).
    """
    import nibabel as nib

    for path in (bold_path, parcellation_path):
        if not os.path.exists(str(path)):
            raise BadInputError(path, "file not found")
    bold = nib.load(str(bold_path))
    parcellation = nib.load(str(parcellation_path))
    if len(bold.shape) != 4:
        raise BadInputError(bold_path, f"not 4D (shape {bold.shape})")
    same_affine = np.allclose(parcellation.affine, bold.affine, atol=1e-3)
    if tuple(parcellation.shape[:3]) != tuple(bold.shape[:3]) or not same_affine:
        raise BadInputError(parcellation_path, "parcellation does not match the grid of run "
                                               f"{bold_path}: shape {parcellation.shape[:3]} vs "
                                               f"{bold.shape[:3]}, affines "
                                               f"{'equal' if same_affine else 'differ'}; "
                                               "resample it to the run first")
    labels_volume = np.asarray(parcellation.dataobj).astype(np.int64)
    if labels_volume.ndim == 4:
        labels_volume = labels_volume[..., 0]
    labels = np.unique(labels_volume[labels_volume > 0])
    if not len(labels):
        raise BadInputError(parcellation_path, "parcellation has no nonzero labels")
    data = np.asarray(bold.dataobj, np.float32)  # (X, Y, Z, T)
    flat = data.reshape(-1, data.shape[-1])  # (voxels, T)
    index = labels_volume.reshape(-1)
    sums = np.zeros((len(labels), data.shape[-1]), np.float64)
    positions = np.searchsorted(labels, index[index > 0])
    np.add.at(sums, positions, flat[index > 0])
    counts = np.bincount(positions, minlength=len(labels))[:, None]
    return (sums / counts).T.astype(np.float32), labels


def _load_targets(source, run: str, subject: str, parcellations: dict) -> np.ndarray:
    what = f"targets of {subject} in run {run}"
    if isinstance(source, (tuple, list)) and len(source) == 2:
        series, labels = parcel_means(source[0], source[1])
        parcellations[subject] = {"path": os.path.abspath(str(source[1])),
                                  "labels": [int(v) for v in labels]}
        return series
    array = np.asarray(_load_array(source, what), np.float32)
    if array.ndim != 2:
        raise BadInputError(str(source) if not isinstance(source, np.ndarray) else what,
                            f"{what} must be (T, V); got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise BadInputError(what, "NaN or inf values in the targets")
    return array


def _align(stream: np.ndarray, length: int) -> tuple[np.ndarray, int]:
    """Truncate or edge-pad a stream to `length` TRs; returns (stream, padded frames)."""
    if stream.shape[0] >= length:
        return stream[:length], 0
    pad = length - stream.shape[0]
    return np.concatenate([stream, np.repeat(stream[-1:], pad, axis=0)]), pad


def make_run_splits(runs: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1),
                    seed: int = 0, names=("train", "val", "test")) -> dict[str, list[str]]:
    """Split run keys (movies), never TRs: a seeded shuffle cut by `fractions`."""
    runs = sorted(runs)
    order = np.random.default_rng(seed).permutation(len(runs))
    bounds = np.round(np.cumsum(fractions) / np.sum(fractions) * len(runs)).astype(int)
    splits, start = {}, 0
    for name, end in zip(names, bounds):
        splits[name] = sorted(runs[i] for i in order[start:end])
        start = end
    return splits


def write_encoding_dataset(output_dir: str, runs: Sequence[EncodingRun],
                           splits: Optional[dict] = None, tr: Optional[float] = None,
                           compression: str = "GZIP") -> dict:
    """Write `runs` as TFRecords + dataset.json (see the module docstring); returns the info.

    Every run must have the same streams (names and per-TR shapes) and every subject the
    same V. A subject missing from a run gets `valid = 0` there.
    """
    import tensorflow as tf

    if not runs:
        raise ValueError("write_encoding_dataset needs at least one run.")
    keys = [r.run for r in runs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"run keys must be unique. Received: {keys}")
    subjects = sorted({s for r in runs for s in r.targets})
    stream_names = list(runs[0].features)
    os.makedirs(os.path.join(output_dir, "shards"), exist_ok=True)
    streams_info, num_targets, run_entries, parcellations = {}, None, [], {}
    suffix = ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"
    for run in runs:
        if list(run.features) != stream_names:
            raise BadInputError(run.run, f"streams {list(run.features)} differ from the first "
                                         f"run's {stream_names}")
        targets = {s: _load_targets(src, run.run, s, parcellations)
                   for s, src in run.targets.items()}
        length = min(t.shape[0] for t in targets.values())
        for subject, target in targets.items():
            if num_targets is None:
                num_targets = target.shape[1]
            if target.shape[1] != num_targets:
                raise BadInputError(f"{run.run}/{subject}", f"V={target.shape[1]} but other "
                                                            f"targets have V={num_targets}")
        features, padded = {}, {}
        for name, source in run.features.items():
            stream = np.asarray(_load_array(source, f"stream {name!r} of run {run.run}"),
                                np.float32)
            if stream.ndim not in (2, 3):
                raise BadInputError(f"{run.run}/{name}", "a stream must be (T, D) or (T, L, D);"
                                                         f" got shape {stream.shape}")
            if not np.all(np.isfinite(stream)):
                raise BadInputError(f"{run.run}/{name}", "NaN or inf values in the features")
            expected = streams_info.setdefault(name, list(stream.shape[1:]))
            if list(stream.shape[1:]) != expected:
                raise BadInputError(f"{run.run}/{name}", f"per-TR shape {stream.shape[1:]} "
                                                         f"differs from {tuple(expected)}")
            features[name], padded[name] = _align(stream, length)
        stacked = np.zeros((len(subjects), length, num_targets), np.float32)  # (S, T, V)
        valid = np.zeros((len(subjects),), np.uint8)
        for subject, target in targets.items():
            stacked[subjects.index(subject)] = target[:length]
            valid[subjects.index(subject)] = 1
        shard = f"shards/{run.run}{suffix}"
        options = tf.io.TFRecordOptions(compression_type=compression)
        with tf.io.TFRecordWriter(os.path.join(output_dir, shard), options) as writer:
            for t in range(length):
                feature = {
                    "run": _bytes(run.run.encode()), "frame": _int64(t),
                    "targets": _bytes(np.ascontiguousarray(stacked[:, t]).tobytes()),
                    "valid": _bytes(valid.tobytes())}
                for name in stream_names:
                    feature[name] = _bytes(np.ascontiguousarray(features[name][t]).tobytes())
                writer.write(tf.train.Example(features=tf.train.Features(
                    feature=feature)).SerializeToString())
        run_entries.append({"run": run.run, "shard": shard, "num_frames": int(length),
                            "subjects": sorted(targets), "padded_feature_frames": padded})
    splits = splits or make_run_splits(keys)
    unknown = sorted({r for rs in splits.values() for r in rs} - set(keys))
    if unknown:
        raise ValueError(f"splits name unknown runs {unknown}")
    seen = {}
    for name, members in splits.items():
        for r in members:
            if r in seen:
                raise ValueError(f"run {r!r} is in both {seen[r]!r} and {name!r} splits")
            seen[r] = name
    info = {"format": ENCODING_FORMAT, "schema_version": ENCODING_SCHEMA_VERSION,
            "streams": [{"name": n, "shape": streams_info[n]} for n in stream_names],
            "subjects": subjects, "num_targets": int(num_targets), "tr": tr,
            "compression": compression, "runs": run_entries,
            # per subject, when its targets came from a parcellation: the file and the label
            # of each target column (to write r maps back as NIfTI)
            "parcellations": parcellations,
            "splits": {k: list(v) for k, v in splits.items()}}
    write_json_atomic(os.path.join(output_dir, DATASET_JSON), info)
    return info


def _bytes(value: bytes):
    import tensorflow as tf

    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(value: int):
    import tensorflow as tf

    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def load_encoding_info(dataset_dir: str) -> dict:
    info = read_json(os.path.join(dataset_dir, DATASET_JSON))
    if info.get("format") != ENCODING_FORMAT:
        raise ValueError(f"{dataset_dir} is not an encoding dataset (format "
                         f"{info.get('format')!r}, expected {ENCODING_FORMAT!r})")
    return info


def encoding_windows(dataset_dir: str, split: Optional[str] = "train", *, window: int = 64,
                     stride: Optional[int] = None, batch_size: Optional[int] = None,
                     shuffle: bool = False, seed: int = 0):
    """tf.data of `(streams, targets, valid)` windows of `window` TRs from the runs of `split`.

    streams: {name: `(window, D)` or `(window, L, D)`}; targets `(S, window, V)`; valid
    `(S,)` float32 (0 for a subject without data in that run; mask its loss). Batched when
    `batch_size` is set (remainder dropped: static shapes).
    """
    import tensorflow as tf

    info = load_encoding_info(dataset_dir)
    runs = [r for r in info["runs"] if split is None or r["run"] in info["splits"].get(split, [])]
    if split is not None and split not in info["splits"]:
        raise ValueError(f"unknown split {split!r}; the dataset has {sorted(info['splits'])}")
    runs = [r for r in runs if r["num_frames"] >= window]
    if not runs:
        raise ValueError(f"no run of split {split!r} has {window} frames")
    stride = stride or window
    num_subjects, num_targets = len(info["subjects"]), info["num_targets"]
    spec = {"targets": tf.io.FixedLenFeature([], tf.string),
            "valid": tf.io.FixedLenFeature([], tf.string)}
    for stream in info["streams"]:
        spec[stream["name"]] = tf.io.FixedLenFeature([], tf.string)

    def parse(serialized):
        record = tf.io.parse_single_example(serialized, spec)
        streams = {s["name"]: tf.reshape(tf.io.decode_raw(record[s["name"]], tf.float32),
                                         s["shape"]) for s in info["streams"]}
        targets = tf.reshape(tf.io.decode_raw(record["targets"], tf.float32),
                             (num_subjects, num_targets))
        valid = tf.cast(tf.io.decode_raw(record["valid"], tf.uint8), tf.float32)
        return streams, targets, valid

    def run_windows(path):
        frames = tf.data.TFRecordDataset(path, compression_type=info["compression"]).map(parse)
        return frames.window(window, shift=stride, drop_remainder=True).flat_map(
            lambda s, t, v: tf.data.Dataset.zip((
                {k: d.batch(window) for k, d in s.items()},
                t.batch(window).map(lambda x: tf.transpose(x, (1, 0, 2))),  # (S, T, V)
                v.take(1))))

    paths = [os.path.join(dataset_dir, r["shard"]) for r in runs]
    ds = tf.data.Dataset.from_tensor_slices(paths)
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed)
    ds = ds.interleave(run_windows, cycle_length=min(4, len(paths)))
    if shuffle:
        ds = ds.shuffle(256, seed=seed)
    if batch_size:
        ds = ds.batch(batch_size, drop_remainder=True)
    return ds


def num_encoding_windows(dataset_dir: str, split: Optional[str] = "train", *, window: int = 64,
                         stride: Optional[int] = None) -> int:
    info = load_encoding_info(dataset_dir)
    stride = stride or window
    members = set(info["splits"].get(split, [])) if split is not None else None
    return sum((r["num_frames"] - window) // stride + 1 for r in info["runs"]
               if (members is None or r["run"] in members) and r["num_frames"] >= window)
