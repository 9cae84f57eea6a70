"""The learning-rate range test (fastai's `lr_find`, after Leslie Smith's LR range test).

A fresh model trains for up to `steps` steps while its learning rate grows exponentially from
`start_lr` to `end_lr`; the loss, smoothed, first falls, then explodes. A good learning rate
lies where it falls fastest, well before its minimum. The data, model, optimizer, loss and
precision are those `convlab train` builds for the same config (`build_datasets`,
`create_model`, `compile_model`): only the schedule differs, so the curve describes the run about
to be started. For a pretrained model that is the first phase (the head, backbone frozen),
run through the whole model (no cached features).

Writes lr_find.png (the curve) and lr_find.json (every number) to
RUNS_DIR/lr-find/<time>-<name>/, or to `out`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from convlab.config import TrainConfig, named_config
from convlab.errors import ConvlabError, check_at_least
from convlab.files import figure, literal, write_text_atomic
from convlab.runs import new_run_folder
from convlab.training.callbacks import fit_output
from convlab.training.distributed import check_tpu_data
from convlab.training.strategy import precision_policy, resolve_precision, select_strategy
from convlab.training.trainer import build_datasets, compile_model, global_batch_size

PLOT, NUMBERS = "lr_find.png", "lr_find.json"


def lr_find(config: TrainConfig | str | None = None, *, data: str | os.PathLike | None = None,
            start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 200,
            smoothing: float = 0.98, diverge: float = 4.0, progress: bool = True,
            out: str | os.PathLike | None = None, **overrides) -> dict:
    """Run the learning-rate range test for a model or recipe, and suggest a learning rate.

    Args:
        config: a `TrainConfig`, a recipe or model name, or None for the defaults.
        data: the training data (as `convlab train --data`); default: the config's.
        start_lr, end_lr: the first and the last learning rate of the sweep.
        steps: training steps from `start_lr` to `end_lr` (fewer if the loss diverges).
        smoothing: the loss's exponential moving average keeps this much of its past each
            step (bias-corrected, as fastai's); 0 for the raw loss.
        diverge: stop once the smoothed loss exceeds this many times its minimum (or is NaN).
        progress: show Keras' progress bar.
        out: the folder for lr_find.png and lr_find.json; default:
            RUNS_DIR/lr-find/<time>-<name>/.
        **overrides: fields of `TrainConfig` to replace, as for `convlab.train`.

    Returns:
        A JSON-ready dict: `lrs`, `losses` and `smoothed_losses` (one per step run, null where
        a loss was not finite); `suggestion` ({lr, loss, step, rule}: the steepest descent of
        the smoothed loss over log10(lr), before its minimum); `minimum` ({lr, loss, step,
        lr_over_10}: the other usual rule); `diverged` ({step, lr}, or None when all steps
        ran; each `step` is an index into `lrs`); `steps_run`, `seconds`, `recipe_lr` (the rate the config would train at), the
        settings used, and the paths `folder`, `plot` and `json`.

    Raises:
        ConvlabError: a bad argument, config or data.
    """
    _check_sweep(start_lr, end_lr, steps, smoothing, diverge)
    config = _one_process_config(config, data, overrides)
    swept = _sweep(config, start_lr, end_lr, steps, smoothing, diverge, progress)
    folder = _out_folder(config, out)
    recorder, diverged = swept.recorder, swept.recorder.diverged_at
    result = {
        "name": config.name or config.model, "model": config.model, "recipe": config.recipe,
        "data": str(swept.prepared), "image_size": swept.image_size,
        "global_batch": swept.global_batch, "optimizer": config.optimizer,
        "precision": swept.precision, "strategy": swept.strategy,
        "start_lr": start_lr, "end_lr": end_lr, "steps": steps, "smoothing": smoothing,
        "diverge": diverge, "steps_run": len(recorder.losses),
        "diverged": (None if diverged is None else
                     {"step": diverged, "lr": recorder.lrs[diverged]}),
        **_suggest(recorder.lrs, recorder.smoothed),
        "recipe_lr": swept.recipe_lr, "seconds": round(swept.seconds, 1),
        "lrs": recorder.lrs, "losses": _finite(recorder.losses),
        "smoothed_losses": _finite(recorder.smoothed),
        "folder": str(folder), "plot": str(folder / PLOT), "json": str(folder / NUMBERS),
    }
    _plot(result, folder / PLOT)
    write_text_atomic(folder / NUMBERS, json.dumps(result, indent=1))
    return result


def _one_process_config(config: TrainConfig | str | None, data, overrides: dict) -> TrainConfig:
    """The config the test runs, validated; a multi-worker one is refused."""
    if isinstance(config, str):
        config = named_config(config)
    if data is not None:
        overrides["data"] = str(data)
    config = (config or TrainConfig()).override(**overrides)
    config.validate()
    if config.strategy == "multiworker" or (config.strategy == "auto"
                                            and os.environ.get("TF_CONFIG")):
        raise ConvlabError("lr-find runs in one process, not as a multi-worker job (TF_CONFIG "
                           "or --strategy multiworker); unset TF_CONFIG or use --strategy "
                           "default or mirrored")
    return config


@dataclass(frozen=True)
class _Swept:
    """What one sweep measured, and the set-up it ran with."""

    recorder: _LossRecorder
    seconds: float
    prepared: object  # the prepared folder (a path or gs:// URL)
    image_size: int
    global_batch: int
    precision: str
    strategy: str  # described
    recipe_lr: float  # the rate the config would train at


def _sweep(config: TrainConfig, start_lr: float, end_lr: float, steps: int, smoothing: float,
           diverge: float, progress: bool) -> _Swept:
    """A fresh model built and compiled as `convlab train` does, fit with the learning
    rate growing exponentially from `start_lr` to `end_lr`."""
    from convlab.models import create_model, get_model_info

    image_size = config.image_size or get_model_info(config.model).default_size
    strategy_info = select_strategy(config.strategy)
    if strategy_info.tpu:
        check_tpu_data(config.data)
    strategy, replicas = strategy_info.strategy, strategy_info.replicas
    global_batch = global_batch_size(config, replicas)
    precision = resolve_precision(config.precision, strategy_info, config.model)
    recipe_lr = config.schedule.learning_rate * (replicas if config.schedule.scale_with_replicas
                                                 else 1)
    with precision_policy(precision):
        keras.utils.set_random_seed(config.seed)
        prepared, manifest, train_ds, _ = build_datasets(
            config, image_size, global_batch, progress=progress, strategy_info=strategy_info)
        # start_lr * (end_lr / start_lr) ** (step / (steps - 1)): a decay rate above 1 grows.
        sweep = keras.optimizers.schedules.ExponentialDecay(start_lr, steps - 1,
                                                            end_lr / start_lr)
        with strategy.scope():
            model = create_model(config.model, manifest.num_classes, image_size,
                                 **config.model_options)
            # One step per call (the default): the loss is read after every step.
            compile_model(model, config, sweep)
        print(f"lr-find: {config.model}" + (f" (recipe {config.recipe})" if config.recipe else "")
              + f" at {image_size} px, {config.optimizer}, global batch {global_batch}; "
              f"learning rate {start_lr:g} -> {end_lr:g} over at most {steps} steps; "
              f"{strategy_info.describe()}, precision {precision}")
        recorder = _LossRecorder(smoothing, diverge)
        verbose, lines = fit_output(progress)
        started = time.time()
        model.fit(train_ds, epochs=1, steps_per_epoch=steps, shuffle=False,
                  callbacks=[recorder, *lines], verbose=verbose)
        seconds = time.time() - started
    return _Swept(recorder, seconds, prepared, image_size, global_batch, precision,
                  strategy_info.describe(), recipe_lr)


def _check_sweep(start_lr, end_lr, steps, smoothing, diverge) -> None:
    """One-line errors for the sweep's own arguments, before anything slow starts."""
    for flag, value in (("start-lr", start_lr), ("end-lr", end_lr), ("steps", steps),
                        ("smoothing", smoothing), ("diverge", diverge)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ConvlabError(f"--{flag} must be a number, received: {value!r}")
    if not 0 < start_lr < math.inf:
        raise ConvlabError(f"--start-lr must be a positive learning rate, received: {start_lr}")
    if not start_lr < end_lr < math.inf:
        raise ConvlabError(f"--end-lr must be a finite learning rate above --start-lr "
                           f"({start_lr:g}), received: {end_lr}")
    if not isinstance(steps, int):
        raise ConvlabError(f"--steps must be a whole number, received: {steps!r}")
    check_at_least("steps", steps, 10)
    if not 0 <= smoothing < 1:
        raise ConvlabError(f"--smoothing must be in [0, 1) (0: the raw loss), received: "
                           f"{smoothing}")
    if not diverge > 1:
        raise ConvlabError(f"--diverge must be above 1 (stop once the smoothed loss exceeds "
                           f"this many times its minimum), received: {diverge}")


class _LossRecorder(keras.callbacks.Callback):
    """Each step's learning rate and loss; stops training once the smoothed loss diverges."""

    def __init__(self, smoothing: float, diverge: float):
        super().__init__()
        self.smoothing, self.diverge = smoothing, diverge
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.diverged_at: int | None = None
        self._average, self._best = 0.0, math.inf

    def on_train_batch_begin(self, batch, logs=None):
        # Keras logs the mean loss since the epoch began: reset, each step logs its own.
        self.model.reset_metrics()
        self.lrs.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", math.nan))
        beta = self.smoothing
        self._average = beta * self._average + (1 - beta) * loss
        smoothed = self._average / (1 - beta ** len(self.lrs))  # bias-corrected, as fastai
        self.losses.append(loss)
        self.smoothed.append(smoothed)
        self._best = min(self._best, smoothed)
        if not math.isfinite(smoothed) or smoothed > self.diverge * self._best:
            self.diverged_at = len(self.losses) - 1
            self.model.stop_training = True


def _suggest(lrs: list[float], smoothed: list[float]) -> dict:
    """{"suggestion": ..., "minimum": ...} of a smoothed loss curve."""
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(smoothed, dtype=float)
    # As fastai: the first tenth is left out, where the average still rests on few losses
    # (one lucky batch would be the minimum).
    first = len(losses) // 10
    best = first + int(np.argmin(np.where(np.isfinite(losses), losses, np.inf)[first:]))
    minimum = {"lr": float(lrs[best]), "loss": float(losses[best]), "step": best,
               "lr_over_10": float(lrs[best] / 10)}
    if best - first >= 2:
        # The slope over log10(lr) across 2k steps, not one: one noisy batch's dip would
        # otherwise be the steepest point. Only points before the minimum count.
        k, x = max(1, len(losses) // 20), np.log10(lrs)
        points = np.arange(first, best)
        lo, hi = np.maximum(points - k, first), np.minimum(points + k, best)
        slopes = (losses[hi] - losses[lo]) / (x[hi] - x[lo])
        step = int(points[np.argmin(slopes)])
        suggestion = {"lr": float(lrs[step]), "loss": float(losses[step]), "step": step,
                      "rule": "steepest descent of the smoothed loss"}
    else:
        suggestion = {"lr": minimum["lr_over_10"], "loss": None, "step": None,
                      "rule": "minimum / 10 (the loss fell too little to find its steepest "
                              "descent; try a lower --start-lr)"}
    return {"suggestion": suggestion, "minimum": minimum}


def _finite(values: list[float]) -> list[float | None]:
    """JSON has no NaN or infinity: null instead."""
    return [v if math.isfinite(v) else None for v in values]


def _out_folder(config: TrainConfig, out) -> Path:
    """`out`, or a new folder RUNS_DIR/lr-find/<time>-<name>."""
    if out is None:
        return new_run_folder(Path(config.runs_dir) / "lr-find", config.name or config.model)
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConvlabError(f"cannot create --out folder '{path}': "
                           f"{err.strerror or err}") from None
    return path


def _plot(result: dict, path: Path) -> None:
    """Smoothed (and raw) loss over the learning rate, the suggestion and the recipe's rate."""
    lrs = np.asarray(result["lrs"], dtype=float)
    raw = np.asarray([np.nan if v is None else v for v in result["losses"]], dtype=float)
    smooth = np.asarray([np.nan if v is None else v for v in result["smoothed_losses"]],
                        dtype=float)
    suggestion, minimum = result["suggestion"], result["minimum"]
    fig = figure(figsize=(6.4, 3.8))
    ax = fig.subplots()
    ax.plot(lrs, raw, color="tab:blue", alpha=0.25, linewidth=0.8, label="loss")
    ax.plot(lrs, smooth, color="tab:blue", label="smoothed loss")
    ax.set_xscale("log")
    # The explosion would flatten the interesting part, the way down: the y axis ends
    # half as far again above the highest loss before the minimum.
    before = smooth[:minimum["step"] + 1]
    before = before[np.isfinite(before)]
    if before.size > 1 and before.max() > minimum["loss"]:
        low, peak = minimum["loss"], float(before.max())
        top = min(peak + 0.5 * (peak - low), result["diverge"] * low)
        ax.set_ylim(low - 0.1 * (top - low), top)
    ax.axvline(suggestion["lr"], color="tab:red", linestyle="--",
               label=f"suggestion {suggestion['lr']:.2g} "
                     f"({suggestion['rule'].split(' (')[0]})")
    if suggestion["loss"] is not None:
        ax.plot([suggestion["lr"]], [suggestion["loss"]], "o", color="tab:red")
    ax.axvline(minimum["lr_over_10"], color="tab:gray", linestyle=":",
               label=f"minimum / 10: {minimum['lr_over_10']:.2g}")
    ax.axvline(result["recipe_lr"], color="tab:green", linestyle="-.",
               label=f"{'recipe' if result['recipe'] else 'config'} LR "
                     f"{result['recipe_lr']:.2g}")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(literal(f"LR range test: {result['name']}, {result['optimizer']}, "
                         f"batch {result['global_batch']}"))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
