"""Integrated Gradients for a subject's windows, written back to the original NIfTI space.

IG_i(x) = (x_i - x0_i) * mean_{k=1..m} dF/dx_i (x0 + k/m (x - x0)) (right Riemann sum),
with the baseline x0 a window filled with the background value (the brain minimum
after z-scoring, which is what preprocessing fills the background with), as SwiFT's
authors did. The map of one window is summed over its frames; a run's map is the mean
over its windows, `(D, H, W)` on the stored grid, then placed into the run's original
grid with the offsets and affine recorded at conversion.
"""

import numpy as np


def integrated_gradients(model, window: np.ndarray, target: int, steps: int = 32,
                         batch_size: int = 8, output_key: str | None = None) -> np.ndarray:
    """IG of one `(D, H, W, T, C)` window for output unit `target`; returns the same shape."""
    import tensorflow as tf

    output_key = output_key or model.output_key
    window = tf.convert_to_tensor(window, tf.float32)
    baseline = tf.fill(tf.shape(window), tf.reduce_min(window))
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


def run_attribution(model, dataset_dir: str, run: str, window: int, stride: int | None = None,
                    steps: int = 32, target: int | None = None) -> tuple[np.ndarray, dict]:
    """Mean over a run's windows of IG summed over frames: `(D, H, W)`, and details."""
    import tfrecords_tools

    if not getattr(model, "attributable", False):
        raise ValueError(f"{type(model).__name__} ({getattr(model, 'task_type', None)}) has no "
                         "output to attribute (its Task is not `attributable`); Integrated "
                         "Gradients need a model that scores a class or a value")
    output_key = model.output_key
    dataset = tfrecords_tools.windows(dataset_dir, None, window=window, stride=stride or window,
                                      shuffle=False, seed=0, subjects=[run])
    maps, logits = [], []
    for volume, _, _ in dataset:
        volume = volume.numpy()
        out = np.asarray(model(volume[None], training=False)[output_key])[0]
        unit = target if target is not None else model.default_attribution_unit(out)
        attribution = integrated_gradients(model, volume, unit, steps=steps, output_key=output_key)
        maps.append(attribution[..., 0].sum(axis=-1))  # (D, H, W): summed over frames
        logits.append(out.tolist())
    if not maps:
        raise ValueError(f"{dataset_dir}: run {run!r} has no window of {window} frames")
    return np.mean(maps, axis=0), {"run": run, "num_windows": len(maps), "outputs": logits,
                                   "steps": steps}


def write_attribution(model, dataset_dir: str, run: str, out_path: str, window: int,
                      stride: int | None = None, steps: int = 32, target: int | None = None) -> dict:
    """Write the run's IG map as NIfTI in its original space (and on the stored grid)."""
    import os

    import nibabel as nib

    import tfrecords_tools

    attribution, details = run_attribution(model, dataset_dir, run, window, stride, steps, target)
    image = tfrecords_tools.to_original_space(attribution.astype(np.float32), dataset_dir, run)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = f"{out_path}.tmp-{os.getpid()}.nii.gz"
    nib.save(image, tmp)
    os.replace(tmp, out_path)
    grid_path = out_path.replace(".nii.gz", "").replace(".nii", "") + "_grid.npy"
    np.save(grid_path, attribution)
    return {**details, "nifti": out_path, "grid": grid_path, "shape": list(image.shape),
            "max_abs": float(np.abs(attribution).max())}
