"""Windows to send: (N, D, H, W, T, C) float32 arrays from a converted dataset, a NIfTI run
or a saved array.

A converted dataset (a folder written by `tfbrain prepare` / `tfrecords_tools.convert`) is
read with `tfrecords_tools.windows`, in order, non-overlapping.

A NIfTI run goes through the very function `tfbrain prepare` uses
(`tfrecords_tools.prepare_run`) with the preprocessing the model was trained with: pass
it as a dict (the `preprocessing` entry of the training dataset's dataset.json, which
`tfbrain export` copies into `assets.extra/tfbrain_export.json`). Frames are stored in the
same dtype as in training (float16 by default) and cast to float32, so a served window
equals the training window bit for bit. The run is then cut into consecutive
non-overlapping T-frame windows.

A model trained on confound-regressed or scrubbed data (`tfbrain prepare --confounds ...
--fd-threshold ...`) needs the run's fMRIPrep confounds table (`confounds=`): the recorded
strategy and FD threshold are applied to it, and with scrubbing the windows are cut from each
kept contiguous segment separately, as the training windows were (no window straddles a removed
frame). `nifti_windows` says which source frames and segment each window came from.

Letters: N windows, D/H/W space, T frames, C channels.
"""

import dataclasses
import json
import pathlib

import numpy as np


def preprocessing_from_file(path) -> dict:
    """The preprocessing dict of a dataset.json, a tfbrain_export.json or a plain JSON."""
    payload = json.loads(pathlib.Path(path).read_text())
    if "preprocessing" in payload:
        payload = payload["preprocessing"]
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: no preprocessing settings found")
    return payload


@dataclasses.dataclass(frozen=True)
class NiftiWindows:
    """Windows of a NIfTI run and where each came from.

    Attributes:
        windows: (N, D, H, W, T, 1) float32.
        frames: (N, 2) int `[start, stop)` source frame indices of each window, on the run's
            own timeline (frame 0 is the NIfTI's first volume).
        segment: (N,) int, 1-based index into `segments` of each window's segment.
        segments: [(start, stop), ...] the kept contiguous segments of source frames (one,
            the whole run, without scrubbing); a segment shorter than a window gives none.
    """

    windows: np.ndarray
    frames: np.ndarray
    segment: np.ndarray
    segments: list


def nifti_windows(path, window_shape: tuple[int, ...], preprocessing: dict | None = None,
                  max_windows: int | None = None, confounds: str | pathlib.Path | None = None,
                  mask: str | pathlib.Path | None = None) -> NiftiWindows:
    """Consecutive non-overlapping windows of a 4D NIfTI run, preprocessed as `tfbrain prepare`
    would with `preprocessing` (default: its defaults), with their source frames.

    Args:
        confounds: the run's fMRIPrep `*_desc-confounds_timeseries.tsv[.gz]`; required when
            `preprocessing` regresses confounds or scrubs (`confounds` / `fd_threshold`), refused
            otherwise (it would be silently unused).
        mask: the run's brain mask (fMRIPrep's `*_desc-brain_mask.nii.gz`), when the training
            runs had one; else the mask is derived by the recorded `mask_method`.
    """
    from tfrecords_tools.confounds import contiguous_segments
    from tfrecords_tools.errors import BadInputError
    from tfrecords_tools.preprocess import PreprocessConfig, prepare_run

    depth, height, width, frames, channels = window_shape
    if channels != 1:
        raise ValueError(f"A NIfTI run gives one channel. Received: window_shape={window_shape}")
    settings = {**(preprocessing or {}), "target_shape": (depth, height, width)}
    # with scrubbing, `min_frames` decides which short segments are dropped, and so the frames
    # the regression and the normalisation are fit on: keep the recorded value for equal windows
    if settings.get("fd_threshold") is None or "min_frames" not in settings:
        settings["min_frames"] = frames
    config = PreprocessConfig(**settings)
    if config.uses_confounds_file and not confounds:
        raise BadInputError(str(path), "the model's training data regressed confounds / scrubbed "
                                       f"(confounds={'+'.join(config.confounds) or 'none'}, "
                                       f"fd_threshold={config.fd_threshold}): pass the run's fMRIPrep "
                                       "*_desc-confounds_timeseries.tsv (tfbrain predict --confounds FILE)")
    if confounds and not config.uses_confounds_file:
        raise BadInputError(str(confounds), "a confounds table was given, but the preprocessing regresses no "
                                            "confounds and scrubs nothing (pass the training dataset's "
                                            "dataset.json as the preprocessing, or drop the table)")
    metadata, frame_iter = prepare_run(str(path), config, mask_path=str(mask) if mask else None,
                                       confounds_path=str(confounds) if confounds else None)
    volume = np.stack(list(frame_iter), axis=-1).astype(np.float32)  # (D, H, W, K) kept frames
    kept = np.asarray((metadata.get("confounds") or {}).get("frames_kept", range(volume.shape[-1])))
    segments = contiguous_segments(kept)  # the kept frames are whole segments, in order
    windows, spans, owners = [], [], []
    row = 0  # first row of `volume` that belongs to the current segment
    for index, (start, stop) in enumerate(segments, start=1):
        for offset in range(0, (stop - start) // frames * frames, frames):
            windows.append(volume[..., row + offset:row + offset + frames])  # (D, H, W, T)
            spans.append((start + offset, start + offset + frames))
            owners.append(index)
        row += stop - start
    if not windows:
        raise ValueError(f"{path}: no kept segment has {frames} frames for a window (segments "
                         f"{[list(s) for s in segments]})")
    count = min(len(windows), max_windows) if max_windows else len(windows)
    return NiftiWindows(windows=np.stack(windows[:count])[..., None],  # (N, D, H, W, T, 1)
                        frames=np.asarray(spans[:count], np.int64).reshape(-1, 2),
                        segment=np.asarray(owners[:count], np.int64), segments=segments)


def windows_from_nifti(path, window_shape: tuple[int, ...], preprocessing: dict | None = None,
                       max_windows: int | None = None, confounds: str | pathlib.Path | None = None,
                       mask: str | pathlib.Path | None = None) -> np.ndarray:
    """Consecutive non-overlapping windows (N, D, H, W, T, 1) of a 4D NIfTI run, preprocessed
    as `tfbrain prepare` would with `preprocessing` (default: its defaults); `confounds` and
    `mask` as in `nifti_windows`."""
    return nifti_windows(path, window_shape, preprocessing, max_windows, confounds, mask).windows


def windows_from_volume(volume: np.ndarray, frames: int, max_windows: int | None = None) -> np.ndarray:
    """Consecutive non-overlapping windows (N, D, H, W, T, 1) of a preprocessed
    (D, H, W, T_run) volume."""
    count = volume.shape[-1] // frames
    if count == 0:
        raise ValueError(f"The run has {volume.shape[-1]} frames; a window needs {frames}")
    if max_windows:
        count = min(count, max_windows)
    windows = [volume[..., i * frames:(i + 1) * frames] for i in range(count)]
    return np.stack(windows)[..., None]  # (N, D, H, W, T, 1)


def windows_from_dataset(dataset_dir, window_shape: tuple[int, ...], split: str | None = None,
                         max_windows: int | None = None) -> np.ndarray:
    """Windows (N, D, H, W, T, C) of a converted dataset folder, in run order."""
    import tfrecords_tools

    frames = window_shape[3]
    dataset = tfrecords_tools.windows(str(dataset_dir), split, window=frames, shuffle=False,
                                      seed=0, dtype="float32", prefetch=False)
    if max_windows:
        dataset = dataset.take(max_windows)
    windows = [window for window, _label, _subject in dataset.as_numpy_iterator()]
    if not windows:
        raise ValueError(f"{dataset_dir} (split={split!r}) has no window of {frames} frames")
    return np.stack(windows)


def load_windows(path, window_shape: tuple[int, ...], preprocessing: dict | None = None,
                 max_windows: int | None = None, split: str | None = None,
                 confounds: str | pathlib.Path | None = None,
                 return_frames: bool = False, mask: str | pathlib.Path | None = None):
    """Windows from a converted dataset folder, a .nii/.nii.gz run, a .npy array or a .npz
    (key "fmri" or its only array). `split` selects a dataset split; `preprocessing`
    (dataset.json's settings), `confounds` (the run's fMRIPrep table) and `mask` (its brain
    mask) apply to NIfTI.

    With `return_frames`, returns (windows, provenance): a NIfTI's `NiftiWindows` (its
    `windows` field cut to `max_windows`), else None."""
    path = pathlib.Path(path)
    name = path.name.lower()
    provenance = None
    if (confounds or mask) and not name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: a confounds table or a mask applies to a .nii/.nii.gz run only (a "
                         "converted dataset has them applied already)")
    if path.is_dir():
        windows = windows_from_dataset(path, window_shape, split, max_windows)
    elif name.endswith((".nii", ".nii.gz")):
        provenance = nifti_windows(path, window_shape, preprocessing, max_windows, confounds, mask)
        windows = provenance.windows
    elif name.endswith(".npy"):
        windows = np.load(path)
    elif name.endswith(".npz"):
        with np.load(path) as data:
            key = "fmri" if "fmri" in data.files else (data.files[0] if len(data.files) == 1 else None)
            if key is None:
                raise ValueError(f"{path} has arrays {data.files}; name the windows 'fmri'")
            windows = data[key]
    else:
        raise ValueError(f"Unsupported input {path}: expected a converted dataset folder, "
                         ".nii, .nii.gz, .npy or .npz")
    if windows.ndim == len(window_shape):
        windows = windows[None]
    if tuple(windows.shape[1:]) != tuple(window_shape):
        raise ValueError(f"{path}: windows have shape {tuple(windows.shape[1:])}, the model expects "
                         f"{tuple(window_shape)}")
    windows = windows[:max_windows] if max_windows else windows
    return (windows, provenance) if return_frames else windows
