"""Small synthetic 4D NIfTI runs for the tfrecords_tools tests."""

import os

import nibabel as nib
import numpy as np

AFFINE = np.array([[-2.0, 0, 0, 10], [0, 2.0, 0, -20], [0, 0, 2.5, -5], [0, 0, 0, 1]])


def synthetic_run(path: str, shape=(10, 12, 8), num_frames: int = 24, seed: int = 0,
                  dtype=np.float32, tr: float = 2.0) -> np.ndarray:
    """A brain-like block of noise on a zero background; returns the data written."""
    rng = np.random.default_rng(seed)
    data = np.zeros(tuple(shape) + (num_frames,), np.float32)
    data[2:-2, 3:-2, 2:-2] = rng.normal(500, 40, data[2:-2, 3:-2, 2:-2].shape)
    data = data.astype(dtype)
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_zooms((2.0, 2.0, 2.5, tr))
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)
    return data


def synthetic_runs(folder: str, num_subjects: int = 4, **kwargs) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(num_subjects):
        path = os.path.join(folder, f"sub-{i:02d}.nii.gz")
        synthetic_run(path, seed=i, **kwargs)
        paths.append(path)
    return paths


def reference_preprocess(data: np.ndarray, offsets, target_shape, dtype=np.float16) -> np.ndarray:
    """NumPy statement of the SwiFT rule for a zero-background run: (T, D, H, W)."""
    data = data.astype(np.float64)
    mask = np.any(data != 0, axis=3)
    brain = data[mask]
    z = (data - brain.mean()) / brain.std()
    background = z[mask].min()
    z[~mask] = background
    out = np.full((data.shape[3],) + tuple(target_shape), background)
    for t in range(data.shape[3]):
        src, dst = [], []
        for n, size, o in zip(data.shape[:3], target_shape, offsets):
            lo, hi = max(0, -o), min(n, size - o)
            src.append(slice(lo, hi))
            dst.append(slice(lo + o, hi + o))
        out[(t,) + tuple(dst)] = z[tuple(src) + (t,)]
    return out.astype(dtype)
