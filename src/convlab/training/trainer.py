"""The training engine: one code path for CPU, GPU(s), multi-worker and TPU.

`train` is a sequence of named steps: resolve the strategy and precision, build the datasets,
build (or restore) the model inside `strategy.scope()`, fit (in one or two phases), write the
run folder. `resume` reloads a run's config and last checkpoint and continues it.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections import Counter
from pathlib import Path

import keras
import tensorflow as tf

from convlab.config import TrainConfig, recipe_config
from convlab.errors import ConvlabError
from convlab.runs import read_run
from convlab.training.callbacks import EpochCheckpoint, Throughput
from convlab.training.schedules import (
    ScheduleConfig,
    build_schedule,
    lr_per_epoch,
    plot_schedule,
)
from convlab.training.strategy import hardware, resolve_precision, select_strategy


def _run_dir(config: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(config.runs_dir) / f"{stamp}-{config.name or config.model}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


def build_datasets(config: TrainConfig, image_size: int, global_batch: int, *,
                   start_epoch: int = 0, progress: bool = True):
    """(prepared folder, manifest, train dataset, validation dataset or None)."""
    from convlab.data.ingest import read_manifest
    from convlab.data.pipeline import load
    from convlab.data.resolve import resolve_data

    prepared = resolve_data(config.data, image_size, progress=progress)
    manifest = read_manifest(prepared)
    n_train = manifest["counts"]["per_split"].get("train", 0)
    if n_train < global_batch:
        raise ConvlabError(f"only {n_train} training images in '{prepared}', fewer than the "
                           f"global batch of {global_batch}; lower --batch-size")
    common = {"batch_size": global_batch, "image_size": image_size, "deterministic": True}
    train = load(prepared, "train", augment=config.augment, seed=config.seed,
                 start_epoch=start_epoch, **common)
    val = None
    if manifest["counts"]["per_split"].get("validation"):
        val = load(prepared, "validation", **common)
    if config.label_smoothing:
        n = manifest["num_classes"]
        one_hot = lambda x, y: (x, tf.one_hot(y, n))  # noqa: E731
        train = train.map(one_hot)
        val = val.map(one_hot) if val is not None else None
    return prepared, manifest, train, val


def _class_weights(config: TrainConfig, manifest: dict) -> dict | None:
    if config.class_weights != "balanced":
        return None
    counts = [manifest["counts"]["per_class"][c].get("train", 0) for c in manifest["classes"]]
    total = sum(counts)
    return {i: total / (len(counts) * n) for i, n in enumerate(counts) if n}


def _optimizer(config: TrainConfig, learning_rate):
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=config.momentum, nesterov=True)
    return keras.optimizers.Adam(learning_rate)


def _compile(model, config: TrainConfig, learning_rate) -> None:
    loss = (keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
            if config.label_smoothing else keras.losses.SparseCategoricalCrossentropy())
    model.compile(optimizer=_optimizer(config, learning_rate), loss=loss, metrics=["accuracy"],
                  steps_per_execution=config.steps_per_execution)


def _set_backbone(model, trainable: bool) -> None:
    from convlab.models.backbone import set_backbone_trainable

    set_backbone_trainable(model, trainable)


def _last_checkpoint(run: Path) -> tuple[int, Path] | None:
    state = run / "state.json"
    if not state.exists():
        return None
    epoch = json.loads(state.read_text())["epoch"]
    return epoch, run / "checkpoints" / f"epoch-{epoch:03d}.keras"


def _history_rows(run: Path) -> list[dict]:
    path = run / "history.csv"
    if not path.exists():
        return []
    with open(path) as f:
        return [{k: (float(v) if k != "epoch" else int(v)) for k, v in row.items()}
                for row in csv.DictReader(f)]


def train(config: TrainConfig | str | None = None, *, progress: bool = True,
          **overrides) -> Path:
    """Train a model (or a recipe) and write a run folder.

    Args:
        config: a `TrainConfig`, a recipe name, or None for the defaults.
        progress: show progress bars (else one line per epoch).
        **overrides: fields of `TrainConfig` to replace (`schedule`/`augment` take dicts).

    Returns:
        The run folder: config.json, history.csv/json, logs/ (TensorBoard), checkpoints/,
        best.keras, model.keras, plots/, summary.txt/json.

    Raises:
        ConvlabError: bad config or data.
    """
    if isinstance(config, str):
        config = recipe_config(config)
    config = (config or TrainConfig()).override(**overrides)
    config.validate()
    if Path(config.data).exists():
        # So that `--resume` and repeats work from any directory.
        config = config.override(data=str(Path(config.data).resolve()))
    return _fit(config, run=None, progress=progress)


def resume(run: str | os.PathLike, *, progress: bool = True) -> Path:
    """Continue an interrupted run from its last completed epoch, in the same folder.

    Raises:
        ConvlabError: not a run folder, or nothing to resume.
    """
    run, saved = read_run(run)
    config = TrainConfig.from_dict(saved["config"])
    done = _last_checkpoint(run)
    if done is not None and done[0] >= config.total_epochs:
        raise ConvlabError(f"run '{run}' already finished all {config.total_epochs} epochs")
    return _fit(config, run=run, progress=progress)


def _fit(config: TrainConfig, run: Path | None, progress: bool) -> Path:
    from convlab.models import create_model, get_model_info

    info = get_model_info(config.model)
    image_size = config.image_size or info.image_size
    if config.fine_tune_epochs and not info.pretrained:
        raise ConvlabError(f"--fine-tune-epochs needs a pretrained backbone to unfreeze; "
                           f"{config.model!r} has none (use more --epochs instead)")
    strategy_info = select_strategy(config.strategy)
    strategy = strategy_info.strategy
    replicas = strategy.num_replicas_in_sync
    global_batch = (config.batch_per_replica * replicas if config.batch_per_replica
                    else config.batch_size)
    if global_batch % replicas:
        raise ConvlabError(f"the global batch {global_batch} does not split evenly over "
                           f"{replicas} replicas; use a multiple of {replicas}")
    precision = resolve_precision(config.precision, strategy_info)
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(config.seed)

    resumed = _last_checkpoint(run) if run is not None else None
    start_epoch = resumed[0] if resumed else 0
    prepared, manifest, train_ds, val_ds = build_datasets(
        config, image_size, global_batch, start_epoch=start_epoch, progress=progress)
    n_train = manifest["counts"]["per_split"]["train"]
    steps = n_train // global_batch
    schedule = build_schedule(config.schedule, steps_per_epoch=steps, epochs=config.epochs,
                              replicas=replicas)
    print(f"strategy: {strategy_info.describe()}; precision: {precision}; global batch "
          f"{global_batch} ({global_batch // replicas} per replica); {steps} steps/epoch")

    with strategy.scope():
        if resumed:
            model = keras.models.load_model(resumed[1])
            print(f"resuming {run} after epoch {start_epoch} from {resumed[1].name}")
        else:
            options = dict(config.model_options)
            model = create_model(config.model, manifest["num_classes"], image_size, **options)
            _compile(model, config, schedule)

    if run is None:
        run = _run_dir(config)
        derived = {"image_size": image_size, "global_batch": global_batch,
                   "per_replica_batch": global_batch // replicas, "replicas": replicas,
                   "steps_per_epoch": steps, "precision": precision,
                   "strategy": strategy_info.kind, "prepared_data": str(prepared),
                   "classes": manifest["classes"],
                   "lr_per_epoch": lr_per_epoch(schedule, steps, config.epochs)}
        (run / "config.json").write_text(json.dumps(
            {"config": config.to_dict(), "derived": derived}, indent=1))
        (run / "plots").mkdir()
        plot_schedule(schedule, steps, config.epochs, run / "plots" / "lr_schedule.png",
                      title=f"{config.schedule.name} schedule, {config.name or config.model}")

    throughput = Throughput(global_batch, steps)
    callbacks = [throughput, EpochCheckpoint(run),
                 keras.callbacks.CSVLogger(str(run / "history.csv"), append=True),
                 keras.callbacks.TensorBoard(str(run / "logs"), write_graph=False)]
    fit_args = {"validation_data": val_ds, "steps_per_epoch": steps, "shuffle": False,
                "callbacks": callbacks, "verbose": 1 if progress else 2,
                "class_weight": _class_weights(config, manifest)}
    started = time.time()
    try:
        if start_epoch < config.epochs:
            model.fit(train_ds, epochs=config.epochs, initial_epoch=start_epoch, **fit_args)
        if config.fine_tune_epochs:
            if start_epoch <= config.epochs:
                # Phase two: the whole network, at a lower rate, with a new optimizer.
                with strategy.scope():
                    _set_backbone(model, True)
                    _compile(model, config, build_schedule(
                        ScheduleConfig("cosine", learning_rate=config.fine_tune_lr,
                                       warmup_epochs=0.0, min_lr=config.fine_tune_lr / 20),
                        steps_per_epoch=steps, epochs=config.fine_tune_epochs))
            model.fit(train_ds, epochs=config.total_epochs,
                      initial_epoch=max(start_epoch, config.epochs), **fit_args)
    except KeyboardInterrupt:
        done = _last_checkpoint(run)
        print(f"\ninterrupted after {done[0] if done else 0} completed epoch(s); continue with: "
              f"convlab train --resume {run}")
        raise
    finally:
        keras.mixed_precision.set_global_policy("float32")
    wall = time.time() - started
    model.save(run / "model.keras")
    _write_summary(run, config, model, manifest, strategy_info, precision, wall, throughput)
    if config.report:
        from convlab.evaluation.report import report

        print(f"report: {report(run)}")
    return run


def _write_summary(run, config, model, manifest, strategy_info, precision, wall, throughput):
    history = _history_rows(run)
    (run / "history.json").write_text(json.dumps(history, indent=1))
    best = max(history, key=lambda h: h.get("val_accuracy", h.get("accuracy", 0)),
               default={})
    previous = json.loads((run / "summary.json").read_text()) if (
        run / "summary.json").exists() else {}
    summary = {
        "run": str(run), "recipe": config.recipe, "model": config.model,
        "parameters": int(model.count_params()),
        "trainable_parameters": int(sum(v.numpy().size for v in model.trainable_weights)),
        "data": str(manifest.get("source")),
        "images": dict(Counter(manifest["counts"]["per_split"])),
        "hardware": hardware(), "strategy": strategy_info.describe(), "precision": precision,
        "epochs": len(history),
        "wall_seconds": round(previous.get("wall_seconds", 0) + wall, 1),
        "train_images_per_second": round(throughput.steady_rate(), 1),
        "final": history[-1] if history else {}, "best": best,
    }
    (run / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = [f"{k}: {v}" for k, v in summary.items() if k not in ("final", "best")]
    for label in ("final", "best"):
        row = summary[label]
        lines.append(f"{label}: epoch {row.get('epoch', -1) + 1}, " + ", ".join(
            f"{k} {v:.4f}" for k, v in row.items() if "accuracy" in k or "loss" in k))
    (run / "summary.txt").write_text("\n".join(lines) + "\n")
