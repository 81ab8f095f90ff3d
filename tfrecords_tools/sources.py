"""What to convert: `Run`s from a file list, a CSV/TSV table, or a BIDS / fMRIPrep folder.

Each `Run` is one 4D NIfTI file with its subject id, an optional brain mask, an optional
scalar label (from the table or participants.tsv), an optional BIDS events.tsv and an
optional fMRIPrep confounds table. Tables may be gzip-compressed (`.tsv.gz`).
"""

import csv
import dataclasses
import glob
import gzip
import os
import re
from typing import Optional, Sequence

from tfrecords_tools.errors import BadInputError

_SAFE_KEY = re.compile(r"[^\w.-]+")  # keeps non-ASCII letters: sub-é and sub-ü stay distinct


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
        confounds_path: optional fMRIPrep confounds table (.tsv/.tsv.gz), used when the
            preprocessing regresses confounds or scrubs frames.
        segment: (start, stop) source frames to write, set by `convert` for each contiguous
            piece of a scrubbed run; None writes every kept frame.
    """

    path: str
    subject: str
    key: str = ""
    mask_path: Optional[str] = None
    label: Optional[str] = None
    events_path: Optional[str] = None
    tr: Optional[float] = None
    confounds_path: Optional[str] = None
    segment: Optional[tuple] = None

    def __post_init__(self):
        if not self.key:
            object.__setattr__(self, "key", self.subject)
        object.__setattr__(self, "key", _SAFE_KEY.sub("-", self.key))


def read_table(path: str) -> list[dict]:
    """Rows of a CSV/TSV table, gzip-compressed or not (`.gz`), as dicts keyed by the header:
    participants, label tables and fMRIPrep confounds all read through here."""
    try:
        if str(path).endswith(".gz"):
            with gzip.open(path, "rt", newline="") as f:
                text = f.read()
        else:
            with open(path, newline="") as f:
                text = f.read()
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise BadInputError(path, f"cannot read the table ({error})") from None
    if not text.strip():
        raise BadInputError(path, "the table is empty")
    delimiter = "\t" if (str(path).endswith((".tsv", ".tsv.gz")) or "\t" in text.splitlines()[0]) else ","
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
                    events_column: Optional[str] = "events", run_column: Optional[str] = "run",
                    confounds_column: Optional[str] = "confounds") -> list[Run]:
    """Runs from a CSV/TSV (or .tsv.gz / .csv.gz) with one row per 4D NIfTI file.

    Relative paths in the table are relative to the table's folder. A subject may appear on
    several rows only if `run_column` tells the rows apart.
    """
    rows = read_table(table_path)
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
            events_path=resolve((row.get(events_column) or "").strip()) if events_column else None,
            confounds_path=resolve((row.get(confounds_column) or "").strip()) if confounds_column else None))
    return runs


FILTER_ENTITIES = ("sub", "ses", "task", "acq", "run", "space", "desc")


def parse_bids_name(file_name: str) -> tuple[dict, str, str]:
    """(entities, suffix, extension) of a BIDS file name.

    `sub-01_ses-1_task-rest_run-2_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz` ->
    ({"sub": "01", "ses": "1", "task": "rest", "run": "2", "space": "MNI152NLin2009cAsym",
    "desc": "preproc"}, "bold", ".nii.gz"). Pieces without a `key-` (the suffix) are not entities.
    """
    base = os.path.basename(file_name)
    stem, dot, rest = base.partition(".")
    entities, suffix = {}, ""
    for piece in stem.split("_"):
        key, dash, value = piece.partition("-")
        if dash and key and value:
            entities[key] = value
        else:
            suffix = piece
    return entities, suffix, dot + rest


def _same_label(entity: str, value: Optional[str], wanted: set) -> bool:
    if value is None:
        return False
    if entity == "run":  # run-1 and run-01 are the same run (an index, not a label)
        return value.lstrip("0") in {w.lstrip("0") for w in wanted}
    return value in wanted


def _normalise_filters(filters: dict) -> dict:
    """{entity: set of labels}; a `sub-`/`ses-`... prefix on a label is dropped, as BIDS apps do."""
    out = {}
    for entity, values in filters.items():
        if values is None or values == () or values == []:
            continue
        if entity not in FILTER_ENTITIES:
            raise ValueError(f"BIDS filters must be among {FILTER_ENTITIES}. Received: {entity!r}")
        values = [values] if isinstance(values, str) else list(values)
        out[entity] = {str(v).strip().removeprefix(f"{entity}-") for v in values}
    return out


def _sibling(folder: str, prefix: str, endings: Sequence[str]) -> Optional[str]:
    return next((os.path.join(folder, prefix + e) for e in endings if os.path.exists(os.path.join(folder, prefix + e))),
                None)


def _participant_labels(participants: str, label_column: str) -> dict:
    rows = read_table(participants)
    if not rows:
        raise BadInputError(participants, "the table has no rows")
    for column in ("participant_id", label_column):
        if column not in rows[0]:
            raise BadInputError(participants, f"no column {column!r} (columns: {list(rows[0])})")
    return {r["participant_id"].strip(): (r.get(label_column) or "").strip() for r in rows}


def runs_from_bids(root: str, *, task=None, space=None, label_column: Optional[str] = None,
                   participants: Optional[str] = None, use_events: bool = True, participant_label=None,
                   session=None, run=None, acq=None, desc=None) -> list[Run]:
    """Runs from a BIDS raw or fMRIPrep derivatives folder.

    Finds `sub-*/[ses-*/]func/*_bold.nii[.gz]` and keeps those whose entities match every filter
    given (`participant_label`, `session`, `task`, `acq`, `run`, `space`, `desc`: a label or a
    list of labels; `sub-01` and `01` both name participant 01, `run-1` and `run-01` are one
    run; a file without the entity never matches a filter on it). Each run is paired, by its
    entities, with what lies beside it:

    * `*_desc-brain_mask.nii[.gz]` of the same entities (without `desc`),
    * fMRIPrep's `*_desc-confounds_timeseries.tsv[.gz]` (or the older `_desc-confounds_regressors`),
      named without space/res/den/desc,
    * `*_events.tsv[.gz]` in the same folder (or the raw-BIDS name without space/desc),

    and labels come from `participants.tsv` or `participants.tsv.gz` (`participant_id` column).
    A participant asked for by `participant_label` without any matching run is an error.
    """
    filters = _normalise_filters({"sub": participant_label, "ses": session, "task": task, "acq": acq,
                                  "run": run, "space": space, "desc": desc})
    pattern = [os.path.join(root, "sub-*", "func", "*_bold.nii"), os.path.join(root, "sub-*", "func", "*_bold.nii.gz"),
               os.path.join(root, "sub-*", "ses-*", "func", "*_bold.nii"),
               os.path.join(root, "sub-*", "ses-*", "func", "*_bold.nii.gz")]
    files = sorted(f for p in pattern for f in glob.glob(p))
    if participants is None:
        participants = _sibling(root, "participants", (".tsv", ".tsv.gz")) or os.path.join(root, "participants.tsv")
    labels = {}
    if label_column:
        if not os.path.exists(participants):
            raise BadInputError(participants, f"not found, but label column {label_column!r} was asked for")
        labels = _participant_labels(participants, label_column)
    runs, found_subjects = [], set()
    for path in files:
        name = os.path.basename(path)
        ent, _, _ = parse_bids_name(name)
        if "sub" not in ent:
            continue
        found_subjects.add(ent["sub"])
        if not all(_same_label(entity, ent.get(entity), wanted) for entity, wanted in filters.items()):
            continue
        folder = os.path.dirname(path)
        prefix = name.split("_bold.nii")[0]
        pieces = prefix.split("_")
        without_desc = "_".join(p for p in pieces if not p.startswith("desc-"))
        raw_prefix = "_".join(p for p in pieces if not p.startswith(("space-", "desc-", "res-", "den-")))
        mask = _sibling(folder, without_desc, ("_desc-brain_mask.nii.gz", "_desc-brain_mask.nii"))
        confounds = _sibling(folder, raw_prefix, tuple(f"_desc-confounds_{kind}.tsv{gz}" for kind in
                                                       ("timeseries", "regressors") for gz in ("", ".gz")))
        events = (_sibling(folder, prefix, ("_events.tsv", "_events.tsv.gz"))
                  or _sibling(folder, raw_prefix, ("_events.tsv", "_events.tsv.gz")))
        subject = "sub-" + ent["sub"]
        runs.append(Run(path=path, subject=subject, key=raw_prefix + (f"_space-{ent['space']}" if "space" in ent else ""),
                        mask_path=mask, label=labels.get(subject, "") if label_column else None,
                        events_path=events if use_events else None, confounds_path=confounds))
    wanted_subjects = filters.get("sub", set())
    missing = sorted(wanted_subjects - {r.subject[4:] for r in runs})
    if missing and runs:
        raise BadInputError(root, f"no run matches participant(s) {', '.join(missing)} with the other filters "
                                  f"({_describe(filters)}); participants with runs: {', '.join(sorted(found_subjects))}")
    if not runs:
        raise BadInputError(root, f"no *_bold.nii[.gz] under sub-*/[ses-*/]func/ matches {_describe(filters)}"
                                  + (f"; participants with runs: {', '.join(sorted(found_subjects))}"
                                     if found_subjects else ""))
    return runs


def _describe(filters: dict) -> str:
    if not filters:
        return "(no filters)"
    return ", ".join(f"{entity}={'|'.join(sorted(values))}" for entity, values in filters.items())


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
