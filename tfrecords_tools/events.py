"""Per-frame labels from a BIDS events.tsv.

Frame t is acquired over [t * TR, (t + 1) * TR). Each event's interval
[onset, onset + duration) is shifted by `hrf_delay` seconds, because the BOLD response peaks
some 4-6 s after the stimulus. The frame takes the category whose shifted events cover most
of it, provided they cover at least `min_coverage` of the frame; otherwise it is `rest`.
A window's label is then the majority of its frames' labels (ties go to the stimulus, since
`rest` is last in the vocabulary).
"""

import csv
import gzip
import logging
from typing import Optional, Sequence

import numpy as np

from tfrecords_tools.errors import BadInputError

REST = "rest"


def read_events(path: str) -> list[tuple[float, float, str]]:
    """(onset, duration, trial_type) rows of a BIDS events.tsv (or .tsv.gz)."""
    try:
        with (gzip.open(path, "rt", newline="") if str(path).endswith(".gz") else open(path, newline="")) as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise BadInputError(path, f"cannot read events file ({error})") from None
    if not rows or not {"onset", "duration", "trial_type"} <= set(rows[0]):
        raise BadInputError(path, "events.tsv needs columns onset, duration, trial_type")
    events = []
    for i, row in enumerate(rows):
        try:
            onset, duration = float(row["onset"]), float(row["duration"])
        except (TypeError, ValueError):
            raise BadInputError(path, f"row {i + 2}: onset/duration not numbers: {row}") from None
        name = (row["trial_type"] or "").strip()
        if not np.isfinite(onset) or onset < 0:
            raise BadInputError(path, f"row {i + 2}: onset must be a finite number >= 0. Received: {row['onset']!r}")
        if not np.isfinite(duration) or duration < 0:
            raise BadInputError(path, f"row {i + 2}: duration must be a finite number >= 0. "
                                      f"Received: {row['duration']!r}")
        if not name or name.lower() in ("n/a", "na", "nan"):
            raise BadInputError(path, f"row {i + 2}: trial_type is blank")
        events.append((onset, duration, name))
    return events


def event_vocabulary(paths: Sequence[str]) -> list[str]:
    """Sorted trial types over all files, with `rest` last."""
    names = sorted({name for p in paths for _, _, name in read_events(p)} - {REST})
    return names + [REST]


def frame_labels(events_path: str, num_frames: int, tr: float, vocabulary: Sequence[str], *,
                 hrf_delay: float = 5.0, min_coverage: float = 0.5) -> np.ndarray:
    """Per-frame class indices into `vocabulary` (int64, shape (T,))."""
    if not tr > 0:
        raise BadInputError(events_path, f"repetition time must be > 0 to use events. Received: tr={tr}")
    if not 0.0 <= min_coverage <= 1.0:
        raise BadInputError(events_path, f"min_coverage must be in [0, 1]. Received: {min_coverage}")
    run_seconds = num_frames * tr
    index = {name: i for i, name in enumerate(vocabulary)}
    coverage = np.zeros((num_frames, len(vocabulary)), np.float64)
    frame_start = np.arange(num_frames) * tr
    events = read_events(events_path)
    late = [(onset, name) for onset, _, name in events if onset >= run_seconds]
    if late and len(late) > 0.25 * len(events):  # wrong units (ms), or the events of another run
        raise BadInputError(events_path, f"{len(late)} of {len(events)} events start after the run ends "
                                         f"({num_frames} frames x TR {tr:g} s = {run_seconds:g} s; first: "
                                         f"{late[0][1]!r} at {late[0][0]:g} s): onsets in ms, or another run's "
                                         "events?")
    if late:
        logging.getLogger("tfrecords_tools").warning(
            "%s: %d of %d events start after the run ends (%g s) and label no frame", events_path,
            len(late), len(events), run_seconds)
    for onset, duration, name in events:
        if name not in index:
            raise BadInputError(events_path, f"trial_type {name!r} not in the vocabulary {list(vocabulary)}")
        start, stop = onset + hrf_delay, onset + duration + hrf_delay
        overlap = np.clip(np.minimum(frame_start + tr, stop) - np.maximum(frame_start, start), 0, None)
        coverage[:, index[name]] += overlap
    labels = np.full(num_frames, index[REST], np.int64)
    best = coverage.argmax(axis=1)
    covered = coverage.max(axis=1) >= min_coverage * tr
    labels[covered] = best[covered]
    if events and not covered.any():
        raise BadInputError(events_path, f"no frame is covered by events for at least min_coverage={min_coverage} "
                                         f"of a TR ({len(events)} events, TR {tr:g} s, hrf_delay {hrf_delay:g} s): "
                                         "every frame would be 'rest'")
    return labels


def window_label(labels: np.ndarray, num_classes: int) -> int:
    """Majority class of a window's frame labels (NumPy twin of the tf.data rule)."""
    return int(np.bincount(labels, minlength=num_classes).argmax())


def categorical_vocabulary(values: Sequence[Optional[str]]) -> list[str]:
    """Sorted distinct label strings (numerically when they are all integers)."""
    distinct = {v for v in values if v not in (None, "")}
    try:
        return [str(v) for v in sorted(distinct, key=int)]
    except ValueError:
        return sorted(distinct)
