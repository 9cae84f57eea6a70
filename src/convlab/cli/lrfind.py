"""`convlab lr-find`: the learning-rate range test (`convlab.training.lr_find.lr_find`)."""

from __future__ import annotations

import argparse
import math

from convlab.cli.console import console, plain
from convlab.cli.train import check_model_arg

ROWS = 8  # points of the curve printed (besides the suggestion, the minimum and the end)


def cmd_lr_find(args) -> int:
    from rich.table import Table

    from convlab.config import named_config
    from convlab.training.lr_find import lr_find

    overrides = {k: v for k, v in (("data", args.data), ("batch_size", args.batch_size),
                                   ("image_size", args.image_size)) if v is not None}
    if args.batch_size is not None:  # a global batch given: a recipe's per-replica one goes
        overrides["batch_per_replica"] = None
    config = named_config(args.model).override(**overrides).with_settings(args.set or [])
    result = lr_find(config, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps,
                     smoothing=args.smoothing, diverge=args.diverge, out=args.out,
                     progress=not args.quiet)

    lrs, losses, smoothed = result["lrs"], result["losses"], result["smoothed_losses"]
    suggestion, minimum, diverged = result["suggestion"], result["minimum"], result["diverged"]
    marks = {minimum["step"]: "minimum", len(lrs) - 1: "diverged" if diverged else "last"}
    if suggestion["step"] is not None:
        marks[suggestion["step"]] = "suggestion"
    shown = sorted({round(i * (len(lrs) - 1) / (ROWS - 1)) for i in range(ROWS)} | set(marks))
    table = Table(title=f"learning-rate range test: {plain(result['name'])}, "
                        f"{result['steps_run']} step(s)")
    for col in ("step", "learning rate", "loss", "smoothed", ""):
        table.add_column(col, justify="left" if not col else "right")
    for i in shown:
        table.add_row(str(i + 1), f"{lrs[i]:.3g}", _loss(losses[i]), _loss(smoothed[i]),
                      marks.get(i, ""))
    console().print(table)
    if diverged:
        print(f"stopped at step {diverged['step'] + 1} of {result['steps']}: the smoothed loss "
              f"passed {result['diverge']:g}x its minimum at learning rate {diverged['lr']:.3g}")
    else:
        print(f"ran all {result['steps']} steps without diverging: the loss may still fall "
              "beyond --end-lr")
    print(f"suggestion: {suggestion['lr']:.2g} ({suggestion['rule']})\n"
          f"minimum / 10: {minimum['lr_over_10']:.2g} (the smoothed loss is lowest, "
          f"{minimum['loss']:.4f}, at {minimum['lr']:.2g})\n"
          f"{'recipe' if result['recipe'] else 'config'}'s learning rate: "
          f"{result['recipe_lr']:.2g}\n"
          f"to train with the suggestion: add --lr {suggestion['lr']:.2g} to `convlab train`\n"
          f"plot: {result['plot']}")
    return 0


def _loss(value) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def register(sub: argparse._SubParsersAction) -> None:
    """Add `lr-find` to the `convlab` parser."""
    lf = sub.add_parser(
        "lr-find", help="find a learning rate: the LR range test (as fastai's lr_find)",
        description="Train MODEL or RECIPE from scratch for up to --steps steps while the "
                    "learning rate grows exponentially from --start-lr to --end-lr, with the "
                    "data, model, optimizer and loss `convlab train` would use; stop when the "
                    "loss diverges. Prints the curve and a suggested learning rate (the "
                    "steepest descent of the smoothed loss); writes lr_find.png and "
                    "lr_find.json to RUNS_DIR/lr-find/<time>-<name>/ (or --out).")
    lf.add_argument("model", help="model or recipe name")
    lf.add_argument("--data", required=True,
                    help="prepared folder, folder of class subfolders, 'flowers' or "
                         "'synthetic' (as for `convlab train`)")
    # The defaults of `lr_find` (tests/test_lr_find.py holds them equal).
    lf.add_argument("--start-lr", type=float, default=1e-7, help="the first learning rate")
    lf.add_argument("--end-lr", type=float, default=10.0, help="the last learning rate")
    lf.add_argument("--steps", type=int, default=200,
                    help="training steps from --start-lr to --end-lr")
    lf.add_argument("--smoothing", type=float, default=0.98,
                    help="the smoothed loss keeps this much of its past each step (0: raw)")
    lf.add_argument("--diverge", type=float, default=4.0,
                    help="stop once the smoothed loss exceeds this many times its minimum")
    lf.add_argument("--batch-size", type=int,
                    help="global batch size (default: the recipe's or model's)")
    lf.add_argument("--image-size", type=int, help="default: the recipe's or model's own")
    lf.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="set any config field, repeatable, as for `convlab train` (e.g. --set "
                         "optimizer=sgd --set runs_dir=elsewhere)")
    lf.add_argument("--out", help="folder for the plot and the numbers "
                                  "(default: RUNS_DIR/lr-find/<time>-<name>/)")
    lf.add_argument("--quiet", action="store_true", help="no progress bar")
    lf.set_defaults(func=cmd_lr_find, check=check_model_arg)
