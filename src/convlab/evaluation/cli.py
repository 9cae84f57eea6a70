"""`convlab evaluate` and `convlab report`: thin subcommands over `convlab.evaluation`.

`register(subparsers)` adds them to the `convlab` parser.
"""

from __future__ import annotations

import argparse

from convlab.runs import TTA_MODES


def cmd_evaluate(args) -> int:
    from convlab.evaluation.metrics import evaluate, format_metrics

    metrics = evaluate(args.run, data=args.data, split=args.split, model=args.model,
                       top_k=args.top_k, tta=args.tta)
    print(format_metrics(metrics, width=120), end="")
    print(f"metrics: {args.run}/metrics.json")
    return 0


def cmd_report(args) -> int:
    from convlab.evaluation.report import report

    print(report(args.run))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `evaluate` and `report` subcommands to a `convlab` subparsers object."""
    ev = subparsers.add_parser(
        "evaluate", help="metrics of a run's model: accuracy, per class, confusion matrix",
        description="Evaluate RUN's model on its validation split, or on --data (a prepared "
                    "folder or a folder of class subfolders, matched to the model's classes "
                    "by name). Prints a table and writes RUN/metrics.json.")
    ev.add_argument("run", help="run folder (runs/<time>-<name>)")
    ev.add_argument("--data", help="prepared folder or photo folder (default: the run's data)")
    ev.add_argument("--split", choices=("train", "validation", "test", "all"),
                    help="default: validation; all the photos of a photo folder")
    ev.add_argument("--model", choices=("best", "final"), default="best",
                    help="best.keras (default) or model.keras")
    ev.add_argument("--top-k", type=int, help="k of the top-k accuracy (min(3, classes-1))")
    ev.add_argument("--tta", choices=TTA_MODES, default="none",
                    help="test-time augmentation: flip averages each image and its mirror")
    ev.set_defaults(func=cmd_evaluate)

    rep = subparsers.add_parser(
        "report", help="write RUN/report.html: metrics, plots, model and config, offline",
        description="Write one self-contained HTML report for RUN (evaluating it first if "
                    "needed) and print its path.")
    rep.add_argument("run", help="run folder (runs/<time>-<name>)")
    rep.set_defaults(func=cmd_report)
