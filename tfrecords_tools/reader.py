"""Streaming windows out of a converted folder with tf.data.

Pipeline: runs of the split (shuffled by seed each epoch) -> parallel interleave over runs,
each run reading its own shards in frame order, so every frame is read and decoded once and
windows (overlapping or not) are formed in memory -> shuffle buffer of windows (kept in the
storage dtype) -> cast, transpose to channels-last (D, H, W, T, 1), label, augment ->
optional batch (static shapes, drop_remainder) -> prefetch.

Letters: D/H/W space, T frames of a window.
"""

import re
from typing import Callable, Optional, Sequence

import numpy as np

from tfrecords_tools import schema
from tfrecords_tools import splits as splits_lib


def _select_runs(info: dict, dataset_dir: str, split: Optional[str], splits_file: Optional[str],
                 subjects: Optional[Sequence[str]]) -> list[dict]:
    import tensorflow as tf

    runs = info["runs"]
    if split is not None:
        path = splits_file or schema.join(dataset_dir, schema.SPLITS_JSON)
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"{path} not found: pass `splits_file` or re-run the conversion")
        splits = splits_lib.load_splits(path)
        if split not in splits:
            raise ValueError(f"`split` must be one of {sorted(splits)} (from {path}). Received: {split!r}")
        keep = set(splits[split])
        runs = [r for r in runs if r["subject"] in keep]
    if subjects is not None:
        keep = set(subjects)
        # a scrubbed run's original key names its segments (`<key>_seg-<i>`)
        runs = [r for r in runs if r["subject"] in keep or r["key"] in keep or original_run_key(r) in keep]
    return runs


VERIFY_MODES = ("size", "sha256", "none")


def verify_dataset(dataset_dir: str, sha256: bool = False, info: Optional[dict] = None,
                   runs: Optional[Sequence[dict]] = None) -> None:
    """Check the shards of `dataset_dir` (or of `runs`) against dataset.json.

    Always: each path lies inside the folder, each run's shards cover frames 0..n-1 once
    in order (record counts), and each shard exists with its recorded size. With `sha256`,
    also every shard's sha256 (reads every byte). Raises ValueError naming every bad shard.
    """
    from tfrecords_tools.writer import shard_problem

    info = info or schema.load_dataset_info(dataset_dir)
    runs = info["runs"] if runs is None else runs
    by_run = {}
    for shard in info["shards"]:
        by_run.setdefault(shard["run"], []).append(shard)
    problems = []
    for run in runs:
        shards = sorted(by_run.get(run["key"], []), key=lambda s: s["first_frame"])
        expected = 0
        for shard in shards:
            if shard["first_frame"] != expected:
                problems.append(f"{shard['path']}: starts at frame {shard['first_frame']}, run "
                                f"{run['key']} needs frame {expected} there")
            expected = shard["first_frame"] + shard["num_records"]
        if expected != run["num_frames"]:
            problems.append(f"run {run['key']}: its shards hold {expected} records, dataset.json "
                            f"says {run['num_frames']} frames")
        for shard in shards:
            problem = shard_problem(dataset_dir, shard, sha256=sha256)  # confines the path too
            if problem:
                problems.append(f"{schema.shard_path(dataset_dir, shard['path'])}: {problem}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"{dataset_dir}: {len(problems)} shard problem(s): " + "; ".join(problems[:5]) + more
                         + "; re-run `tfbrain prepare` with the same arguments to redo them")


_POSITION_ERROR = "record out of place"


def explain_read_error(dataset_dir: str, error: Exception) -> Optional[ValueError]:
    """A one-line ValueError naming the shard behind a tf.data read error, or None.

    A position check failure already names its shard; for a DataLossError (corrupt
    bytes) the shards are hashed against dataset.json to find the culprit.
    """
    import re

    import tensorflow as tf

    text = str(getattr(error, "message", error))
    if _POSITION_ERROR in text:
        match = re.search(r"(shard \S+: " + _POSITION_ERROR + r"[^\]\n]*)", text)
        return ValueError(match.group(1).replace("b'", "").replace("'", "") if match else text.splitlines()[0])
    if isinstance(error, (tf.errors.DataLossError, tf.errors.OutOfRangeError)) or "corrupted record" in text:
        try:
            verify_dataset(dataset_dir, sha256=True)
        except ValueError as found:
            return ValueError(f"cannot read a shard ({text.splitlines()[0]}): {found}")
        return ValueError(f"{dataset_dir}: a shard cannot be read ({text.splitlines()[0]}), although every "
                          "shard matches dataset.json")
    return None


def frame_span(num_frames: int, frames: Optional[tuple[float, float]]) -> tuple[int, int]:
    """[first, stop) frame indices kept of a run of `num_frames` by a `frames` fraction pair."""
    if frames is None:
        return 0, num_frames
    low, high = frames
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"`frames` must be (low, high) with 0 <= low < high <= 1. Received: {frames}")
    return int(round(low * num_frames)), int(round(high * num_frames))


def split_names(dataset_dir: str, splits_file: Optional[str] = None) -> list[str]:
    """The split names a dataset (or `splits_file`) defines; [] when it has no splits file."""
    import tensorflow as tf

    path = splits_file or schema.join(dataset_dir, schema.SPLITS_JSON)
    if not tf.io.gfile.exists(path):
        return []
    return sorted(splits_lib.load_splits(path))


def window_index(dataset_dir: str, split: Optional[str] = None, *, window: int = 20,
                 stride: Optional[int] = None, splits_file: Optional[str] = None,
                 frames: Optional[tuple[float, float]] = None) -> list[dict]:
    """Every window `windows(..., shuffle=False)` yields, from dataset.json alone (no shard
    is read): `{"run", "subject", "start", "label"}` in run order. `label` is what the
    window's label will be: the run's label, or for event labels the window's majority
    class (`events.window_label`); -1 / None when unlabelled."""
    from tfrecords_tools import events as events_lib

    info = schema.load_dataset_info(dataset_dir)
    stride = stride or window
    num_classes = len(info["labels"].get("vocabulary") or [])
    index = []
    for run in _select_runs(info, dataset_dir, split, splits_file, None):
        first, stop = frame_span(run["num_frames"], frames)
        for start in range(first, stop - window + 1, stride):
            if info["labels"]["kind"] == "events":
                label = events_lib.window_label(
                    np.asarray(run["frame_labels"][start:start + window]), num_classes)
            else:
                label = run["label"]
            index.append({"run": run["key"], "subject": run["subject"], "start": start,
                          "label": label})
    return index


def num_windows(dataset_dir: str, split: Optional[str] = None, *, window: int = 20,
                stride: Optional[int] = None, pairs: bool = False, splits_file: Optional[str] = None,
                frames: Optional[tuple[float, float]] = None) -> int:
    """Windows (or, with `pairs`, at most this many // 2 pairs) one epoch of `windows` yields."""
    info = schema.load_dataset_info(dataset_dir)
    stride = stride or window
    runs = _select_runs(info, dataset_dir, split, splits_file, None)
    spans = [frame_span(r["num_frames"], frames) for r in runs]
    return sum(max(0, (stop - first - window) // stride + 1) for first, stop in spans)


def windows(dataset_dir: str, split: Optional[str] = None, *, window: int = 20, stride: Optional[int] = None,
            batch_size: Optional[int] = None, shuffle: bool = True, seed: Optional[int] = 0,
            pairs: bool = False, augment: Optional[Callable] = None, dtype: str = "float32",
            cache: bool | str = False, repeat: bool = False, cycle_length: int = 4,
            shuffle_buffer: int = 16, pair_buffer: int = 4, splits_file: Optional[str] = None,
            subjects: Optional[Sequence[str]] = None, prefetch: bool = True,
            frames: Optional[tuple[float, float]] = None, verify: str = "size"):
    """A `tf.data.Dataset` of `(window, label, subject_id)` from a converted folder.

    Args:
        dataset_dir: folder written by `convert` (local, gs://, any tf.io.gfile path).
        split: `train`/`val`/`test` (from splits.json or `splits_file`), or None for all runs.
        window: frames T per window.
        stride: frames between window starts (default `window`: non-overlapping, as SwiFT).
        batch_size: batch with `drop_remainder=True` (static batch dimension), or None.
        shuffle: shuffle run order (each epoch) and windows (`shuffle_buffer` windows).
        seed: makes order and augmentation deterministic; None for nondeterministic speed.
        pairs: yield two non-overlapping windows of the same run per element,
            `window` of shape (2, D, H, W, T, 1), for contrastive (NT-Xent) pretraining.
            The run's windows then use stride max(stride, window) and are paired at random
            within a buffer of `pair_buffer` windows; each window is used once per epoch.
        augment: `fn(window, seed) -> window` on one (D, H, W, T, 1) float window with a
            stateless seed of shape (2,); see `tfrecords_tools.augment.Augment`.
        dtype: dtype of the windows handed out.
        cache: cache decoded windows in memory (True) or in a file prefix (str).
        repeat: repeat forever (run order reshuffled every epoch).
        cycle_length: runs read in parallel.
        splits_file, subjects: other ways to choose the subjects (subject ids or run keys).
        frames: (low, high) fractions: keep only frames [low * n, high * n) of each run of n
            frames, e.g. (0, 0.6) / (0.6, 0.8) / (0.8, 1) for a split in time when there is
            one subject (no window crosses a boundary).
        verify: checks of the chosen runs' shards against dataset.json before reading:
            `size` (default: paths, record counts, sizes; one stat per shard), `sha256`
            (also hashes every shard) or `none`. Whatever this says, every record's run,
            frame and shape are checked against its position while reading, and a
            mismatch names the shard.

    Returns:
        elements `(window (D, H, W, T, 1), label (), subject ())`; label is int32 (class
        index, -1 when unlabelled) or float32 (regression). With `batch_size`, a leading B.
    """
    import tensorflow as tf

    info = schema.load_dataset_info(dataset_dir)
    stride = stride or window
    if pairs:  # views come from non-overlapping windows by construction, then random pairs of those
        stride = max(stride, window)
    if window < 1 or stride < 1:
        raise ValueError(f"`window` and `stride` must be >= 1. Received: window={window}, stride={stride}")
    runs = [r for r in _select_runs(info, dataset_dir, split, splits_file, subjects)
            if np.diff(frame_span(r["num_frames"], frames))[0] >= window * (2 if pairs else 1)]
    if not runs:
        raise ValueError(f"no run of {dataset_dir} (split={split!r}) has enough frames for "
                         f"{'two windows' if pairs else 'one window'} of {window}")
    if verify not in VERIFY_MODES:
        raise ValueError(f"`verify` must be one of {VERIFY_MODES}. Received: {verify!r}")
    if verify != "none":
        verify_dataset(dataset_dir, sha256=verify == "sha256", info=info, runs=runs)
    frame_shape = tuple(info["frame_shape"])
    storage = tf.as_dtype(info["dtype"])
    kind = info["labels"]["kind"]
    num_classes = len(info["labels"]["vocabulary"] or [])
    label_dtype = tf.float32 if kind == "numeric" else tf.int32
    compression = info["compression"]
    shards = {}
    for shard in info["shards"]:
        shards.setdefault(shard["run"], []).append(shard)
    run_shards = [sorted(shards[r["key"]], key=lambda s: s["first_frame"]) for r in runs]
    files = ["\n".join(schema.shard_path(dataset_dir, s["path"]) for s in ss) for ss in run_shards]
    firsts = ["\n".join(str(s["first_frame"]) for s in ss) for ss in run_shards]
    labels = [(-1 if r["label"] is None else r["label"]) for r in runs]
    labels = np.asarray(labels, np.float32 if kind == "numeric" else np.int32)
    spans = np.asarray([frame_span(r["num_frames"], frames) for r in runs], np.int64)  # (runs, 2)
    restrict_frames = frames is not None
    deterministic = seed is not None
    spec = {k: v for k, v in schema.feature_spec().items()
            if k in ("volume", "frame", "frame_label", "run", "shape")}
    shape_tensor = tf.constant(frame_shape, tf.int64)

    def decode(position, serialized):  # (n,) strings -> (n, D, H, W), (n,), (n,)
        expected, run_key, run_files, run_firsts = position
        features = tf.io.parse_example(serialized, spec)
        # each record must be the one its position in the run's shards promises
        in_place = tf.logical_and(tf.equal(features["frame"], expected), tf.equal(features["run"], run_key))
        in_place = tf.logical_and(in_place, tf.reduce_all(tf.equal(features["shape"], shape_tensor[None]), axis=1))
        ok = tf.reduce_all(in_place)

        def fail():  # the message is only built when a record is out of place
            i = tf.argmin(tf.cast(in_place, tf.int32))  # the first record out of place
            first_frames = tf.strings.to_number(tf.strings.split(run_firsts, "\n"), tf.int64)
            shard = tf.strings.split(run_files, "\n")[
                tf.maximum(tf.searchsorted(first_frames, expected[i:i + 1], side="right")[0] - 1, 0)]
            message = tf.strings.join([
                "shard ", shard, ": " + _POSITION_ERROR + ": expected run ", run_key, " frame ",
                tf.strings.as_string(expected[i]), " of shape " + "x".join(map(str, frame_shape)) + ", found run ",
                features["run"][i], " frame ", tf.strings.as_string(features["frame"][i]), " of shape ",
                tf.strings.reduce_join(tf.strings.as_string(features["shape"][i]), separator="x"),
                " (swapped, replaced or re-converted shard: re-run `tfbrain prepare`)"])
            with tf.control_dependencies([tf.debugging.Assert(False, [message], summarize=1)]):
                return tf.constant(False)

        checked = tf.cond(ok, lambda: tf.constant(True), fail)
        with tf.control_dependencies([checked]):
            volume = tf.io.decode_raw(features["volume"], storage, little_endian=True)
        volume = tf.reshape(volume, (-1,) + frame_shape)
        return volume, tf.cast(features["frame_label"], tf.int32), tf.cast(features["frame"], tf.int32)

    def run_windows(run_files, subject, label, span, run_key, run_firsts):
        records = tf.data.TFRecordDataset(tf.strings.split(run_files, "\n"), compression_type=compression,
                                          buffer_size=8 << 20)
        first = span[0] if restrict_frames else tf.constant(0, tf.int64)
        if restrict_frames:  # records are in frame order: keep frames [first, stop)
            records = records.skip(span[0]).take(span[1] - span[0])
        records = records.enumerate().map(lambda i, r: (i + first, r))  # (the frame it must be, record)

        def decode_batch(expected, serialized):
            return decode((expected, run_key, run_files, run_firsts), serialized)

        if stride == window:  # each record lands in exactly one window: decode a whole window at once
            ds = records.batch(window, drop_remainder=True).map(decode_batch)
        else:
            if stride > window:  # frames between windows are never used: drop before decoding
                records = records.filter(lambda i, _: (i - first) % stride < window)
                ds = records.batch(window, drop_remainder=True).map(decode_batch)
            else:
                frame_ds = records.map(lambda i, r: tuple(x[0] for x in decode_batch(i[None], r[None])))
                ds = frame_ds.window(window, shift=stride, drop_remainder=True).flat_map(
                    lambda v, fl, f: tf.data.Dataset.zip((v.batch(window), fl.batch(window), f.batch(window))))
        if pairs:  # two windows of one run, never overlapping
            if shuffle:
                ds = ds.shuffle(pair_buffer, seed=seed)
            ds = ds.batch(2, drop_remainder=True).filter(
                lambda v, fl, f: tf.abs(f[0, 0] - f[1, 0]) >= window)
        return ds.map(lambda v, fl, f: (v, fl, subject, label))

    run_ds = tf.data.Dataset.from_tensor_slices((files, [r["subject"] for r in runs], labels, spans,
                                                 [r["key"] for r in runs], firsts))
    if shuffle:
        run_ds = run_ds.shuffle(len(runs), seed=seed, reshuffle_each_iteration=True)
    if repeat and not cache:
        run_ds = run_ds.repeat()
    ds = run_ds.interleave(run_windows, cycle_length=min(cycle_length, len(runs)), block_length=1,
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if cache:
        ds = ds.cache("" if cache is True else cache)
        if repeat:
            ds = ds.repeat()
    if shuffle and shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    out_dtype = tf.as_dtype(dtype)

    def finish(index, element):
        volume, frame_labels, subject, label = element
        volume = tf.cast(volume, out_dtype)  # cast first: the transpose is faster on float32
        if pairs:
            volume = tf.transpose(volume, (0, 2, 3, 4, 1))[..., None]  # (2, D, H, W, T, 1)
            frame_labels = frame_labels[0]
        else:
            volume = tf.transpose(volume, (1, 2, 3, 0))[..., None]  # (D, H, W, T, 1)
        if kind == "events":  # majority frame label; ties go to the lower index (rest is last)
            label = tf.argmax(tf.math.bincount(frame_labels, minlength=num_classes, maxlength=num_classes),
                              output_type=tf.int32)
        if augment is not None:
            element_seed = tf.stack([tf.cast(seed or 0, tf.int64), index])
            if pairs:  # each view gets its own draw
                volume = tf.stack([augment(volume[0], element_seed),
                                   augment(volume[1], element_seed + [0, 1 << 40])])
            else:
                volume = augment(volume, element_seed)
        volume = tf.ensure_shape(volume, ((2,) if pairs else ()) + frame_shape + (window, 1))  # static for XLA
        return volume, tf.cast(label, label_dtype), subject

    ds = ds.enumerate().map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if batch_size:
        ds = ds.batch(batch_size, drop_remainder=True)
    if prefetch:
        ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic
    return ds.with_options(options)


def read_frames(dataset_dir: str, run: Optional[str] = None):
    """All frame records (or one run's) as parsed dicts with the (D, H, W) `volume`, in order.

    `run` is anything `run_segments` resolves; a scrubbed run's segments come one after the other,
    in frame order."""
    import tensorflow as tf

    info = schema.load_dataset_info(dataset_dir)
    keys = [None] if run is None else [r["key"] for r in run_segments(dataset_dir, run, info)]
    paths = [schema.shard_path(dataset_dir, s["path"]) for key in keys for s in info["shards"]
             if key is None or s["run"] == key]
    return tf.data.TFRecordDataset(paths, compression_type=info["compression"]).map(
        lambda r: schema.parse_frame(r, info["frame_shape"], info["dtype"]))


_SEGMENT_KEY = re.compile(r"^(?P<key>.+)_seg-\d+$")


def original_run_key(run: dict) -> str:
    """The key a run entry had before scrubbing split it into segments (`<key>_seg-<i>` ->
    `<key>`); a run that was not split keeps its own key."""
    segment = (run.get("confounds") or {}).get("segment")
    match = _SEGMENT_KEY.match(run["key"]) if segment is not None else None
    return match.group("key") if match else run["key"]


def run_segments(dataset_dir: str, run: str, info: Optional[dict] = None) -> list[dict]:
    """The dataset.json entries that hold `run`'s frames, in frame order.

    `run` is a run key (one entry, a segment's too), the original key of a run that scrubbing
    split into `<key>_seg-<i>` entries (all of them), or a subject id with one run (its entry,
    or its segments). A subject with several runs is ambiguous: ValueError listing the keys.
    """
    info = info or schema.load_dataset_info(dataset_dir)
    exact = [r for r in info["runs"] if r["key"] == run]
    if exact:
        return exact
    matches = ([r for r in info["runs"] if original_run_key(r) == run]
               or [r for r in info["runs"] if r["subject"] == run])
    originals = sorted({original_run_key(r) for r in matches})
    if len(originals) != 1:
        listed = ", ".join(r["key"] for r in matches)
        raise ValueError(f"`run` must name one run of {dataset_dir} (a run key, a scrubbed run's original key, "
                         f"or a subject with one run). Received: {run!r}, which matches "
                         f"{len(originals)} runs" + (f" ({listed}); name one of those keys" if listed else ""))
    # keys sort `_seg-10` before `_seg-2`: order by the first source frame instead
    return sorted(matches, key=lambda r: (r.get("confounds") or {}).get("segment") or [0])


# what must agree across the segments of one run for one entry to stand for all of them: the
# grid a map is placed back on and the baseline attribution starts from
_SHARED_BY_SEGMENTS = ("source", "original_shape", "original_affine", "resampled_shape", "resampled_affine",
                       "offsets", "stored_affine", "reorientation", "mean", "std", "background")


def run_info(dataset_dir: str, run: str) -> dict:
    """A run's dataset.json entry, found by run key or (for a one-run subject) subject id.

    A run that scrubbing split into segments is found by its original key (or its subject) too:
    the entry returned is the first segment's, under the original key, with `num_frames` the
    sum over segments, `segments` (their keys, in frame order) and `segment_frames` (their
    `[start, stop)` source frames). The segments share the grid, normalisation and background,
    so `to_original_space` and attribution baselines are those of any one of them.
    """
    entries = run_segments(dataset_dir, run)
    if len(entries) == 1:
        return entries[0]
    first = entries[0]
    differing = [name for name in _SHARED_BY_SEGMENTS if any(e.get(name) != first.get(name) for e in entries)]
    if differing:
        raise ValueError(f"{dataset_dir}: the segments of {run!r} ({', '.join(e['key'] for e in entries)}) "
                         f"differ in {differing}; name one segment key")
    confounds = {**first["confounds"], "segment": None}
    return {**first, "key": original_run_key(first), "num_frames": sum(e["num_frames"] for e in entries),
            "confounds": confounds, "segments": [e["key"] for e in entries],
            "segment_frames": [list(e["confounds"]["segment"]) for e in entries]}
