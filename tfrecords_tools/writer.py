"""Conversion: runs -> sharded TFRecords + dataset.json, in parallel, atomically, resumably.

Layout of a dataset folder:

    conversion.json          the settings; a resume with other settings is refused
    shards/<run>.<i>.tfrecord.gz   frame records of one run, in frame order (shards never mix runs)
    masks/<run>.tfrecord.gz        brain_only storage: the run's mask and background, one record
    runs/<run>.json          a finished run's manifest: its done-marker, written last
    dataset.json             everything, assembled from runs/*.json at the end
    splits.json              subject splits (written once; never changed by a re-run)

Storage (`storage`): `brain_only` (default) writes each frame's in-mask voxels only and the
run's mask once (see schema.py); `dense` writes whole frames (the schema_version 1 format).

Crash safety: each shard (and mask file) is written as `<name>.tmp-<pid>-<random>` and renamed when
closed; a run counts as done only when `runs/<run>.json` exists, its input fingerprint (size,
mtime and sha256 of the NIfTI, mask and events files) still matches the inputs, and every
shard it lists, and its mask file, has the recorded size and sha256. Anything else (stale inputs, a corrupt or missing
shard, a half-finished run) is converted again from scratch. Conversion is deterministic, so
the records are the same as those of an uninterrupted run.

Concurrency: `convert` holds an exclusive lock (`.lock`, flock) on a local output folder;
a second conversion into the same folder is refused with a message naming the holder.
Workers are killed with their parent (Linux).
"""

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import socket
import sys
import time
from typing import Optional, Sequence

import numpy as np

from tfrecords_tools import events as events_lib
from tfrecords_tools import schema
from tfrecords_tools import splits as splits_lib
from tfrecords_tools.errors import BadInputError
from tfrecords_tools.preprocess import PreprocessConfig, prepare_run, written_frames
from tfrecords_tools.sources import Run, check_runs

logger = logging.getLogger("tfrecords_tools")
LABEL_TYPES = ("auto", "categorical", "numeric", "none")


@dataclasses.dataclass
class ConversionSummary:
    """What a `convert` call did."""

    output_dir: str
    runs_converted: int = 0
    runs_already_done: int = 0
    subjects: int = 0
    frames: int = 0
    bytes: int = 0
    seconds: float = 0.0
    skipped: list = dataclasses.field(default_factory=list)  # [(source, reason)]

    def __str__(self) -> str:
        lines = [f"dataset: {self.output_dir}",
                 f"runs converted: {self.runs_converted} (already done: {self.runs_already_done}), "
                 f"subjects: {self.subjects}, frames: {self.frames}, "
                 f"bytes on disk: {self.bytes / 1e6:.1f} MB, time: {self.seconds:.1f} s"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}:")
            lines += [f"  {source}: {reason}" for source, reason in self.skipped]
        return "\n".join(lines)


def _on_shard_written(path: str) -> None:
    """Called after each shard is renamed into place. Tests patch it to simulate a crash."""


def _sha256(path: str) -> str:
    import tensorflow as tf

    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def _input_files(run: Run) -> dict:
    files = {"nifti": run.path, "mask": run.mask_path, "events": run.events_path}
    if run.confounds_path:  # only when present, so markers written before confounds still match
        files["confounds"] = run.confounds_path
    return files


def input_fingerprint(run: Run) -> dict:
    """{role: {path, size, mtime_ns, sha256}} of a run's input files (NIfTI, mask, events,
    confounds)."""
    files = _input_files(run)
    out = {}
    for role, path in files.items():
        if not path or "://" in str(path) or not os.path.exists(path):
            out[role] = {"path": path}
            continue
        stat = os.stat(path)
        out[role] = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                     "sha256": _file_sha256(path)}
    return out


def _same_inputs(run: Run, recorded: Optional[dict]) -> bool:
    """Whether `run`'s inputs are those `recorded` (size + mtime, else the sha256 decides)."""
    if not recorded:
        return False
    files = _input_files(run)
    if "confounds" in recorded and "confounds" not in files:  # a confounds file removed
        return False
    for role, path in files.items():
        entry = recorded.get(role) or {}
        if bool(entry.get("path")) != bool(path):  # a mask or events file added or removed
            return False
        if "size" not in entry:
            if path and "://" not in str(path) and os.path.exists(path):
                return False  # a file that was missing then is there now
            continue
        try:
            stat = os.stat(path)
        except OSError:
            return False
        if stat.st_size != entry["size"]:
            return False
        moved = os.path.abspath(path) != os.path.abspath(entry["path"])
        if (stat.st_mtime_ns != entry["mtime_ns"] or moved) and _file_sha256(path) != entry["sha256"]:
            return False
    return True


def shard_problem(output_dir: str, shard: dict, sha256: bool = True) -> Optional[str]:
    """Why a shard does not match its dataset.json entry (missing, size, sha256), or None."""
    import tensorflow as tf

    path = schema.shard_path(output_dir, shard["path"])
    try:
        size = tf.io.gfile.stat(path).length
    except tf.errors.NotFoundError:
        return "missing"
    if size != shard["bytes"]:
        return f"{size} bytes on disk, dataset.json records {shard['bytes']} (truncated or replaced)"
    if sha256 and _sha256(path) != shard["sha256"]:
        return "sha256 differs from dataset.json (corrupt or replaced)"
    return None


@contextlib.contextmanager
def output_lock(output_dir: str):
    """Hold an exclusive lock on a local dataset folder; a second holder is refused."""
    if "://" in str(output_dir):  # object stores have no flock: the caller must not run two
        yield
        return
    import fcntl

    path = os.path.join(output_dir, ".lock")
    try:
        os.makedirs(output_dir, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise ValueError(f"{output_dir}: cannot write the output folder ({error.strerror or error})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise ValueError(f"{output_dir} is being converted by {holder}; wait for it to finish, "
                             "or use another output folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock (a killed holder releases it too)


def _worker_init(parent_pid: Optional[int] = None) -> None:
    """Pool initializer: die with the parent (a kill -9 of `prepare` ends its workers)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before prctl
            os._exit(1)


def _shard_name(key: str, index: int, compression: str) -> str:
    return f"{key}.{index:05d}{schema.SHARD_SUFFIX[compression]}"


def _mask_name(key: str, compression: str) -> str:
    return f"{key}{schema.SHARD_SUFFIX[compression]}"


def _remove_leftovers(output_dir: str, key: str) -> None:
    import tensorflow as tf

    pattern = schema.join(output_dir, schema.SHARD_DIR, f"{key}.[0-9][0-9][0-9][0-9][0-9].tfrecord*")
    masks = schema.join(output_dir, schema.MASK_DIR, f"{key}.tfrecord*")
    for path in tf.io.gfile.glob(pattern) + tf.io.gfile.glob(masks):
        tf.io.gfile.remove(path)
    marker = schema.join(output_dir, schema.RUN_DIR, key + ".json")
    if tf.io.gfile.exists(marker):
        tf.io.gfile.remove(marker)


def _write_shards(output_dir: str, key: str, records, compression: str, shard_bytes: int) -> list[dict]:
    """Write an iterator of (frame, serialized) into size-capped shards; returns their entries."""
    import tensorflow as tf

    options = tf.io.TFRecordOptions(compression_type=compression)
    shards, writer, count, first, written = [], None, 0, 0, 0
    tmp_suffix = schema.temp_suffix()

    def close():
        writer.close()
        name = _shard_name(key, len(shards), compression)
        final = schema.join(output_dir, schema.SHARD_DIR, name)
        size = tf.io.gfile.stat(final + tmp_suffix).length
        shards.append({"path": f"{schema.SHARD_DIR}/{name}", "run": key, "first_frame": first,
                       "num_records": count, "bytes": int(size), "sha256": _sha256(final + tmp_suffix)})
        tf.io.gfile.rename(final + tmp_suffix, final, overwrite=True)
        _on_shard_written(final)

    for frame, serialized in records:
        if writer is None:
            name = _shard_name(key, len(shards), compression)
            writer = tf.io.TFRecordWriter(schema.join(output_dir, schema.SHARD_DIR, name + tmp_suffix), options)
            count, first, written = 0, frame, 0
        writer.write(serialized)
        count += 1
        written += len(serialized) + 16
        if compression and count % 4 == 0:  # the compressed size is only known after a flush
            writer.flush()
            written = tf.io.gfile.stat(schema.join(
                output_dir, schema.SHARD_DIR, _shard_name(key, len(shards), compression) + tmp_suffix)).length
        if written >= shard_bytes:
            close()
            writer = None
    if writer is not None:
        close()
    return shards


def _write_mask_file(output_dir: str, key: str, brain_mask: np.ndarray, background: np.ndarray,
                     compression: str) -> dict:
    """Write a run's mask record (brain_only storage) atomically; returns its manifest entry."""
    import tensorflow as tf

    name = _mask_name(key, compression)
    final = schema.join(output_dir, schema.MASK_DIR, name)
    tmp = final + schema.temp_suffix()
    with tf.io.TFRecordWriter(tmp, tf.io.TFRecordOptions(compression_type=compression)) as writer:
        writer.write(schema.mask_example(brain_mask, background, run=key))
    entry = {"path": f"{schema.MASK_DIR}/{name}", "run": key, "num_voxels": int(brain_mask.sum()),
             "bytes": int(tf.io.gfile.stat(tmp).length), "sha256": _sha256(tmp)}
    tf.io.gfile.rename(tmp, final, overwrite=True)
    return entry


def _background_of(frame: np.ndarray, brain_mask: np.ndarray, background: float) -> np.ndarray:
    """The background as stored: `prepare_run` assigns it into a float32 frame, then casts."""
    outside = frame[~brain_mask]
    if outside.size:
        return np.asarray(outside[0])
    return np.asarray(np.float32(background)).astype(frame.dtype)


def _outside_is_background(frame: np.ndarray, brain_mask: np.ndarray, background: np.ndarray) -> bool:
    """Bitwise: every voxel outside the mask holds `background` (so dropping them is lossless)."""
    bits = np.dtype(f"u{frame.dtype.itemsize}")
    return bool(np.all(frame[~brain_mask].view(bits) == background.reshape(1).view(bits)[0]))


def convert_run(run: Run, output_dir: str, settings: dict) -> dict:
    """Convert one run into its shards; returns its manifest (also written to runs/<key>.json).

    Deterministic and idempotent: it first removes what an earlier try left, so a retry (a
    killed worker, a Beam bundle run again) writes the same bytes.
    """
    config = PreprocessConfig(**{k: tuple(v) if isinstance(v, list) else v
                                 for k, v in settings["preprocessing"].items()})
    labels = settings["labels"]
    _remove_leftovers(output_dir, run.key)
    fingerprint = input_fingerprint(run)
    try:
        return _convert_checked(run, output_dir, settings, config, labels, fingerprint)
    except BaseException:
        _remove_leftovers(output_dir, run.key)  # no half-written shards of a failed run stay
        raise


def _convert_checked(run: Run, output_dir: str, settings: dict, config, labels: dict, fingerprint: dict) -> dict:
    metadata, frames, brain_mask = prepare_run(run.path, config, mask_path=run.mask_path, tr=run.tr,
                                               confounds_path=run.confounds_path, segment=run.segment,
                                               return_mask=True)
    brain_only = settings.get("storage", "dense") == "brain_only"

    label = float("nan")
    if labels["kind"] == "categorical":
        label = labels["vocabulary"].index(run.label)
    elif labels["kind"] == "numeric":
        try:
            label = float(run.label)
        except (TypeError, ValueError):
            raise BadInputError(run.path, f"label {run.label!r} of subject {run.subject!r} is not a number") from None
    frame_labels = None
    if labels["kind"] == "events":
        if not run.events_path:
            raise BadInputError(run.path, "missing events.tsv (labels come from events)")
        if not metadata["tr"]:
            raise BadInputError(run.path, "no repetition time in header or sidecar; needed for events labels")
        # labelled on the source frames' times, then the written (unscrubbed) frames taken
        source_frames = (metadata.get("confounds") or {}).get("source_frames", metadata["num_frames"])
        frame_labels = events_lib.frame_labels(
            run.events_path, source_frames, metadata["tr"], labels["vocabulary"],
            hrf_delay=labels["hrf_delay"], min_coverage=labels["min_coverage"])[written_frames(metadata)]

    stored_background = []  # brain_only: the background as stored, taken from the first frame

    def records():
        for t, frame in enumerate(frames):
            if brain_only:
                if not stored_background:
                    stored_background.append(_background_of(frame, brain_mask, metadata["background"]))
                if not _outside_is_background(frame, brain_mask, stored_background[0]):
                    raise BadInputError(run.path, f"frame {t}: voxels outside the brain mask are not the "
                                                  "constant background, so brain_only storage would lose "
                                                  "them; use storage 'dense' (--storage dense)")
            yield t, schema.frame_example(
                frame, subject=run.subject, run=run.key, frame=t,
                frame_label=-1 if frame_labels is None else int(frame_labels[t]), label=label,
                brain_mask=brain_mask if brain_only else None)

    shards = _write_shards(output_dir, run.key, records(), settings["compression"],
                           int(settings["shard_size_mb"] * 1e6))
    mask_file = None
    if brain_only:
        mask_file = _write_mask_file(output_dir, run.key, brain_mask, stored_background[0],
                                     settings["compression"])
    manifest = {"key": run.key, "subject": run.subject, "label": None if label != label else label,
                "raw_label": run.label, "events": run.events_path, "mask": run.mask_path,
                **metadata, "frame_labels": None if frame_labels is None else frame_labels.tolist(),
                "inputs": fingerprint, **({"brain_mask": mask_file} if mask_file else {}), "shards": shards}
    schema.write_json_atomic(schema.join(output_dir, schema.RUN_DIR, run.key + ".json"), manifest)
    return manifest


def _job(run: Run, output_dir: str, settings: dict):
    """Process-pool entry point: errors come back as values (BadInputError does not pickle)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return "ok", convert_run(run, output_dir, settings)
    except BadInputError as error:
        return "bad", (error.source, error.problem)


def _label_settings(runs: Sequence[Run], label_type: str, use_events: bool, hrf_delay: float,
                    min_coverage: float) -> dict:
    if use_events:
        paths = sorted({r.events_path for r in runs if r.events_path})
        if not paths:
            raise BadInputError(runs[0].path if runs else "<no runs>", "labels from events asked for, "
                                                                       "but no run has an events.tsv")
        return {"kind": "events", "vocabulary": events_lib.event_vocabulary(paths),
                "hrf_delay": hrf_delay, "min_coverage": min_coverage}
    values = [r.label for r in runs if r.label not in (None, "")]
    if label_type == "none" or not values:
        return {"kind": "none", "vocabulary": None}
    if label_type == "auto":
        try:
            numbers = [float(v) for v in values]
            is_int = all(n.is_integer() for n in numbers)
            label_type = "categorical" if is_int and len(set(numbers)) <= 20 else "numeric"
        except ValueError:
            label_type = "categorical"
    if label_type == "categorical":
        return {"kind": "categorical", "vocabulary": events_lib.categorical_vocabulary(values)}
    return {"kind": "numeric", "vocabulary": None}


def check_arguments(*, compression: str, storage: str, label_type: str, min_coverage: float,
                    hrf_delay: float, shard_size_mb: float, split_fractions: Sequence[float]) -> None:
    """Every conversion argument checked before any work (the local and the Beam converter)."""
    if compression not in schema.SHARD_SUFFIX:
        raise ValueError(f"`compression` must be 'GZIP' or ''. Received: {compression!r}")
    if storage not in schema.STORAGES:
        raise ValueError(f"`storage` must be one of {schema.STORAGES}. Received: {storage!r}")
    if label_type not in LABEL_TYPES:
        raise ValueError(f"`label_type` must be one of {LABEL_TYPES}. Received: {label_type!r}")
    if not 0.0 <= min_coverage <= 1.0 or min_coverage != min_coverage:
        raise ValueError(f"`min_coverage` must be a fraction of a frame in [0, 1]. Received: {min_coverage}")
    if not np.isfinite(hrf_delay) or hrf_delay < 0:
        raise ValueError(f"`hrf_delay` must be finite seconds >= 0. Received: {hrf_delay}")
    if not shard_size_mb > 0:
        raise ValueError(f"`shard_size_mb` must be > 0. Received: {shard_size_mb}")
    splits_lib.check_fractions(split_fractions)


def convert(runs: Sequence[Run], output_dir: str, *, config: Optional[PreprocessConfig] = None,
            compression: str = "GZIP", storage: str = schema.DEFAULT_STORAGE,
            shard_size_mb: float = 128.0, workers: int = 2,
            skip_bad: bool = False, label_type: str = "auto", use_events: bool = False,
            hrf_delay: float = 5.0, min_coverage: float = 0.5,
            split_fractions: Sequence[float] = (0.7, 0.15, 0.15), split_seed: int = 0,
            progress: bool = True) -> ConversionSummary:
    """Convert `runs` into a dataset folder; re-running resumes.

    Args:
        runs: from `runs_from_files`, `runs_from_table` or `runs_from_bids`.
        output_dir: the dataset folder (local or any `tf.io.gfile` path).
        config: preprocessing; defaults to `PreprocessConfig()` (96^3, z-score, float16).
        compression: `GZIP` (default, ~4x smaller) or `""` (no compression, fastest to read).
        storage: `brain_only` (default: each frame's in-mask voxels, the run's mask and
            background stored once; lossless) or `dense` (whole frames, schema_version 1).
        shard_size_mb: a shard is closed once it reaches this many MB on disk.
        workers: processes converting runs in parallel (0: in this process).
        skip_bad: log and skip bad runs instead of raising `BadInputError`.
        label_type: `auto`, `categorical`, `numeric` or `none` for table/participants labels.
        use_events: label frames from each run's events.tsv instead (see `events`).
        hrf_delay, min_coverage: the events rule (seconds; fraction of a frame).
        split_fractions, split_seed: subject splits written to splits.json if absent.
        progress: show a progress bar on stderr.
    """
    start = time.time()
    config = config or PreprocessConfig()
    check_arguments(compression=compression, storage=storage, label_type=label_type,
                    min_coverage=min_coverage, hrf_delay=hrf_delay, shard_size_mb=shard_size_mb,
                    split_fractions=split_fractions)
    if workers < 0:
        raise ValueError(f"`workers` must be >= 0. Received: {workers}")
    with output_lock(str(output_dir)):
        return _convert_locked(runs, str(output_dir), config, compression, storage, shard_size_mb, workers,
                               skip_bad, label_type, use_events, hrf_delay, min_coverage,
                               split_fractions, split_seed, progress, start)


def _convert_locked(runs, output_dir, config, compression, storage, shard_size_mb, workers, skip_bad, label_type,
                    use_events, hrf_delay, min_coverage, split_fractions, split_seed, progress, start):
    summary = ConversionSummary(output_dir=str(output_dir))

    def bad(error: BadInputError):
        if not skip_bad:
            raise error
        logger.warning("skipping %s", error)
        summary.skipped.append((error.source, error.problem))

    runs, settings = plan_conversion(runs, output_dir, config=config, compression=compression,
                                     storage=storage, shard_size_mb=shard_size_mb, label_type=label_type,
                                     use_events=use_events, hrf_delay=hrf_delay,
                                     min_coverage=min_coverage, on_bad=bad)
    manifests, todo = {}, []
    for run in runs:
        manifest = reusable_manifest(run, output_dir)
        if manifest is not None:
            manifests[run.key] = manifest
            summary.runs_already_done += 1
        else:
            todo.append(run)

    bar = _progress_bar(len(todo), progress)
    if workers and len(todo) > 1:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(min(workers, len(todo)), mp_context=context,
                                                    initializer=_worker_init,
                                                    initargs=(os.getpid(),)) as pool:
            futures = [pool.submit(_job, run, output_dir, settings) for run in todo]
            for future in concurrent.futures.as_completed(futures):
                status, value = future.result()
                if status == "ok":
                    manifests[value["key"]] = value
                    summary.runs_converted += 1
                else:
                    bad(BadInputError(*value))
                bar.update(1)
    else:
        for run in todo:
            try:
                manifests[run.key] = convert_run(run, output_dir, settings)
                summary.runs_converted += 1
            except BadInputError as error:
                bad(error)
            bar.update(1)
    bar.close()

    info = finish_dataset(output_dir, settings, list(manifests.values()), summary.skipped,
                          split_fractions=split_fractions, split_seed=split_seed)
    summary.subjects = len(info["subjects"])
    summary.frames = info["num_frames"]
    summary.bytes = sum(s["bytes"] for s in info["shards"])
    summary.seconds = time.time() - start
    return summary


def plan_conversion(runs: Sequence[Run], output_dir: str, *, config: PreprocessConfig, compression: str,
                    storage: str, shard_size_mb: float, label_type: str, use_events: bool,
                    hrf_delay: float, min_coverage: float, on_bad) -> tuple[list[Run], dict]:
    """Check the runs, fix the settings and record them in conversion.json.

    Bad runs go to `on_bad(BadInputError)` (which raises, or records and returns). Returns the
    runs to convert and the settings every `convert_run` call takes. A folder that already holds
    finished runs converted with other settings is refused.
    """
    import tensorflow as tf

    require_labels = label_type != "none" and not use_events and any(r.label is not None for r in runs)
    runs, problems = check_runs(runs, require_labels=require_labels)
    for problem in problems:
        on_bad(problem)
    if not config.uses_confounds_file:  # an unused confounds table is no input: its edits redo nothing
        runs = [dataclasses.replace(r, confounds_path=None) if r.confounds_path else r for r in runs]
    elif config.fd_threshold is not None:
        runs = _scrubbed_segments(runs, config, on_bad)
    if use_events:
        for run in [r for r in runs if not r.events_path]:
            on_bad(BadInputError(run.path, "missing events.tsv (labels come from events)"))
        runs = [r for r in runs if r.events_path]
    settings = {"schema_version": schema.schema_version(storage), "storage": storage,
                "preprocessing": config.to_dict(), "compression": compression, "shard_size_mb": shard_size_mb,
                "labels": _label_settings(runs, label_type, use_events, hrf_delay, min_coverage)}

    for sub in (schema.SHARD_DIR, schema.RUN_DIR) + ((schema.MASK_DIR,) if storage == "brain_only" else ()):
        tf.io.gfile.makedirs(schema.join(output_dir, sub))
    settings_path = schema.join(output_dir, schema.CONVERSION_JSON)
    done_markers = tf.io.gfile.glob(schema.join(output_dir, schema.RUN_DIR, "*.json"))
    if tf.io.gfile.exists(settings_path) and done_markers:
        previous = schema.read_json(settings_path)
        previous.setdefault("storage", "dense")  # a folder converted before brain_only storage existed
        if previous != settings:
            changed = sorted(k for k in settings if previous.get(k) != settings[k])
            raise ValueError(f"{output_dir} was converted with other settings ({', '.join(changed)} differ); "
                             "use a new output folder to change them, or the same settings to resume")
    else:  # nothing finished yet (e.g. a failed first try): the settings of this call hold
        schema.write_json_atomic(settings_path, settings)
    return list(runs), settings


def reusable_manifest(run: Run, output_dir: str) -> Optional[dict]:
    """`run`'s manifest from an earlier conversion if it still holds (same inputs, every shard
    intact), else None: the run must be converted (again)."""
    import tensorflow as tf

    path = schema.join(output_dir, schema.RUN_DIR, run.key + ".json")
    if not tf.io.gfile.exists(path):
        return None
    manifest = _read_marker(path)
    reason = _stale_reason(run, manifest, output_dir)
    if reason is None:
        return manifest
    logger.warning("converting %s again: %s", run.key, reason)
    return None


def finish_dataset(output_dir: str, settings: dict, manifests: Sequence[dict], skipped: Sequence,
                   *, split_fractions: Sequence[float], split_seed: int) -> dict:
    """Write dataset.json (runs in key order, whatever order they finished in) and, if absent,
    splits.json; returns the dataset info."""
    import tensorflow as tf

    manifests = sorted(manifests, key=lambda m: m["key"])
    info = _dataset_info(output_dir, settings, manifests, list(skipped))
    schema.write_json_atomic(schema.join(output_dir, schema.DATASET_JSON), info)
    splits_path = schema.join(output_dir, schema.SPLITS_JSON)
    if not tf.io.gfile.exists(splits_path):
        splits_lib.save_splits(splits_path, splits_lib.make_splits(
            info["subjects"], fractions=split_fractions, seed=split_seed), seed=split_seed)
    else:
        assigned = {s for names in splits_lib.load_splits(splits_path).values() for s in names}
        missing = sorted(set(info["subjects"]) - assigned)
        if missing:
            logger.warning("%s keeps its subjects; %d new subjects are in no split: %s",
                           splits_path, len(missing), missing[:10])
    return info


def _scrubbed_segments(runs: Sequence[Run], config: PreprocessConfig, bad) -> list[Run]:
    """Each run whose scrubbing removes frames becomes one run per contiguous kept segment,
    keyed `<key>_seg-<i>` (i from 1), so that no window straddles a removed frame; a run that
    keeps every frame keeps its key. Runs without a confounds file go to `bad`."""
    from tfrecords_tools import confounds as confounds_lib

    out = []
    for run in runs:
        try:
            if not run.confounds_path:
                raise BadInputError(run.path, "no confounds file (fMRIPrep *_desc-confounds_timeseries.tsv) "
                                              f"for --fd-threshold {config.fd_threshold:g}")
            design = confounds_lib.load_design(run.confounds_path, config.confounds, config.fd_threshold,
                                               min_segment=config.min_frames)
        except BadInputError as error:
            bad(error)
            continue
        if design.segments == [(0, design.num_frames)]:
            out.append(run)
            continue
        out += [dataclasses.replace(run, key=f"{run.key}_seg-{i}", segment=segment)
                for i, segment in enumerate(design.segments, start=1)]
    return out


def _read_marker(path: str) -> Optional[dict]:
    try:
        return schema.read_json(path)
    except (ValueError, OSError):
        return None  # a torn or garbled marker: the run is converted again


def _stale_reason(run: Run, manifest: Optional[dict], output_dir: str) -> Optional[str]:
    """Why a done-marker does not count (stale inputs, bad shards), or None when it does."""
    if not manifest or "shards" not in manifest:
        return "its done-marker is unreadable"
    if not _same_inputs(run, manifest.get("inputs")):
        return "its input files changed since it was converted"
    for shard in manifest["shards"]:
        problem = shard_problem(output_dir, shard)
        if problem:
            return f"shard {shard['path']}: {problem}"
    if manifest.get("brain_mask"):
        problem = shard_problem(output_dir, manifest["brain_mask"])
        if problem:
            return f"mask file {manifest['brain_mask']['path']}: {problem}"
    return None


def _dataset_info(output_dir: str, settings: dict, manifests: list[dict], skipped: list) -> dict:
    from tfbrain.version import __version__

    config = settings["preprocessing"]
    frame_shape = config["target_shape"] or (manifests[0]["resampled_shape"] if manifests else None)
    if manifests and not config["target_shape"]:
        shapes = {tuple(m["resampled_shape"]) for m in manifests}
        if len(shapes) > 1:
            raise ValueError(f"runs have different grids {sorted(shapes)}; set a `target_shape`")
    runs = [{k: v for k, v in m.items() if k != "shards"} for m in manifests]
    return {
        "format": schema.FORMAT_NAME, "schema_version": settings["schema_version"],
        "storage": settings["storage"],
        "created_by": f"tfbrain {__version__}",
        "frame_shape": list(frame_shape) if frame_shape else None,
        "dtype": config["dtype"], "compression": settings["compression"],
        "record": ("one tf.train.Example per frame (brain_only: in-mask voxels; the run's mask and "
                   "background in runs[].brain_mask); see tfrecords_tools/schema.py"
                   if settings["storage"] == "brain_only" else
                   "one tf.train.Example per frame; see tfrecords_tools/schema.py"),
        "preprocessing": config, "labels": settings["labels"],
        "subjects": sorted({m["subject"] for m in manifests}),
        "num_runs": len(manifests), "num_frames": sum(m["num_frames"] for m in manifests),
        "runs": runs,
        "shards": [s for m in manifests for s in m["shards"]],
        "skipped": [{"source": s, "reason": r} for s, r in skipped],
        "splits": schema.SPLITS_JSON,
    }


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress_bar(total: int, enabled: bool):
    if not enabled or total == 0:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm comes with tensorflow-datasets; fall back to silence
        return _NoBar()
    return tqdm(total=total, unit="run", desc="converting", file=sys.stderr)
