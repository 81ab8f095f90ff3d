"""tf.distribute for `tfbrain train`: the strategy by name, who is chief, and the Keras 3
multi-worker workarounds. Nothing here knows a model family or a task."""

import keras


def make_strategy(name: str):
    """"default" | "mirrored" | "multi_worker" -> a tf.distribute strategy."""
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy) -> bool:
    """True on the worker that writes the run folder (chief, or worker 0 without a chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in ("chief", None) or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


def build_before_distributed_fit(train_model: keras.Model, first_batch) -> None:
    """Build losses and metrics from one local batch, then skip Keras' own symbolic build.

    Keras 3.15's `fit` first reduces a distributed batch with `strategy.reduce(...)` to
    build them; MultiWorkerMirroredStrategy cannot reduce a nested (x, {name: y}) batch
    and fails. Building here, from an undistributed batch, makes that step unnecessary.
    Only used under a distribution strategy.
    """
    import tensorflow as tf

    train_model._symbolic_build(data_batch=first_batch)
    train_model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    # Keras then reduces each scalar log with strategy.reduce("MEAN", v, axis=0), which
    # fails on 0-d tensors under MultiWorkerMirroredStrategy (tensorflow/tensorflow#72388);
    # giving the logs shape (1,) makes that reduction the intended mean over workers.
    step = train_model.train_step
    train_model.train_step = lambda data: {k: tf.reshape(v, (1,)) for k, v in step(data).items()}
