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

Letters: N windows, D/H/W space, T frames, C channels.
"""

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


def windows_from_nifti(path, window_shape: tuple[int, ...], preprocessing: dict | None = None,
                       max_windows: int | None = None) -> np.ndarray:
    """Consecutive non-overlapping windows (N, D, H, W, T, 1) of a 4D NIfTI run, preprocessed
    as `tfbrain prepare` would with `preprocessing` (default: its defaults)."""
    from tfrecords_tools.preprocess import PreprocessConfig, prepare_run

    depth, height, width, frames, channels = window_shape
    if channels != 1:
        raise ValueError(f"A NIfTI run gives one channel. Received: window_shape={window_shape}")
    settings = {**(preprocessing or {}), "target_shape": (depth, height, width),
                "min_frames": frames}
    config = PreprocessConfig(**settings)
    _, frame_iter = prepare_run(str(path), config)
    volume = np.stack(list(frame_iter), axis=-1).astype(np.float32)  # (D, H, W, T_run)
    return windows_from_volume(volume, frames, max_windows)


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
                 max_windows: int | None = None, split: str | None = None) -> np.ndarray:
    """Windows from a converted dataset folder, a .nii/.nii.gz run, a .npy array or a .npz
    (key "fmri" or its only array). `split` selects a dataset split; `preprocessing`
    (dataset.json's settings) applies to NIfTI."""
    path = pathlib.Path(path)
    name = path.name.lower()
    if path.is_dir():
        windows = windows_from_dataset(path, window_shape, split, max_windows)
    elif name.endswith((".nii", ".nii.gz")):
        windows = windows_from_nifti(path, window_shape, preprocessing, max_windows)
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
