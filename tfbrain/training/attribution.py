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
`(D, H, W)` on the stored grid, then placed into the run's original grid with the offsets
and affine recorded at conversion. A run that scrubbing split into segments is one run here
(by its original key or its subject): the mean is over the windows of all its segments, which
share one grid, and `window_frames` gives each window's source frames on the run's timeline.
"""

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


def run_attribution(model, dataset_dir: str, run: str, window: int, stride: int | None = None,
                    steps: int = 32, target=None, class_names: list | None = None,
                    progress: bool = False) -> tuple[dict, dict]:
    """Per target, the mean over a run's windows of IG summed over frames, `(D, H, W)` and
    masked to the brain; and details."""
    import tfrecords_tools

    if not getattr(model, "attributable", False):
        raise ValueError(f"{type(model).__name__} ({getattr(model, 'task_type', None)}) has no "
                         "output to attribute (its Task is not `attributable`); Integrated "
                         "Gradients need a model that scores a class or a value")
    from tfrecords_tools.preprocess import written_frames

    info = tfrecords_tools.run_info(dataset_dir, run)
    background = float(info.get("background", 0.0))
    targets = resolve_targets(model, target, class_names)
    output_key = model.output_key
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
    bar = _progress(len(volumes) * len(targets), progress, "attribute")
    for volume in volumes:
        out = np.asarray(model(volume[None], training=False)[output_key])[0]
        outputs.append(out.tolist())
        for name, unit in targets:
            chosen = model.default_attribution_unit(out) if unit is None else unit
            attribution = integrated_gradients(model, volume, chosen, steps=steps,
                                               output_key=output_key, baseline_value=background)
            maps[name].append(attribution[..., 0].sum(axis=-1) * mask)  # (D, H, W)
            bar.update(1)
    bar.close()
    means = {name: np.mean(m, axis=0) for name, m in maps.items()}
    mean_epi = np.mean([v[..., 0].mean(axis=-1) for v in volumes], axis=0)  # (D, H, W)
    return means, {"run": info["key"], "segments": info.get("segments", [info["key"]]),
                   "window_frames": window_frames, "num_windows": len(volumes), "outputs": outputs,
                   "steps": steps, "baseline": background, "mask_voxels": int(mask.sum()),
                   "targets": [name for name, _ in targets], "mask": mask, "mean": mean_epi}


def _progress(total: int, enabled: bool, what: str):
    class _NoBar:
        def update(self, n):
            pass

        def close(self):
            pass

    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=what, unit="window")


def _original_mean_epi(run_info: dict, shape) -> np.ndarray | None:
    """The temporal mean of the run's source NIfTI, if it is still there and fits `shape`."""
    import os

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


def write_attribution(model, dataset_dir: str, run: str, out_path: str, window: int,
                      stride: int | None = None, steps: int = 32, target=None,
                      class_names: list | None = None, progress: bool = False) -> dict:
    """Write the run's IG map(s) as NIfTI in its original space (one volume per target) and
    on the stored grid (`<out>_grid.npy`, `(D, H, W)` or `(D, H, W, K)`)."""
    import os

    import nibabel as nib

    import tfrecords_tools

    means, details = run_attribution(model, dataset_dir, run, window, stride, steps, target,
                                     class_names, progress)
    stack = np.stack([means[name] for name in details["targets"]], axis=-1).astype(np.float32)
    grid = stack[..., 0] if stack.shape[-1] == 1 else stack
    image = tfrecords_tools.to_original_space(grid, dataset_dir, details["run"])
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = f"{out_path}.tmp-{os.getpid()}.nii.gz"
    nib.save(image, tmp)
    os.replace(tmp, out_path)
    grid_path = out_path.replace(".nii.gz", "").replace(".nii", "") + "_grid.npy"
    np.save(grid_path, grid)
    mask = details.pop("mask")
    mean_epi = details.pop("mean")
    figures = []
    from tfbrain.training.figures import attribution_figure, have_matplotlib

    if have_matplotlib():
        # drawn in the original space over the run's own mean EPI (the stored frames may be
        # normalised voxel by voxel, which leaves no anatomy to show)
        original = np.asarray(image.dataobj, np.float32)
        original = original[..., None] if original.ndim == 3 else original
        underlay = _original_mean_epi(tfrecords_tools.run_info(dataset_dir, details["run"]),
                                      original.shape[:3])
        if underlay is None:
            original, underlay = stack, mean_epi
        stem = out_path.replace(".nii.gz", "").replace(".nii", "")
        for k, name in enumerate(details["targets"]):
            suffix = "" if len(details["targets"]) == 1 else f"_{name}"
            figures.append(attribution_figure(original[..., k], underlay, f"{stem}{suffix}.png",
                                              title=f"{details['run']}: {name}"))
    magnitude = np.abs(grid if grid.ndim == 3 else grid.sum(axis=-1))
    top = magnitude >= np.quantile(magnitude, 0.99)
    return {**details, "nifti": out_path, "grid": grid_path, "figures": figures,
            "shape": list(image.shape),
            "max_abs": float(magnitude.max()),
            "mass_in_brain": float(magnitude[mask].sum() / max(magnitude.sum(), 1e-30)),
            "top1pct_in_brain": float((top & mask).sum() / max(top.sum(), 1))}
