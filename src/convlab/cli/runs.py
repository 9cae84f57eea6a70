"""`convlab runs | compare`: every run at a glance, and two or more runs side by side."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import sys

from convlab.cli.console import console, plain
from convlab.usertext import csv_row, visible

SPARKS = "▁▂▃▄▅▆▇█"
# The listing's columns that may fold onto more lines (the others are short, or a name)
FOLDING = ("run", "recipe/model", "data", "evaluations")
SHORT_NAME = 24


def cmd_runs(args) -> int:
    from convlab.runlist import RunRow, csv_values, list_runs, sort_rows

    listing = list_runs(args.runs_dir)
    rows = sort_rows(listing.rows, args.sort)
    if args.format == "json":
        print(json.dumps({"runs_dir": str(listing.root), "runs": [r.to_dict() for r in rows],
                          "not_runs": listing.not_runs}, indent=1))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow([f.name for f in dataclasses.fields(RunRow)])
        writer.writerows(csv_row(csv_values(r)) for r in rows)
    else:
        _print_runs(listing, rows, args.sort)
    return 0


def _print_runs(listing, rows: list, by: str) -> None:
    """The listing as a table, then why damaged runs are damaged and what was skipped."""
    from rich import box
    from rich.table import Table

    from convlab.runlist import ACCURACY_NOTE, COLUMNS

    # Narrow (no vertical rules, one space between columns) to fit 120 columns.
    table = Table(title=f"{len(rows)} run(s) in {plain(listing.root)}, by {by}",
                  box=box.SIMPLE_HEAD, padding=0, show_edge=False)
    # Run names stay whole unless long (a recipe's name); then they fold like the others.
    short_names = max((len(r.name) for r in rows), default=0) <= SHORT_NAME
    for header, _ in COLUMNS:
        table.add_column(header, overflow="fold", no_wrap=header not in FOLDING or (
            header == "run" and short_names))
    for row in rows:
        table.add_row(*(plain(text(row)) for _, text in COLUMNS))
    con = console()
    con.print(table)
    if any(r.val_accuracy_from == "training" for r in rows):
        con.print(plain(ACCURACY_NOTE), highlight=False)
    for row in rows:
        if row.problem:
            con.print(f"{plain(row.name)}: {plain(row.problem)}", highlight=False)
    if listing.not_runs:
        shown = ", ".join(listing.not_runs[:5]) + (", ..." if len(listing.not_runs) > 5 else "")
        con.print(f"note: {len(listing.not_runs)} folder(s) here are not runs (no config.json): "
                  f"{plain(shown)}", highlight=False)


def cmd_compare(args) -> int:
    from rich.table import Table

    from convlab.evaluation.compare import compare_runs, results, shown, write_html
    from convlab.runlist import ACCURACY_NOTE

    comparison = compare_runs(args.runs, runs_dir=args.runs_dir)
    names = [plain(r.name) for r in comparison.rows]
    con = console()
    settings = Table(title=f"settings that differ ({comparison.same} others are the same)")
    results_table = Table(title="results")
    for table, first in ((settings, "setting"), (results_table, "")):
        table.add_column(first, overflow="fold")
        for name in names:
            table.add_column(name, overflow="fold")
    for key, values in comparison.settings:
        settings.add_row(plain(key), *(plain(shown(v)) for v in values))
    for what, values in results(comparison):
        results_table.add_row(what, *(plain(v) for v in values))
    con.print(settings if comparison.settings else "no setting differs")
    con.print(results_table)
    con.print(plain(ACCURACY_NOTE), highlight=False)
    con.print("validation accuracy per epoch (one scale for all runs):", highlight=False)
    for line in _curves(comparison):
        con.print(line, highlight=False)
    if args.html:
        print(f"page: {write_html(comparison, args.html)}")
    return 0


def _curves(comparison, most: int = 60) -> list[str]:
    """A line per run: its validation accuracy per epoch as a sparkline, all on one scale
    (every k-th epoch of a run longer than `most`)."""
    series = [[v for h in history if math.isfinite(v := h.get("val_accuracy", math.nan))]
              for history in comparison.histories]
    values = [v for s in series for v in s]
    low, high = (min(values), max(values)) if values else (0, 1)
    step = max(1, -(-max(map(len, series)) // most))
    names = [visible(r.name) for r in comparison.rows]  # as printed: aligned
    width, epochs = max(map(len, names)), max(len(s[::step]) for s in series)
    lines = []
    for name, s in zip(names, series, strict=True):
        spark = "".join(SPARKS[round((v - low) / ((high - low) or 1) * (len(SPARKS) - 1))]
                        for v in s[::step]).ljust(epochs)
        said = f"{s[0]:.4f} -> {s[-1]:.4f} (best {max(s):.4f})" if s else "no validated epoch"
        lines.append(f"  {plain(name.ljust(width))}  {spark}  {said}")
    return lines


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `runs` and `compare` to the `convlab` parser (neither loads TensorFlow)."""
    from convlab.runlist import SORTS, STATES

    ls = subparsers.add_parser(
        "runs", help="every run in RUNS_DIR at a glance: model, data, epochs, accuracy, state",
        description="List the run folders in RUNS_DIR, one row each: recipe or model, data, "
                    "image size, epochs done, validation accuracy, other evaluations, start "
                    f"and fitting time, and state ({', '.join(STATES)}: a live `convlab "
                    "train` holds a running one; an interrupted one continues with `convlab "
                    "train --resume RUN`). Folders that are not runs are counted in one note. "
                    "Compare runs with `convlab compare`.")
    ls.add_argument("runs_dir", nargs="?", default="runs", metavar="RUNS_DIR",
                    help="the folder `convlab train` writes runs into (default: runs)")
    ls.add_argument("--sort", choices=tuple(SORTS), default="time",
                    help="time: newest first; accuracy, epochs: highest first; name, state "
                         "(default: time)")
    ls.add_argument("--format", choices=("table", "csv", "json"), default="table",
                    help="a table for people; csv or json (every value in full) for programs")
    ls.set_defaults(func=cmd_runs, tensorflow=False)

    cp = subparsers.add_parser(
        "compare", help="two or more runs side by side: settings that differ, results, curves",
        description="Compare runs: the settings that differ (config.json's, as dotted "
                    "`--set` keys), the results side by side and the validation accuracy "
                    "per epoch; with --html, also a self-contained HTML page with the "
                    "validation accuracy and loss curves overlaid.")
    cp.add_argument("runs", nargs="+", metavar="RUN",
                    help="run folders, or their names in --runs-dir (as `convlab runs` lists "
                         "them); two or more")
    cp.add_argument("--runs-dir", default="runs",
                    help="where run names are looked up (default: runs)")
    cp.add_argument("--html", nargs="?", const="compare.html", default=None, metavar="OUT",
                    help="also write the comparison as one HTML page to OUT (--html alone: "
                         "compare.html in the current folder; default: no page)")
    cp.set_defaults(func=cmd_compare, tensorflow=False)
