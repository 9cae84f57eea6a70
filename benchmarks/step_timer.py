"""Steady-state speed from per-step times, shared by the training benchmarks.

Batch size over the *median* step time: on a shared machine whole-run timings can be thrown
off for a whole run (see BENCHMARKS.md), single slow steps cannot move a median.
"""

from __future__ import annotations

import json
import statistics
import time

import keras


class StepTimer(keras.callbacks.Callback):
    """Records how long each training step takes."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)

    def images_per_second(self, batch_size: int, skip: int = 0) -> float:
        """Images/s from the median step after the first `skip` (tracing, warm-up) steps."""
        return batch_size / statistics.median(self.times[skip:])


def parse_options(pairs: list[str]) -> dict:
    """Model options from repeated --option KEY=VALUE flags: VALUE as JSON where it parses
    (numbers, true/false, a layout list), else the string."""
    def value(v: str):
        try:
            return json.loads(v)
        except ValueError:
            return v

    return {k: value(v) for k, v in (o.split("=", 1) for o in pairs)}
