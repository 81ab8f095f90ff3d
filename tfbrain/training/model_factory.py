"""The task model `tfbrain train` trains: a registered family's variant or a preset, wrapped
in the registered Task the config names. Names no family and no task type."""

import keras


def build_task_model(config, datasets) -> keras.Model:
    """From `[model] preset` (a backbone, or a Task of another type whose backbone is
    reused, or the same Task type to continue training it) or `[model] family`/`variant`."""
    from tfbrain.models.loading import load_preset
    from tfbrain.models.registry import (create_backbone, family_of_backbone, get_family,
                                         get_task_class)
    from tfbrain.models.task import Task

    task_class = get_task_class(config.task.type)
    if config.model.preset:
        loaded = load_preset(config.model.preset)
        if isinstance(loaded, task_class) and not config.task.options:
            loaded.backbone.trainable = not config.model.freeze_backbone
            return loaded  # continue training the same task, head included
        backbone = loaded.backbone if isinstance(loaded, Task) else loaded
    else:
        family, variant = config.model_family_and_variant()
        # what the data fixes (window shape; streams, subjects, parcels), then the user's
        # explicit overrides, whose names are checked against the constructor
        spec = get_family(family)
        check_backbone_keys(spec.backbone_class, config.model.backbone)
        overrides = {**datasets.backbone_overrides(), **config.model.backbone}
        backbone = create_backbone(family, variant, **overrides)
    spec = family_of_backbone(backbone)
    check_inputs(backbone, datasets, spec.input_kind)
    backbone.trainable = not config.model.freeze_backbone
    return task_class.from_train_config(backbone, config.task, config.model, datasets.targets)


def check_backbone_keys(backbone_class, overrides: dict) -> None:
    """`[model] backbone` keys must be constructor arguments (a typo must not be ignored)."""
    import inspect

    parameters = inspect.signature(backbone_class.__init__).parameters
    known = {n for n, p in parameters.items() if n != "self" and p.kind not in
             (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)} | {"name"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"[model] backbone: unknown key(s) {unknown} for {backbone_class.__name__}; "
                         f"known: {sorted(known)}")


def check_inputs(backbone, datasets, input_kind: str) -> None:
    """The backbone must take what the dataset gives."""
    if input_kind != "fmri_window":
        return
    expected = tuple(backbone.inputs[0].shape[1:])
    if expected != tuple(datasets.input_shape):
        raise ValueError(f"the model expects windows of shape {expected} but the dataset gives "
                         f"{tuple(datasets.input_shape)} (frame grid + [data] window); set "
                         "[data] window or [model] backbone.volume_shape to agree")


def compile_task(config, task_model, train_model: keras.Model, total_steps: int) -> None:
    """AdamW + warm-up cosine schedule; loss and metrics from the Task."""
    from tfbrain.training.schedule import WarmupCosineRestarts

    optim = config.optim
    schedule = WarmupCosineRestarts(
        optim.learning_rate, total_steps, warmup_steps=int(optim.warmup_fraction * total_steps),
        cycle_steps=int(optim.restart_cycle * total_steps), gamma=optim.restart_gamma,
        min_learning_rate=optim.min_learning_rate)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=optim.weight_decay,
                                       global_clipnorm=optim.clip_norm or None)
    train_model.compile(optimizer=optimizer, loss=task_model.default_loss(),
                        metrics=task_model.default_metrics(),
                        jit_compile=bool(optim.jit_compile))
