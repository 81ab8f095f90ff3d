"""Conversion: runs -> sharded TFRecords + dataset.json, in parallel, atomically, resumably.

Layout of a dataset folder:

    conversion.json          the settings; a resume with other settings is refused
    shards/<run>.<i>.tfrecord.gz   frame records of one run, in frame order (shards never mix runs)
    runs/<run>.json          a finished run's manifest: its done-marker, written last
    dataset.json             everything, assembled from runs/*.json at the end
    splits.json              subject splits (written once; never changed by a re-run)

Crash safety: each shard is written as `<name>.tmp` and renamed when closed; a run counts as
done only when `runs/<run>.json` exists, and that is renamed into place after all its shards.
A re-run skips done runs and deletes whatever a half-finished run left behind, then
converts it again from scratch. Conversion is deterministic, so the records are the same as
those of an uninterrupted run.
"""

import concurrent.futures
import dataclasses
import hashlib
import logging
import multiprocessing
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np

from tfrecords_tools import events as events_lib
from tfrecords_tools import schema
from tfrecords_tools import splits as splits_lib
from tfrecords_tools.errors import BadInputError
from tfrecords_tools.preprocess import PreprocessConfig, prepare_run
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


def _shard_name(key: str, index: int, compression: str) -> str:
    return f"{key}.{index:05d}{schema.SHARD_SUFFIX[compression]}"


def _remove_leftovers(output_dir: str, key: str) -> None:
    import tensorflow as tf

    pattern = schema.join(output_dir, schema.SHARD_DIR, f"{key}.[0-9][0-9][0-9][0-9][0-9].tfrecord*")
    for path in tf.io.gfile.glob(pattern):
        tf.io.gfile.remove(path)


def _write_shards(output_dir: str, key: str, records, compression: str, shard_bytes: int) -> list[dict]:
    """Write an iterator of (frame, serialized) into size-capped shards; returns their entries."""
    import tensorflow as tf

    options = tf.io.TFRecordOptions(compression_type=compression)
    shards, writer, count, first, written = [], None, 0, 0, 0

    def close():
        writer.close()
        name = _shard_name(key, len(shards), compression)
        final = schema.join(output_dir, schema.SHARD_DIR, name)
        size = tf.io.gfile.stat(final + ".tmp").length
        shards.append({"path": f"{schema.SHARD_DIR}/{name}", "run": key, "first_frame": first,
                       "num_records": count, "bytes": int(size), "sha256": _sha256(final + ".tmp")})
        tf.io.gfile.rename(final + ".tmp", final, overwrite=True)
        _on_shard_written(final)

    for frame, serialized in records:
        if writer is None:
            name = _shard_name(key, len(shards), compression)
            writer = tf.io.TFRecordWriter(schema.join(output_dir, schema.SHARD_DIR, name + ".tmp"), options)
            count, first, written = 0, frame, 0
        writer.write(serialized)
        count += 1
        written += len(serialized) + 16
        if compression and count % 4 == 0:  # the compressed size is only known after a flush
            writer.flush()
            written = tf.io.gfile.stat(schema.join(
                output_dir, schema.SHARD_DIR, _shard_name(key, len(shards), compression) + ".tmp")).length
        if written >= shard_bytes:
            close()
            writer = None
    if writer is not None:
        close()
    return shards


def _convert_one(run: Run, output_dir: str, settings: dict) -> dict:
    """Convert one run; returns its manifest (also written to runs/<key>.json)."""
    config = PreprocessConfig(**{k: tuple(v) if isinstance(v, list) else v
                                 for k, v in settings["preprocessing"].items()})
    labels = settings["labels"]
    _remove_leftovers(output_dir, run.key)
    metadata, frames = prepare_run(run.path, config, mask_path=run.mask_path, tr=run.tr)

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
        frame_labels = events_lib.frame_labels(
            run.events_path, metadata["num_frames"], metadata["tr"], labels["vocabulary"],
            hrf_delay=labels["hrf_delay"], min_coverage=labels["min_coverage"])

    def records():
        for t, frame in enumerate(frames):
            yield t, schema.frame_example(
                frame, subject=run.subject, run=run.key, frame=t,
                frame_label=-1 if frame_labels is None else int(frame_labels[t]), label=label)

    shards = _write_shards(output_dir, run.key, records(), settings["compression"],
                           int(settings["shard_size_mb"] * 1e6))
    manifest = {"key": run.key, "subject": run.subject, "label": None if label != label else label,
                "raw_label": run.label, "events": run.events_path, "mask": run.mask_path,
                **metadata, "frame_labels": None if frame_labels is None else frame_labels.tolist(),
                "shards": shards}
    schema.write_json_atomic(schema.join(output_dir, schema.RUN_DIR, run.key + ".json"), manifest)
    return manifest


def _job(run: Run, output_dir: str, settings: dict):
    """Process-pool entry point: errors come back as values (BadInputError does not pickle)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return "ok", _convert_one(run, output_dir, settings)
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


def convert(runs: Sequence[Run], output_dir: str, *, config: Optional[PreprocessConfig] = None,
            compression: str = "GZIP", shard_size_mb: float = 128.0, workers: int = 2,
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
        shard_size_mb: a shard is closed once it reaches this many MB on disk.
        workers: processes converting runs in parallel (0: in this process).
        skip_bad: log and skip bad runs instead of raising `BadInputError`.
        label_type: `auto`, `categorical`, `numeric` or `none` for table/participants labels.
        use_events: label frames from each run's events.tsv instead (see `events`).
        hrf_delay, min_coverage: the events rule (seconds; fraction of a frame).
        split_fractions, split_seed: subject splits written to splits.json if absent.
        progress: show a progress bar on stderr.
    """
    import tensorflow as tf

    start = time.time()
    config = config or PreprocessConfig()
    if compression not in schema.SHARD_SUFFIX:
        raise ValueError(f"`compression` must be 'GZIP' or ''. Received: {compression!r}")
    if label_type not in LABEL_TYPES:
        raise ValueError(f"`label_type` must be one of {LABEL_TYPES}. Received: {label_type!r}")
    summary = ConversionSummary(output_dir=str(output_dir))

    def bad(error: BadInputError):
        if not skip_bad:
            raise error
        logger.warning("skipping %s", error)
        summary.skipped.append((error.source, error.problem))

    require_labels = label_type != "none" and not use_events and any(r.label is not None for r in runs)
    runs, problems = check_runs(runs, require_labels=require_labels)
    for problem in problems:
        bad(problem)
    if use_events:
        for run in [r for r in runs if not r.events_path]:
            bad(BadInputError(run.path, "missing events.tsv (labels come from events)"))
        runs = [r for r in runs if r.events_path]
    settings = {"schema_version": schema.SCHEMA_VERSION, "preprocessing": config.to_dict(),
                "compression": compression, "shard_size_mb": shard_size_mb,
                "labels": _label_settings(runs, label_type, use_events, hrf_delay, min_coverage)}

    for sub in (schema.SHARD_DIR, schema.RUN_DIR):
        tf.io.gfile.makedirs(schema.join(output_dir, sub))
    settings_path = schema.join(output_dir, schema.CONVERSION_JSON)
    if tf.io.gfile.exists(settings_path):
        previous = schema.read_json(settings_path)
        if previous != settings:
            changed = sorted(k for k in settings if previous.get(k) != settings[k])
            raise ValueError(f"{output_dir} was converted with other settings ({', '.join(changed)} differ); "
                             "use a new output folder to change them, or the same settings to resume")
    else:
        schema.write_json_atomic(settings_path, settings)

    manifests, todo = {}, []
    for run in runs:
        path = schema.join(output_dir, schema.RUN_DIR, run.key + ".json")
        if tf.io.gfile.exists(path):
            manifest = schema.read_json(path)
            if all(tf.io.gfile.exists(schema.join(output_dir, s["path"])) for s in manifest["shards"]):
                manifests[run.key] = manifest
                summary.runs_already_done += 1
                continue
        todo.append(run)

    bar = _progress_bar(len(todo), progress)
    if workers and len(todo) > 1:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(min(workers, len(todo)), mp_context=context) as pool:
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
                manifests[run.key] = _convert_one(run, output_dir, settings)
                summary.runs_converted += 1
            except BadInputError as error:
                bad(error)
            bar.update(1)
    bar.close()

    info = _dataset_info(output_dir, settings, [manifests[k] for k in sorted(manifests)], summary.skipped)
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
    summary.subjects = len(info["subjects"])
    summary.frames = info["num_frames"]
    summary.bytes = sum(s["bytes"] for s in info["shards"])
    summary.seconds = time.time() - start
    return summary


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
        "format": schema.FORMAT_NAME, "schema_version": schema.SCHEMA_VERSION,
        "created_by": f"tfbrain {__version__}",
        "frame_shape": list(frame_shape) if frame_shape else None,
        "dtype": config["dtype"], "compression": settings["compression"],
        "record": "one tf.train.Example per frame; see tfrecords_tools/schema.py",
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
