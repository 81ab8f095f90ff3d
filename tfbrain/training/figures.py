"""Figures a researcher puts in a paper: an attribution map over the run's mean EPI, three
orthogonal slices through its strongest voxel, thresholded (nilearn's `plot_stat_map`
style), and for a group map a row of axial slices through the brain as well (nilearn's
mosaic style); drawn with matplotlib, the optional `figures` extra.

Letters: D/H/W the stored grid's axes (x, y, z of the converted run).
"""

import numpy as np


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _display_range(anatomy: np.ndarray) -> tuple[float, float]:
    """The 2nd-98th percentiles of the voxels above the image's minimum (the background):
    with the background in them, an EPI's brain is one flat white."""
    above = anatomy[anatomy > anatomy.min()]
    low, high = np.percentile(above if above.size else anatomy, [2, 98])
    return float(low), float(high)


def attribution_figure(attribution: np.ndarray, anatomy: np.ndarray, path: str,
                       title: str = "", percentile: float = 99.0) -> str:
    """Write a PNG of `attribution` `(D, H, W)` over `anatomy` `(D, H, W)` (e.g. the mean
    EPI), showing voxels with |attribution| at or above its `percentile` (of nonzero voxels).
    Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    magnitude = np.abs(attribution)
    nonzero = magnitude[magnitude > 0]
    threshold = float(np.percentile(nonzero, percentile)) if nonzero.size else 0.0
    peak = np.unravel_index(int(np.argmax(magnitude)), magnitude.shape)
    limit = float(magnitude.max()) or 1.0
    views = (("sagittal", lambda a: a[peak[0], :, :]), ("coronal", lambda a: a[:, peak[1], :]),
             ("axial", lambda a: a[:, :, peak[2]]))
    figure, axes = plt.subplots(1, 3, figsize=(10, 3.6), facecolor="black")
    low, high = _display_range(anatomy)
    for axis, (name, cut) in zip(axes, views):
        axis.imshow(cut(anatomy).T, origin="lower", cmap="gray", vmin=low, vmax=high)
        # < not <=: a patch-level map has ties, the whole top patch sits at the threshold
        overlay = np.ma.masked_where(cut(magnitude).T < threshold, cut(attribution).T)
        image = axis.imshow(overlay, origin="lower", cmap="RdBu_r", vmin=-limit, vmax=limit)
        axis.set_title(name, color="white")
        axis.axis("off")
    bar = figure.colorbar(image, ax=axes, fraction=0.025, pad=0.02)
    bar.ax.tick_params(colors="white")
    bar.set_label("Integrated Gradients", color="white")
    figure.suptitle(f"{title}  (|IG| >= {percentile:g}th percentile, peak at voxel "
                    f"{tuple(int(i) for i in peak)})", color="white")
    figure.savefig(path, dpi=100, facecolor="black")
    plt.close(figure)
    return path


def group_attribution_figure(attribution: np.ndarray, anatomy: np.ndarray, path: str,
                             title: str = "", percentile: float = 99.0,
                             num_slices: int = 8) -> str:
    """Write a PNG of a group map `(D, H, W)` over the group's mean EPI `(D, H, W)`: a row
    of `num_slices` axial slices evenly through the brain (where a group effect may sit in
    several places, not only around the strongest voxel), |attribution| above its
    `percentile` (of nonzero voxels) in colour. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    magnitude = np.abs(attribution)
    nonzero = magnitude[magnitude > 0]
    threshold = float(np.percentile(nonzero, percentile)) if nonzero.size else 0.0
    limit = float(magnitude.max()) or 1.0
    in_brain = np.nonzero(np.any(anatomy != anatomy.min(), axis=(0, 1)))[0]  # axial planes
    first, last = (in_brain[0], in_brain[-1]) if in_brain.size else (0, anatomy.shape[2] - 1)
    planes = np.unique(np.linspace(first, last, num_slices + 2)[1:-1].round().astype(int))
    figure, axes = plt.subplots(1, len(planes), figsize=(1.6 * len(planes) + 1, 2.6),
                                facecolor="black", squeeze=False)
    low, high = _display_range(anatomy)
    for axis, z in zip(axes[0], planes):
        axis.imshow(anatomy[:, :, z].T, origin="lower", cmap="gray", vmin=low, vmax=high)
        overlay = np.ma.masked_where(magnitude[:, :, z].T < threshold, attribution[:, :, z].T)
        image = axis.imshow(overlay, origin="lower", cmap="RdBu_r", vmin=-limit, vmax=limit)
        axis.set_title(f"z={z}", color="white", fontsize=8)
        axis.axis("off")
    bar = figure.colorbar(image, ax=axes[0].tolist(), fraction=0.02, pad=0.01)
    bar.ax.tick_params(colors="white", labelsize=7)
    bar.set_label("Integrated Gradients", color="white", fontsize=8)
    figure.suptitle(f"{title}  (|IG| >= {percentile:g}th percentile)", color="white", fontsize=9)
    figure.savefig(path, dpi=100, facecolor="black")
    plt.close(figure)
    return path
