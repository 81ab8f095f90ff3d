"""Resumable training state, the periodic checkpoint callback, and `best/` selection.

`TrainingState` (`<run>/state/`) holds weights, optimizer slots, the random-number state
(every `SeedGenerator` of the model, e.g. dropout's, and Keras' global one) and the global
step; it is written with `tfbrain.atomic.atomic_folder`, so a kill at any moment leaves the
previous or the new state, never a torn one. With the RNG state restored, a resumed run
draws the same dropout masks as an uninterrupted one (augmentation uses stateless seeds
from (seed, window index) and needs nothing saved).
"""

import json
import pathlib

import keras
import numpy as np

from tfbrain.atomic import atomic_folder, recover_folder


class SimulatedInterruption(RuntimeError):
    """Raised by `stop_after_steps` to stop training as a kill would (testing aid)."""


class TrainingState:
    """Resumable state in a folder: weights, optimizer slots and the step."""

    def __init__(self, directory):
        self.directory = pathlib.Path(directory)

    def exists(self) -> bool:
        recover_folder(self.directory)
        return (self.directory / "state.json").exists()

    def save(self, model: keras.Model, extra: dict) -> None:
        with atomic_folder(self.directory) as tmp:
            model.save_weights(str(tmp / "model.weights.h5"))
            slots = {f"v{i}": np.asarray(v) for i, v in enumerate(model.optimizer.variables)}
            np.savez(tmp / "optimizer.npz", **slots)
            np.savez(tmp / "rng.npz", **{f"v{i}": np.asarray(v) for i, v in enumerate(rng_variables(model))})
            (tmp / "state.json").write_text(json.dumps(
                {**extra, "global_step": int(model.optimizer.iterations.numpy())}))

    def restore(self, model: keras.Model) -> dict:
        state_dir = recover_folder(self.directory)
        state = json.loads((state_dir / "state.json").read_text())
        model.load_weights(str(state_dir / "model.weights.h5"))
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        with np.load(state_dir / "optimizer.npz") as slots:
            variables = model.optimizer.variables
            if len(slots.files) != len(variables):
                raise ValueError(f"{state_dir}: saved optimizer has {len(slots.files)} variables, "
                                 f"this model's has {len(variables)}; the config changed?")
            for i, variable in enumerate(variables):
                variable.assign(slots[f"v{i}"])
        if (state_dir / "rng.npz").exists():  # states written before the RNG was saved lack it
            with np.load(state_dir / "rng.npz") as saved:
                variables = rng_variables(model)
                if len(saved.files) != len(variables):
                    raise ValueError(f"{state_dir}: saved RNG state has {len(saved.files)} generators, "
                                     f"this model has {len(variables)}; the config changed?")
                for i, variable in enumerate(variables):
                    variable.assign(saved[f"v{i}"])
        return state


def rng_variables(model: keras.Model) -> list:
    """The model's seed-generator states (dropout, drop-path, ...) in a stable order, then
    Keras' global seed generator (used by `keras.random` calls without a seed)."""
    weights = {id(v) for v in model.weights}
    variables = [v for v in model.variables if id(v) not in weights and "seed_generator" in v.path]
    from keras.src.random.seed_generator import global_seed_generator

    return variables + [global_seed_generator().state]


class StateCheckpoint(keras.callbacks.Callback):
    """Saves `TrainingState` every `every` global steps; can simulate a kill."""

    def __init__(self, state: TrainingState, every: int, stop_after: int = 0, write: bool = True):
        super().__init__()
        self.state, self.every, self.stop_after, self.write = state, every, stop_after, write

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if self.write and self.every and step % self.every == 0:
            self.state.save(self.model, {})
        if self.stop_after and step >= self.stop_after:
            raise SimulatedInterruption(f"stopped after {step} steps (run.stop_after_steps)")


class BestPreset(keras.callbacks.Callback):
    """Writes the task model as a preset folder whenever the monitored metric improves.

    Without the monitored value (no validation split), nothing is written: the trainer
    then lets `final/` stand in for `best/` and says so.
    """

    def __init__(self, task_model, directory, monitor: str, mode: str, metadata: dict,
                 best: float | None = None, write: bool = True):
        super().__init__()
        self.task_model, self.directory, self.monitor, self.mode = task_model, directory, monitor, mode
        self.metadata, self.best, self.write = metadata, best, write

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(value):
            return
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best = float(value)
            if self.write:
                self.task_model.save_to_preset(self.directory, extra_metadata={
                    **self.metadata, "best": {"monitor": self.monitor, "value": self.best,
                                              "epoch": epoch + 1}})
