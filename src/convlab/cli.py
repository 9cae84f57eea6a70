"""The `convlab` command: thin subcommands over the Python API."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from convlab import __version__
from convlab.config import (
    AUGMENT_PRESETS,
    CLASS_WEIGHTS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    STRATEGIES,
)
from convlab.errors import ConvlabError


def _console():
    from rich.console import Console

    # Piped or captured output: tables need more than the 80 columns rich assumes.
    return Console(width=None if sys.stdout.isatty() else 120)


# ---- data ----


def cmd_data_prepare(args) -> int:
    from convlab.data import prepare

    manifest = prepare(args.src, args.out, size=args.size, shards=args.shards,
                       val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                       quality=args.quality, seed=args.seed, workers=args.workers,
                       overwrite=args.overwrite, progress=not args.quiet)
    print_prepare_summary(manifest, args.out)
    return 0


def print_prepare_summary(manifest: dict, out) -> None:
    from rich.table import Table

    console = _console()
    if manifest.get("resumed") == "already complete":
        console.print(f"[bold]{out}[/] already holds this dataset, unchanged; nothing to do.")
    splits = list(manifest["counts"]["per_split"])
    table = Table(title=f"{out}: {manifest['counts']['total']} images, "
                        f"{manifest['image_size'][0]} px, {len(manifest['shards'])} shards")
    table.add_column("class")
    for split in splits:
        table.add_column(split, justify="right")
    table.add_column("total", justify="right")
    for label, per_split in manifest["counts"]["per_class"].items():
        table.add_row(label, *(str(per_split.get(s, 0)) for s in splits),
                      str(sum(per_split.values())))
    table.add_row("[bold]all", *(f"[bold]{manifest['counts']['per_split'][s]}" for s in splits),
                  f"[bold]{manifest['counts']['total']}")
    console.print(table)
    counts = manifest["counts"]
    line = (f"kept {counts['total']} of {counts['candidates']} candidate files; "
            f"skipped {counts['skipped']}")
    if manifest["skipped_by_reason"]:
        line += " (" + ", ".join(f"{n} {r}" for r, n in manifest["skipped_by_reason"].items()) + ")"
    line += f"; ignored {counts['ignored']} non-image files"
    console.print(line)
    for label in manifest["empty_classes"]:
        console.print(f"[yellow]warning:[/] class folder {label!r} has no usable images; "
                      "it is not a class of this dataset")
    if counts["skipped"]:
        console.print(f"every skipped file and its reason: {Path(out) / 'manifest.json'} "
                      "(\"skipped\", \"duplicates\")")


def cmd_data_inspect(args) -> int:
    from rich.table import Table

    from convlab.data.inspect import counts, sample_grid

    info = counts(args.path)
    table = Table(title=f"{args.path}" + ("" if info["prepared"] else " (not prepared)"))
    table.add_column("class")
    for split in info["splits"]:
        table.add_column(split, justify="right")
    for label in info["classes"]:
        table.add_row(label, *(str(info["per_class"][label].get(s, 0)) for s in info["splits"]))
    console = _console()
    console.print(table)
    console.print(f"skipped: {info['skipped']}, ignored: {info['ignored']}")
    out = args.out or Path(args.path) / "samples.png"
    if not args.out and not os.access(args.path, os.W_OK):
        out = Path(f"samples-{Path(args.path).name}.png")
    png = sample_grid(args.path, out, split=args.split, count=args.count)
    console.print(f"sample grid: {png}")
    return 0


def cmd_data_bench(args) -> int:
    from rich.table import Table

    from convlab.data.bench import bench

    if args.latency_ms < 0:
        raise ConvlabError(f"--latency-ms must be >= 0, received: {args.latency_ms}")
    rows, info = bench(args.path, split=args.split, batch_size=args.batch_size,
                       rounds=args.rounds, size=args.size, latency_ms=args.latency_ms,
                       progress=not args.quiet)
    base = {r.augment: r.images_per_s for r in rows if r.path == "per-file"}
    decode = next(r.images_per_s for r in rows if r.path == "decode only")
    latency = f", {args.latency_ms:g} ms per file opened" if args.latency_ms else ""
    table = Table(title=f"input pipeline, {info['images']} {info['split']} images at "
                        f"{info['size']} px, batch {info['batch_size']}{latency}, median of "
                        f"{info['rounds']} rounds")
    numbers = ("images/s", "vs per-file", "vs decode only")
    for col in ("path", "cache", "augment", *numbers):
        table.add_column(col, justify="right" if col in numbers else "left")
    for r in rows:
        vs_files = f"{r.images_per_s / base[r.augment]:.2f}x" if r.augment in base and \
            r.path != "decode only" else "-"
        table.add_row(r.path, r.cache, "yes" if r.augment else "no", f"{r.images_per_s:,.0f}",
                      vs_files, f"{r.images_per_s / decode:.2f}x")
    _console().print(table)
    return 0


# ---- models and training ----


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
        params = create_model(info.name, args.classes, info.image_size, **opts).count_params()
        table.add_row(info.name, f"{info.image_size} px", f"{params:,}",
                      "ImageNet" if info.pretrained else "-")
    console = _console()
    console.print(table)
    for info in list_models():
        console.print(f"[bold]{info.name}[/]: {info.description}", highlight=False)
    return 0


def _train_overrides(args) -> dict:
    """Only the flags the user gave: they override the recipe (or the defaults)."""
    out = {}
    for flag, field in (("data", "data"), ("epochs", "epochs"), ("batch_size", "batch_size"),
                        ("image_size", "image_size"), ("optimizer", "optimizer"),
                        ("label_smoothing", "label_smoothing"),
                        ("class_weights", "class_weights"), ("precision", "precision"),
                        ("strategy", "strategy"), ("seed", "seed"), ("runs_dir", "runs_dir"),
                        ("name", "name"), ("fine_tune_epochs", "fine_tune_epochs"),
                        ("feature_views", "feature_views"),
                        ("steps_per_execution", "steps_per_execution")):
        value = getattr(args, flag)
        if value is not None:
            out[field] = value
    if args.batch_size is not None:
        out["batch_per_replica"] = None
    if args.no_report:
        out["report"] = False
    schedule = {k: v for k, v in (("name", args.schedule), ("learning_rate", args.lr))
                if v is not None}
    if schedule:
        out["schedule"] = schedule
    if args.fine_tune_lr is not None:
        out["fine_tune_schedule"] = {"learning_rate": args.fine_tune_lr}
    if args.augment is not None:
        out["augment"] = AUGMENT_PRESETS[args.augment]
    options = {}
    if args.weights is not None:
        options["weights"] = None if args.weights == "none" else args.weights
    if args.unfreeze:
        options["trainable_backbone"] = True
    if options:
        out["model_options"] = options
    return out


def cmd_train(args) -> int:
    from convlab.config import RECIPES, TrainConfig, recipe_config
    from convlab.training.trainer import resume, train

    if args.resume:
        run = resume(args.resume, progress=not args.quiet)
    else:
        if not args.model:
            raise ConvlabError("name a model or recipe to train (see `convlab models` and "
                               "`convlab recipes`), or --resume RUN")
        base = recipe_config(args.model) if args.model in RECIPES else TrainConfig(
            model=args.model, name=args.model)
        config = base.override(**_train_overrides(args)).with_settings(args.set or [])
        run = train(config, progress=not args.quiet)
    if run is None:  # a multi-worker job's non-chief worker
        print("this worker is done; the chief wrote the run folder")
    else:
        print(f"\nrun folder: {run}\n{(run / 'summary.txt').read_text()}", end="")
    return 0


def cmd_launch(args) -> int:
    from convlab.launch import launch

    return launch(args.workers, args.command, host=args.host, logs=args.logs)


def cmd_recipes(args) -> int:
    from rich.table import Table

    from convlab.config import RECIPES, recipe_config

    table = Table(title="convlab recipes (convlab train RECIPE --data ...)")
    for col in ("recipe", "model", "px", "epochs", "batch", "schedule"):
        table.add_column(col, no_wrap=True)
    for name in RECIPES:
        c = recipe_config(name)
        batch = f"{c.batch_per_replica}/replica" if c.batch_per_replica else str(c.batch_size)
        epochs = f"{c.epochs}+{c.fine_tune_epochs}" if c.fine_tune_epochs else str(c.epochs)
        table.add_row(name, c.model, str(c.image_size), epochs, batch, c.schedule.name)
    console = _console()
    console.print(table)
    for name, (description, _) in RECIPES.items():
        console.print(f"[bold]{name}[/]: {description}", highlight=False)
    return 0


# ---- parser ----


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convlab",
        description="From a folder of photos to a well-tuned convolutional image classifier.")
    p.add_argument("--version", action="version", version=f"convlab {__version__}")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's own log lines")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="prepare, inspect and benchmark image data")
    dsub = data.add_subparsers(dest="data_command", required=True)

    prep = dsub.add_parser(
        "prepare", help="photos -> validated, deduplicated, sharded TFRecords + manifest.json",
        description="Validate, deduplicate, resize and shard photos into TFRecords. SRC is a "
                    "folder of class subfolders, a glob or gs:// pattern (class = parent "
                    "folder), 'flowers' (the public 5-class set, downloaded once) or "
                    "'synthetic' (generated shapes, for offline demos).")
    prep.add_argument("src")
    prep.add_argument("out")
    prep.add_argument("--size", type=int, default=192, help="output image size in px (192)")
    prep.add_argument("--shards", type=int, default=16, help="TFRecord files per split (16)")
    prep.add_argument("--val-fraction", type=float, default=0.2,
                      help="validation share, stratified by class (0.2)")
    prep.add_argument("--test-fraction", type=float, default=0.0, help="test share (0)")
    prep.add_argument("--quality", type=int, default=90, help="JPEG quality (90)")
    prep.add_argument("--seed", type=int, default=42, help="split and shuffle seed (42)")
    prep.add_argument("--workers", type=int, default=None, help="decoding threads (one per core)")
    prep.add_argument("--overwrite", action="store_true",
                      help="replace a different dataset already in OUT")
    prep.add_argument("--quiet", action="store_true", help="no progress bars")
    prep.set_defaults(func=cmd_data_prepare)

    insp = dsub.add_parser("inspect", help="counts per class/split and a PNG grid of samples")
    insp.add_argument("path", help="prepared folder or folder of class subfolders")
    insp.add_argument("--out", default=None, help="PNG path (default PATH/samples.png)")
    insp.add_argument("--split", default="train")
    insp.add_argument("--count", type=int, default=25, help="images in the grid (25)")
    insp.set_defaults(func=cmd_data_inspect)

    bench = dsub.add_parser("bench", help="images/s: per-file JPEG vs TFRecord pipeline")
    bench.add_argument("path", help="prepared folder (or photo folder, prepared first)")
    bench.add_argument("--split", default="train")
    bench.add_argument("--batch-size", type=int, default=64)
    bench.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    bench.add_argument("--size", type=int, default=128, help="size when preparing a photo folder")
    bench.add_argument("--latency-ms", type=float, default=0.0,
                       help="simulate cloud storage: each file opened first waits this long")
    bench.add_argument("--quiet", action="store_true")
    bench.set_defaults(func=cmd_data_bench)

    models = sub.add_parser("models", help="list the model zoo, or show one model's summary")
    models.add_argument("name", nargs="?")
    models.add_argument("--classes", type=int, default=5)
    models.add_argument("--image-size", type=int, default=None)
    models.set_defaults(func=cmd_models)

    rec = sub.add_parser("recipes", help="list the training recipes")
    rec.set_defaults(func=cmd_recipes)

    tr = sub.add_parser(
        "train", help="train a model or recipe; writes a run folder",
        description="Train MODEL (see `convlab models`) or RECIPE (see `convlab recipes`). "
                    "Flags override the recipe's settings. Writes runs/<time>-<name>/.")
    tr.add_argument("model", nargs="?", help="model or recipe name")
    tr.add_argument("--resume", metavar="RUN", help="continue an interrupted run folder")
    tr.add_argument("--data", help="prepared folder, folder of class subfolders, 'flowers' "
                                   "(download) or 'synthetic' (default: flowers)")
    tr.add_argument("--epochs", type=int)
    tr.add_argument("--batch-size", type=int, help="global batch size (split over replicas)")
    tr.add_argument("--image-size", type=int, help="default: the model's own")
    tr.add_argument("--lr", type=float, help="learning rate (peak rate for schedules)")
    tr.add_argument("--schedule", choices=SCHEDULES)
    tr.add_argument("--optimizer", choices=OPTIMIZERS)
    tr.add_argument("--label-smoothing", type=float)
    tr.add_argument("--class-weights", choices=CLASS_WEIGHTS)
    tr.add_argument("--augment", choices=tuple(AUGMENT_PRESETS),
                    help="codelab: flip + saturation; strong: + zoom, brightness, contrast")
    tr.add_argument("--weights", help="pretrained models: imagenet, none, or a weights file")
    tr.add_argument("--unfreeze", action="store_true",
                    help="train the pretrained backbone too (batch norm stays frozen)")
    tr.add_argument("--fine-tune-epochs", type=int,
                    help="after --epochs on the head, this many with the backbone unfrozen")
    tr.add_argument("--fine-tune-lr", type=float, help="learning rate of that second phase")
    tr.add_argument("--feature-views", type=int, metavar="N",
                    help="frozen pretrained backbones: train the head on features cached from N "
                    "augmented passes over the training split (0: through the whole model)")
    tr.add_argument("--precision", choices=PRECISIONS)
    tr.add_argument("--strategy", choices=STRATEGIES)
    tr.add_argument("--steps-per-execution", type=int)
    tr.add_argument("--seed", type=int)
    tr.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="set any config field, repeatable: e.g. --set weight_decay=0.05 "
                    "--set schedule.min_lr=1e-6 --set model_options.dropout=0.3 (the fields: "
                    "config.json of a run)")
    tr.add_argument("--name", help="run name (default: recipe or model)")
    tr.add_argument("--runs-dir", help="where run folders go (default: runs/)")
    tr.add_argument("--no-report", action="store_true",
                    help="skip evaluating the run and writing report.html at the end")
    tr.add_argument("--quiet", action="store_true", help="one line per epoch, no bars")
    tr.set_defaults(func=cmd_train)

    la = sub.add_parser(
        "launch", help="run `convlab train` as a multi-worker job on this machine",
        description="Start N worker processes on loopback ports, each with its own TF_CONFIG, "
                    "and train one model across them with MultiWorkerMirroredStrategy. Worker "
                    "0 (the chief) writes the run folder. Example: convlab launch --workers 2 "
                    "-- train squeezenet --data DIR --epochs 2")
    la.add_argument("--workers", type=int, required=True, help="worker processes")
    la.add_argument("--host", default="127.0.0.1", help="address the workers listen on")
    la.add_argument("--logs", help="keep the workers' logs here (default: a temporary folder, "
                                   "removed after a successful job)")
    la.add_argument("command", nargs=argparse.REMAINDER,
                    help="-- train ... (the convlab train command every worker runs)")
    la.set_defaults(func=cmd_launch)

    from convlab import serving_cli
    from convlab.evaluation import cli as evaluation_cli

    evaluation_cli.register(sub)
    serving_cli.register(sub)
    return p


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with stderr muted: its C++ start-up lines (oneDNN, CUDA probing)
    ignore TF_CPP_MIN_LOG_LEVEL and would bury convlab's own output."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # probes CUDA, which logs when there is none
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if not args.verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        _import_tensorflow_quietly()
    try:
        return args.func(args)
    except ConvlabError as err:
        print(f"convlab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convlab: interrupted; re-run the same command to resume (for training: "
              "convlab train --resume RUN)", file=sys.stderr)
        return 130
