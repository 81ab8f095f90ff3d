"""What a training run writes for TensorBoard (`tensorboard --logdir RUN/tensorboard --host 127.0.0.1`).

  train/ and validation/   epoch scalars under one tag per metric, so the two runs overlay
                           (`epoch_loss`, `epoch_accuracy`, ...; validation adds the
                           subject-level ones), learning rate (Keras' TensorBoard callback)
  train/                   weight histograms, gradient histograms (`gradients/<variable>`),
                           images `slices/{axial,coronal,sagittal}` of an input window (after
                           voxel-wise normalisation: the run's mean EPI, and the input frame
                           under `slices_model_input/*`)
  validation/              the Task's images (e.g. MAE reconstructions), an Integrated-
                           Gradients map of a validation window (`attribution/...`)
  test/                    the test split's metrics of `best/`, at the last step
  (root)                   the projector: window embeddings (the backbone's pooled output)
                           with subject and label, found by TensorBoard at the log root
  plugins/profile/         the profiler trace, when `[tensorboard] profile_steps` is set
"""

import os

import keras
import numpy as np


class LearningRateLogger(keras.callbacks.Callback):
    """Puts the current learning rate into the epoch logs (TensorBoard then plots it)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(np.asarray(self.model.optimizer.learning_rate))


class GradientHistograms(keras.callbacks.Callback):
    """Histograms of the gradients of the loss on one fixed batch, each epoch."""

    def __init__(self, log_dir, batch):
        super().__init__()
        self.log_dir, self.batch = str(log_dir), batch
        self.writer = None

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        x, y = self.batch if isinstance(self.batch, tuple) else (self.batch, None)
        with tf.GradientTape() as tape:
            predictions = self.model(x, training=False)
            loss = self.model.compute_loss(x=x, y=y, y_pred=predictions)
        variables = self.model.trainable_variables
        gradients = tape.gradient(loss, variables)
        if self.writer is None:
            self.writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "train"))
        with self.writer.as_default(step=epoch):
            for variable, gradient in zip(variables, gradients):
                if gradient is not None:
                    tf.summary.histogram(f"gradients/{variable.path}", gradient)
        self.writer.flush()


def mid_slices(window: np.ndarray) -> dict:
    """Axial, coronal and sagittal mid-slices of frame 0 of a `(D, H, W, T, C)` window,
    scaled to [0, 1] as `(1, rows, cols, 1)` images (axes D, H, W taken as x, y, z).

    The scale is the 1st-99th percentiles of the voxels above the volume's minimum (the
    background): with the background in them, a mean EPI's brain is one flat white."""
    volume = np.asarray(window, np.float32)[..., 0, 0]  # (D, H, W)
    above = volume[volume > volume.min()]
    low, high = np.percentile(above if above.size else volume, [1, 99])
    volume = np.clip((volume - low) / max(high - low, 1e-6), 0, 1)
    d, h, w = volume.shape
    slices = {"axial": volume[:, :, w // 2].T[::-1],      # (H, D): z mid
              "coronal": volume[:, h // 2, :].T[::-1],    # (W, D): y mid
              "sagittal": volume[d // 2, :, :].T[::-1]}   # (W, H): x mid
    return {k: np.ascontiguousarray(v)[None, :, :, None] for k, v in slices.items()}


def display_anatomy(dataset_dir: str, run: str) -> tuple[np.ndarray | None, str]:
    """What the `slices/*` images show for a run, and why: `(None, note)` when a stored frame
    shows the anatomy itself (z-scored over the brain: one shift and scale per run), or the
    run's mean EPI on the stored grid `(D, H, W)` after voxel-wise normalisation, where each
    voxel's time series is z-scored on its own, so a frame is the noise around each voxel's
    mean and no anatomy is left in the stored data. The mean EPI is read from the run's
    source NIfTI; when that is gone, the brain mask stands in (and the note says so)."""
    import tfrecords_tools
    from tfrecords_tools.preprocess import to_stored_grid

    settings = tfrecords_tools.load_dataset_info(dataset_dir)
    if settings.get("preprocessing", {}).get("normalization") != "voxelwise":
        return None, ("an input frame, z-scored over the brain (one shift and scale per run), "
                      "scaled to the 1st-99th percentiles of its brain voxels for display")
    info = tfrecords_tools.run_info(dataset_dir, run)
    frame_shape = tuple(settings["frame_shape"])
    source = info.get("source")
    if source and os.path.exists(source):
        import nibabel as nib

        image = nib.load(source)
        frames = range(0, image.shape[3], max(1, image.shape[3] // 20))  # 20 frames are plenty
        mean = np.mean([np.asarray(image.dataobj[..., t], np.float32) for t in frames], axis=0)
        return to_stored_grid(mean, info, frame_shape), (
            f"the mean EPI of run {info['key']} (its source NIfTI, on the stored grid): this "
            "dataset is normalised voxel by voxel, so a stored frame (`slices_model_input/*`) "
            "is each voxel's noise around its own mean and shows no anatomy")
    mask = np.zeros(frame_shape, np.float32)
    for frame in tfrecords_tools.read_frames(dataset_dir, run=info["key"]).take(8):
        mask = np.maximum(mask, (frame["volume"].numpy() != info["background"]).astype(np.float32))
    return mask, (f"the brain mask of run {info['key']}: this dataset is normalised voxel by "
                  "voxel, so a stored frame shows no anatomy, and the run's source NIfTI (for "
                  "its mean EPI) is no longer at " + str(source))


class BrainSlices(keras.callbacks.Callback):
    """Mid-slice images of one input window, written once at the start of training:
    `slices/*` a view a human recognises (see `display_anatomy`), and, when that is not the
    input itself, `slices_model_input/*` the frame the model sees."""

    def __init__(self, log_dir, window, anatomy=None, note: str = ""):
        super().__init__()
        self.log_dir, self.window = str(log_dir), np.asarray(window)
        self.anatomy, self.note = anatomy, note
        self.done = False

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        if self.done:
            return
        writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "train"))
        frame_note = ("frame 0 of an input window as the model sees it, scaled to the 1st-99th "
                      "percentiles of its brain voxels" + (" (voxel-wise z-scored: noise by design)"
                                       if self.anatomy is not None else ""))
        with writer.as_default(step=0):
            if self.anatomy is None:
                for name, image in mid_slices(self.window).items():
                    tf.summary.image(f"slices/{name}", image, description=self.note or frame_note)
            else:
                anatomy = np.asarray(self.anatomy, np.float32)[..., None, None]  # (D, H, W, 1, 1)
                for name, image in mid_slices(anatomy).items():
                    tf.summary.image(f"slices/{name}", image, description=self.note)
                for name, image in mid_slices(self.window).items():
                    tf.summary.image(f"slices_model_input/{name}", image, description=frame_note)
        writer.flush()
        self.done = True


class TaskImages(keras.callbacks.Callback):
    """The Task's own images (`Task.visualize`, e.g. MAE reconstructions beside the input)
    of one fixed validation (or training) batch, every epoch."""

    def __init__(self, log_dir, task_model, inputs):
        super().__init__()
        self.log_dir, self.task_model, self.inputs = str(log_dir), task_model, inputs
        self.writer = None

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        images = self.task_model.visualize(self.inputs, self.task_model(self.inputs, training=False))
        if not images:
            return
        if self.writer is None:
            self.writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "validation"))
        with self.writer.as_default(step=epoch):
            for name, image in images.items():
                tf.summary.image(name, np.asarray(image, np.float32))
        self.writer.flush()


def tensorboard_callbacks(config, log_dir, datasets, task_model) -> list:
    """Callbacks for one run; the first training batch feeds gradient histograms and images."""
    tb = config.tensorboard
    profile = tuple(int(s) for s in tb.profile_steps.split(",")) if tb.profile_steps else 0
    callbacks = [LearningRateLogger(),
                 keras.callbacks.TensorBoard(str(log_dir), histogram_freq=int(tb.weight_histograms),
                                             write_graph=False, update_freq="epoch",
                                             profile_batch=profile)]
    batch = next(iter(datasets.train(0).take(1)))  # x, or (x, y[, sample weights])
    batch = batch[:2] if isinstance(batch, tuple) else batch
    x = batch[0] if isinstance(batch, tuple) else batch
    if tb.gradient_histograms:
        callbacks.append(GradientHistograms(log_dir, batch))
    if tb.images:
        window = np.asarray(x[0])
        if window.ndim > len(datasets.input_shape):  # two views of a pair: show the first
            window = window[0]
        anatomy, note = None, ""
        index = getattr(datasets, "train_index", None)  # fMRI windows: which runs they are
        if index:
            anatomy, note = display_anatomy(config.data.dataset_dir, index[0]["run"])
        callbacks.append(BrainSlices(log_dir, window, anatomy, note))
        callbacks.append(TaskImages(log_dir, task_model, window[None]))
    return callbacks


def write_embeddings(model, datasets, log_dir, split=None, max_windows: int = 5000) -> str:
    """Window embeddings (`model.embed`: the backbone's pooled output) for the projector,
    with subject and label columns (colour by subject to see subject clusters)."""
    import tensorflow as tf
    from tensorboard.plugins import projector

    config = datasets.config
    split = split or config.data.val_split
    dataset = datasets.evaluation(split) or datasets.evaluation(config.data.train_split)
    if dataset is None:
        return ""
    embed = tf.function(model.embed, jit_compile=bool(config.optim.jit_compile))
    vectors, rows = [], []
    targets = datasets.targets
    names = targets.class_names if targets.kind == "class" else None
    for window, label, subject in dataset:
        vectors.append(np.asarray(embed(window), np.float32))
        for lab, sub in zip(label.numpy(), subject.numpy()):
            if names and lab >= 0:
                rows.append((sub.decode(), names[targets.class_of(int(lab))]))
            else:
                rows.append((sub.decode(), f"{lab:g}"))
        if len(rows) >= max_windows:
            break
    # The Projector tab opens on the first run (usually `train`) and reads only files inside
    # that run's folder: write the embeddings, their subject/label columns and the config
    # into the log root and into every run folder (a few hundred kB each).
    projector_dir = str(log_dir)
    os.makedirs(projector_dir, exist_ok=True)
    matrix = np.concatenate(vectors)[:max_windows]
    targets = [projector_dir] + [os.path.join(projector_dir, run)
                                 for run in sorted(os.listdir(projector_dir))
                                 if os.path.isdir(os.path.join(projector_dir, run))
                                 and not run.startswith(".")]
    for folder in targets:
        with open(os.path.join(folder, "metadata.tsv"), "w") as f:
            f.write("subject\tlabel\n")
            for subject, label in rows[:len(matrix)]:
                f.write(f"{subject}\t{label}\n")
        checkpoint = tf.train.Checkpoint(embedding=tf.Variable(matrix))
        checkpoint.save(os.path.join(folder, "embedding.ckpt"))  # found by the plugin
        projector_config = projector.ProjectorConfig()
        embedding = projector_config.embeddings.add()
        embedding.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
        embedding.metadata_path = "metadata.tsv"
        projector.visualize_embeddings(folder, projector_config)
    return projector_dir


def write_split_metrics(report: dict, log_dir, run: str, step: int) -> None:
    """A split's report (window/subject metrics, loss) as scalars of run `run` at `step`."""
    import tensorflow as tf

    from tfbrain.training.evaluation import report_to_logs

    writer = tf.summary.create_file_writer(os.path.join(str(log_dir), run))
    with writer.as_default(step=step):
        for name, value in report_to_logs(report, "epoch").items():
            if value is not None and np.isfinite(value):
                tf.summary.scalar(name, value)
    writer.flush()


def write_attribution_image(model, datasets, log_dir, step: int, steps: int = 16) -> bool:
    """Integrated Gradients of the first validation (or training) window, summed over frames
    and pooled to the backbone's input patches (`tfbrain attribute`'s default resolution):
    mid-slices beside the input's, in `validation/attribution/*`. Only for attributable Tasks."""
    import tensorflow as tf

    from tfbrain.training.attribution import (attribution_patch, integrated_gradients,
                                              pool_to_patches)

    if not getattr(model, "attributable", False):
        return False
    config = datasets.config
    dataset = datasets.evaluation(config.data.val_split) or datasets.evaluation(
        config.data.train_split)
    if dataset is None:
        return False
    import tfrecords_tools

    window, _, subject = next(iter(dataset.unbatch().take(1)))
    window = window.numpy()  # (D, H, W, T, 1)
    try:  # the run's recorded background is the baseline (see tfbrain.training.attribution)
        background = float(tfrecords_tools.run_info(config.data.dataset_dir,
                                                     subject.numpy().decode())["background"])
    except (ValueError, KeyError):
        background = float(window.min())
    out = np.asarray(model(window[None], training=False)[model.output_key])[0]
    attribution = integrated_gradients(model, window, model.default_attribution_unit(out),
                                       steps=steps, baseline_value=background)
    summed = attribution[..., 0].sum(axis=-1)  # (D, H, W)
    patch = attribution_patch(model)
    if patch is not None:  # the resolution `tfbrain attribute` shows by default
        brain = np.any(window[..., 0] != np.float32(background), axis=-1)  # (D, H, W)
        summed = pool_to_patches(summed, brain, patch)
    magnitude = np.abs(summed)[..., None, None]  # (D, H, W, 1, 1)
    writer = tf.summary.create_file_writer(os.path.join(str(log_dir), "validation"))
    with writer.as_default(step=step):
        for name, image in mid_slices(magnitude).items():
            tf.summary.image(f"attribution/{name}", image)
    writer.flush()
    return True
