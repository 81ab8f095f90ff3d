"""Subject-level splits: a subject's runs are always in exactly one split.

splits.json: {"seed": 0, "fractions": {...}, "splits": {"train": [...], "val": [...], "test": [...]}}.
A split file may also be a CSV/TSV/text with `subject,split` lines, or JSON of {split: [subjects]}.
"""

import csv
import json
from typing import Optional, Sequence

import numpy as np

SPLIT_NAMES = ("train", "val", "test")


def check_fractions(fractions: Sequence[float], names: Sequence[str] = SPLIT_NAMES) -> None:
    """Raise ValueError unless `fractions` are len(names) finite non-negative numbers, not all 0."""
    if (len(fractions) != len(names) or any(not np.isfinite(f) or f < 0 for f in fractions)
            or not sum(fractions) > 0):
        raise ValueError(f"`fractions` (--split) must be {len(names)} finite non-negative numbers, not all 0. "
                         f"Received: {tuple(fractions)}")


def make_splits(subjects: Sequence[str], fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
                names: Sequence[str] = SPLIT_NAMES) -> dict[str, list[str]]:
    """Random subject split, fixed by `seed` (independent of the order of `subjects`)."""
    check_fractions(fractions, names)
    if len(set(subjects)) != len(subjects):
        raise ValueError("`subjects` has duplicates")
    fractions = np.asarray(fractions, np.float64) / np.sum(fractions)
    order = sorted(subjects)
    np.random.default_rng(seed).shuffle(order)
    counts = np.floor(fractions * len(order)).astype(int)
    # hand out the remainder largest-fraction-first, so no non-zero split ends up empty when avoidable
    for i in np.argsort(-(fractions * len(order) - counts), kind="stable")[: len(order) - counts.sum()]:
        counts[i] += 1
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return {name: sorted(order[bounds[i]:bounds[i + 1]]) for i, name in enumerate(names)}


def check_no_leak(splits: dict[str, Sequence[str]]) -> None:
    seen = {}
    for name, subjects in splits.items():
        for subject in subjects:
            if subject in seen and seen[subject] != name:
                raise ValueError(f"subject {subject!r} is in two splits: {seen[subject]!r} and {name!r}")
            seen[subject] = name


def save_splits(path: str, splits: dict[str, list[str]], seed: Optional[int] = None) -> None:
    from tfrecords_tools import schema

    check_no_leak(splits)
    total = sum(len(v) for v in splits.values()) or 1
    schema.write_json_atomic(path, {"seed": seed,
                                    "fractions": {k: len(v) / total for k, v in splits.items()},
                                    "splits": splits})


def load_splits(path: str) -> dict[str, list[str]]:
    """Read splits.json, a {split: [subjects]} JSON, or a `subject,split` CSV/TSV."""
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "r") as f:
        text = f.read()
    if path.endswith(".json"):
        payload = json.loads(text)
        splits = payload.get("splits", payload)
    else:
        lines = [line for line in text.splitlines() if line.strip()]
        delimiter = "\t" if "\t" in lines[0] else ","
        rows = list(csv.reader(lines, delimiter=delimiter))
        if rows and [c.strip().lower() for c in rows[0][:2]] == ["subject", "split"]:
            rows = rows[1:]
        splits = {}
        for row in rows:
            if len(row) < 2:
                raise ValueError(f"{path}: line {row!r} is not `subject,split`")
            splits.setdefault(row[1].strip(), []).append(row[0].strip())
    splits = {str(k): [str(s) for s in v] for k, v in splits.items()}
    check_no_leak(splits)
    return splits
