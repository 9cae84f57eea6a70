"""Learning-rate schedules, as functions of the optimizer's step count.

A schedule lives inside the optimizer and reads its iteration counter, so a run resumed from
a checkpoint (which restores that counter) continues at exactly the right learning rate.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from convlab.config import SCHEDULES, ScheduleConfig
from convlab.files import figure

__all__ = ["SCHEDULES", "ScheduleConfig", "build_schedule", "lr_per_epoch", "plot_schedule"]

@keras.saving.register_keras_serializable(package="convlab")
class RampUpExpDecay(keras.optimizers.schedules.LearningRateSchedule):
    """The codelab's ramp-up / sustain / exponential-decay schedule, per epoch."""

    def __init__(self, start_lr, max_lr, min_lr, rampup_epochs, sustain_epochs, decay,
                 steps_per_epoch):
        self.start_lr, self.max_lr, self.min_lr = start_lr, max_lr, min_lr
        self.rampup_epochs, self.sustain_epochs = rampup_epochs, sustain_epochs
        self.decay, self.steps_per_epoch = decay, steps_per_epoch

    def at_epoch(self, epoch):
        """The rate for a (possibly tensor) whole epoch number, as the codelab's lrfn."""
        epoch = ops.cast(epoch, "float32")
        ramp = (self.max_lr - self.start_lr) / max(self.rampup_epochs, 1) * epoch + self.start_lr
        after = epoch - self.rampup_epochs - self.sustain_epochs
        decayed = (self.max_lr - self.min_lr) * ops.power(self.decay, ops.maximum(after, 0.0))
        return ops.where(epoch < self.rampup_epochs, ramp,
                         ops.where(after < 0, self.max_lr, decayed + self.min_lr))

    def __call__(self, step):
        return self.at_epoch(ops.floor(ops.cast(step, "float32") / self.steps_per_epoch))

    def get_config(self):
        return {k: getattr(self, k) for k in ("start_lr", "max_lr", "min_lr", "rampup_epochs",
                                              "sustain_epochs", "decay", "steps_per_epoch")}


@keras.saving.register_keras_serializable(package="convlab")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `max_lr`, then cosine decay to `min_lr` at `total_steps`."""

    def __init__(self, max_lr, min_lr, warmup_steps, total_steps):
        self.max_lr, self.min_lr = max_lr, min_lr
        self.warmup_steps, self.total_steps = warmup_steps, total_steps

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = self.max_lr * (step + 1) / max(self.warmup_steps, 1)
        progress = ops.clip((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps,
                                                             1), 0.0, 1.0)
        cosine = self.min_lr + 0.5 * (self.max_lr - self.min_lr) * (1 + ops.cos(math.pi * progress))
        return ops.where(step < self.warmup_steps, warm, cosine)

    def get_config(self):
        return {k: getattr(self, k) for k in ("max_lr", "min_lr", "warmup_steps", "total_steps")}


def build_schedule(config: ScheduleConfig, *, steps_per_epoch: int, epochs: int,
                   replicas: int = 1):
    """A float (constant) or a `LearningRateSchedule` for the optimizer."""
    config.validate()
    peak = config.learning_rate * (replicas if config.scale_with_replicas else 1)
    if config.name == "constant":
        return peak
    if config.name == "rampup":
        return RampUpExpDecay(config.start_lr, peak, config.min_lr, config.rampup_epochs,
                              config.sustain_epochs, config.decay, steps_per_epoch)
    return WarmupCosine(peak, config.min_lr, round(config.warmup_epochs * steps_per_epoch),
                        epochs * steps_per_epoch)


def lr_per_epoch(schedule, steps_per_epoch: int, epochs: int) -> list[float]:
    """The rate in force at the start of each epoch."""
    if not callable(schedule):
        return [float(schedule)] * epochs
    return [float(schedule(e * steps_per_epoch)) for e in range(epochs)]


def plot_schedule(phases, steps_per_epoch: int, path, title: str = "",
                  sizes: list[int] | None = None) -> None:
    """Write a PNG of the learning rate over training (per step).

    `phases`: (schedule, epochs) pairs, one after the other (e.g. head, then fine-tune);
    each schedule counts its steps from the start of its own phase. `sizes`: each epoch's
    training size (progressive resizing), drawn on a second axis.
    """
    xs, rates, offset = [], [], 0
    for schedule, epochs in phases:
        total = steps_per_epoch * epochs
        for s in range(0, total, max(1, total // 500)):
            xs.append((offset + s) / steps_per_epoch)
            rates.append(float(schedule(s)) if callable(schedule) else float(schedule))
        offset += total
    fig = figure(figsize=(6, 3.2))
    ax = fig.subplots()
    ax.plot(xs, rates)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(title or "learning-rate schedule")
    ax.grid(alpha=0.3)
    if sizes:
        px = ax.twinx()
        px.step(range(len(sizes) + 1), [*sizes, sizes[-1]], where="post", color="tab:orange")
        px.set_ylabel("training size (px)", color="tab:orange")
        px.tick_params(axis="y", labelcolor="tab:orange")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
