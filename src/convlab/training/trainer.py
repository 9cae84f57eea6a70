"""The training loop: data -> model -> fit -> a run folder.

A first, deliberately small engine: default strategy, a precision policy, Adam, a constant LR,
per-epoch checkpoints and history. Strategies, schedules and resume build on these steps.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import tensorflow as tf

from convlab.errors import ConvlabError

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


@dataclass
class TrainConfig:
    """Everything that determines a run; saved as config.json in the run folder."""

    model: str = "squeezenet"
    data: str = "flowers"
    image_size: int | None = None  # default: the model's own size
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 1e-3
    augment: bool = True
    precision: str = "auto"
    seed: int = 42
    runs_dir: str = "runs"
    model_options: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConvlabError(f"--epochs must be at least 1, received: {self.epochs}")
        if self.batch_size < 1:
            raise ConvlabError(f"--batch-size must be at least 1, received: {self.batch_size}")
        if not self.learning_rate > 0:
            raise ConvlabError(f"--lr must be positive, received: {self.learning_rate}")
        if self.precision not in PRECISIONS:
            raise ConvlabError(f"--precision must be one of {', '.join(PRECISIONS)}, "
                               f"received: {self.precision!r}")


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bfloat16 (AVX512-BF16 or AMX): mixed_bfloat16 is ~2x."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str) -> str:
    if precision != "auto":
        return precision
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        major = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability",
                                                                        (0, 0))[0]
        return "mixed_float16" if major >= 7 else "float32"
    return "mixed_bfloat16" if cpu_supports_bf16() else "float32"


def _run_dir(config: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(config.runs_dir) / f"{stamp}-{config.model}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


def build_datasets(config: TrainConfig, image_size: int, progress: bool = True):
    """(prepared folder, manifest, train dataset, validation dataset or None, steps)."""
    from convlab.data.ingest import read_manifest
    from convlab.data.pipeline import load
    from convlab.data.resolve import resolve_data

    prepared = resolve_data(config.data, image_size, progress=progress)
    manifest = read_manifest(prepared)
    n_train = manifest["counts"]["per_split"].get("train", 0)
    if n_train < config.batch_size:
        raise ConvlabError(f"only {n_train} training images in '{prepared}', fewer than "
                           f"--batch-size {config.batch_size}; lower --batch-size")
    train = load(prepared, "train", batch_size=config.batch_size, image_size=image_size,
                 augment=config.augment, seed=config.seed)
    val = None
    if manifest["counts"]["per_split"].get("validation"):
        val = load(prepared, "validation", batch_size=config.batch_size, image_size=image_size)
    return prepared, manifest, train, val, n_train // config.batch_size


def train(config: TrainConfig | None = None, *, progress: bool = True, **overrides) -> Path:
    """Train a model and write a run folder.

    Args:
        config: a `TrainConfig`; keyword overrides replace its fields.
        progress: show progress bars.

    Returns:
        The run folder (config.json, history.csv, checkpoints/, model.keras, summary.txt).

    Raises:
        ConvlabError: bad config or data.
    """
    config = TrainConfig(**{**asdict(config or TrainConfig()), **overrides})
    config.validate()
    from convlab.models import create_model, get_model_info

    info = get_model_info(config.model)
    image_size = config.image_size or info.image_size
    config.image_size = image_size

    keras.utils.set_random_seed(config.seed)
    precision = resolve_precision(config.precision)
    keras.mixed_precision.set_global_policy(precision)
    prepared, manifest, train_ds, val_ds, steps = build_datasets(config, image_size, progress)
    strategy = tf.distribute.get_strategy()
    print(f"strategy: {type(strategy).__name__} ({strategy.num_replicas_in_sync} replica), "
          f"precision: {precision}, batch: {config.batch_size}, {steps} steps/epoch")

    with strategy.scope():
        model = create_model(config.model, manifest["num_classes"], image_size,
                             **config.model_options)
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    run = _run_dir(config)
    saved = asdict(config) | {"prepared_data": str(prepared), "classes": manifest["classes"],
                              "resolved_precision": precision}
    (run / "config.json").write_text(json.dumps(saved, indent=1))
    (run / "checkpoints").mkdir()
    timer = EpochTimer(steps * config.batch_size)
    callbacks = [
        keras.callbacks.CSVLogger(str(run / "history.csv")),
        keras.callbacks.ModelCheckpoint(str(run / "checkpoints" / "epoch-{epoch:03d}.keras")),
        timer,
    ]
    started = time.time()
    try:
        history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
                            steps_per_epoch=steps, callbacks=callbacks, shuffle=False,
                            verbose=1 if progress else 2)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    wall = time.time() - started
    model.save(run / "model.keras")
    (run / "history.json").write_text(json.dumps(history.history, indent=1))
    summary = {
        "model": config.model, "parameters": model.count_params(),
        "data": str(prepared), "train_images": manifest["counts"]["per_split"].get("train"),
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "strategy": type(strategy).__name__, "precision": precision,
        "epochs": config.epochs, "wall_seconds": round(wall, 1),
        "images_per_second": round(timer.steady_rate(), 1),
        "final": {k: float(v[-1]) for k, v in history.history.items()},
    }
    (run / "summary.json").write_text(json.dumps(summary, indent=1))
    (run / "summary.txt").write_text("\n".join(f"{k}: {v}" for k, v in summary.items()) + "\n")
    return run


class EpochTimer(keras.callbacks.Callback):
    """Records training images/s per epoch (validation excluded) into the logs."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images = images_per_epoch
        self.rates: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = self._last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._last = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = self._last - self._start
        self.rates.append(self.images / seconds if seconds > 0 else math.nan)
        if logs is not None:
            logs["images_per_second"] = self.rates[-1]

    def steady_rate(self) -> float:
        # The first epoch pays for tracing and for filling the cache.
        rates = self.rates[1:] or self.rates
        return sum(rates) / len(rates)
