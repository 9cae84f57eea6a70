"""The training engine: one code path for CPU, GPU(s), multi-worker and TPU.

`train` is a sequence of named steps: resolve the strategy and precision, build the datasets,
build (or restore) the model inside `strategy.scope()`, fit (in one or two phases), write the
run folder. `resume` reloads a run's config and last checkpoint and continues it. What follows
fitting (calibrating, the report) belongs to the layers above: the command layer passes it in
as `after_fit` (see `convlab.workflow`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from pathlib import Path

import keras
import tensorflow as tf

from convlab.config import TrainConfig, named_config
from convlab.data.manifest import Manifest, read_manifest
from convlab.errors import ConvlabError
from convlab.files import locked, write_text_atomic
from convlab.runs import (
    RunFolder,
    checkpoints,
    history_rows,
    last_checkpoint,
    new_run_folder,
    read_record,
    why_not_loaded,
)
from convlab.training.callbacks import (
    EpochCheckpoint,
    EpochLine,
    FiniteLoss,
    Throughput,
    fit_output,
)
from convlab.training.distributed import (
    LOST_CONTACT,
    PEER_ERRORS,
    ExampleCount,
    ShardedValidation,
    barrier,
    check_tpu_data,
    is_chief,
    is_multi_worker,
    synchronize_batch_norm,
    task_of,
    write_worker_report,
)
from convlab.training.schedules import (
    build_schedule,
    lr_per_epoch,
    plot_schedule,
)
from convlab.training.strategy import (
    StrategyInfo,
    hardware,
    precision_policy,
    resolve_precision,
    select_strategy,
)

# What the chief runs once fitting has ended, in the run folder still locked and under the
# run's precision policy: (run folder, config, manifest, progress=...).
AfterFit = Callable[..., None]


def build_datasets(config: TrainConfig, image_size: int, global_batch: int, *,
                   start_epoch: int = 0, progress: bool = True,
                   strategy_info: StrategyInfo | None = None):
    """(prepared folder, manifest, train dataset, validation dataset or None).

    Under a multi-worker or TPU strategy each worker (TPU host) builds its own input
    pipeline that reads only its part of the data (`tf.distribute`'s
    `distribute_datasets_from_function`); elsewhere one pipeline feeds all local replicas.
    """
    splits = _splits(config, image_size, global_batch, start_epoch=start_epoch,
                     progress=progress, strategy_info=strategy_info)
    return splits.prepared, splits.manifest, *_datasets(splits, strategy_info)


def _splits(config: TrainConfig, image_size: int, global_batch: int, *, start_epoch: int,
            progress: bool, strategy_info: StrategyInfo | None) -> _Splits:
    """The prepared data (prepared first where needed) and how to read its splits."""
    from convlab.data.resolve import resolve_data

    prepared = resolve_data(config.data, image_size, progress=progress)
    manifest = read_manifest(prepared)
    n_train = manifest.count("train")
    if n_train < global_batch:
        raise ConvlabError(f"only {n_train} training images in '{prepared}', fewer than the "
                           f"global batch of {global_batch}; lower --batch-size")
    return _Splits(config, prepared, manifest, image_size, global_batch,
                   steps=n_train // global_batch, start_epoch=start_epoch,
                   weights=_class_weights(config, manifest),
                   tpu=strategy_info is not None and strategy_info.tpu)


def _datasets(splits: _Splits, strategy_info: StrategyInfo | None):
    """(train dataset, validation dataset or None) of `splits` under the strategy."""
    has_val = splits.manifest.has_split("validation")
    strategy = strategy_info.strategy if strategy_info is not None else None
    train = splits.train(strategy)
    if strategy is not None and is_multi_worker(strategy):
        # This worker's part of the validation split, as a plain dataset: `ShardedValidation`
        # evaluates it locally (the parts may differ by a batch; see there).
        _, index = task_of(strategy)
        context = tf.distribute.InputContext(strategy_info.workers, index,
                                             strategy.num_replicas_in_sync)
        val = splits.make("validation", context) if has_val else None
    elif splits.tpu:
        val = strategy.distribute_datasets_from_function(
            lambda c: splits.make("validation", c)) if has_val else None
    else:
        val = splits.make("validation") if has_val else None
    return train, val


@dataclass(frozen=True)
class _Splits:
    """One split's dataset for `build_datasets`: all of it, or one input pipeline's part."""

    config: TrainConfig
    prepared: object  # the prepared folder (a path or gs:// URL)
    manifest: Manifest
    image_size: int
    global_batch: int
    steps: int  # per epoch, over all replicas
    start_epoch: int
    weights: dict | None  # class weights of the loss
    tpu: bool
    # the decoded records' RAM cache, shared by every dataset made from these splits (and
    # from copies of them at other sizes: `dataclasses.replace` keeps the same dict)
    records: dict = dataclass_field(default_factory=dict, compare=False)

    def train(self, strategy=None):
        """The training split: one input pipeline per worker (or TPU host) where the
        strategy distributes, else one dataset."""
        if strategy is not None and (self.tpu or is_multi_worker(strategy)):
            return strategy.distribute_datasets_from_function(lambda c: self.make("train", c))
        return self.make("train")

    def make(self, split: str, context: tf.distribute.InputContext | None = None):
        from convlab.data.pipeline import input_plan, load

        config, training = self.config, split == "train"
        batch, local = self.global_batch, 1
        if context is not None:
            batch = context.get_per_replica_batch_size(self.global_batch)
            local = context.num_replicas_in_sync // context.num_input_pipelines
            print(input_plan(self.prepared, split, input_context=context, manifest=self.manifest,
                             needed=self.steps * local * batch if training else None).describe())
        common = {"batch_size": batch, "image_size": self.image_size, "deterministic": True,
                  "input_context": context, "cache": self.records}
        if training:
            ds = load(self.prepared, "train", augment=config.augment, seed=config.seed,
                      start_epoch=self.start_epoch, batches_per_epoch=self.steps * local,
                      **common)
        else:  # TPUs want fixed shapes: the last partial batch is left out there
            ds = load(self.prepared, "validation", drop_remainder=self.tpu, **common)
        return self._finish(ds, training, self.steps * local)

    def _finish(self, ds, training: bool, batches_per_epoch: int):
        """Class weights, soft labels and mixed batches, as the config asks."""
        from convlab.data.augment import mix_batch

        config, n = self.config, self.manifest.num_classes
        if self.weights and training:
            table = tf.constant([self.weights.get(i, 0.0) for i in range(n)])
            ds = ds.map(lambda x, y: (x, y, tf.gather(table, y)))
        if config.soft_labels:
            ds = ds.map(lambda x, y, *w: (x, tf.one_hot(y, n), *w))
        if training and (config.mixup or config.cutmix):
            # Seeded by the batch's number counted from epoch 0, so that a resumed run mixes
            # exactly as an uninterrupted one does.
            ds = ds.enumerate(start=self.start_epoch * batches_per_epoch).map(
                lambda i, batch: mix_batch(*batch[:2], tf.stack([
                    tf.constant(config.seed % 2**31, tf.int32), tf.cast(i, tf.int32)]),
                    mixup=config.mixup, cutmix=config.cutmix,
                    weights=batch[2] if len(batch) > 2 else None),
                num_parallel_calls=tf.data.AUTOTUNE)
        return ds


def global_batch_size(config: TrainConfig, replicas: int) -> int:
    """The batch of one step over all replicas: --batch-size, or a recipe's per-replica
    batch times the replicas (the codelab's way).

    Raises:
        ConvlabError: a batch that does not split evenly over the replicas.
    """
    batch = config.batch_per_replica * replicas if config.batch_per_replica else \
        config.batch_size
    if batch % replicas:
        raise ConvlabError(f"the global batch {batch} does not split evenly over "
                           f"{replicas} replicas; use a multiple of {replicas}")
    return batch


def _class_weights(config: TrainConfig, manifest: Manifest) -> dict | None:
    if config.class_weights != "balanced":
        return None
    counts = [manifest.per_class[c].get("train", 0) for c in manifest.classes]
    total = sum(counts)
    return {i: total / (len(counts) * n) for i, n in enumerate(counts) if n}


def _optimizer(config: TrainConfig, learning_rate):
    ema = ({"use_ema": True, "ema_momentum": config.ema_momentum} if config.ema_momentum
           else {})
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=config.weight_decay, **ema)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=config.momentum, nesterov=True,
                                    **ema)
    return keras.optimizers.Adam(learning_rate, **ema)


def compile_model(model, config: TrainConfig, learning_rate, *, count_examples: bool = False,
                  steps_per_execution: int = 1) -> None:
    """Compile `model` as training does: the config's optimizer at `learning_rate` (a rate or a
    schedule), its loss, accuracy (and the examples counted, under a multi-worker strategy)."""
    loss = (keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
            if config.soft_labels else keras.losses.SparseCategoricalCrossentropy())
    metrics = ["accuracy"] + ([ExampleCount()] if count_examples else [])
    model.compile(optimizer=_optimizer(config, learning_rate), loss=loss, metrics=metrics,
                  steps_per_execution=steps_per_execution)


def _set_backbone(model, trainable: bool, first_trainable: str | None = None) -> None:
    from convlab.models.backbone import set_backbone_trainable

    set_backbone_trainable(model, trainable, first_trainable=first_trainable)


def train(config: TrainConfig | str | None = None, *, progress: bool = True,
          budget_minutes: float | None = None, after_fit: AfterFit | None = None,
          **overrides) -> Path | None:
    """Train a model (or a recipe) and write a run folder.

    Args:
        config: a `TrainConfig`, a recipe or model name, or None: with no `model` among the
            overrides, the approach is chosen from the data and this machine within
            `budget_minutes` (see `convlab.training.auto`).
        progress: show progress bars (else one line per epoch).
        budget_minutes: the time budget of a chosen approach (default 20).
        after_fit: what the chief runs on the run folder once fitting has ended (the command
            layer's calibration and report: `convlab.workflow.train`); None: nothing.
        **overrides: fields of `TrainConfig` to replace (`schedule`/`augment` take dicts).

    Returns:
        The run folder: config.json, history.csv/json, logs/ (TensorBoard), checkpoints/,
        best.keras, model.keras, plots/, summary.txt/json. In a multi-worker job only the
        chief writes one; other workers get None.

    Raises:
        ConvlabError: bad config or data.
    """
    if isinstance(config, str):
        config = named_config(config)
    elif config is None and "model" not in overrides and "recipe" not in overrides:
        from convlab.training.auto import plan

        config = plan(overrides.pop("data", TrainConfig().data),
                      budget_minutes=budget_minutes, progress=progress)
    config = (config or TrainConfig()).override(**overrides)
    config.validate()
    if Path(config.data).exists():
        # So that `--resume` and repeats work from any directory.
        config = config.override(data=str(Path(config.data).resolve()))
    return _fit(config, run=None, progress=progress, after_fit=after_fit)


def _resume_point(run: Path, strategy) -> tuple[int, Path, keras.Model] | None:
    """(epoch, checkpoint, model) to resume from: the newest checkpoint that loads. A damaged
    one (a disk that filled up, a killed copy) costs its epoch, which is trained again."""
    newest = last_checkpoint(run)
    if newest is None:
        return None
    candidates = [c for c in checkpoints(run) if c[0] <= newest[0]]
    for epoch, path in reversed(candidates):
        try:
            with strategy.scope():
                model = keras.models.load_model(path)
        except Exception as err:  # truncated zip, bad h5, missing file, refused as unsafe
            print(f"checkpoint {path.name} cannot be loaded: {why_not_loaded(err)}; trying "
                  "the one before it")
            continue
        if epoch < newest[0]:
            print(f"resuming after epoch {epoch}: epoch(s) {epoch + 1}-{newest[0]} are "
                  "trained again")
        _trim_history(run, epoch)
        return epoch, path, model
    raise ConvlabError(f"no checkpoint of '{run}' can be loaded (checked {len(candidates)}); "
                       "train the run again")


def test_size(config: TrainConfig, image_size: int) -> int:
    """The size the trained model is evaluated, predicted and exported at."""
    return max(1, round(image_size * config.test_scale))


def _start_line(config: TrainConfig, image_size: int, manifest: Manifest) -> str:
    """What this run will do, in one line."""
    s, ft = config.schedule, config.fine_tune_schedule
    what = (f"training {config.model}" + (f" (recipe {config.recipe})" if config.recipe else "")
            + f" at {image_size} px from {manifest.stored_size} px images: "
            f"{config.epochs} epoch(s), {config.optimizer} at {s.learning_rate:g} ({s.name})")
    if config.feature_views:
        what += f", the head on cached features of {config.feature_views} augmented views"
    if config.fine_tune_epochs:
        what += (f", then {config.fine_tune_epochs} fine-tune epoch(s) at {ft.learning_rate:g} "
                 f"({ft.name})" + (f" of the backbone from {config.fine_tune_from}"
                                   if config.fine_tune_from else ""))
        if (first := config.epoch_sizes(image_size)[config.epochs]) != image_size:
            what += f", their size growing from {first} to {image_size} px"
    if mixes := [f"{name} (alpha {alpha:g})" for name, alpha in
                 (("MixUp", config.mixup), ("CutMix", config.cutmix)) if alpha]:
        what += "; each training batch mixed by " + " or ".join(mixes)
    if (tested := test_size(config, image_size)) != image_size:
        what += f"; evaluated at {tested} px"
    if not manifest.has_split("validation"):
        what += ("; no validation split: nothing measures the model on photos it did not "
                 "train on, and best.keras is the epoch with the best training accuracy "
                 "(prepare with --val-fraction above 0 to measure it)")
    if config.plan:
        what += (f"; chosen for the data and this machine within {config.plan['budget_minutes']:g}"
                 f" min (expected ~{config.plan['expected_minutes']:g})")
    return what


def _plain(value) -> str:
    """A summary value as a person reads it: no Python reprs."""
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def _locked_run(run: Path):
    return locked(run, f"run '{run}' is being trained by another process right now; wait for "
                       "it to end (or stop it) before resuming it")


def _trim_history(run: Path, epochs: int) -> None:
    """Keep history.csv's header and first `epochs` rows: anything after them (an epoch
    trained again, a row cut short by a full disk) goes."""
    path = RunFolder(run).history_csv
    if path.exists():
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines[:1 + epochs] if line.endswith("\n")]
        if kept != lines:
            write_text_atomic(path, "".join(kept))


def resume(run: str | os.PathLike, *, progress: bool = True,
           after_fit: AfterFit | None = None) -> Path | None:
    """Continue an interrupted run from its last completed epoch, in the same folder;
    `after_fit` as for `train`.

    Raises:
        ConvlabError: not a run folder, or nothing to resume.
    """
    record = read_record(run)
    run, config = record.path, record.config
    done = last_checkpoint(run)
    if done is not None and done[0] >= config.total_epochs:
        raise ConvlabError(f"run '{run}' already finished all {config.total_epochs} epochs")
    return _fit(config, run=run, progress=progress, after_fit=after_fit)


def _fit(config: TrainConfig, run: Path | None, progress: bool,
         after_fit: AfterFit | None) -> Path | None:
    image_size = _image_size(config)
    strategy_info = select_strategy(config.strategy)
    if strategy_info.tpu:
        check_tpu_data(config.data)
    strategy = strategy_info.strategy
    replicas = strategy.num_replicas_in_sync
    global_batch = global_batch_size(config, replicas)
    precision = resolve_precision(config.precision, strategy_info, config.model)
    # The policy is restored however training ends; the run folder is locked while it trains.
    with precision_policy(precision), contextlib.ExitStack() as held:
        keras.utils.set_random_seed(config.seed)
        chief = is_chief(strategy)
        if run is not None and chief:
            held.enter_context(_locked_run(run))
        if config.feature_views and (is_multi_worker(strategy) or strategy_info.tpu):
            print("cached features: not under a multi-worker or TPU strategy; the head trains "
                  "through the whole model instead")
            config = config.override(feature_views=0)

        resumed = _resume_point(run, strategy) if run is not None else None
        start_epoch = resumed[0] if resumed else 0
        # Cached features are always the views of epochs 0..N-1, also when resuming mid-way.
        data_start = 0 if config.feature_views and start_epoch < config.epochs else start_epoch
        splits = _splits(config, image_size, global_batch, start_epoch=data_start,
                         progress=progress, strategy_info=strategy_info)
        train_ds, val_ds = _datasets(splits, strategy_info)
        steps = splits.steps
        plan = _Plan(config, strategy_info, precision, splits,
                     per_call=_steps_per_call(config, strategy_info, steps),
                     phases=_phases(config, steps, replicas), start_epoch=start_epoch,
                     chief=chief, progress=progress, after_fit=after_fit, run=run,
                     epoch_sizes=config.epoch_sizes(image_size))
        _print_start(plan)
        model = _build_model(plan, resumed)
        if chief and run is None:
            plan = replace(plan, run=new_run_folder(config.runs_dir, config.name or config.model))
            held.enter_context(_locked_run(plan.run))
            _write_run_config(plan)
        write_worker_report(strategy, plan.run)
        return _fit_in_workdir(plan, model, train_ds, val_ds)


def _image_size(config: TrainConfig) -> int:
    """The training size, once the model is known to allow the config's phases.

    Raises:
        ConvlabError: fine-tuning, or cached features, without a frozen pretrained backbone.
    """
    from convlab.models import get_model_info

    info = get_model_info(config.model)
    image_size = config.image_size or info.default_size
    if config.fine_tune_epochs and not info.pretrained:
        raise ConvlabError(f"--fine-tune-epochs needs a pretrained backbone to unfreeze; "
                           f"{config.model!r} has none (use more --epochs instead)")
    frozen = info.pretrained and not config.model_options.get("trainable_backbone", False) \
        and config.model_options.get("weights", "imagenet") is not None
    if config.feature_views and not frozen:
        raise ConvlabError(f"--feature-views needs a frozen pretrained backbone; {config.model!r}"
                           f" with options {config.model_options} has none (drop --feature-views)")
    return image_size


def _steps_per_call(config: TrainConfig, strategy_info: StrategyInfo, steps: int) -> int:
    """TPUs run best with many steps per call; elsewhere the user's setting."""
    return (min(steps, 32) if strategy_info.tpu and config.steps_per_execution == 1
            else config.steps_per_execution)


def _phases(config: TrainConfig, steps: int, replicas: int) -> list[tuple]:
    """(learning-rate schedule, epochs) of each phase: the first, then any fine-tuning."""
    schedule = build_schedule(config.schedule, steps_per_epoch=steps, epochs=config.epochs,
                              replicas=replicas)
    phases = [(schedule, config.epochs)]
    if config.fine_tune_epochs:
        phases.append((_fine_tune_schedule(config, steps, replicas), config.fine_tune_epochs))
    return phases


def _fine_tune_schedule(config: TrainConfig, steps: int, replicas: int):
    return build_schedule(config.fine_tune_schedule, steps_per_epoch=steps,
                          epochs=config.fine_tune_epochs, replicas=replicas)


@dataclass(frozen=True)
class _Plan:
    """What one training process runs with, decided once by `_fit`."""

    config: TrainConfig
    strategy_info: StrategyInfo
    precision: str
    # the prepared data and how it is read, at the training size (`image_size`, `prepared`,
    # `manifest`, `global_batch` and `steps` per epoch are its)
    splits: _Splits
    per_call: int  # steps per execution
    phases: list[tuple]  # (schedule, epochs) of each phase
    start_epoch: int
    chief: bool
    progress: bool
    after_fit: AfterFit | None
    run: Path | None  # the run folder (the chief's; None on other workers before it exists)
    workdir: Path | None = None  # where this process writes: the run folder, or a temporary one
    epoch_sizes: list[int] = dataclass_field(default_factory=list)  # each epoch's training size

    @property
    def image_size(self) -> int:
        return self.splits.image_size

    @property
    def global_batch(self) -> int:
        return self.splits.global_batch

    @property
    def prepared(self) -> object:  # the prepared folder (a path or gs:// URL)
        return self.splits.prepared

    @property
    def manifest(self) -> Manifest:
        return self.splits.manifest

    @property
    def steps(self) -> int:  # per epoch, over all replicas
        return self.splits.steps

    @property
    def progressive(self) -> bool:
        """Some epochs train at another size than the training size."""
        return any(size != self.image_size for size in self.epoch_sizes)

    @property
    def replicas(self) -> int:
        return self.strategy_info.strategy.num_replicas_in_sync


def _print_start(plan: _Plan) -> None:
    """The run's set-up and what it will do, before anything is built."""
    batch, size = plan.global_batch, plan.image_size
    print(f"strategy: {plan.strategy_info.describe()}; precision: {plan.precision}; global batch "
          f"{batch} ({batch // plan.replicas} per replica); {plan.steps} steps/epoch")
    print(_start_line(plan.config, size, plan.manifest))
    stored = plan.manifest.stored_size
    if size > stored:
        print(f"warning: the prepared images are {stored} px and are enlarged to "
              f"{size} px for training (no detail is added); prepare the photos at "
              f"{size} px or more for their full detail")


def _build_model(plan: _Plan, resumed: tuple | None) -> keras.Model:
    """Inside the strategy's scope: the resumed checkpoint's model, or a new one compiled
    with the first phase's schedule."""
    from convlab.models import create_model, with_free_size

    config, strategy = plan.config, plan.strategy_info.strategy
    multi_worker = is_multi_worker(strategy)
    with strategy.scope():
        if resumed:
            start_epoch, path, model = resumed
            print(f"resuming {plan.run} after epoch {start_epoch} from {path.name}")
        else:
            options = dict(config.model_options)
            model = create_model(config.model, plan.manifest.num_classes, plan.image_size,
                                 **options)
            if config.fine_tune_epochs and config.fine_tune_from:
                from convlab.models.backbone import first_trainable_index

                first_trainable_index(model, config.fine_tune_from)  # a typo: now
            if plan.progressive:  # one network for every epoch's size
                model = with_free_size(model)
            compile_model(model, config, plan.phases[0][0], count_examples=multi_worker,
                          steps_per_execution=plan.per_call)
        if multi_worker and (synced := synchronize_batch_norm(model)):
            print(f"batch norm: {synced} layer(s) use the global batch's statistics "
                  "(synchronized across workers)")
    return model


def _write_run_config(plan: _Plan) -> None:
    """A new run folder's config.json (the config and what was derived from it) and its
    learning-rate plot."""
    config, steps = plan.config, plan.steps
    derived = {"image_size": plan.image_size,
               "test_image_size": test_size(config, plan.image_size),
               "global_batch": plan.global_batch,
               "per_replica_batch": plan.global_batch // plan.replicas,
               "replicas": plan.replicas,
               "steps_per_epoch": steps, "steps_per_execution": plan.per_call,
               "precision": plan.precision, "strategy": plan.strategy_info.kind,
               "workers": plan.strategy_info.workers, "prepared_data": str(plan.prepared),
               "classes": list(plan.manifest.classes),
               # what predict and export need, also once the prepared data has moved
               "stored_size": plan.manifest.stored_size,
               "jpeg_quality": plan.manifest.quality,
               "lr_per_epoch": [lr for phase, n in plan.phases
                                for lr in lr_per_epoch(phase, steps, n)],
               "epoch_sizes": list(plan.epoch_sizes)}
    folder = RunFolder(plan.run)
    folder.config.write_text(json.dumps(
        {"config": config.to_dict(), "derived": derived}, indent=1))
    folder.plots.mkdir()
    names = " + fine-tune ".join(c.name for c in (config.schedule, config.fine_tune_schedule)
                                 [:len(plan.phases)])
    plot_schedule(plan.phases, steps, folder.plot("lr_schedule"),
                  title=f"{names} schedule, {config.name or config.model}",
                  sizes=plan.epoch_sizes if plan.progressive else None)


def _fit_in_workdir(plan: _Plan, model, train_ds, val_ds) -> Path | None:
    """Only the chief writes the run folder. The other workers run exactly the same steps
    (saving touches every variable on every worker) but into a temporary folder."""
    strategy_info = plan.strategy_info
    kind, index = task_of(strategy_info.strategy)
    workdir = plan.run if plan.chief else Path(tempfile.mkdtemp(prefix=f"convlab-{kind}{index}-"))
    if not plan.chief:
        print(f"{kind} {index} of {strategy_info.workers}: not the chief; its files go to "
              f"{workdir} (removed at the end)")
    try:
        return _fit_and_write(replace(plan, workdir=workdir), model, train_ds, val_ds)
    finally:
        if not plan.chief:
            shutil.rmtree(workdir, ignore_errors=True)


def _fit_and_write(plan: _Plan, model, train_ds, val_ds) -> Path | None:
    strategy = plan.strategy_info.strategy
    throughput = Throughput(plan.global_batch, plan.steps)
    verbose, lines = fit_output(plan.progress)
    callbacks, head_callbacks, validation = _callbacks(plan, model, val_ds, throughput, lines)
    fit_args = {"validation_data": validation, "steps_per_epoch": plan.steps, "shuffle": False,
                "callbacks": callbacks, "verbose": verbose}
    started = time.time()
    feature_seconds = _fit_phases(plan, model, train_ds, val_ds, fit_args, head_callbacks)
    wall = time.time() - started
    model.save(RunFolder(plan.workdir).final)
    if is_multi_worker(strategy):
        barrier(strategy)
    write_worker_report(strategy, plan.run, model, history_rows(plan.workdir))
    if not plan.chief:
        return None
    _write_summary(plan.run, plan.config, model, plan.manifest, plan.strategy_info,
                   plan.precision, wall, throughput, feature_seconds)
    if plan.after_fit is not None:
        plan.after_fit(plan.run, plan.config, plan.manifest, progress=plan.progress)
    return plan.run


def _callbacks(plan: _Plan, model, val_ds, throughput, lines) -> tuple[list, list, object]:
    """(model.fit's callbacks, those of the head on cached features, fit's validation data).

    The same callbacks on every worker: some read distributed variables, which under a
    multi-worker strategy is a collective that all workers must join (TensorBoard alone on
    the chief deadlocked or crashed a job). Non-chief workers write into their temp folder.
    """
    config, strategy, workdir = plan.config, plan.strategy_info.strategy, plan.workdir
    validation = val_ds
    if is_multi_worker(strategy) and val_ds is not None:
        # First, so that the checkpoint, CSV and TensorBoard callbacks see val_* in the logs.
        first = [ShardedValidation(val_ds, strategy)]
        validation = None
    else:
        first = []
    # Keras' validation sees the weights' moving average; fit ends with it in the model.
    ema = [keras.callbacks.SwapEMAWeights()] if config.ema_momentum else []
    files = RunFolder(workdir)
    logging = [keras.callbacks.CSVLogger(str(files.history_csv), append=True),
               keras.callbacks.TensorBoard(str(files.logs), write_graph=False)]
    # Saves `model` also while only its head is being fit (cached features). Last: its
    # state.json is the commit point of an epoch, written after the epoch's logs.
    checkpoint = EpochCheckpoint(workdir, model=model, keep=config.keep_checkpoints)
    finite = FiniteLoss(plan.run, [(0, config.schedule.learning_rate),
                                   (config.epochs, config.fine_tune_schedule.learning_rate)])
    every = [finite, *ema, throughput, *lines, *logging, checkpoint]
    return first + every, every, validation


def _fit_phases(plan: _Plan, model, train_ds, val_ds, fit_args: dict,
                head_callbacks: list) -> float | None:
    """Fit the head's epochs, then the fine-tuning ones: a resumed run skips the finished
    phase and enters the current one where it stopped. Returns the seconds spent caching
    features (None: none were cached).

    Raises:
        ConvlabError: a full disk, or a lost worker (with the command that continues).
    """
    config, start, run = plan.config, plan.start_epoch, plan.run
    feature_seconds = None
    try:
        if start < config.epochs:
            feature_seconds = _fit_head(plan, model, train_ds, val_ds, fit_args,
                                        head_callbacks, first=start)
        if config.epochs < config.total_epochs and start < config.total_epochs:
            _fine_tune(plan, model, fit_args, first=max(start, config.epochs))
    except KeyboardInterrupt:
        done = last_checkpoint(run) if run is not None else None
        print(f"\ninterrupted after {done[0] if done else 0} completed epoch(s); continue with: "
              f"convlab train --resume {run}")
        raise
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise ConvlabError(f"cannot write {err.filename or 'to ' + str(plan.workdir)}: "
                           f"{err.strerror}; free some space, then continue with `convlab "
                           f"train --resume {run}`") from None
    except PEER_ERRORS as err:
        # A peer died or stopped answering: collectives abort instead of waiting forever.
        done = last_checkpoint(run) if run is not None else None
        peer = re.search(r"reported from (/job:\w+/task:\d+)", str(err))
        where = f"; reported from {peer.group(1)}" if peer else ""
        folder = run if run is not None else "RUN (the chief's run folder)"
        raise ConvlabError(
            f"{LOST_CONTACT} ({type(err).__name__}{where}); the chief's "
            f"last checkpoint is epoch {done[0] if done else 0}: restart every worker with "
            f"`convlab train --resume {folder}`") from None
    return feature_seconds


def _fit_head(plan: _Plan, model, train_ds, val_ds, fit_args: dict, head_callbacks: list, *,
              first: int) -> float | None:
    """The first phase from epoch `first`; the seconds spent caching features, if it did."""
    config = plan.config
    if config.feature_views:
        return _fit_head_on_features(config, model, train_ds, val_ds, plan.steps, first,
                                     plan.global_batch, plan.progress, head_callbacks)
    model.fit(train_ds, epochs=config.epochs, initial_epoch=first, **fit_args)
    return None


def _fine_tune(plan: _Plan, model, fit_args: dict, *, first: int) -> None:
    """The fine-tuning phase from epoch `first`."""
    config, strategy_info = plan.config, plan.strategy_info
    strategy = strategy_info.strategy
    if first == config.epochs:  # a fresh start of the phase (a resumed one is compiled)
        # The whole network, at a lower rate, with a new optimizer.
        with strategy.scope():
            _set_backbone(model, True, config.fine_tune_from)
            compile_model(model, config, _fine_tune_schedule(config, plan.steps,
                                                             strategy_info.replicas),
                          count_examples=is_multi_worker(strategy),
                          steps_per_execution=model.steps_per_execution)
    if plan.progressive:
        for line in (c for c in fit_args["callbacks"] if isinstance(c, EpochLine)):
            line.total = config.total_epochs  # each size is a fit of its own epochs
    for size, start, end in size_segments(plan.epoch_sizes, first):
        if plan.progressive:
            epochs = f"epoch {end}" if end - start == 1 else f"epochs {start + 1}-{end}"
            print(f"fine-tuning {epochs} at {size} px")
        # Numbered by the run's own epochs (not from the first phase's start, which a new
        # iterator of `train_ds` would repeat), so that a resumed run augments as an
        # uninterrupted one does; every size crops from the same cached records.
        data = replace(plan.splits, image_size=size, start_epoch=start).train(strategy)
        model.fit(data, epochs=end, initial_epoch=start, **fit_args)


def size_segments(sizes: list[int], first: int) -> list[tuple[int, int, int]]:
    """(size, first epoch, end epoch) of each run of equal sizes from epoch `first` on."""
    segments: list[list[int]] = []
    for epoch in range(first, len(sizes)):
        if segments and segments[-1][0] == sizes[epoch]:
            segments[-1][2] = epoch + 1
        else:
            segments.append([sizes[epoch], epoch, epoch + 1])
    return [tuple(s) for s in segments]


def _fit_head_on_features(config, model, train_ds, val_ds, steps, start_epoch, global_batch,
                          progress, callbacks) -> float:
    """The head-only epochs on cached backbone features (see `convlab.training.features`).

    Returns the seconds spent computing the features."""
    from convlab.training.features import CachedFeatures, split_head

    extractor, head = split_head(model)
    cached = CachedFeatures(extractor, train_ds, val_ds, views=config.feature_views,
                            steps=steps, progress=progress)
    # The full model's optimizer and loss: its state (and the schedule's step) is what the
    # full model's checkpoints save and a resumed run restores.
    head.compile(optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"])
    head.fit(cached.train_dataset(global_batch, config.seed, start_epoch),
             validation_data=cached.val_dataset(global_batch), steps_per_epoch=steps,
             epochs=config.epochs, initial_epoch=start_epoch, shuffle=False,
             callbacks=callbacks, verbose=fit_output(progress)[0])
    return cached.seconds


def _write_summary(run, config, model, manifest, strategy_info, precision, wall, throughput,
                   feature_seconds=None):
    folder = RunFolder(run)
    history = history_rows(run)
    folder.history_json.write_text(json.dumps(history, indent=1))
    best = max(history, key=lambda h: h.get("val_accuracy", h.get("accuracy", 0)),
               default={})
    previous = json.loads(folder.summary_json.read_text()) if folder.summary_json.exists() \
        else {}
    summary = {
        "run": str(run), "recipe": config.recipe, "model": config.model,
        "parameters": int(model.count_params()),
        "trainable_parameters": int(sum(v.numpy().size for v in model.trainable_weights)),
        "data": str(manifest.source),
        "images": dict(manifest.per_split),
        "hardware": hardware(), "strategy": strategy_info.describe(), "precision": precision,
        "epochs": len(history),
        # fitting, from the first epoch's start to the last one's end (feature caching and
        # validation included; data set-up, model building and the report not)
        "wall_seconds": round(previous.get("wall_seconds", 0) + wall, 1),
        # training images / seconds of training steps (validation excluded), the mean of
        # the last phase's epochs: the bar's img/s and history's images_per_second
        "train_images_per_second": round(throughput.steady_rate(), 1),
        # with cached features: the time the backbone took over the views
        **({"feature_cache_seconds": round(feature_seconds, 1)} if feature_seconds else {}),
        "final": history[-1] if history else {}, "best": best,
    }
    folder.summary_json.write_text(json.dumps(summary, indent=1))
    lines = [f"{k}: {_plain(v)}" for k, v in summary.items() if k not in ("final", "best")]
    lines.append("wall_seconds: fitting, validation and feature caching included; "
                 "train_images_per_second: training steps only (validation excluded)")
    if config.soft_labels:
        soft = [f"{name} {value:g}" for name, value in (
            ("label smoothing", config.label_smoothing), ("MixUp alpha", config.mixup),
            ("CutMix alpha", config.cutmix)) if value]
        lines.append(f"loss: cross-entropy with {', '.join(soft)} (training's); `convlab "
                     "evaluate` reports plain cross-entropy, lower")
    for label in ("final", "best"):
        row = summary[label]
        lines.append(f"{label}: epoch {row.get('epoch', -1) + 1}, " + ", ".join(
            f"{k} {v:.4f}" for k, v in row.items() if "accuracy" in k or "loss" in k))
    folder.summary_txt.write_text("\n".join(lines) + "\n")
