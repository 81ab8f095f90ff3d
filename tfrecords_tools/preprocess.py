"""Per-run preprocessing, as SwiFT does it, and its inverse.

For one 4D NIfTI run (X, Y, Z, T): brain mask (given or derived) -> z-score over brain
voxels across the whole run -> background filled with the brain minimum (or 0) ->
optional trilinear resampling to `voxel_size` -> crop/pad to `target_shape` (default 96^3)
-> storage dtype (float16 by default). Frames come out one at a time, so memory holds the
raw run (in its file dtype, e.g. int16) plus one frame, not the float run.

Index convention: stored grid voxel j holds resampled-grid voxel i = j - offsets. Without
resampling the resampled grid is the original grid, so `to_original_space` is an exact shift.
"""

import dataclasses
import json
import os
from typing import Iterator, Optional, Sequence

import numpy as np

from tfrecords_tools import confounds as confounds_lib
from tfrecords_tools.errors import BadInputError

MASK_METHODS = ("auto", "nonzero", "mean", "none")
ORIENTATIONS = ("stored", "ras")


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """How each run becomes frames on the stored grid.

    Args:
        target_shape: (D, H, W) of the stored grid, or None to keep the (resampled) shape.
        voxel_size: resample to this voxel size in mm (trilinear, using the affine), or None.
        mask_method: for runs without a mask file: `nonzero` (voxels nonzero in some frame,
            SwiFT's rule for skull-stripped data), `mean` (temporal mean above
            `mask_threshold` x its 98th percentile, for raw EPI), `auto` (`nonzero` when at
            least 30% of voxels are zero in every frame, else `mean`), or `none` (all voxels).
        mask_threshold: fraction used by `mean`.
        normalization: `zscore` (mean/std over brain voxels of the whole run), `voxelwise`
            (each brain voxel's own mean/std over time: keeps only the BOLD fluctuations,
            as SwiFT's optional voxel-wise normalisation), or `none`.
        background: `min` (brain minimum after normalisation, as SwiFT) or `zero`.
        center_on: `brain` (centre the brain's bounding box in the target grid) or `array`.
        dtype: storage dtype, `float16` or `float32`.
        min_frames: runs with fewer frames are bad input (one window needs this many).
        detrend_order: with `voxelwise`, remove each voxel's polynomial trend of this order
            over the run (0: its mean only; 1-2 also remove scanner drift) before dividing by
            the residual std.
        confounds: fMRIPrep confound components regressed out of every brain voxel before
            normalisation, e.g. `"motion24+wm_csf+cosine"` or a tuple of names (see
            `tfrecords_tools.confounds`); each run then needs its confounds file.
        fd_threshold: drop frames whose framewise displacement exceeds this many mm (and
            contiguous pieces shorter than `min_frames`); None keeps every frame.
        orientation: `stored` (the file's voxel axes) or `ras` (axes permuted and flipped to
            the closest RAS+ orientation first, as `nibabel.as_closest_canonical`; exact, no
            interpolation), so runs saved in different orientations give the same windows.
    """

    target_shape: Optional[tuple] = (96, 96, 96)
    voxel_size: Optional[tuple] = None
    mask_method: str = "auto"
    mask_threshold: float = 0.2
    normalization: str = "zscore"
    background: str = "min"
    center_on: str = "brain"
    dtype: str = "float16"
    min_frames: int = 20
    detrend_order: int = 0
    confounds: tuple = ()
    fd_threshold: Optional[float] = None
    orientation: str = "stored"

    def __post_init__(self):
        if self.mask_method not in MASK_METHODS:
            raise ValueError(f"`mask_method` must be one of {MASK_METHODS}. Received: {self.mask_method!r}")
        if self.normalization not in ("zscore", "voxelwise", "none"):
            raise ValueError("`normalization` must be 'zscore', 'voxelwise' or 'none'. "
                             f"Received: {self.normalization!r}")
        if self.background not in ("min", "zero"):
            raise ValueError(f"`background` must be 'min' or 'zero'. Received: {self.background!r}")
        if self.center_on not in ("brain", "array"):
            raise ValueError(f"`center_on` must be 'brain' or 'array'. Received: {self.center_on!r}")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"`dtype` must be 'float16' or 'float32'. Received: {self.dtype!r}")
        if self.target_shape is not None:
            object.__setattr__(self, "target_shape", tuple(int(s) for s in self.target_shape))
            if len(self.target_shape) != 3 or min(self.target_shape) < 1:
                raise ValueError(f"`target_shape` must be 3 positive ints. Received: {self.target_shape}")
        if self.voxel_size is not None:
            object.__setattr__(self, "voxel_size", tuple(float(s) for s in self.voxel_size))
        if self.detrend_order < 0 or (self.detrend_order and self.normalization != "voxelwise"):
            raise ValueError("`detrend_order` must be >= 0 and needs normalization='voxelwise'. "
                             f"Received: detrend_order={self.detrend_order}, "
                             f"normalization={self.normalization!r}")
        if self.min_frames < 1:
            raise ValueError(f"`min_frames` must be >= 1. Received: {self.min_frames}")
        object.__setattr__(self, "confounds", confounds_lib.parse_strategy(self.confounds))
        if self.fd_threshold is not None:
            object.__setattr__(self, "fd_threshold", float(self.fd_threshold))
            if not 0 < self.fd_threshold < np.inf:
                raise ValueError(f"`fd_threshold` must be a finite number of mm > 0. Received: {self.fd_threshold}")
        if self.orientation not in ORIENTATIONS:
            raise ValueError(f"`orientation` must be one of {ORIENTATIONS}. Received: {self.orientation!r}")

    @property
    def uses_confounds_file(self) -> bool:
        return bool(self.confounds) or self.fd_threshold is not None

    def to_dict(self) -> dict:
        # keys added after the first schema are written only when set, so a folder converted
        # before they existed still resumes (its conversion.json compares equal)
        later = {"confounds": (), "fd_threshold": None, "orientation": "stored"}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()
                if k not in later or v != later[k]}


_MAX_DEFLATE_RATIO = 1032  # deflate never compresses better than ~1032:1


def memory_budget() -> int:
    """Bytes one run's raw array may take: `TFBRAIN_MAX_RUN_BYTES`, else half the RAM."""
    if os.environ.get("TFBRAIN_MAX_RUN_BYTES"):
        return int(float(os.environ["TFBRAIN_MAX_RUN_BYTES"]))
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 1 << 34


def load_nifti(path: str):
    """(image, raw array in file dtype, slope, intercept); bad files raise BadInputError."""
    import nibabel as nib

    if not os.path.exists(path):
        raise BadInputError(path, "file not found")
    if os.path.isdir(path):
        raise BadInputError(path, "is a folder, not a NIfTI file")
    if not os.access(path, os.R_OK):
        raise BadInputError(path, "cannot open: permission denied")
    try:
        img = nib.load(path)
    except OSError as error:
        raise BadInputError(path, f"cannot open ({error.strerror or error})") from None
    except Exception as error:  # not a NIfTI header
        raise BadInputError(path, f"cannot read NIfTI: corrupt or truncated file, or not a NIfTI "
                                  f"(header: {type(error).__name__}: {error})") from None
    try:  # the header's claimed size, checked before anything is allocated
        shape = tuple(int(n) for n in img.header.get_data_shape())
        dtype = np.dtype(img.header.get_data_dtype())
    except Exception as error:
        raise BadInputError(path, f"unusable NIfTI header ({type(error).__name__}: {error})") from None
    if np.issubdtype(dtype, np.complexfloating):
        raise BadInputError(path, f"complex data ({dtype}): convert to magnitude (or real) before "
                                  "preparing; the imaginary part would be lost")
    if not np.issubdtype(dtype, np.integer) and not np.issubdtype(dtype, np.floating):
        raise BadInputError(path, f"unsupported data type {dtype} (expected integers or floats)")
    claimed = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    budget = memory_budget()
    if claimed > budget:
        raise BadInputError(path, f"header declares shape {shape} of {dtype} = {claimed / 1e9:.1f} GB, over "
                                  f"the memory budget of {budget / 1e9:.1f} GB (TFBRAIN_MAX_RUN_BYTES)")
    # a file too small to hold what its header declares is truncated: say so before allocating
    on_disk = os.path.getsize(path)
    if str(path).endswith(".gz"):
        enough = on_disk * _MAX_DEFLATE_RATIO >= claimed
    else:
        offset = int(getattr(img.header, "get_data_offset", lambda: 0)() or 0)
        enough = img.header.__class__.__name__ not in ("Nifti1Header", "Nifti2Header") or on_disk >= offset + claimed
    if not enough:
        raise BadInputError(path, f"cannot read NIfTI: corrupt or truncated file (the header declares {shape} "
                                  f"of {dtype} = {claimed / 1e6:.1f} MB, which {on_disk / 1e6:.3f} MB on disk "
                                  "cannot hold)")
    try:
        proxy = img.dataobj
        if hasattr(proxy, "get_unscaled"):
            raw = np.asanyarray(proxy.get_unscaled())
            slope, inter = proxy.slope, proxy.inter
        else:
            raw, slope, inter = np.asanyarray(proxy), 1.0, 0.0
    except KeyboardInterrupt:
        raise
    except MemoryError:
        raise BadInputError(path, f"out of memory reading {claimed / 1e9:.1f} GB") from None
    except PermissionError as error:
        raise BadInputError(path, f"cannot read: permission denied ({error})") from None
    except Exception as error:  # gzip, zlib, EOF and size errors all mean "unreadable"
        raise BadInputError(path, f"cannot read NIfTI: corrupt or truncated file "
                                  f"({type(error).__name__}: {error})") from None
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return img, raw, slope, inter


def repetition_time(path: str, img) -> Optional[float]:
    """TR in seconds: the BIDS sidecar's RepetitionTime, else the header's 4th zoom."""
    sidecar = path[: -len(".nii.gz")] if path.endswith(".nii.gz") else os.path.splitext(path)[0]
    if os.path.exists(sidecar + ".json"):
        try:
            with open(sidecar + ".json") as f:
                tr = json.load(f).get("RepetitionTime")
            if tr:
                return float(tr)
        except (OSError, ValueError):
            pass
    zooms = img.header.get_zooms()
    if len(zooms) < 4 or not zooms[3]:
        return None
    unit = img.header.get_xyzt_units()[1] if hasattr(img.header, "get_xyzt_units") else "sec"
    return float(zooms[3]) / (1000.0 if unit == "msec" else 1e6 if unit == "usec" else 1.0)


def _derive_mask(raw: np.ndarray, slope: float, inter: float, config: PreprocessConfig, path: str) -> np.ndarray:
    spatial = raw.shape[:3]
    if config.mask_method == "none":
        return np.ones(spatial, bool)
    nonzero = np.zeros(spatial, bool)
    total = np.zeros(spatial, np.float64)
    for t0 in range(0, raw.shape[3], 64):
        chunk = raw[..., t0:t0 + 64]
        _check_finite(chunk, t0, raw, path)
        nonzero |= np.any(chunk != 0, axis=3)
        total += chunk.sum(axis=3, dtype=np.float64)
    method = config.mask_method
    if method == "auto":
        method = "nonzero" if (~nonzero).mean() >= 0.3 else "mean"
    if method == "nonzero":
        mask = nonzero
    else:
        mean = np.abs(total / raw.shape[3] * slope + inter)
        mask = nonzero & (mean > config.mask_threshold * np.percentile(mean, 98))
    if not mask.any():
        raise BadInputError(path, f"derived brain mask ({method}) is empty")
    return mask


def _check_finite(chunk: np.ndarray, t0, raw: np.ndarray, path: str) -> None:
    """Refuse NaN/Inf in `chunk`, frames `t0`.. of `raw` (or the frame indices `t0`, an array)."""
    if np.issubdtype(raw.dtype, np.integer) or np.isfinite(chunk).all():
        return
    bad = np.argwhere(~np.isfinite(chunk))[0]
    num_bad = int((~np.isfinite(raw)).sum())
    frame = t0[bad[3]] if isinstance(t0, np.ndarray) else t0 + bad[3]
    raise BadInputError(path, f"{num_bad} NaN/Inf voxels (first at voxel {tuple(int(i) for i in bad[:3])}, "
                              f"frame {frame})")


def _load_mask(mask_path: str, spatial: tuple, run_path: str) -> np.ndarray:
    _, mask, _, _ = load_nifti(mask_path)
    if mask.ndim == 4 and mask.shape[3] == 1:
        mask = mask[..., 0]
    if mask.shape != spatial:
        raise BadInputError(mask_path, f"mask shape mismatch: mask is {mask.shape}, run {run_path} "
                                       f"has spatial shape {spatial}")
    mask = mask > 0
    if not mask.any():
        raise BadInputError(mask_path, "mask is empty")
    return mask


class _LinearSampler:
    """Trilinear sampling of a (X, Y, Z) array at fixed voxel coordinates (3, *out_shape)."""

    def __init__(self, coords: np.ndarray, in_shape: Sequence[int]):
        self.out_shape = coords.shape[1:]
        pts = coords.reshape(3, -1)
        inside = np.all((pts >= -0.5) & (pts <= np.array(in_shape)[:, None] - 0.5), axis=0)
        pts = np.clip(pts, 0, np.array(in_shape)[:, None] - 1)
        low = np.minimum(np.floor(pts).astype(np.int64), np.array(in_shape)[:, None] - 2).clip(0)
        frac = pts - low
        self.index, self.weight = [], []
        strides = np.array([in_shape[1] * in_shape[2], in_shape[2], 1])
        for corner in np.ndindex(2, 2, 2):
            c = np.array(corner)[:, None]
            idx = np.minimum(low + c, np.array(in_shape)[:, None] - 1)
            w = np.prod(np.where(c == 1, frac, 1 - frac), axis=0) * inside
            self.index.append((idx * strides[:, None]).sum(0))
            self.weight.append(w.astype(np.float32))
        self.inside = inside

    def __call__(self, volume: np.ndarray, fill: float = 0.0) -> np.ndarray:
        flat = volume.reshape(-1)
        out = np.zeros(self.index[0].shape, np.float32)
        for idx, w in zip(self.index, self.weight):
            out += flat[idx] * w
        out[~self.inside] = fill
        return out.reshape(self.out_shape)


def resampled_grid(affine: np.ndarray, shape: Sequence[int], voxel_size: Sequence[float]):
    """(affine, shape) of a grid with `voxel_size` covering the same field of view."""
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    new_zooms = np.asarray(voxel_size, np.float64)
    new_shape = tuple(int(np.ceil(n * z / nz - 1e-6)) for n, z, nz in zip(shape, zooms, new_zooms))
    rotation = affine[:3, :3] / zooms
    new_affine = np.eye(4)
    new_affine[:3, :3] = rotation * new_zooms
    corner = affine[:3, :3] @ np.full(3, -0.5) + affine[:3, 3]  # the outer corner of voxel 0
    new_affine[:3, 3] = corner + new_affine[:3, :3] @ np.full(3, 0.5)
    return new_affine, new_shape


def _grid_coords(to_affine: np.ndarray, to_shape, from_affine: np.ndarray) -> np.ndarray:
    """Voxel coordinates in the `from` grid of each voxel of the `to` grid, (3, *to_shape)."""
    idx = np.indices(to_shape).reshape(3, -1).astype(np.float64)
    world = to_affine[:3, :3] @ idx + to_affine[:3, 3:4]
    inv = np.linalg.inv(from_affine)
    return (inv[:3, :3] @ world + inv[:3, 3:4]).reshape((3,) + tuple(to_shape))


def _offsets(mask: np.ndarray, target_shape, center_on: str) -> list[int]:
    if center_on == "brain":
        where = np.nonzero(mask)
        lo = np.array([w.min() for w in where])
        hi = np.array([w.max() for w in where])
    else:
        lo, hi = np.zeros(3, int), np.array(mask.shape) - 1
    return [int((t - (h - l + 1)) // 2 - l) for t, l, h in zip(target_shape, lo, hi)]


def place(volume: np.ndarray, offsets: Sequence[int], target_shape, fill: float) -> np.ndarray:
    """Crop/pad `volume` so that its voxel i lands at i + offsets of a `target_shape` grid."""
    out = np.full(tuple(target_shape) + volume.shape[3:], fill, volume.dtype)
    src, dst = [], []
    for n, t, o in zip(volume.shape[:3], target_shape, offsets):
        lo, hi = max(0, -o), min(n, t - o)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo + o, hi + o))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def reorient_to_ras(raw: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """`raw` (X, Y, Z, ...) with its voxel axes permuted and flipped to the closest RAS+
    orientation, as `nibabel.as_closest_canonical` does: a view, no interpolation.

    Returns (view, its affine, record); `record` holds what `to_original_space` needs to undo it
    exactly: the original axis codes and the orientation transform (nibabel `ornt` rows).
    """
    from nibabel import orientations

    original = orientations.io_orientation(affine)
    transform = orientations.ornt_transform(original, orientations.axcodes2ornt("RAS"))
    view = orientations.apply_orientation(raw, transform)
    ras_affine = affine @ orientations.inv_ornt_aff(transform, raw.shape[:3])
    record = {"from": "".join(orientations.aff2axcodes(affine)), "transform": transform.tolist(),
              "ras_shape": [int(s) for s in view.shape[:3]], "ras_affine": ras_affine.tolist()}
    return view, ras_affine, record


def _inverse_ornt(transform: np.ndarray) -> np.ndarray:
    """The nibabel orientation transform that undoes `transform` (rows: [new axis, flip])."""
    inverse = np.empty_like(transform)
    for axis, (new_axis, flip) in enumerate(transform):
        inverse[int(new_axis)] = [axis, flip]
    return inverse


def _frames_of(raw: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """raw[..., ids]; a slice (no copy) when the frames are consecutive."""
    if len(ids) and ids[-1] - ids[0] == len(ids) - 1:
        return raw[..., int(ids[0]):int(ids[-1]) + 1]
    return raw[..., ids]


def _confound_betas(raw: np.ndarray, mask: np.ndarray, slope: float, inter: float, frame_ids: np.ndarray,
                    design: np.ndarray, path: str) -> np.ndarray:
    """Least-squares coefficients (R, N) of every brain voxel on `design` (K, R), in float64.

    Voxels are taken in slabs along X (in the order of `raw[mask]`), so memory holds one slab
    of time series, not the float64 run.
    """
    per_slice = max(1, int(mask[0].size) * len(frame_ids))
    slab = max(1, int(4e6 // per_slice))  # ~32 MB of float64 per slab
    operator = confounds_lib.least_squares_operator(design)  # (R, K)
    betas = np.empty((design.shape[1], int(mask.sum())), np.float64)
    done = 0
    for x0 in range(0, mask.shape[0], slab):
        inside = mask[x0:x0 + slab]
        if not inside.any():
            continue
        block = raw[x0:x0 + slab][inside]  # (n, T) in the file dtype
        block = block[:, frame_ids].astype(np.float64) * slope + inter  # (n, K)
        if not np.isfinite(block).all():
            _check_finite(raw, 0, raw, path)
        betas[:, done:done + block.shape[0]] = operator @ block.T  # (R, n)
        done += block.shape[0]
    return betas


def prepare_run(path: str, config: PreprocessConfig, mask_path: Optional[str] = None,
                tr: Optional[float] = None, confounds_path: Optional[str] = None,
                segment: Optional[Sequence[int]] = None) -> tuple[dict, Iterator[np.ndarray]]:
    """Check and preprocess one run.

    Returns (metadata, frames): `metadata` holds everything needed to map the stored grid
    back to the original NIfTI space; `frames` yields (D, H, W) arrays in `config.dtype`.
    All checks (4D, finite, mask shape, enough frames) run before the first frame is yielded.

    With `config.confounds` / `config.fd_threshold`, `confounds_path` is the run's fMRIPrep
    confounds table: the regressors are fit on the kept (unscrubbed) frames and removed from
    every brain voxel before normalisation, and the frames yielded are the kept ones, or only
    `segment` = (start, stop) of them (source frame indices; `convert` writes each contiguous
    segment of a scrubbed run as its own run, so no window straddles a removed frame).
    """
    img, raw, slope, inter = load_nifti(path)
    if raw.ndim != 4:
        raise BadInputError(path, f"not 4D (shape {raw.shape}); expected (X, Y, Z, T)")
    source_shape = raw.shape
    source_affine = np.asarray(img.affine, np.float64)
    affine, reorientation = source_affine, None
    if config.orientation == "ras":
        raw, affine, reorientation = reorient_to_ras(raw, source_affine)
    num_source_frames = raw.shape[3]
    frame_ids = np.arange(num_source_frames)  # frames the statistics and the regression use
    design, regressors = None, None
    if config.uses_confounds_file:
        if not confounds_path:
            raise BadInputError(path, f"no confounds file (fMRIPrep *_desc-confounds_timeseries.tsv), needed by "
                                      f"confounds={'+'.join(config.confounds) or 'none'}, "
                                      f"fd_threshold={config.fd_threshold}")
        design = confounds_lib.load_design(confounds_path, config.confounds, config.fd_threshold,
                                           min_segment=config.min_frames, num_frames=num_source_frames)
        frame_ids = design.kept
    if segment is not None:
        start, stop = (int(s) for s in segment)
        written = np.arange(start, stop)
        if not (0 <= start < stop <= num_source_frames and np.isin(written, frame_ids).all()):
            raise BadInputError(path, f"segment {list(segment)} is not a run of kept frames of its "
                                      f"{num_source_frames} frames")
    else:
        written = frame_ids
    num_frames = len(written)
    if num_frames < config.min_frames:
        raise BadInputError(path, f"too few frames for one window: {num_frames} < {config.min_frames}")
    spatial = raw.shape[:3]
    if mask_path:
        mask = _load_mask(mask_path, source_shape[:3], path)
        if reorientation is not None:  # the mask shares the run's voxel grid: same axes, same flips
            mask = reorient_to_ras(mask, source_affine)[0]
    else:
        mask = _derive_mask(raw, slope, inter, config, path)

    centred_design, betas = None, None
    if design is not None and design.columns:
        # centred over the kept frames: orthogonal to a constant, so each voxel keeps its mean
        regressors = design.regressors[frame_ids]  # (K, R)
        centred_design = regressors - regressors.mean(axis=0)
        betas = _confound_betas(raw, mask, slope, inter, frame_ids, centred_design, path)  # (R, N)
    row_of = np.full(num_source_frames, -1)
    row_of[frame_ids] = np.arange(len(frame_ids))  # source frame -> row of the design / basis

    # One pass over the run: finiteness, then brain mean/std/min/max in float64. Sums are
    # taken around `centre` (the first frame's brain mean), so a large offset (mean 1e8,
    # std 1) does not cancel the variance away.
    total, total_sq, count, brain_min, brain_max = 0.0, 0.0, 0, np.inf, -np.inf
    # per brain voxel, for `voxelwise`: projections onto the trend basis, and sums of squares
    basis = np.polynomial.legendre.legvander(np.linspace(-1, 1, num_source_frames)[frame_ids],
                                             config.detrend_order)  # (K, order + 1)
    voxel_proj = np.zeros((int(mask.sum()), basis.shape[1]), np.float64)
    voxel_sq = np.zeros(int(mask.sum()), np.float64)
    centre = float(np.mean(raw[..., frame_ids[0]][mask].astype(np.float64) * slope + inter))
    if not np.isfinite(centre):
        centre = 0.0
    for c0 in range(0, len(frame_ids), 32):
        ids = frame_ids[c0:c0 + 32]
        chunk = _frames_of(raw, ids)
        _check_finite(chunk, ids, raw, path)
        brain = chunk[mask].astype(np.float64) * slope + inter - centre  # (N, t)
        if betas is not None:
            brain -= (centred_design[c0:c0 + len(ids)] @ betas).T  # (N, t)
        total += brain.sum()
        total_sq += np.square(brain).sum()
        count += brain.size
        brain_min = min(brain_min, brain.min())
        brain_max = max(brain_max, brain.max())
        voxel_proj += brain @ basis[c0:c0 + brain.shape[1]]
        voxel_sq += np.square(brain).sum(axis=1)
    if not np.isfinite(total_sq):
        raise BadInputError(path, "values too large to normalise in float64")
    mean = centre + total / count
    std = float(np.sqrt(max(total_sq / count - (total / count) ** 2, 0.0)))
    brain_min, brain_max = brain_min + centre, brain_max + centre
    if config.normalization == "zscore":
        if not std > 0:
            raise BadInputError(path, "brain signal is constant (std 0); cannot z-score")
        shift, scale = mean, std
    elif config.normalization == "voxelwise":
        # least-squares trend per voxel: coef = (P^T P)^-1 P^T x; residual SS = x.x - coef.P^T x
        coef = np.linalg.solve(basis.T @ basis, voxel_proj.T).T  # (N, order + 1), around `centre`
        residual = np.maximum(voxel_sq - np.sum(coef * voxel_proj, axis=1), 0.0)
        voxel_std = np.sqrt(residual / len(frame_ids))
        voxel_std[voxel_std == 0] = 1.0  # a constant voxel stays at 0
        shift = None  # per frame: the voxel's trend at t
        scale = np.ones(spatial, np.float64)
        scale[mask] = voxel_std
    else:
        shift, scale = 0.0, 1.0
    dtype = np.dtype(config.dtype)
    limit = float(np.finfo(dtype).max)
    if shift is not None:  # the stored range is known now: refuse overflow before any frame
        largest = max(abs(brain_min - shift), abs(brain_max - shift)) / scale
        if largest > limit:
            raise BadInputError(path, f"values up to {largest:.4g} after {config.normalization} normalisation "
                                      f"overflow {config.dtype} (max {limit:.6g}); use normalization "
                                      "'zscore' or dtype float32")
    if config.normalization == "voxelwise":
        # the lowest z-value of the brain is unknown before the frames are written; 0 (each
        # voxel's own mean) is the natural background for this normalisation
        background = 0.0
    else:
        background = float((brain_min - shift) / scale) if config.background == "min" else 0.0

    if config.voxel_size is not None:
        grid_affine, grid_shape = resampled_grid(affine, spatial, config.voxel_size)
        sampler = _LinearSampler(_grid_coords(grid_affine, grid_shape, affine), spatial)
        grid_mask = sampler(mask.astype(np.float32)) >= 0.5
    else:
        grid_affine, grid_shape, sampler, grid_mask = affine, tuple(spatial), None, mask
    target = config.target_shape or tuple(grid_shape)
    offsets = _offsets(grid_mask, target, config.center_on) if config.target_shape else [0, 0, 0]
    stored_affine = grid_affine.copy()
    stored_affine[:3, 3] = grid_affine[:3, :3] @ -np.asarray(offsets, np.float64) + grid_affine[:3, 3]
    inside = place(grid_mask, offsets, target, False)

    metadata = {
        "source": str(path),
        "num_frames": int(num_frames),
        "tr": tr if tr is not None else repetition_time(path, img),
        "original_shape": [int(s) for s in source_shape],
        "original_affine": source_affine.tolist(),
        "resampled_shape": [int(s) for s in grid_shape],
        "resampled_affine": grid_affine.tolist(),
        "offsets": offsets,
        "stored_affine": stored_affine.tolist(),
        "mean": float(mean), "std": std, "background": background,
        "mask_voxels": int(mask.sum()),
        "stored_brain_voxels": int(inside.sum()),
        "brain_voxels_cropped": int(grid_mask.sum() - inside.sum()),
    }
    if reorientation is not None:
        metadata["reorientation"] = reorientation
    if design is not None:
        metadata["confounds"] = {
            "file": str(confounds_path), "strategy": "+".join(config.confounds), "columns": list(design.columns),
            "fd_threshold": config.fd_threshold, "source_frames": int(num_source_frames),
            "frames_kept": [int(t) for t in frame_ids],
            "segment": None if segment is None else [int(written[0]), int(written[-1]) + 1]}

    def shift_at(t):
        if shift is not None:
            return shift
        trend = np.full(spatial, centre, np.float64)
        trend[mask] += coef @ basis[row_of[t]]
        return trend

    def frames() -> Iterator[np.ndarray]:
        for t in written:
            # centred and scaled in float64 (a float32 cast first would drop a small signal on
            # a large offset), then float32 for resampling
            value = raw[..., t].astype(np.float64) * slope + inter
            if betas is not None:
                # einsum, not `@`: a BLAS gemv for one frame measured 20x slower on a loaded machine
                value[mask] -= np.einsum("r,rn->n", centred_design[row_of[t]], betas)
            frame = ((value - shift_at(t)) / scale).astype(np.float32)
            frame[~mask] = background
            if sampler is not None:
                frame = sampler(frame, fill=background)
                frame[~grid_mask] = background
            frame = place(frame, offsets, target, background)
            if not np.abs(frame).max() <= limit:
                raise BadInputError(path, f"frame {t}: values up to {np.abs(frame).max():.4g} overflow "
                                          f"{config.dtype} (max {limit:.6g}); use dtype float32")
            yield frame.astype(dtype)

    return metadata, frames()


def written_frames(metadata: dict) -> list[int]:
    """Source frame indices of the frames a run's records hold, in order (`range(num_frames)`
    unless scrubbing removed some)."""
    confounds = metadata.get("confounds")
    if not confounds:
        return list(range(metadata["num_frames"]))
    if confounds.get("segment"):
        return list(range(*confounds["segment"]))
    return list(confounds["frames_kept"])


def to_original_space(volume: np.ndarray, run_info: dict, fill: float = 0.0):
    """Map a map on the stored grid, (D, H, W) or (D, H, W, K), back onto the run's NIfTI grid.

    `run_info` is the run's entry in dataset.json (see `tfrecords_tools.run_info`). Returns a
    `nibabel.Nifti1Image` with the original affine; voxels outside the stored grid get `fill`.
    Without resampling the map is placed exactly (a shift, then for a run reoriented to RAS the
    inverse axis permutation and flips).
    """
    import nibabel as nib
    from nibabel import orientations

    volume = np.asarray(volume, np.float32)
    offsets = [-o for o in run_info["offsets"]]
    grid = place(volume, offsets, run_info["resampled_shape"], fill)  # stored -> resampled grid
    reorientation = run_info.get("reorientation")
    original_affine = np.asarray(run_info["original_affine"])
    # the grid the run was preprocessed on: the file's, or its RAS view
    if reorientation:
        source_shape, source_affine = tuple(reorientation["ras_shape"]), np.asarray(reorientation["ras_affine"])
    else:
        source_shape, source_affine = tuple(run_info["original_shape"][:3]), original_affine
    if tuple(run_info["resampled_shape"]) != source_shape or not np.allclose(
            run_info["resampled_affine"], source_affine):
        sampler = _LinearSampler(_grid_coords(source_affine, source_shape,
                                              np.asarray(run_info["resampled_affine"])),
                                 run_info["resampled_shape"])
        channels = [grid] if grid.ndim == 3 else [grid[..., k] for k in range(grid.shape[3])]
        grid = np.stack([sampler(c, fill=fill) for c in channels], axis=-1)
        grid = grid[..., 0] if volume.ndim == 3 else grid
    if reorientation:  # RAS view -> the file's axes: the inverse permutation and flips, exact
        grid = np.ascontiguousarray(orientations.apply_orientation(
            grid, _inverse_ornt(np.asarray(reorientation["transform"]))))
    return nib.Nifti1Image(grid, original_affine)


def to_stored_grid(volume: np.ndarray, run_info: dict, frame_shape: Sequence[int],
                   fill: float = 0.0) -> np.ndarray:
    """The inverse of `to_original_space` for a `(X, Y, Z)` volume on the run's original
    grid (e.g. its mean EPI): resampled as the frames were (trilinear, when `voxel_size` was
    set) and cropped/padded with the recorded offsets, `(D, H, W)` as the stored frames."""
    volume = np.asarray(volume, np.float32)
    original_affine = np.asarray(run_info["original_affine"], np.float64)
    resampled_affine = np.asarray(run_info["resampled_affine"], np.float64)
    resampled_shape = tuple(run_info["resampled_shape"])
    if resampled_shape != tuple(volume.shape[:3]) or not np.allclose(resampled_affine,
                                                                     original_affine):
        sampler = _LinearSampler(_grid_coords(resampled_affine, resampled_shape, original_affine),
                                 volume.shape[:3])
        volume = sampler(volume, fill=fill)
    return place(volume, run_info["offsets"], frame_shape, fill)
