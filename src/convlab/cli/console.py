"""What every subcommand shares: the rich console and the arguments naming a run."""

from __future__ import annotations

import argparse
import sys

from convlab.usertext import visible

MODEL_CHOICES = ("best", "final")


def console():
    """A rich Console; piped or captured output gets 120 columns (tables need more than the
    80 rich assumes)."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 120)


def plain(text) -> str:
    """User text (paths, class names) made safe to print through rich: `[bold]x` stays
    literally `[bold]x` instead of being read as markup (or crashing on `x[/b]`)."""
    from rich.markup import escape

    return escape(visible(text))


def add_run_args(parser: argparse.ArgumentParser, model: bool = True) -> None:
    """RUN and `--model best|final`, the same for every command that reads a run folder."""
    parser.add_argument("run", help="run folder written by `convlab train` (runs/<time>-<name>)")
    if model:
        parser.add_argument("--model", choices=MODEL_CHOICES, default="best",
                            help="best.keras (best validation accuracy, the default) or "
                                 "model.keras (the last epoch)")


class DefaultsFormatter(argparse.HelpFormatter):
    """`--help` with every option's default: "(default: X)" wherever the help does not
    already say it (flags that are off unless given, and options without a value, say
    nothing)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or \
                not action.option_strings:
            return text
        return f"{text} (default: {action.default})".strip()


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Use `DefaultsFormatter` for `parser` and all its subcommands, at any depth."""
    parser.formatter_class = DefaultsFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                show_defaults(child)
