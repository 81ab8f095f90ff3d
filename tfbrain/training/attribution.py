"""Integrated Gradients for a subject's windows, written back to the original NIfTI space.

IG_i(x) = (x_i - x0_i) * mean_{k=1..m} dF/dx_i (x0 + k/m (x - x0)) (right Riemann sum).

Right by construction:
  * the baseline x0 is the run's background as recorded at conversion (`background` in the
    run's dataset.json entry: the brain minimum after z-scoring, 0 after voxel-wise
    normalisation), whatever the normalisation, so x - x0 is zero outside the brain;
  * maps are restricted to the stored brain mask (voxels that differ from the background in
    some frame of the run); outside it they are 0;
  * the target is explicit: an output unit, a class name, or every class in turn (one map
    per class); by default the Task's own choice (the logit of a binary classifier, the
    predicted class of each window otherwise, the prediction of a regressor).

The map of one window is summed over its frames; a run's map is the mean over its windows,
`(D, H, W)` on the stored grid, by default pooled to the backbone's input patches (the
finest resolution the model tells apart, `pool_to_patches`), then placed into the run's
original grid with the offsets and affine recorded at conversion. A run that scrubbing split
into segments is one run here (by its original key or its subject): the mean is over the
windows of all its segments, which share one grid, and `window_frames` gives each window's
source frames on the run's timeline.

Group maps (`write_group_attribution`) average runs voxel by voxel in their common original
grid, or contrast one class against the others; `group_attribution` checks the grid and
makes atlas parcel tables.
"""

import os

import numpy as np


def integrated_gradients(model, window: np.ndarray, target: int, steps: int = 32,
                         batch_size: int = 8, output_key: str | None = None,
                         baseline_value: float | None = None) -> np.ndarray:
    """IG of one `(D, H, W, T, C)` window for output unit `target`; returns the same shape.

    Args:
        baseline_value: the value the baseline window is filled with (the run's recorded
            background); default: the window's minimum.
    """
    import tensorflow as tf

    output_key = output_key or model.output_key
    window = tf.convert_to_tensor(window, tf.float32)
    fill = tf.reduce_min(window) if baseline_value is None else tf.constant(baseline_value, tf.float32)
    baseline = tf.fill(tf.shape(window), fill)
    delta = window - baseline
    alphas = tf.range(1, steps + 1, dtype=tf.float32) / steps  # (m,)
    total = tf.zeros_like(window)
    for start in range(0, steps, batch_size):
        chunk = alphas[start:start + batch_size]
        points = baseline[None] + chunk[:, None, None, None, None, None] * delta[None]  # (k, D, H, W, T, C)
        with tf.GradientTape() as tape:
            tape.watch(points)
            outputs = model(points, training=False)[output_key]
            score = tf.reduce_sum(tf.cast(outputs[:, target], tf.float32))
        total += tf.reduce_sum(tape.gradient(score, points), axis=0)
    return (delta * total / steps).numpy()


def resolve_targets(model, target, class_names: list | None) -> list:
    """`target` (None, an int, a class name, or "each") -> list of (label, unit or None).

    None keeps the Task's per-window choice (unit None)."""
    if target is None:
        return [("default", None)]
    if target == "each":
        if not class_names:
            raise ValueError("--target each needs the class names that `tfbrain train` records "
                             "in a model's metadata.json")
        units = (list(range(len(class_names))) if getattr(model, "num_classes", 1) > 1
                 else [0])  # a binary model has one logit: the second class's
        names = class_names if len(units) > 1 else [class_names[-1]]
        return list(zip(names, units))
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        if not class_names or target not in class_names:
            raise ValueError(f"--target {target!r} is not a class of this model; classes: "
                             f"{class_names}")
        index = class_names.index(target)
        if getattr(model, "num_classes", 1) == 1:
            if index != 1:
                raise ValueError(f"a binary model has one logit, for {class_names[1]!r}; attribute "
                                 f"that (negative values favour {class_names[0]!r})")
            return [(target, 0)]
        return [(target, index)]
    return [(f"unit{int(target)}", int(target))]


def attribution_patch(model) -> tuple[int, int, int] | None:
    """The spatial size of the backbone's non-overlapping input patches, the finest
    resolution at which the model tells voxels apart; None when it has none (a conv stem,
    overlapping tubelets): maps then stay voxel-level."""
    backbone = getattr(model, "backbone", model)
    size = getattr(backbone, "patch_size", None)
    stride = getattr(backbone, "patch_stride", None) or size
    if size is None or len(size) < 3 or tuple(stride)[:3] != tuple(size)[:3]:
        return None
    return tuple(int(s) for s in size[:3])


def pool_to_patches(attribution: np.ndarray, mask: np.ndarray, patch) -> np.ndarray:
    """Each patch's mean attribution (its total over its volume) on its brain voxels,
    `(D, H, W)`; voxels outside `mask` stay 0.

    Why: the patch embedding is the model's first layer, so inside a patch a voxel's IG is
    its own (noisy) value times its kernel weight: finer than the patch, the map shows the
    input's noise, not what the model uses. Patches compare by their totals (what the model
    attributes to each token): dividing by the brain voxels instead would make a patch with
    4 brain voxels at the edge look 16 times as dense as its total. The part of an edge
    patch's total outside the brain is not drawn."""
    shape = attribution.shape
    grid = [-(-n // p) for n, p in zip(shape, patch)]  # patches per axis (a last partial one)
    index = np.indices(shape) // np.asarray(patch)[:, None, None, None]  # (3, D, H, W)
    patch_of_voxel = np.ravel_multi_index(tuple(index), grid)  # (D, H, W)
    totals = np.bincount(patch_of_voxel.ravel(), weights=attribution.ravel(),
                         minlength=int(np.prod(grid)))
    volumes = np.bincount(patch_of_voxel.ravel(), minlength=int(np.prod(grid)))
    return (totals / np.maximum(volumes, 1))[patch_of_voxel] * mask


def run_attribution(model, dataset_dir: str, run: str, window: int, stride: int | None = None,
                    steps: int = 32, target=None, class_names: list | None = None,
                    progress: bool = False, bar=None,
                    resolution: str = "patch") -> tuple[dict, dict]:
    """Per target, the mean over a run's windows of IG summed over frames, `(D, H, W)` and
    masked to the brain; and details. `resolution` "patch" pools the map to the backbone's
    input patches (`pool_to_patches`; voxel-level when it has none), "voxel" keeps IG per
    voxel. `bar` (a `progress_bar`) is advanced per window and target; without one,
    `progress` draws this run's own."""
    import tfrecords_tools

    from tfbrain.training.progress import progress_bar

    if not getattr(model, "attributable", False):
        raise ValueError(f"{type(model).__name__} ({getattr(model, 'task_type', None)}) has no "
                         "output to attribute (its Task is not `attributable`); Integrated "
                         "Gradients need a model that scores a class or a value")
    if resolution not in ("patch", "voxel"):
        raise ValueError(f"`resolution` must be 'patch' or 'voxel'. Received: {resolution!r}")
    from tfrecords_tools.preprocess import written_frames

    info = tfrecords_tools.run_info(dataset_dir, run)
    background = float(info.get("background", 0.0))
    targets = resolve_targets(model, target, class_names)
    output_key = model.output_key
    patch = attribution_patch(model) if resolution == "patch" else None
    stride = stride or window
    # a scrubbed run's segments are read one by one, so each window keeps its source frames on
    # the run's own timeline; the map is then the mean over the windows of all segments
    volumes, window_frames = [], []
    for segment in tfrecords_tools.run_segments(dataset_dir, run):
        frames = written_frames(segment)
        dataset = tfrecords_tools.windows(dataset_dir, None, window=window, stride=stride,
                                          shuffle=False, seed=0, subjects=[segment["key"]])
        for index, (volume, _, _) in enumerate(dataset):
            volumes.append(volume.numpy())
            window_frames.append([frames[index * stride], frames[index * stride + window - 1] + 1])
    if not volumes:
        raise ValueError(f"{dataset_dir}: run {run!r} has no window of {window} frames")
    # stored brain mask: voxels that leave the recorded background in some frame
    mask = np.zeros(volumes[0].shape[:3], bool)
    for volume in volumes:
        mask |= np.any(volume[..., 0] != np.float32(background), axis=-1)
    maps = {name: [] for name, _ in targets}
    outputs = []
    own_bar = bar is None
    if own_bar:
        bar = progress_bar(len(volumes) * len(targets), "attribute", "window", enabled=progress)
    for volume in volumes:
        out = np.asarray(model(volume[None], training=False)[output_key])[0]
        outputs.append(out.tolist())
        for name, unit in targets:
            chosen = model.default_attribution_unit(out) if unit is None else unit
            attribution = integrated_gradients(model, volume, chosen, steps=steps,
                                               output_key=output_key, baseline_value=background)
            maps[name].append(attribution[..., 0].sum(axis=-1) * mask)  # (D, H, W)
            bar.update(1)
    if own_bar:
        bar.close()
    means = {name: np.mean(m, axis=0) for name, m in maps.items()}
    if patch is not None:  # pooling is linear: pooling the mean is the mean of pooled maps
        means = {name: pool_to_patches(m, mask, patch) for name, m in means.items()}
    mean_epi = np.mean([v[..., 0].mean(axis=-1) for v in volumes], axis=0)  # (D, H, W)
    return means, {"run": info["key"], "segments": info.get("segments", [info["key"]]),
                   "window_frames": window_frames, "num_windows": len(volumes), "outputs": outputs,
                   "steps": steps, "baseline": background, "mask_voxels": int(mask.sum()),
                   "targets": [name for name, _ in targets], "mask": mask, "mean": mean_epi,
                   "resolution": ("patch " + "x".join(map(str, patch))) if patch else "voxel"}


def _original_mean_epi(run_info: dict, shape) -> np.ndarray | None:
    """The temporal mean of the run's source NIfTI, if it is still there and fits `shape`."""
    import nibabel as nib

    source = run_info.get("source")
    if not source or not os.path.exists(source):
        return None
    image = nib.load(source)
    if tuple(image.shape[:3]) != tuple(shape):
        return None
    data = image.dataobj
    frames = range(0, image.shape[3], max(1, image.shape[3] // 20))  # 20 frames are plenty
    return np.mean([np.asarray(data[..., t], np.float32) for t in frames], axis=0)


def _stem(out_path: str) -> str:
    return out_path.replace(".nii.gz", "").replace(".nii", "")


def _save_nifti(image, out_path: str) -> None:
    import nibabel as nib

    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = f"{out_path}.tmp-{os.getpid()}.nii.gz"
    nib.save(image, tmp)
    os.replace(tmp, out_path)


def _write_figures_and_tables(stack: np.ndarray, affine: np.ndarray, brain: np.ndarray,
                              underlay: np.ndarray, targets: list, out_path: str, title: str,
                              atlas: str | None, atlas_labels: str | None,
                              group: bool = False) -> dict:
    """Per target: a PNG over `underlay` (with matplotlib; a group map adds an axial row,
    `<out>_axial.png`) and, with an atlas, a parcel CSV. `stack` `(X, Y, Z, K)`, `brain`
    and `underlay` `(X, Y, Z)`, all on the map's grid."""
    from tfbrain.training.figures import (attribution_figure, group_attribution_figure,
                                          have_matplotlib)
    from tfbrain.training.group_attribution import parcel_table, write_parcel_table

    figures, tables, sampling = [], [], None
    stem = _stem(out_path)
    for k, name in enumerate(targets):
        suffix = "" if len(targets) == 1 else f"_{name}"
        if have_matplotlib():
            figures.append(attribution_figure(stack[..., k], underlay, f"{stem}{suffix}.png",
                                              title=f"{title}: {name}"))
            if group:
                figures.append(group_attribution_figure(
                    stack[..., k], underlay, f"{stem}{suffix}_axial.png", title=f"{title}: {name}"))
        if atlas:
            rows, sampling = parcel_table(stack[..., k], affine, brain, atlas, atlas_labels)
            tables.append(write_parcel_table(f"{stem}{suffix}_parcels.csv", rows))
    return {"figures": figures, "parcel_tables": tables, "atlas_sampling": sampling}


def write_attribution(model, dataset_dir: str, run: str, out_path: str, window: int,
                      stride: int | None = None, steps: int = 32, target=None,
                      class_names: list | None = None, progress: bool = False,
                      atlas: str | None = None, atlas_labels: str | None = None,
                      resolution: str = "patch") -> dict:
    """Write the run's IG map(s) as NIfTI in its original space (one volume per target), on
    the stored grid (`<out>_grid.npy`, `(D, H, W)` or `(D, H, W, K)`), a figure per target
    (with matplotlib) and, given an `atlas` NIfTI, a parcel table per target
    (`<out>_parcels.csv`)."""
    import tfrecords_tools

    if atlas:  # a bad atlas or names file fails before the long part
        _check_atlas_inputs(atlas, atlas_labels, tfrecords_tools.run_info(dataset_dir, run))
    means, details = run_attribution(model, dataset_dir, run, window, stride, steps, target,
                                     class_names, progress, resolution=resolution)
    stack = np.stack([means[name] for name in details["targets"]], axis=-1).astype(np.float32)
    grid = stack[..., 0] if stack.shape[-1] == 1 else stack
    info = tfrecords_tools.run_info(dataset_dir, details["run"])
    image = tfrecords_tools.to_original_space(grid, dataset_dir, details["run"])
    _save_nifti(image, out_path)
    grid_path = _stem(out_path) + "_grid.npy"
    np.save(grid_path, grid)
    mask = details.pop("mask")
    mean_epi = details.pop("mean")
    original = np.asarray(image.dataobj, np.float32)
    original = original[..., None] if original.ndim == 3 else original  # (X, Y, Z, K)
    brain = np.asarray(tfrecords_tools.to_original_space(mask.astype(np.float32), dataset_dir,
                                                         details["run"]).dataobj) > 0.5
    # drawn in the original space over the run's own mean EPI (the stored frames may be
    # normalised voxel by voxel, which leaves no anatomy to show)
    underlay = _original_mean_epi(info, original.shape[:3])
    if underlay is None:
        underlay = np.asarray(tfrecords_tools.to_original_space(mean_epi, dataset_dir,
                                                                details["run"]).dataobj)
    written = _write_figures_and_tables(original, image.affine, brain, underlay,
                                        details["targets"], out_path, details["run"], atlas,
                                        atlas_labels)
    magnitude = np.abs(grid if grid.ndim == 3 else grid.sum(axis=-1))
    top = magnitude >= np.quantile(magnitude, 0.99)
    return {**details, "nifti": out_path, "grid": grid_path, **written,
            "shape": list(image.shape),
            "max_abs": float(magnitude.max()),
            "mass_in_brain": float(magnitude[mask].sum() / max(magnitude.sum(), 1e-30)),
            "top1pct_in_brain": float((top & mask).sum() / max(top.sum(), 1))}


def _check_atlas_inputs(atlas: str, atlas_labels: str | None, info: dict) -> None:
    from tfbrain.training.group_attribution import check_atlas

    check_atlas(atlas, atlas_labels, tuple(info["original_shape"][:3]),
                np.asarray(info["original_affine"], np.float64))


def run_class(info: dict, class_names: list | None, label_groups: dict | None = None) -> str:
    """The class name of a run (its dataset label, through `[data] label_groups` when the
    model merged labels); a ValueError for a run without one class."""
    raw = info.get("raw_label")
    if info.get("frame_labels") or raw is None:
        raise ValueError(f"run {info['key']!r} has no single class (unlabelled, or labelled "
                         "per frame by events); --contrast compares runs by their class")
    for group, members in (label_groups or {}).items():
        if raw in members:
            return group
    if class_names and raw not in class_names:
        raise ValueError(f"run {info['key']!r} has label {raw!r}, not a class of this model "
                         f"({class_names})")
    return str(raw)


def write_group_attribution(model, dataset_dir: str, runs: list[str], out_path: str,
                            window: int, stride: int | None = None, steps: int = 32,
                            target=None, class_names: list | None = None,
                            progress: bool = False, atlas: str | None = None,
                            atlas_labels: str | None = None, contrast: str | None = None,
                            label_groups: dict | None = None, resolution: str = "patch") -> dict:
    """The mean of several runs' IG maps, voxel by voxel in their common original grid
    (refused, before any gradient, when the runs' recorded shapes or affines differ), written
    as `write_attribution` writes one run's: NIfTI, figure over the runs' mean EPI, parcel
    tables with an `atlas`. The mean is signed: what is consistent across subjects stays,
    a subject's own noise averages out.

    With `contrast` (a class name) the map is the mean over the runs of that class minus the
    mean over the other runs. With the background baseline each run's map also holds what
    every brain shares (the path from an empty brain to any brain passes through its
    anatomy), which dominates a one-class mean; the difference keeps what tells the classes
    apart (docs/training.md: on a z-scored planted cohort, 22% of the patients' mean's
    top-1% voxels lay in the planted region, 99% of the contrast's)."""
    import nibabel as nib

    import tfrecords_tools

    from tfbrain.training.group_attribution import check_common_grid
    from tfbrain.training.progress import progress_bar

    if not runs:
        raise ValueError("a group map needs at least one run; the selection is empty")
    infos = [tfrecords_tools.run_info(dataset_dir, run) for run in runs]
    keys = [info["key"] for info in infos]
    if len(set(keys)) != len(keys):
        raise ValueError(f"a run is named twice in {runs}")
    shape, affine = check_common_grid(dataset_dir, infos)
    in_class = [True] * len(infos)
    if contrast is not None:
        if class_names and contrast not in class_names:
            raise ValueError(f"--contrast {contrast!r} is not a class of this model; classes: "
                             f"{class_names}")
        in_class = [run_class(info, class_names, label_groups) == contrast for info in infos]
        if all(in_class) or not any(in_class):
            raise ValueError(f"--contrast {contrast!r} needs runs of that class and of another "
                             f"among the {len(infos)} selected; it has {sum(in_class)} of "
                             f"{contrast!r}")
    if atlas:
        _check_atlas_inputs(atlas, atlas_labels, infos[0])
    stride = stride or window
    num_targets = len(resolve_targets(model, target, class_names))
    total = sum(max(0, (info["num_frames"] - window) // stride + 1) for info in infos)
    bar = progress_bar(total * num_targets, f"attribute {len(infos)} runs", "window",
                       enabled=progress)
    sums = {True: None, False: None}  # running sums of maps (X, Y, Z, K) per side of a contrast
    brain, underlay, targets, per_run = np.zeros(shape, bool), None, None, []
    for info, side in zip(infos, in_class):
        means, details = run_attribution(model, dataset_dir, info["key"], window, stride, steps,
                                         target, class_names, bar=bar, resolution=resolution)
        targets = details["targets"]
        stack = np.stack([means[name] for name in targets], axis=-1).astype(np.float32)
        original = np.asarray(tfrecords_tools.to_original_space(
            stack, dataset_dir, info["key"]).dataobj, np.float64)  # (X, Y, Z, K)
        sums[side] = original if sums[side] is None else sums[side] + original
        brain |= np.asarray(tfrecords_tools.to_original_space(
            details["mask"].astype(np.float32), dataset_dir, info["key"]).dataobj) > 0.5
        epi = _original_mean_epi(info, shape)
        if epi is None:
            epi = np.asarray(tfrecords_tools.to_original_space(details["mean"], dataset_dir,
                                                               info["key"]).dataobj)
        underlay = epi if underlay is None else underlay + epi
        per_run.append({"run": info["key"], "num_windows": details["num_windows"],
                        "outputs": details["outputs"]})
    bar.close()
    num_in = sum(in_class)
    group = sums[True] / num_in  # (X, Y, Z, K)
    title = f"mean of {len(infos)} runs"
    if contrast is not None:
        group = group - sums[False] / (len(infos) - num_in)
        title = f"{contrast} ({num_in} runs) - others ({len(infos) - num_in} runs)"
    group = group.astype(np.float32)
    underlay = underlay / len(infos)
    image = nib.Nifti1Image(group[..., 0] if group.shape[-1] == 1 else group, affine)
    _save_nifti(image, out_path)
    written = _write_figures_and_tables(group, affine, brain, underlay, targets, out_path,
                                        title, atlas, atlas_labels, group=True)
    magnitude = np.abs(group.sum(axis=-1))
    top = magnitude >= np.quantile(magnitude, 0.99)
    return {"runs": keys, "num_runs": len(keys), "targets": targets, "steps": steps,
            "resolution": details["resolution"], "map": title, "nifti": out_path, **written, "shape": list(image.shape),
            "grid": "common original grid", "brain_voxels": int(brain.sum()),
            "max_abs": float(magnitude.max()),
            "mass_in_brain": float(magnitude[brain].sum() / max(magnitude.sum(), 1e-30)),
            "top1pct_in_brain": float((top & brain).sum() / max(top.sum(), 1)),
            "per_run": per_run}
