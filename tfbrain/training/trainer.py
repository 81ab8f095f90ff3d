"""`tfbrain train`: model.fit on tf.data, resumable, watched in TensorBoard. The loop asks
the registry and the Task for everything model-specific and names no family or task type.

Layout of a run folder (`[run] output_dir`):
  config.json          the resolved config
  state/               resumable state: weights, optimizer slots, step (atomic swaps)
  best/                best checkpoint by the monitored metric, as a preset folder
  final/               the model after the last step, as a preset folder
  tensorboard/         event files (scalars, histograms, images, projector)
  history.json         per-epoch logs
  report.json          the Task's evaluation of `best` on the val and test splits

Reruns: a run folder that holds a run of another config is refused unless `resume=True`
(continue its state with the new config) or `overwrite=True` (start afresh); the same
config resumes. Temporary folders left by a kill (`.state.tmp-*`, ...) are removed first.

Resuming: training runs one `fit` call per epoch over a dataset that depends only on
(seed, epoch), so a run that restarts from `state/` at global step s rebuilds epoch
s // S, skips its first s % S batches, and continues: no step is lost or repeated.

The jobs live in their own modules: `distribution` (strategies), `targets` and `data`
(what the Task trains on), `model_factory` (registry -> Task, compile), `checkpointing`
(state, best preset), `evaluation` (evaluators by name), `tensorboard`.
"""

import json
import os
import pathlib
import shutil

import keras

from tfbrain.training.checkpointing import (BestPreset, SimulatedInterruption, StateCheckpoint,
                                            TrainingState)
from tfbrain.training.config import TrainConfig
from tfbrain.training.distribution import build_before_distributed_fit, is_chief, make_strategy
from tfbrain.training.progress import RunProgbar, RunStepBar

__all__ = ["train", "SimulatedInterruption"]


def _input_kind(config: TrainConfig) -> str:
    """The input kind of the model the config trains (from the registry)."""
    from tfbrain.models.registry import family_of_backbone_class, get_family

    if config.model.preset:
        # read from config.json: building the preset's model here would build it twice
        from tfbrain.models.task import Task
        from tfbrain.presets import read_preset_config

        _, preset = read_preset_config(config.model.preset)
        cls = keras.saving.get_registered_object(preset["class_name"])
        if cls is not None and issubclass(cls, Task):
            inner = preset["config"]["backbone"]
            cls = keras.saving.get_registered_object(inner.get("registered_name")
                                                     or inner.get("class_name", ""))
        return family_of_backbone_class(cls).input_kind
    return get_family(config.model_family_and_variant()[0]).input_kind


# fields that may change between a run and its resumption without --resume
_RERUN_FREE_FIELDS = {("run", "stop_after_steps")}
_RUN_OUTPUTS = ("state", "best", "final", "tensorboard", "history.json", "report.json", "config.json")


def _config_changes(previous: dict, current: dict) -> list[str]:
    changed = []
    for section in sorted(set(previous) | set(current)):
        old, new = previous.get(section) or {}, current.get(section) or {}
        for field in sorted(set(old) | set(new)):
            if (section, field) not in _RERUN_FREE_FIELDS and old.get(field) != new.get(field):
                changed.append(f"{section}.{field}: {old.get(field)!r} -> {new.get(field)!r}")
    return changed


def prepare_run_folder(out: pathlib.Path, config_dict: dict, resume: bool = False,
                       overwrite: bool = False) -> None:
    """Refuse to mix runs: a folder of another config needs `resume` or `overwrite`; remove
    temporary folders and files that a kill left behind."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    for leftover in out.glob(".*.tmp-*") if out.exists() else []:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    if overwrite:
        for name in _RUN_OUTPUTS:
            for path in (out / name, out / (name + ".old")):
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        return
    config_path = out / "config.json"
    has_run = any((out / name).exists() for name in ("state", "state.old", "final", "history.json"))
    if not has_run or resume:
        return
    if not config_path.exists():
        raise ValueError(f"{out} holds a run without config.json; pass --resume to continue it "
                         "with this config, or --overwrite to start afresh")
    try:
        previous = json.loads(config_path.read_text())
    except ValueError as err:
        raise ValueError(f"{config_path}: unreadable ({err}); pass --resume or --overwrite") from None
    changes = _config_changes(previous, config_dict)
    if changes:
        raise ValueError(f"{out} holds a run with another config ({'; '.join(changes[:4])}"
                         f"{'; ...' if len(changes) > 4 else ''}); pass --resume to continue it with "
                         "this config, --overwrite to start afresh, or use another [run] output_dir")


def _absolute_paths(config: TrainConfig) -> None:
    """Relative dataset paths become absolute, so presets work from any folder."""
    for name in ("dataset_dir", "splits_file"):
        value = getattr(config.data, name)
        if value and "://" not in value and not os.path.isabs(value):
            setattr(config.data, name, os.path.abspath(value))


def train(config: TrainConfig, verbose: int = 1, *, resume: bool = False,
          overwrite: bool = False) -> dict:
    """Train (or resume) a run; returns a summary dict (paths, history, report).

    Args:
        resume: continue the state in `[run] output_dir` even if it was trained with
            another config.
        overwrite: delete the run in `[run] output_dir` and start afresh.
    """
    from tfbrain.models.registry import get_task_class
    from tfbrain.training import metrics as metrics_lib
    from tfbrain.training.data import make_datasets
    from tfbrain.training.evaluation import ValidationMetrics, evaluate_model
    from tfbrain.training.model_factory import build_task_model, compile_task
    from tfbrain.training.tensorboard import (tensorboard_callbacks, write_attribution_image,
                                              write_embeddings, write_split_metrics)

    from tfbrain.atomic import atomic_write_text

    _absolute_paths(config)
    keras.utils.set_random_seed(config.run.seed)
    keras.mixed_precision.set_global_policy(config.optim.mixed_precision)
    try:
        out = pathlib.Path(config.run.output_dir)
        prepare_run_folder(out, config.to_dict(), resume=resume, overwrite=overwrite)
        task_class = get_task_class(config.task.type)
        datasets = make_datasets(config, task_class, _input_kind(config))
        strategy = make_strategy(config.run.strategy)
        chief = is_chief(strategy)
        # every worker saves (collectives may need all), but only the chief into the run folder
        work_dir = out if chief else out / f".worker-{strategy.cluster_resolver.task_id}"
        work_dir.mkdir(parents=True, exist_ok=True)
        steps = datasets.steps_per_epoch
        total_steps = steps * config.optim.epochs
        with strategy.scope():
            model = build_task_model(config, datasets)
            train_model = model.training_model()
            compile_task(config, model, train_model, total_steps)
            train_model.optimizer.build(train_model.trainable_variables)
            if config.run.strategy != "default":
                build_before_distributed_fit(train_model, next(iter(datasets.train(0).take(1))))
        state = TrainingState(work_dir / "state")
        start_step = state.restore(train_model)["global_step"] if state.exists() else 0
        history_path = work_dir / "history.json"
        history = json.loads(history_path.read_text()) if start_step and history_path.exists() else []
        # a kill between writing history.json and the end-of-epoch state leaves an epoch that
        # will run again: keep only the epochs the state has finished
        history = [h for h in history if h["epoch"] <= start_step // steps]
        if chief:  # written once the model is built and its state restored: this config runs
            atomic_write_text(out / "config.json", json.dumps(config.to_dict(), indent=2))
        monitor, mode = config.monitor()
        previous_best = None
        if start_step and (out / "best" / "metadata.json").exists():
            previous_best = json.loads((out / "best" / "metadata.json").read_text())["best"]["value"]
        preset_metadata = {"task_labels": datasets.targets.metadata(),
                           "train_config": config.to_dict()}
        jit = bool(config.optim.jit_compile)
        callbacks = [ValidationMetrics(model, datasets, jit),
                     BestPreset(model, work_dir / "best", monitor, mode, preset_metadata,
                                best=previous_best, write=chief),
                     StateCheckpoint(state, config.run.checkpoint_every_steps,
                                     config.run.stop_after_steps, write=True)]
        if config.tensorboard.enabled:
            callbacks += tensorboard_callbacks(config, work_dir / "tensorboard", datasets, model)
        step_bar = RunStepBar(total_steps, steps, start_step)  # draws only on a terminal
        if verbose:
            callbacks += [step_bar, RunProgbar(config.optim.epochs)]
        if verbose:
            print(f"training {model.count_params():,}-parameter {type(model).__name__} "
                  f"({config.task.type}) on {datasets.windows_per_epoch} windows/epoch, "
                  f"{steps} steps/epoch x {config.optim.epochs} epochs, "
                  f"{strategy.num_replicas_in_sync} replica(s), jit_compile={config.optim.jit_compile}"
                  + (f"; resuming at step {start_step}" if start_step else ""))
        try:
            for epoch in range(start_step // steps, config.optim.epochs):
                skip = start_step - epoch * steps if epoch == start_step // steps else 0
                fit = train_model.fit(datasets.train(epoch, skip), initial_epoch=epoch,
                                      epochs=epoch + 1, steps_per_epoch=steps - skip,
                                      callbacks=callbacks, verbose=verbose,
                                      shuffle=False)  # tf.data shuffles (seeded per epoch)
                logs = {k: float(v[-1]) for k, v in fit.history.items()}
                logs["learning_rate"] = float(train_model.optimizer.learning_rate)
                history.append({"epoch": epoch + 1, **logs})
                if chief:
                    atomic_write_text(history_path, json.dumps(history, indent=2))
                state.save(train_model, {"epoch": epoch + 1})
            step_bar.close()
        except SimulatedInterruption as stop:
            step_bar.close()
            return {"interrupted": True, "reason": str(stop), "output_dir": str(out),
                    "global_step": int(train_model.optimizer.iterations.numpy())}

        model.save_to_preset(work_dir / "final", extra_metadata=preset_metadata)
        # no validation split (or no finite monitored value): the final model is the best
        best_dir = work_dir / "best" if (work_dir / "best").exists() else work_dir / "final"
        summary = {"interrupted": False, "output_dir": str(out), "history": history,
                   "best": str(best_dir), "final": str(work_dir / "final"),
                   "tensorboard": str(out / "tensorboard"), "global_step": total_steps,
                   "monitor": monitor}
        from tfbrain.models.loading import load_preset

        best = load_preset(best_dir)
        report = {"model": str(best_dir)}
        for split in (config.data.val_split, config.data.test_split):
            result = evaluate_model(best, datasets, split, jit) if split else None
            if result is not None:
                report[split] = result
        if chief:
            metrics_lib.write_report(out / "report.json", report)
        summary["report"] = report
        if config.tensorboard.enabled and chief:
            last_epoch = config.optim.epochs - 1  # Keras' epoch scalars use the epoch as step
            if config.data.test_split in report:
                write_split_metrics(report[config.data.test_split], work_dir / "tensorboard",
                                    "test", last_epoch)
            if config.tensorboard.images:
                write_attribution_image(best, datasets, work_dir / "tensorboard", last_epoch)
            if config.tensorboard.embeddings:
                write_embeddings(model, datasets, work_dir / "tensorboard")
        return summary
    except Exception as error:  # a tf.data read error names no shard: find it
        explained = _explain_read_error(config.data.dataset_dir, error)
        if explained is None:
            raise
        raise explained from error
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _explain_read_error(dataset_dir: str, error: Exception):
    """A ValueError naming the shard behind a tf.data read error, or None for other errors."""
    import tensorflow as tf

    if not isinstance(error, (tf.errors.DataLossError, tf.errors.InvalidArgumentError)):
        return None
    from tfrecords_tools.reader import explain_read_error

    return explain_read_error(dataset_dir, error)
