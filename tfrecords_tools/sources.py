"""What to convert: `Run`s from a file list, a CSV/TSV table, or a BIDS / fMRIPrep folder.

Each `Run` is one 4D NIfTI file with its subject id, an optional brain mask, an optional
scalar label (from the table or participants.tsv) and an optional BIDS events.tsv.
"""

import csv
import dataclasses
import glob
import os
import re
from typing import Optional, Sequence

from tfrecords_tools.errors import BadInputError

_SAFE_KEY = re.compile(r"[^\w.-]+")  # keeps non-ASCII letters: sub-é and sub-ü stay distinct
_BIDS_ENTITY = re.compile(r"(?:^|_)([a-zA-Z]+)-([a-zA-Z0-9.+]+)")


@dataclasses.dataclass(frozen=True)
class Run:
    """One 4D NIfTI run to convert.

    Args:
        path: the 4D NIfTI file.
        subject: subject id; splits are made by subject.
        key: unique, file-name-safe run id (defaults to `subject`).
        mask_path: optional 3D brain mask, same (X, Y, Z) grid as `path`.
        label: optional scalar label as read from the table (a string).
        events_path: optional BIDS events.tsv for per-frame labels.
        tr: repetition time in seconds; None reads the BIDS sidecar or the header.
    """

    path: str
    subject: str
    key: str = ""
    mask_path: Optional[str] = None
    label: Optional[str] = None
    events_path: Optional[str] = None
    tr: Optional[float] = None

    def __post_init__(self):
        if not self.key:
            object.__setattr__(self, "key", self.subject)
        object.__setattr__(self, "key", _SAFE_KEY.sub("-", self.key))


def _read_table(path: str) -> list[dict]:
    try:
        with open(path, newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as error:
        raise BadInputError(path, f"cannot read the table ({error})") from None
    if not text.strip():
        raise BadInputError(path, "the table is empty")
    delimiter = "\t" if (path.endswith((".tsv", ".tsv.gz")) or "\t" in text.splitlines()[0]) else ","
    return list(csv.DictReader(text.splitlines(), delimiter=delimiter))


def runs_from_files(paths: Sequence[str], labels: Optional[Sequence] = None,
                    subjects: Optional[Sequence[str]] = None) -> list[Run]:
    """Runs from plain paths; the subject id is the file name without .nii/.nii.gz."""
    runs = []
    for i, path in enumerate(paths):
        subject = subjects[i] if subjects else re.sub(r"\.nii(\.gz)?$", "", os.path.basename(str(path)))
        label = None if labels is None else (None if labels[i] is None else str(labels[i]))
        runs.append(Run(path=str(path), subject=str(subject), label=label))
    return runs


def runs_from_table(table_path: str, *, path_column: str = "path", subject_column: str = "subject",
                    label_column: Optional[str] = None, mask_column: Optional[str] = "mask",
                    events_column: Optional[str] = "events", run_column: Optional[str] = "run") -> list[Run]:
    """Runs from a CSV/TSV with one row per 4D NIfTI file.

    Relative paths in the table are relative to the table's folder. A subject may appear on
    several rows only if `run_column` tells the rows apart.
    """
    rows = _read_table(table_path)
    base = os.path.dirname(os.path.abspath(table_path))
    if not rows:
        raise BadInputError(table_path, "the table has no rows")
    for column in (path_column, subject_column) + ((label_column,) if label_column else ()):
        if column not in rows[0]:
            raise BadInputError(table_path, f"no column {column!r} (columns: {list(rows[0])})")

    def resolve(value):
        if not value:
            return None
        return value if os.path.isabs(value) or "://" in value else os.path.join(base, value)

    runs = []
    for row in rows:
        subject = row[subject_column].strip()
        run_id = (row.get(run_column) or "").strip() if run_column else ""
        runs.append(Run(
            path=resolve(row[path_column].strip()), subject=subject,
            key=f"{subject}_run-{run_id}" if run_id else subject,
            mask_path=resolve((row.get(mask_column) or "").strip()) if mask_column else None,
            label=(row.get(label_column) or "").strip() if label_column else None,
            events_path=resolve((row.get(events_column) or "").strip()) if events_column else None))
    return runs


def _entities(file_name: str) -> dict:
    stem = file_name.split(".")[0]
    return dict(_BIDS_ENTITY.findall(stem))


def runs_from_bids(root: str, *, task: Optional[str] = None, space: Optional[str] = None,
                   label_column: Optional[str] = None, participants: Optional[str] = None,
                   use_events: bool = True) -> list[Run]:
    """Runs from a BIDS raw or fMRIPrep derivatives folder.

    Finds `sub-*/[ses-*/]func/*_bold.nii.gz`, keeps those matching `task` and `space` (a file
    without a `space-` entity never matches a given `space`), pairs each with
    `*_desc-brain_mask.nii.gz` of the same entities when present, with `*_events.tsv` (in the
    same folder, or the raw-BIDS name without space/desc), and takes labels from
    `participants.tsv` (`participant_id` column).
    """
    pattern = [os.path.join(root, "sub-*", "func", "*_bold.nii*"),
               os.path.join(root, "sub-*", "ses-*", "func", "*_bold.nii*")]
    files = sorted(f for p in pattern for f in glob.glob(p))
    participants = participants or os.path.join(root, "participants.tsv")
    labels = {}
    if label_column:
        if not os.path.exists(participants):
            raise BadInputError(participants, f"not found, but label column {label_column!r} was asked for")
        rows = _read_table(participants)
        if not rows:
            raise BadInputError(participants, "the table has no rows")
        for column in ("participant_id", label_column):
            if column not in rows[0]:
                raise BadInputError(participants, f"no column {column!r} (columns: {list(rows[0])})")
        labels = {r["participant_id"].strip(): (r.get(label_column) or "").strip() for r in rows}
    runs = []
    for path in files:
        name = os.path.basename(path)
        ent = _entities(name)
        if task and ent.get("task") != task:
            continue
        if space and ent.get("space") != space:
            continue
        folder = os.path.dirname(path)
        prefix = name.split("_bold.nii")[0]
        mask = os.path.join(folder, re.sub(r"_desc-[^_]+$", "", prefix) + "_desc-brain_mask.nii.gz")
        raw_prefix = "_".join(p for p in prefix.split("_") if not p.startswith(("space-", "desc-", "res-")))
        events = next((e for e in (os.path.join(folder, prefix + "_events.tsv"),
                                   os.path.join(folder, raw_prefix + "_events.tsv")) if os.path.exists(e)), None)
        subject = "sub-" + ent["sub"]
        runs.append(Run(path=path, subject=subject, key=raw_prefix + (f"_space-{ent['space']}" if "space" in ent else ""),
                        mask_path=mask if os.path.exists(mask) else None,
                        label=labels.get(subject, "") if label_column else None,
                        events_path=events if use_events else None))
    if not runs:
        raise BadInputError(root, f"no *_bold.nii[.gz] under sub-*/[ses-*/]func/ (task={task!r}, space={space!r})")
    return runs


def check_runs(runs: Sequence[Run], *, require_labels: bool = False) -> tuple[list[Run], list[BadInputError]]:
    """Table-level checks: duplicate subjects/runs and missing labels.

    Returns (good runs, problems). The caller raises the first problem or, with
    `skip_bad`, logs them all.
    """
    problems, good, seen = [], [], {}
    for run in runs:
        if run.key in seen:
            other = seen[run.key]
            what = "duplicate subject" if run.key == run.subject else "duplicate run"
            problems.append(BadInputError(run.path, f"{what} {run.key!r} (also {other.path}); give each "
                                                    "row of a subject a distinct `run` value"))
            continue
        if require_labels and (run.label is None or run.label == "" or run.label.lower() in ("na", "nan", "n/a")):
            problems.append(BadInputError(run.path, f"missing label for subject {run.subject!r}"))
            continue
        seen[run.key] = run
        good.append(run)
    return good, problems
