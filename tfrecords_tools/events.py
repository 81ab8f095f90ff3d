"""Per-frame labels from a BIDS events.tsv.

Frame t is acquired over [t * TR, (t + 1) * TR). Each event's interval
[onset, onset + duration) is shifted by `hrf_delay` seconds, because the BOLD response peaks
some 4-6 s after the stimulus. The frame takes the category whose shifted events cover most
of it, provided they cover at least `min_coverage` of the frame; otherwise it is `rest`.
A window's label is then the majority of its frames' labels (ties go to the stimulus, since
`rest` is last in the vocabulary).
"""

import csv
from typing import Optional, Sequence

import numpy as np

from tfrecords_tools.errors import BadInputError

REST = "rest"


def read_events(path: str) -> list[tuple[float, float, str]]:
    """(onset, duration, trial_type) rows of a BIDS events.tsv."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except OSError as error:
        raise BadInputError(path, f"cannot read events file ({error})") from None
    if not rows or not {"onset", "duration", "trial_type"} <= set(rows[0]):
        raise BadInputError(path, "events.tsv needs columns onset, duration, trial_type")
    events = []
    for i, row in enumerate(rows):
        try:
            events.append((float(row["onset"]), float(row["duration"]), row["trial_type"].strip()))
        except ValueError:
            raise BadInputError(path, f"row {i + 2}: onset/duration not numbers: {row}") from None
    return events


def event_vocabulary(paths: Sequence[str]) -> list[str]:
    """Sorted trial types over all files, with `rest` last."""
    names = sorted({name for p in paths for _, _, name in read_events(p)} - {REST})
    return names + [REST]


def frame_labels(events_path: str, num_frames: int, tr: float, vocabulary: Sequence[str], *,
                 hrf_delay: float = 5.0, min_coverage: float = 0.5) -> np.ndarray:
    """Per-frame class indices into `vocabulary` (int64, shape (T,))."""
    if tr <= 0:
        raise BadInputError(events_path, f"repetition time must be > 0 to use events. Received: tr={tr}")
    index = {name: i for i, name in enumerate(vocabulary)}
    coverage = np.zeros((num_frames, len(vocabulary)), np.float64)
    frame_start = np.arange(num_frames) * tr
    for onset, duration, name in read_events(events_path):
        if name not in index:
            raise BadInputError(events_path, f"trial_type {name!r} not in the vocabulary {list(vocabulary)}")
        start, stop = onset + hrf_delay, onset + duration + hrf_delay
        overlap = np.clip(np.minimum(frame_start + tr, stop) - np.maximum(frame_start, start), 0, None)
        coverage[:, index[name]] += overlap
    labels = np.full(num_frames, index[REST], np.int64)
    best = coverage.argmax(axis=1)
    covered = coverage.max(axis=1) >= min_coverage * tr
    labels[covered] = best[covered]
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
