"""Callbacks the trainer adds: throughput in the progress bar, one plain line per epoch where
no one watches a bar, crash-safe checkpoints, and a stop at the first non-finite loss."""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import keras

from convlab.errors import ConvlabError
from convlab.files import atomic_path, write_text_atomic
from convlab.progress import live_output
from convlab.runs import RunFolder, checkpoints, read_state


class Throughput(keras.callbacks.Callback):
    """Training speed, one definition everywhere: training images / seconds of training
    steps, validation excluded. The progress bar shows it for the epoch so far ("img/s");
    at each epoch's end the logs keep the epoch's value (`images_per_second`, equal to the
    bar's last) and `elapsed_seconds`, the time since the first epoch of this process
    began, validation included (time-to-accuracy)."""

    def __init__(self, batch_size: int, steps_per_epoch: int):
        super().__init__()
        self.batch_size = batch_size
        self.images_per_epoch = batch_size * steps_per_epoch
        self.rates: list[float] = []
        self.phases: list[int] = []  # the index in `rates` where each fit() call began

    def on_train_begin(self, logs=None):
        self.phases.append(len(self.rates))
        if not hasattr(self, "_train_start"):  # a second phase continues the same clock
            self._train_start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._start = self._last = time.perf_counter()
        self._images = 0

    def on_train_batch_end(self, batch, logs=None):
        self._last = time.perf_counter()
        self._images += self.batch_size
        if logs is not None and self._last > self._start:
            logs["img/s"] = self._images / (self._last - self._start)

    def on_epoch_end(self, epoch, logs=None):
        seconds = self._last - self._start
        self.rates.append(self._images / seconds if seconds > 0 else math.nan)
        if logs is not None:
            logs.pop("img/s", None)
            logs["images_per_second"] = self.rates[-1]
            logs["elapsed_seconds"] = time.perf_counter() - self._train_start

    def steady_rate(self) -> float:
        """The last phase's mean epoch rate (with cached features, the whole-network
        epochs, not the head's), without its first epoch (tracing) when there are more."""
        start = self.phases[-1] if self.phases else 0
        rates = self.rates[start:]
        rates = rates[1:] or rates
        return sum(rates) / len(rates) if rates else math.nan


class EpochLine(keras.callbacks.Callback):
    """One plain line per epoch, for a pipe or a log file (Keras' bar writes terminal codes
    and a line of backspaces per update there): `epoch 3/10: loss 0.4123, accuracy 0.912,
    val_loss 0.3805, val_accuracy 0.9302; 1,732.1 img/s, 6.0 s`. Metrics at 4 significant
    digits; the speed is `Throughput`'s, so this callback comes after it."""

    total: int | None = None  # the run's epochs, where one fit covers only some of them

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        rate = logs.pop("images_per_second", None)
        logs.pop("elapsed_seconds", None)
        metrics = ", ".join(f"{name} {float(value):.4g}" for name, value in logs.items())
        speed = f"{rate:,.1f} img/s, " if rate is not None and math.isfinite(rate) else ""
        print(f"epoch {epoch + 1}/{self.total or self.params.get('epochs', '?')}: {metrics}; {speed}"
              f"{time.perf_counter() - self._start:.1f} s", flush=True)


def fit_output(progress: bool) -> tuple[int, list[keras.callbacks.Callback]]:
    """(Keras' `verbose`, callbacks to add last): Keras' live bar where someone watches (a
    terminal, a notebook), else one plain line per epoch (`EpochLine`), also when `progress`
    is off."""
    if progress and live_output():
        return 1, []
    return 0, [EpochLine()]


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


class FiniteLoss(keras.callbacks.Callback):
    """Stops training at the first batch whose loss is not finite (a learning rate far too
    high, usually) with a one-line error. Raised at the batch, before the epoch's callbacks
    run: no checkpoint and no best.keras of non-finite weights is written (Keras'
    `TerminateOnNaN` stops only after the epoch's callbacks, which would save them).

    `rates`: the peak learning rate of each phase, (first epoch of the phase, rate)."""

    def __init__(self, run: Path | None, rates: list[tuple[int, float]]):
        super().__init__()
        self.run, self.rates, self.epoch = run, rates, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        rate = [r for first, r in self.rates if first <= self.epoch][-1]
        state = read_state(self.run) if self.run is not None else None
        kept = (f"; epochs 1-{state['epoch']} stay in {self.run}" if state and state["epoch"]
                else "")
        raise ConvlabError(
            f"training stopped: the loss became {float(loss)} in epoch {self.epoch + 1} (batch "
            f"{batch + 1}), so nothing of this epoch was saved{kept}; the learning rate "
            f"({rate:g}) is likely too high: train again with a lower one")


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
