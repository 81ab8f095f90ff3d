"""Parcel time series from a prepared run and a user-supplied atlas.

Point-set models (BiXT's coordinate tokenizer) read one token per parcel: its time series and the
world coordinates of its centroid. `parcel_time_series(dataset_dir, run, atlas)` averages the
stored frames of `run` inside each atlas label. The atlas is any integer-labelled 3D NIfTI (e.g.
Schaefer 1000 in MNI space) that overlaps the run in world coordinates; it is sampled (nearest
neighbour) at the world position of every voxel of the stored grid, through the run's recorded
crop/pad offsets and resampled affine, so the series are taken from exactly the voxels the
windows hold. tfbrain ships no atlas.
"""

import dataclasses
from typing import Optional, Sequence

import numpy as np

from tfrecords_tools.reader import read_frames, run_info
from tfrecords_tools.schema import load_dataset_info


@dataclasses.dataclass(frozen=True)
class ParcelSeries:
    """`series` (T, N) float32: mean of each parcel's stored voxels per frame (0 where a parcel
    has no voxel in the stored grid); `labels` (N,) the atlas labels; `centroids` (N, 3) world
    coordinates (mm) of each label's atlas voxels; `voxel_counts` (N,) stored voxels per parcel."""

    series: np.ndarray
    labels: np.ndarray
    centroids: np.ndarray
    voxel_counts: np.ndarray


def _load_atlas(atlas):
    import nibabel as nib

    image = nib.load(atlas) if isinstance(atlas, str) else atlas
    data = np.asarray(image.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"`atlas` must be a 3D label image. Received: shape {data.shape}")
    if not np.allclose(data, np.round(data)):
        raise ValueError("`atlas` must hold integer labels (a probabilistic atlas needs "
                         "thresholding first)")
    return data.astype(np.int64), np.asarray(image.affine, np.float64)


def atlas_on_stored_grid(atlas_labels: np.ndarray, atlas_affine: np.ndarray, info: dict,
                         frame_shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour atlas label at every voxel of the stored `(D, H, W)` grid (0 outside)."""
    offsets = np.asarray(info["offsets"], np.float64)[:, None]
    stored = np.indices(tuple(frame_shape)).reshape(3, -1).astype(np.float64)
    resampled = stored - offsets  # stored voxel i holds resampled voxel i - offsets
    affine = np.asarray(info["resampled_affine"], np.float64)
    world = affine[:3, :3] @ resampled + affine[:3, 3:4]
    inverse = np.linalg.inv(atlas_affine)
    voxel = np.rint(inverse[:3, :3] @ world + inverse[:3, 3:4]).astype(np.int64)  # (3, V)
    inside = np.all((voxel >= 0) & (voxel < np.array(atlas_labels.shape)[:, None]), axis=0)
    labels = np.zeros(voxel.shape[1], np.int64)
    labels[inside] = atlas_labels[tuple(voxel[:, inside])]
    return labels.reshape(tuple(frame_shape))


def parcel_time_series(dataset_dir: str, run: str, atlas,
                       labels: Optional[Sequence[int]] = None) -> ParcelSeries:
    """Per-parcel mean time series of one prepared run.

    Args:
        dataset_dir: a folder written by `tfrecords_tools.convert` / `tfbrain prepare`.
        run: a run key, or the id of a subject with one run.
        atlas: path of a 3D integer-labelled NIfTI, or a nibabel image.
        labels: the parcels to keep, in this order; default every non-zero atlas label, sorted.

    Returns:
        A `ParcelSeries`.
    """
    atlas_labels, atlas_affine = _load_atlas(atlas)
    if labels is None:
        labels = np.unique(atlas_labels[atlas_labels != 0])
    labels = np.asarray(labels, np.int64)
    missing = sorted(set(labels.tolist()) - set(np.unique(atlas_labels).tolist()))
    if missing:
        raise ValueError(f"`labels` {missing[:10]} do not occur in the atlas")
    info = run_info(dataset_dir, run)
    frame_shape = tuple(load_dataset_info(dataset_dir)["frame_shape"])
    stored_labels = atlas_on_stored_grid(atlas_labels, atlas_affine, info, frame_shape).ravel()
    # parcel index per stored voxel (N for "no parcel"), so one bincount averages all parcels
    lookup = {int(label): k for k, label in enumerate(labels)}
    index = np.array([lookup.get(int(v), len(labels)) for v in np.unique(stored_labels)])
    parcel_of_voxel = index[np.searchsorted(np.unique(stored_labels), stored_labels)]
    counts = np.bincount(parcel_of_voxel, minlength=len(labels) + 1)[:len(labels)]
    series = []
    for frame in read_frames(dataset_dir, run=info["key"]):
        volume = frame["volume"].numpy().astype(np.float64).ravel()
        sums = np.bincount(parcel_of_voxel, weights=volume, minlength=len(labels) + 1)
        series.append(sums[:len(labels)] / np.maximum(counts, 1))
    voxels = np.nonzero(atlas_labels)
    world = atlas_affine[:3, :3] @ np.stack(voxels).astype(np.float64) + atlas_affine[:3, 3:4]
    centroids = np.stack([world[:, atlas_labels[voxels] == label].mean(axis=1)
                          for label in labels]) if len(labels) else np.zeros((0, 3))
    return ParcelSeries(series=np.asarray(series, np.float32).reshape(-1, len(labels)),
                        labels=labels, centroids=centroids.astype(np.float32),
                        voxel_counts=counts.astype(np.int64))
