"""`convlab models | recipes | train | launch`."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from convlab.cli.console import console, plain
from convlab.config import (
    AUGMENT_PRESETS,
    CLASS_WEIGHTS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    STRATEGIES,
    TrainConfig,
    flat_settings,
)
from convlab.errors import ConvlabError


def cmd_models(args) -> int:
    from rich.table import Table

    from convlab.models import create_model, get_model_info, list_models

    if args.name:
        info = get_model_info(args.name)
        model = create_model(args.name, args.classes, args.image_size, weights=None) if \
            info.pretrained else create_model(args.name, args.classes, args.image_size)
        model.summary()
        return 0
    table = Table(title=f"convlab models (parameters for {args.classes} classes)")
    for col in ("name", "input", "parameters", "pretrained"):
        table.add_column(col, no_wrap=True, justify="right" if col == "parameters" else "left")
    for info in list_models():
        opts = {"weights": None} if info.pretrained else {}
        params = create_model(info.name, args.classes, info.default_size, **opts).count_params()
        table.add_row(info.name, f"{info.default_size} px", f"{params:,}",
                      "ImageNet" if info.pretrained else "-")
    con = console()
    con.print(table)
    for info in list_models():
        con.print(f"[bold]{info.name}[/]: {info.description}", highlight=False)
    return 0


def _base_config(args):
    """The recipe or model named, or the config file given with --config."""
    from convlab.config import TrainConfig, named_config

    if getattr(args, "config", None):
        try:
            values = json.loads(Path(args.config).read_text())
        except OSError as err:
            raise ConvlabError(f"cannot read --config '{args.config}': "
                               f"{err.strerror or err}") from None
        except json.JSONDecodeError as err:
            raise ConvlabError(f"--config '{args.config}' is not JSON ({err.msg}, line "
                               f"{err.lineno})") from None
        except RecursionError:
            raise ConvlabError(f"--config '{args.config}' is nested too deep to be a config "
                               "(it holds JSON objects or lists inside each other)") from None
        if not isinstance(values, dict):
            raise ConvlabError(f"--config '{args.config}' must hold a JSON object of config "
                               "fields (e.g. a tune folder's best.json)")
        return TrainConfig.from_dict(values.get("config", values))  # also a run's config.json
    if not args.model:
        raise ConvlabError("name a model or recipe (see `convlab models` and `convlab "
                           "recipes`) or --config FILE")
    return named_config(args.model)


def check_model_arg(args) -> None:
    """A model or recipe name that is neither, refused before TensorFlow loads."""
    from convlab.models import check_model_or_recipe

    if getattr(args, "model", None) and not getattr(args, "config", None):
        check_model_or_recipe(args.model)


def cmd_tune(args) -> int:
    from convlab.training.tune import short_value
    from convlab.workflow import tune

    config = _base_config(args).override(**_train_overrides(args))
    config = config.with_settings(args.set or [])
    result = tune(config, trials=args.trials, budget_minutes=args.budget_minutes,
                  algorithm=args.algorithm, space=args.hp, out=args.out,
                  overwrite=args.overwrite, progress=not args.quiet)
    from rich.table import Table

    keys = [s.split(" in ")[0] for s in result["space"]]
    table = Table(title=f"{result['completed']} trial(s) completed, {result['failed']} failed")
    for col in ("trial", *(k.split(".")[-1] for k in keys), "epochs", "val_accuracy", "min"):
        table.add_column(col, justify="right")
    for row in sorted(result["trials"], key=lambda r: -(r.get("score") or -1)):
        table.add_row(row["trial"],
                      *(plain(short_value(row["values"].get(k, "-"))) for k in keys),
                      str(row.get("epochs", "-")),
                      f"{row['score']:.4f}" if row.get("score") is not None else
                      plain(f"{row['status'].lower()}: {row.get('message', '')}"[:60]),
                      f"{row['seconds'] / 60:.1f}" if "seconds" in row else "-")
    console().print(table)
    if result["best"]:
        print(f"best: trial {result['best']['trial']}, val_accuracy "
              f"{result['best']['score']:.4f} ({result['best']['run']})\nretrain it: convlab "
              f"train --config {result['best_config']}")
    print(f"plots: {result['plot']}\npage: {result['page']}")
    return 0


def _train_overrides(args) -> dict:
    """Only the flags the user gave (`TRAINING_FLAGS`): they override the recipe (or the
    defaults), as nested config changes for `TrainConfig.override`."""
    out: dict = {}
    if getattr(args, "labels", None) is not None:
        if args.data is not None:
            raise ConvlabError(f"give --data or --labels, not both; received: --data "
                               f"{args.data!r}, --labels {args.labels!r}")
        out["data"] = args.labels
    for flag in TRAINING_FLAGS:
        given = getattr(args, flag.dest)
        if given is None or given is False:
            continue
        for field, value in ((flag.field, flag.value(given)), *flag.also):
            *parents, last = field.split(".")
            node = out
            for parent in parents:
                node = node.setdefault(parent, {})
            node[last] = value
    return out


def cmd_train(args) -> int:
    import time

    from convlab.runs import RunFolder
    from convlab.workflow import resume, train

    started = time.time()
    if args.budget_minutes is not None and (args.model or args.config or args.resume):
        raise ConvlabError("--budget-minutes is for `convlab train --data D` without a model "
                           "or recipe (the approach chosen within it); a recipe sets its epochs")
    if args.resume:
        run = resume(args.resume, progress=not args.quiet)
    elif not args.model and not args.config:
        from convlab.training.auto import plan

        overrides = _train_overrides(args)
        config = plan(overrides.pop("data", TrainConfig.data), budget_minutes=args.budget_minutes,
                      progress=not args.quiet, started=started)
        run = train(config.override(**overrides).with_settings(args.set or []),
                    progress=not args.quiet)
    else:
        config = _base_config(args).override(**_train_overrides(args))
        config = config.with_settings(args.set or [])
        run = train(config, progress=not args.quiet)
    if run is None:  # a multi-worker job's non-chief worker
        print("this worker is done; the chief wrote the run folder")
    else:
        print(f"\nrun folder: {run}\n{RunFolder(run).summary_txt.read_text()}", end="")
    return 0


def cmd_launch(args) -> int:
    from convlab.launch import DEFAULT_RETRIES, launch

    retries = DEFAULT_RETRIES if args.retries is None else args.retries
    return launch(args.workers, args.command, host=args.host, logs=args.logs, force=args.force,
                  retries=retries)


def cmd_recipes(args) -> int:
    from rich.table import Table

    from convlab.config import MEASURED, RECIPES, recipe_config

    if args.name:  # one recipe: every resolved setting, and what it measured
        config = recipe_config(args.name)
        con = console()
        con.print(f"[bold]{args.name}[/]: {RECIPES[args.name][0]}", highlight=False)
        for key, value in flat_settings(config.to_dict(), whole=("model_options",)).items():
            con.print(f"  {key} = {plain(json.dumps(value))}", highlight=False)
        con.print(f"measured: {MEASURED.get(args.name, 'not measured on flower_photos yet')}",
                  highlight=False)
        return 0
    table = Table(title="convlab recipes (convlab train RECIPE --data ...)")
    for col in ("recipe", "model", "px", "epochs", "batch", "schedule"):
        table.add_column(col, no_wrap=True)
    for name in RECIPES:
        c = recipe_config(name)
        batch = f"{c.batch_per_replica}/replica" if c.batch_per_replica else str(c.batch_size)
        epochs = f"{c.epochs}+{c.fine_tune_epochs}" if c.fine_tune_epochs else str(c.epochs)
        table.add_row(name, c.model, str(c.image_size), epochs, batch, c.schedule.name)
    con = console()
    con.print(table)
    for name, (description, _) in RECIPES.items():
        con.print(f"[bold]{name}[/]: {description}", highlight=False)
    return 0


@dataclass(frozen=True)
class Flag:
    """One flag of `convlab train` and `tune` that overrides a config field: its only
    definition. The flag, `_train_overrides` and the `--help` text (hence the docs' CLI
    reference) come from here; the default it names is `TrainConfig`'s (a recipe's own value
    comes first)."""

    name: str  # "--lr"
    field: str  # the TrainConfig field it sets, dotted for nested ones: "schedule.learning_rate"
    help: str
    argparse: dict = dataclasses.field(default_factory=dict)  # type, choices, metavar, action
    value: Callable = staticmethod(lambda given: given)  # the flag's value -> the field's
    also: tuple = ()  # (field, value) pairs set with it
    default: str | None = None  # what the help names when TrainConfig has no default
    from_recipe: bool = True  # a recipe may set it (its value then comes before the default)

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")

    def default_text(self) -> str:
        if self.default is not None:
            return self.default
        value = TrainConfig().to_dict()
        for key in self.field.split("."):
            value = value[key]
        return f"{value:g}" if isinstance(value, float) else str(value)


TRAINING_FLAGS = (
    Flag("--data", "data", "prepared folder, folder of class subfolders (or of train/ val/ "
         "test/ folders holding them), labels CSV, 'flowers' (download) or 'synthetic'",
         from_recipe=False),
    Flag("--epochs", "epochs", "training epochs (of the head, when --fine-tune-epochs follow)",
         {"type": int}),
    Flag("--batch-size", "batch_size", "global batch size (split over replicas)",
         {"type": int}, also=(("batch_per_replica", None),)),
    Flag("--image-size", "image_size", "training size in px", {"type": int},
         default="the model's own"),
    Flag("--test-scale", "test_scale", "evaluate, predict and export at the image size times "
         "X (1: the training size; larger suits training's random zoom, FixRes)",
         {"type": float, "metavar": "X"}),
    Flag("--lr", "schedule.learning_rate", "learning rate (peak rate for schedules)",
         {"type": float}),
    Flag("--schedule", "schedule.name", "learning-rate schedule", {"choices": SCHEDULES}),
    Flag("--optimizer", "optimizer", "optimizer", {"choices": OPTIMIZERS}),
    Flag("--weight-decay", "weight_decay", "decoupled weight decay (adamw only)",
         {"type": float}),
    Flag("--label-smoothing", "label_smoothing", "label smoothing of the loss",
         {"type": float}),
    Flag("--mixup", "mixup", "MixUp each training batch, fractions from Beta(ALPHA, ALPHA); "
         "timm uses 0.8", {"type": float, "metavar": "ALPHA"}),
    Flag("--cutmix", "cutmix", "CutMix each training batch (with --mixup: one of the two per "
         "batch); timm uses 1.0", {"type": float, "metavar": "ALPHA"}),
    Flag("--class-weights", "class_weights", "weigh the loss of rare classes up",
         {"choices": CLASS_WEIGHTS}, default="none"),
    Flag("--augment", "augment", "codelab: flip + saturation; strong: + zoom, brightness, "
         "contrast", {"choices": tuple(AUGMENT_PRESETS)}, value=AUGMENT_PRESETS.__getitem__,
         default="codelab"),
    Flag("--weights", "model_options.weights", "pretrained models: imagenet, none, or a "
         "weights file", value=lambda given: None if given == "none" else given,
         default="imagenet"),
    Flag("--unfreeze", "model_options.trainable_backbone", "train the pretrained backbone "
         "too (batch norm stays frozen)", {"action": "store_true"}),
    Flag("--fine-tune-epochs", "fine_tune_epochs", "after --epochs on the head, this many "
         "with the backbone unfrozen", {"type": int}),
    Flag("--fine-tune-start-scale", "fine_tune_start_scale",
         "progressive resizing: the first fine-tuning epoch at the training size times X, the "
         "size growing to it by the last (validation at the training size)",
         {"type": float, "metavar": "X"}),
    Flag("--fine-tune-lr", "fine_tune_schedule.learning_rate", "learning rate of that second "
         "phase", {"type": float}),
    Flag("--feature-views", "feature_views", "frozen pretrained backbones: train the head on "
         "features cached from N augmented passes over the training split (0: through the "
         "whole model)", {"type": int, "metavar": "N"}),
    Flag("--precision", "precision", "float32, mixed_float16, mixed_bfloat16, or auto: "
         "chosen for the hardware", {"choices": PRECISIONS}),
    Flag("--strategy", "strategy", "tf.distribute strategy (auto: from the hardware)",
         {"choices": STRATEGIES}),
    Flag("--steps-per-execution", "steps_per_execution", "training steps per call into "
         "TensorFlow", {"type": int}),
    Flag("--seed", "seed", "weights, augmentation and shuffling", {"type": int},
         from_recipe=False),
    Flag("--name", "name", "run name", default="recipe or model", from_recipe=False),
    Flag("--runs-dir", "runs_dir", "where run folders go", from_recipe=False),
    Flag("--no-report", "report", "skip evaluating the run and writing report.html at the "
         "end", {"action": "store_true"}, value=lambda given: False),
)


def _add_training_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that override a recipe's settings (train and tune share them)."""
    for flag in TRAINING_FLAGS:
        if flag.argparse.get("action") == "store_true":
            parser.add_argument(flag.name, help=flag.help, **flag.argparse)
        else:
            recipe = "; a recipe's own value first" if flag.from_recipe else ""
            parser.add_argument(flag.name, help=f"{flag.help} (default: "
                                f"{flag.default_text()}{recipe})", **flag.argparse)
        if flag.name == "--data":
            parser.add_argument("--labels", metavar="FILE.csv",
                                help="a labels file as the data: a path column and a label "
                                     "column, paths relative to the file (the same as --data "
                                     "FILE.csv)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="set any config field, repeatable: e.g. --set weight_decay=0.05 "
                        "--set schedule.min_lr=1e-6 --set model_options.dropout=0.3 (the "
                        "fields: config.json of a run)")
    parser.add_argument("--quiet", action="store_true", help="one line per epoch, no bars")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the model, recipe and training subcommands to the `convlab` parser."""
    _add_models(sub)
    _add_recipes(sub)
    _add_train(sub)
    _add_tune(sub)
    _add_launch(sub)


def _add_models(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="list the model zoo, or show one model's summary")
    models.add_argument("name", nargs="?", help="a model to show layer by layer (Keras' summary)")
    models.add_argument("--classes", type=int, default=5,
                        help="classes of the summarised model's output")
    models.add_argument("--image-size", type=int, default=None,
                        help="input size for NAME's summary (default: the model's own)")
    models.set_defaults(func=cmd_models)


def _add_recipes(sub: argparse._SubParsersAction) -> None:
    rec = sub.add_parser("recipes", help="list the training recipes, or show one in full",
                         description="List the recipes, or with NAME print every setting it "
                                     "resolves to (as `--set` keys) and what it measured.")
    rec.add_argument("name", nargs="?", help="a recipe to show in full")
    rec.set_defaults(func=cmd_recipes, tensorflow=False)


def _add_train(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser(
        "train", help="train a model or recipe; writes a run folder",
        description="Train MODEL (see `convlab models`) or RECIPE (see `convlab recipes`). "
                    "Flags override the recipe's settings. Without MODEL or RECIPE the "
                    "approach is chosen from the data and this machine within "
                    "--budget-minutes: pretrained EfficientNet-Lite0, its size from the "
                    "photos' sizes, frozen then fine-tuned as far as the budget allows. "
                    "Writes runs/<time>-<name>/.")
    tr.add_argument("model", nargs="?", help="model or recipe name (none: chosen from the data)")
    tr.add_argument("--budget-minutes", type=float, metavar="M",
                    help="without MODEL: the time budget, preparing the photos included "
                         "(default: 20)")
    tr.add_argument("--resume", metavar="RUN", help="continue an interrupted run folder")
    tr.add_argument("--config", metavar="FILE",
                    help="train from a config file instead of a recipe: a tune folder's "
                         "best.json, or a run's config.json")
    _add_training_flags(tr)
    tr.set_defaults(func=cmd_train, check=check_model_arg)


def _add_tune(sub: argparse._SubParsersAction) -> None:
    tu = sub.add_parser(
        "tune", help="search hyperparameters with KerasTuner; each trial a run",
        description="Search the settings of MODEL or RECIPE with KerasTuner (Hyperband by "
                    "default): each trial is a `convlab train` run in OUT/trials/, scored by "
                    "its last epoch's validation accuracy. The same command continues an "
                    "interrupted search. Writes OUT/results.json, best.json (retrain with "
                    "`convlab train --config OUT/best.json`), tune.png and tune.html.")
    tu.add_argument("model", nargs="?", help="model or recipe name")
    tu.add_argument("--config", metavar="FILE", help="start from a config file instead")
    tu.add_argument("--trials", type=int, default=10, help="at most this many trials")
    tu.add_argument("--budget-minutes", type=float, default=None,
                    help="start no trial after this many minutes (default: no limit)")
    tu.add_argument("--algorithm", choices=("hyperband", "bayesian", "random"),
                    default="hyperband",
                    help="hyperband: trials of growing length up to --epochs; bayesian and "
                         "random: every trial at --epochs")
    tu.add_argument("--hp", action="append", metavar="KEY=RANGE",
                    help="change the search space, repeatable: KEY=LOW:HIGH[:log], "
                         "KEY=A,B,C or KEY=none (e.g. --hp schedule.learning_rate=1e-3:1e-2:log"
                         " --hp model_options.width=none); default: the model family's space")
    tu.add_argument("--out", help="search folder (default: RUNS_DIR/tune-NAME)")
    tu.add_argument("--overwrite", action="store_true", help="start over in --out")
    _add_training_flags(tu)
    tu.set_defaults(func=cmd_tune, check=check_model_arg)


def _add_launch(sub: argparse._SubParsersAction) -> None:
    la = sub.add_parser(
        "launch", help="run `convlab train` as a multi-worker job on this machine",
        description="Start N worker processes on loopback ports, each with its own TF_CONFIG, "
                    "and train one model across them with MultiWorkerMirroredStrategy. Worker "
                    "0 (the chief) writes the run folder. Example: convlab launch --workers 2 "
                    "-- train squeezenet --data DIR --epochs 2")
    la.add_argument("--workers", type=int, required=True, help="worker processes")
    la.add_argument("--host", default="127.0.0.1", help="address the workers listen on")
    la.add_argument("--force", action="store_true",
                    help="start more workers than this machine has CPU cores")
    la.add_argument("--logs", help="keep the workers' logs here (default: a temporary folder, "
                                   "removed after a successful job)")
    la.add_argument("--retries", type=int, metavar="N",
                    help="resume the job by itself at most N times after it loses a worker "
                         "(killed, or cut off from the others) once an epoch is checkpointed; "
                         "0: never (default: 2)")
    la.add_argument("command", nargs=argparse.REMAINDER,
                    help="-- train ... (the convlab train command every worker runs)")
    la.set_defaults(func=cmd_launch)
