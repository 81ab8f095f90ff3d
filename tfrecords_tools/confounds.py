"""fMRIPrep confound regressors and framewise-displacement scrubbing.

A strategy is a `+`-joined list of named components, e.g. `motion24+wm_csf+cosine`; each names
columns of fMRIPrep's `*_desc-confounds_timeseries.tsv[.gz]`. The components follow nilearn's
`load_confounds` (motion basic / derivatives / full, wm_csf basic, global_signal basic,
high_pass): a resting-state pipeline usually takes `motion24+wm_csf+cosine` (nilearn's
"simple" strategy, which is also an alias here) plus scrubbing.

Scrubbing drops frames whose `framewise_displacement` exceeds a threshold (in mm). The kept
frames then fall into contiguous segments; a segment shorter than `min_segment` frames is
dropped too (it cannot hold one window, and Power et al. 2014 drop short segments for the same
reason). The regression is fit on the kept frames only, so a high-motion frame does not pull
the fit.

Letters: T frames of the run, K kept frames, R regressors.
"""

import dataclasses
import re
from typing import Optional, Sequence

import numpy as np

from tfrecords_tools.errors import BadInputError
from tfrecords_tools.sources import read_table

_MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
# component -> column names; `cosine` is matched by pattern, since fMRIPrep writes as many
# cosine regressors as the run's length needs (a 128 s high-pass DCT basis)
COMPONENTS = {
    "motion6": _MOTION,
    "motion12": _MOTION + tuple(f"{c}_derivative1" for c in _MOTION),
    "motion24": (_MOTION + tuple(f"{c}_derivative1" for c in _MOTION) + tuple(f"{c}_power2" for c in _MOTION)
                 + tuple(f"{c}_derivative1_power2" for c in _MOTION)),
    "wm_csf": ("white_matter", "csf"),
    "global_signal": ("global_signal",),
    "cosine": (),
}
ALIASES = {"simple": ("motion24", "wm_csf", "cosine")}  # nilearn's "simple" strategy
_COSINE = re.compile(r"^cosine\d+$")
FD_COLUMN = "framewise_displacement"
_MISSING = ("n/a", "na", "nan", "")


def parse_strategy(strategy) -> tuple[str, ...]:
    """`"motion24+wm_csf+cosine"` (or a sequence of names) -> the component names, in order,
    aliases expanded and duplicates removed. Unknown names raise ValueError naming them."""
    if strategy is None or strategy == "" or strategy == ():
        return ()
    names = strategy.split("+") if isinstance(strategy, str) else list(strategy)
    out = []
    for name in (n.strip() for n in names):
        for part in ALIASES.get(name, (name,)):
            if part not in COMPONENTS:
                raise ValueError(f"`confounds` components must be among {sorted(COMPONENTS) + sorted(ALIASES)} "
                                 f"joined by '+'. Received: {name!r} in {strategy!r}")
            if part not in out:
                out.append(part)
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class ConfoundDesign:
    """What one run's confounds file gives.

    Attributes:
        columns: the regressor columns used, in design order.
        regressors: (T, R) float64 values of those columns (a leading n/a, as derivatives have,
            read as 0).
        kept: (K,) sorted frame indices kept after scrubbing (all frames without it).
        segments: [(start, stop), ...] contiguous runs of kept frames.
        num_frames: T, the number of rows.
        framewise_displacement: (T,) FD in mm when a threshold was given, else None.
    """

    columns: tuple
    regressors: np.ndarray
    kept: np.ndarray
    segments: list
    num_frames: int
    framewise_displacement: Optional[np.ndarray] = None


def _column(path: str, rows: list[dict], name: str, why: str) -> np.ndarray:
    if name not in rows[0]:
        raise BadInputError(path, f"no column {name!r} (needed by {why}; the file has {len(rows[0])} columns)")
    values = np.empty(len(rows), np.float64)
    for i, row in enumerate(rows):
        text = (row[name] or "").strip()
        if text.lower() in _MISSING:
            if i == 0:  # fMRIPrep's derivatives and FD have no value for the first frame
                values[i] = 0.0
                continue
            raise BadInputError(path, f"column {name!r} row {i + 2}: missing value {text!r}")
        try:
            values[i] = float(text)
        except ValueError:
            raise BadInputError(path, f"column {name!r} row {i + 2}: not a number: {text!r}") from None
        if not np.isfinite(values[i]):
            raise BadInputError(path, f"column {name!r} row {i + 2}: not finite: {text!r}")
    return values


def contiguous_segments(kept: np.ndarray) -> list[tuple[int, int]]:
    """[(start, stop), ...] of the runs of consecutive indices in sorted `kept`."""
    if len(kept) == 0:
        return []
    breaks = np.nonzero(np.diff(kept) != 1)[0]
    starts = np.concatenate([[kept[0]], kept[breaks + 1]])
    stops = np.concatenate([kept[breaks] + 1, [kept[-1] + 1]])
    return [(int(a), int(b)) for a, b in zip(starts, stops)]


def load_design(path: str, components: Sequence[str], fd_threshold: Optional[float] = None,
                min_segment: int = 1, num_frames: Optional[int] = None) -> ConfoundDesign:
    """Read the regressors of `components` and the scrubbing of `fd_threshold` from `path`.

    Raises BadInputError naming the file and the column (missing column, non-numeric value,
    a row count that differs from the run's `num_frames`, or no segment of `min_segment`
    frames left after scrubbing).
    """
    rows = read_table(path)
    if not rows:
        raise BadInputError(path, "the confounds table has no rows")
    if num_frames is not None and len(rows) != num_frames:
        raise BadInputError(path, f"{len(rows)} rows, but the run has {num_frames} frames (another run's file?)")
    columns = []
    for component in components:
        if component == "cosine":
            names = sorted((c for c in rows[0] if c and _COSINE.match(c)), key=lambda c: int(c[6:]))
            if not names:
                raise BadInputError(path, "no column 'cosine00' (needed by confounds component 'cosine'; fMRIPrep "
                                          "writes cosineXX high-pass regressors)")
        else:
            names = COMPONENTS[component]
        columns += [(name, f"confounds component {component!r}") for name in names if name not in
                    [c for c, _ in columns]]
    total = len(rows)
    regressors = np.stack([_column(path, rows, name, why) for name, why in columns], axis=1) if columns \
        else np.zeros((total, 0), np.float64)  # (T, R)
    fd = None
    keep = np.ones(total, bool)
    if fd_threshold is not None:
        fd = _column(path, rows, FD_COLUMN, f"--fd-threshold {fd_threshold:g}")
        keep = fd <= fd_threshold
    segments = [s for s in contiguous_segments(np.nonzero(keep)[0]) if s[1] - s[0] >= min_segment]
    if not segments:
        raise BadInputError(path, f"no {min_segment} contiguous frames have framewise_displacement <= "
                                  f"{fd_threshold:g} mm ({int(keep.sum())} of {total} frames pass)")
    kept = np.concatenate([np.arange(a, b) for a, b in segments])
    if regressors.shape[1] >= len(kept):
        raise BadInputError(path, f"{regressors.shape[1]} regressors for {len(kept)} kept frames: nothing would "
                                  "remain after regression; use fewer confounds")
    return ConfoundDesign(columns=tuple(c for c, _ in columns), regressors=regressors, kept=kept,
                          segments=segments, num_frames=total, framewise_displacement=fd)


def least_squares_operator(design: np.ndarray) -> np.ndarray:
    """(R, K) matrix P with P @ y = the least-squares coefficients of y (K,) on `design` (K, R).

    The pseudo-inverse from one SVD of the design: the same minimum-norm solution as
    `np.linalg.lstsq(design, y)`, factored once per run instead of once per block of voxels
    (lstsq on 20k right-hand sides took 4x the whole rest of a run's preprocessing, measured with
    benchmarks/confounds.py). The design is centred over the kept frames by the caller, so it
    is orthogonal to a constant and each voxel's mean over those frames stays in the residual.
    """
    return np.linalg.pinv(design)  # (R, K)
