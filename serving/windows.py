"""Windows to send: (N, D, H, W, T, C) float32 arrays from a converted dataset, a NIfTI run
or a saved array.

A converted dataset (a folder written by `tfbrain prepare` / `tfrecords_tools.convert`) is
read with `tfrecords_tools.windows`, in order, non-overlapping: its preprocessing is the
one training used, so prefer it.

The NIfTI path does SwiFT's per-run preprocessing in its simplest form (brain = voxels
nonzero in some frame, z-score over brain voxels of the whole run, background = brain
minimum, centre crop/pad to (D, H, W)) and cuts the run into consecutive non-overlapping
T-frame windows. Use the same preprocessing the model was trained with.

Letters: N windows, D/H/W space, T frames, C channels.
"""

import pathlib

import numpy as np


def _crop_or_pad(volume: np.ndarray, target: tuple[int, int, int], fill: float) -> np.ndarray:
    """Centre-crop or pad the first three axes of (X, Y, Z, T) to `target`."""
    out = np.full(tuple(target) + volume.shape[3:], fill, dtype=volume.dtype)
    src, dst = [], []
    for size, want in zip(volume.shape[:3], target):
        if size >= want:
            start = (size - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:
            start = (want - size) // 2
            src.append(slice(0, size))
            dst.append(slice(start, start + size))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def preprocess_run(run: np.ndarray, spatial_shape: tuple[int, int, int], normalize: bool = True) -> np.ndarray:
    """(X, Y, Z, T) raw run -> (D, H, W, T) float32."""
    run = np.asarray(run, dtype=np.float32)
    if run.ndim != 4:
        raise ValueError(f"Expected a 4D run (X, Y, Z, T). Received: shape {run.shape}")
    fill = 0.0
    if normalize:
        brain = np.any(run != 0, axis=-1)  # (X, Y, Z)
        values = run[brain]
        if values.size:
            run = (run - values.mean()) / max(float(values.std()), 1e-6)
            fill = float(run[brain].min())
            run[~brain] = fill
    return _crop_or_pad(run, spatial_shape, fill)


def windows_from_run(run: np.ndarray, window_shape: tuple[int, ...], normalize: bool = True,
                     max_windows: int | None = None) -> np.ndarray:
    """Consecutive non-overlapping windows (N, D, H, W, T, C) of a (X, Y, Z, T) run."""
    depth, height, width, frames, channels = window_shape
    if channels != 1:
        raise ValueError(f"A NIfTI run gives one channel. Received: window_shape={window_shape}")
    volume = preprocess_run(run, (depth, height, width), normalize)  # (D, H, W, T_run)
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
                                      seed=None, dtype="float32", prefetch=False)
    if max_windows:
        dataset = dataset.take(max_windows)
    windows = [window for window, _label, _subject in dataset.as_numpy_iterator()]
    if not windows:
        raise ValueError(f"{dataset_dir} (split={split!r}) has no window of {frames} frames")
    return np.stack(windows)


def load_windows(path, window_shape: tuple[int, ...], normalize: bool = True,
                 max_windows: int | None = None, split: str | None = None) -> np.ndarray:
    """Windows from a converted dataset folder, a .nii/.nii.gz run, a .npy array or a .npz
    (key "fmri" or its only array). `split` selects a dataset split; `normalize` applies to NIfTI."""
    path = pathlib.Path(path)
    name = path.name.lower()
    if path.is_dir():
        windows = windows_from_dataset(path, window_shape, split, max_windows)
    elif name.endswith((".nii", ".nii.gz")):
        import nibabel
        windows = windows_from_run(np.asanyarray(nibabel.load(str(path)).dataobj), window_shape,
                                   normalize, max_windows)
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
    return windows[:max_windows] if max_windows else windows
