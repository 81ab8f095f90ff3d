"""A synthetic fMRI cohort with a planted class difference, converted with tfrecords_tools."""

import os

import nibabel as nib
import numpy as np


def planted_region(shape=(20, 20, 20), kind: str = "ellipsoid") -> np.ndarray:
    """The boolean region where class-1 subjects differ, on the original grid.

    `ellipsoid`: a ball off the centre, cut by the patch grid; `patches`: two adjacent 4^3
    patches of the stored 16^3 grid (the brain spans original voxels 2..17, so conversion
    crops 2 voxels per side: stored patch k covers original voxels 2 + 4k .. 5 + 4k)."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    if kind == "ellipsoid":
        return ((grid[0] - 0.35) ** 2 + (grid[1] + 0.3) ** 2 + grid[2] ** 2) < 0.12
    if kind != "patches":
        raise ValueError(f"`kind` must be 'ellipsoid' or 'patches'. Received: {kind!r}")
    region = np.zeros(shape, bool)
    region[10:14, 6:10, 6:14] = True  # stored patches (2, 1, 1) and (2, 1, 2)
    return region


def planted_cohort(folder: str, num_subjects: int = 40, shape=(20, 20, 20), num_frames: int = 16,
                   effect: float = 1.0, seed: int = 0, tr: float = 2.0,
                   oscillation_period: float = 0.0, region: str = "ellipsoid") -> tuple[list, list]:
    """4D runs of an ellipsoid 'brain' with smooth structure, subject offsets, a global
    drift and voxel noise; class-1 subjects get +`effect` (in units of the voxel noise
    std) in one spatial region for the whole run, or, with `oscillation_period` (frames),
    an oscillation of that amplitude there (which survives voxel-wise normalisation).
    Returns (paths, labels)."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    brain = (grid ** 2).sum(0) < 0.8
    region = planted_region(shape, region)
    anatomy = 1000 + 60 * np.sin(3 * grid[0]) * np.cos(2 * grid[1]) + 40 * grid[2]
    paths, labels = [], []
    for i in range(num_subjects):
        label = i % 2
        noise_std = 30.0
        run = anatomy[..., None] + rng.normal(0, 15) + rng.normal(0, noise_std, shape + (num_frames,))
        run += 10 * np.sin(np.linspace(0, rng.uniform(1, 4), num_frames))[None, None, None]
        if label and oscillation_period:
            phase = rng.uniform(0, 2 * np.pi)
            wave = np.sin(2 * np.pi * np.arange(num_frames) / oscillation_period + phase)
            run[region] += effect * noise_std * wave
        elif label:
            run[region] += effect * noise_std
        run[~brain] = 0
        img = nib.Nifti1Image(run.astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))
        img.header.set_zooms((3.0, 3.0, 3.0, tr))
        path = os.path.join(folder, f"sub-{i:03d}.nii.gz")
        nib.save(img, path)
        paths.append(path)
        labels.append("patient" if label else "control")
    return paths, labels


def convert_cohort(paths, labels, output_dir, target_shape=(16, 16, 16), min_frames=8,
                   normalization="zscore"):
    import tfrecords_tools

    runs = tfrecords_tools.runs_from_files(paths, labels)
    config = tfrecords_tools.PreprocessConfig(target_shape=target_shape, min_frames=min_frames,
                                              mask_method="nonzero", normalization=normalization)
    return tfrecords_tools.convert(runs, output_dir, config=config, workers=0, progress=False)
