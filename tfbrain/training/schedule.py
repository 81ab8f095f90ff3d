"""SwiFT's learning-rate schedule: linear warm-up, then cosine cycles with decaying restarts."""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tfbrain")
class WarmupCosineRestarts(keras.optimizers.schedules.LearningRateSchedule):
    """Per-step learning rate.

    Warm-up: `warmup_steps` linear steps from `min_learning_rate` to `peak_learning_rate`.
    Then cosine cycles of `cycle_steps` (the rest of training when 0), each restarting
    at `peak_learning_rate * gamma ** cycle_index` and ending at `min_learning_rate`.

    Args:
        peak_learning_rate: float.
        total_steps: int. Steps of the whole run.
        warmup_steps: int.
        cycle_steps: int. Length of one cosine cycle after warm-up (0: one cycle).
        gamma: float. Peak multiplier per restart.
        min_learning_rate: float.
    """

    def __init__(self, peak_learning_rate, total_steps, warmup_steps=0, cycle_steps=0, gamma=1.0,
                 min_learning_rate=1e-9):
        self.peak_learning_rate = float(peak_learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.cycle_steps = int(cycle_steps) or max(1, self.total_steps - self.warmup_steps)
        self.gamma = float(gamma)
        self.min_learning_rate = float(min_learning_rate)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak, low = self.peak_learning_rate, self.min_learning_rate
        warm = float(max(self.warmup_steps, 1))
        warmup_lr = low + (peak - low) * step / warm
        after = ops.maximum(step - self.warmup_steps, 0.0)
        # the last cycle ends at total_steps and stays at its floor afterwards
        num_cycles = max(1, -(-(self.total_steps - self.warmup_steps) // self.cycle_steps))
        cycle = ops.minimum(ops.floor(after / self.cycle_steps), num_cycles - 1)
        progress = ops.minimum((after - cycle * self.cycle_steps) / self.cycle_steps, 1.0)
        cycle_peak = peak * ops.power(self.gamma, cycle)
        cosine_lr = low + 0.5 * (cycle_peak - low) * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < self.warmup_steps, warmup_lr, cosine_lr)

    def get_config(self):
        return {"peak_learning_rate": self.peak_learning_rate, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "cycle_steps": self.cycle_steps,
                "gamma": self.gamma, "min_learning_rate": self.min_learning_rate}
