"""Progress a user watches: bars with the time left on stderr, and epoch lines that count the
whole run, not the one `fit` call of each epoch.

A bar is drawn only when stderr is a terminal (tqdm's `disable=None`) and the command was
not asked to be quiet, so logs, pipes and tests get no carriage-return noise.
"""

import sys

import keras
import numpy as np


class _SilentBar:
    """What `progress_bar` returns when nothing is to be drawn."""

    disable = True  # as tqdm's attribute

    def update(self, n=1):
        pass

    def set_postfix_str(self, text, refresh=True):
        pass

    def clear(self):
        pass

    def close(self):
        pass


def progress_bar(total: int | None, description: str, unit: str, enabled: bool = True,
                 initial: int = 0):
    """A tqdm bar on stderr (elapsed, time left, rate), or a silent stand-in when `enabled`
    is false, stderr is not a terminal, or tqdm is missing."""
    if not enabled or not _stderr_is_terminal():
        return _SilentBar()
    try:
        from tqdm import tqdm
    except ImportError:  # a dependency of tfbrain, but the bar is never worth a crash
        return _SilentBar()
    return tqdm(total=total, desc=description, unit=unit, initial=initial, file=sys.stderr,
                dynamic_ncols=True, leave=False)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class RunProgbar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar with "Epoch e/E" counting all `total_epochs` of the run (the
    trainer calls `fit` once per epoch, so Keras alone would print "Epoch 2/2" in a
    3-epoch run)."""

    def __init__(self, total_epochs: int):
        super().__init__()
        self.total_epochs = total_epochs

    def set_params(self, params):
        super().set_params(params)
        self.epochs = self.total_epochs


def _scalar(value):
    """The batch loss as one float, or None. Under a distribution strategy Keras may hand the
    callback one value per replica (an array, not a scalar): their mean is the batch loss."""
    if value is None:
        return None
    try:
        return float(np.mean(np.asarray(value, dtype=np.float64)))
    except (TypeError, ValueError):
        return None


class RunStepBar(keras.callbacks.Callback):
    """One bar over all the run's training steps (stderr, a terminal only): the step, the
    epoch, the running loss and the time left for the whole run, across the per-epoch `fit`
    calls. Place it before `RunProgbar`: it clears itself at each epoch's end so that the
    epoch line prints on a clean line."""

    def __init__(self, total_steps: int, steps_per_epoch: int, start_step: int = 0):
        super().__init__()
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.step = start_step
        self.bar = None

    def on_train_batch_end(self, batch, logs=None):
        if self.bar is None:
            self.bar = progress_bar(self.total_steps, "training", "step", initial=self.step)
        self.step += 1
        self.bar.update(1)
        if self.bar.disable:  # not a terminal: nothing to show, no per-step conversions
            return
        loss = _scalar((logs or {}).get("loss"))
        epoch = (self.step - 1) // max(self.steps_per_epoch, 1) + 1  # of the step just done
        self.bar.set_postfix_str(f"epoch {epoch}" + (f", loss {loss:.4g}"
                                                     if loss is not None else ""), refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is not None:
            self.bar.clear()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
