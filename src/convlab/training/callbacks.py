"""Callbacks the trainer adds: throughput in the progress bar, and crash-safe checkpoints."""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import keras

from convlab.errors import ConvlabError
from convlab.files import atomic_path, write_text_atomic
from convlab.runs import RunFolder, checkpoints, read_state


class Throughput(keras.callbacks.Callback):
    """Training images/s, shown in the progress bar and kept per epoch (validation excluded),
    and the wall time since training started at each epoch's end."""

    def __init__(self, batch_size: int, steps_per_epoch: int):
        super().__init__()
        self.batch_size = batch_size
        self.images_per_epoch = batch_size * steps_per_epoch
        self.rates: list[float] = []

    def on_train_begin(self, logs=None):
        if not hasattr(self, "_train_start"):  # a second phase continues the same clock
            self._train_start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._start = self._last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if logs is not None and now > self._last:
            # The progress bar (which runs after this callback) averages it over the epoch.
            logs["img/s"] = self.batch_size / (now - self._last)
        self._last = now

    def on_epoch_end(self, epoch, logs=None):
        seconds = self._last - self._start
        self.rates.append(self.images_per_epoch / seconds if seconds > 0 else math.nan)
        if logs is not None:
            logs.pop("img/s", None)
            logs["images_per_second"] = self.rates[-1]
            # Since training started in this process, validation included: time-to-accuracy.
            logs["wall_seconds"] = time.perf_counter() - self._train_start

    def steady_rate(self) -> float:
        """Mean over epochs, without the first (tracing, cache filling) when there are more."""
        rates = self.rates[1:] or self.rates
        return sum(rates) / len(rates) if rates else math.nan


@contextlib.contextmanager
def ema_weights(model: keras.Model):
    """The optimizer's moving average of the weights (`use_ema`) in `model` for the duration,
    the trained weights back after; nothing changes when the optimizer keeps no average."""
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # loss scaling
    averages = (getattr(optimizer, "_model_variables_moving_average", None)
                if getattr(optimizer, "use_ema", False) else None)
    if not averages:
        yield
        return
    variables = optimizer._trainable_variables  # the pairs keras.callbacks.SwapEMAWeights swaps
    trained = [v.numpy() for v in variables]
    for var, average in zip(variables, averages, strict=True):
        var.assign(average)
    try:
        yield
    finally:
        for var, value in zip(variables, trained, strict=True):
            var.assign(value)


class EpochCheckpoint(keras.callbacks.Callback):
    """After each epoch: the full model with optimizer state (for resume) and, when validation
    accuracy improves, best.keras. Each file is written under a temporary name and renamed,
    so a run killed mid-save never leaves a checkpoint that looks whole.

    `model`: what to save, when it is not the model being fit (the full model while its head
    trains on cached features). `keep`: how many epoch checkpoints to keep, newest first (0:
    all); two by default, so a damaged newest one still leaves one to resume from. With a
    moving average of the weights (`ema_momentum`), epoch checkpoints hold the trained weights
    (and the average in the optimizer state) and best.keras the average, which validation
    measured."""

    def __init__(self, run: Path, monitor: str = "val_accuracy", model: keras.Model | None = None,
                 keep: int = 2):
        super().__init__()
        self.run, self.monitor, self.saved_model = RunFolder(run), monitor, model
        self.keep = keep
        self.run.checkpoints.mkdir(exist_ok=True)
        state = read_state(self.run.path) or {}
        self.best = state.get("best", -math.inf)

    def _save(self, path: Path) -> None:
        try:
            with atomic_path(path) as tmp:
                (self.saved_model or self.model).save(tmp)
        except OSError as err:  # e.g. no space left: the temporary file is gone already
            raise ConvlabError(
                f"cannot write '{path}': {err.strerror or err}; free some space, then continue "
                f"with `convlab train --resume {self.run.path}` (finished epochs are kept)"
            ) from None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._save(self.run.checkpoint(epoch + 1))
        value = logs.get(self.monitor, logs.get("accuracy"))
        if value is not None and value > self.best:
            self.best = float(value)
            with ema_weights(self.saved_model or self.model):
                self._save(self.run.best)
        state = {"epoch": epoch + 1, "best": self.best, "monitor": self.monitor}
        try:
            write_text_atomic(self.run.state, json.dumps(state))
        except OSError as err:
            raise ConvlabError(
                f"cannot write '{self.run.state}': {err.strerror or err}; free some space, then "
                f"continue with `convlab train --resume {self.run.path}`") from None
        if self.keep:  # only once the new one is committed
            for _, old in checkpoints(self.run.path)[:-self.keep]:
                old.unlink(missing_ok=True)
