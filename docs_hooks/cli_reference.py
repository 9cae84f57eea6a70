"""MkDocs hook: the CLI reference page (reference/cli.md), written from `convlab`'s argparse
parser at every build, so a new subcommand or option is in the docs the day it is added.

Importing `convlab.cli.main` loads no TensorFlow (the subcommands import it lazily).
"""

from __future__ import annotations

import argparse
import html
import re

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

from convlab.cli.main import build_parser

PAGE = "reference/cli.md"
USAGE_WIDTH = 76  # the usage blocks wrap here, whatever the terminal that runs mkdocs


def subcommands(parser: argparse.ArgumentParser, path: str = "convlab"):
    """(command path, parser, one-line help) of every subcommand, depth first, in the order
    `convlab --help` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, child in action.choices.items():
                yield f"{path} {name}", child, helps.get(name) or ""
                yield from subcommands(child, f"{path} {name}")


def _text(text: str) -> str:
    """argparse help as Markdown: `code` stays code, everything else is literal text (a
    `<time>` placeholder is not an HTML tag, `*` is not emphasis, `|` does not end a cell)."""
    parts = re.split(r"(`[^`]*`)", " ".join(text.split()))
    return "".join(p.replace("|", r"\|") if p.startswith("`") else
                   re.sub(r"([\\*_\[\]|])", r"\\\1", html.escape(p, quote=False))
                   for p in parts)


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = parser.formatter_class(prog=parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _anchor(path: str) -> str:
    """The id MkDocs gives the heading `path` (e.g. `convlab lr-find` -> convlab-lr-find)."""
    return path.replace(" ", "-")


def _commands(parser: argparse.ArgumentParser, path: str) -> list[str]:
    """A Markdown table of the parser's direct subcommands, linked to their sections."""
    rows = [f"| [`{p}`](#{_anchor(p)}) | {_text(summary)} |"
            for p, _, summary in subcommands(parser, path) if p.count(" ") == path.count(" ") + 1]
    return ["| command | what it does |", "| --- | --- |", *rows, ""] if rows else []


def _arguments(parser: argparse.ArgumentParser) -> list[str]:
    """A Markdown table of the parser's arguments, each with its help as `--help` shows it
    (defaults included); -h/--help, which every command has, is left out."""
    formatter = parser._get_formatter()
    rows = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(
                action, (argparse._SubParsersAction, argparse._HelpAction)):
            continue
        if action.option_strings:
            metavar = "" if action.nargs == 0 else " " + formatter._format_args(
                action, formatter._get_default_metavar_for_optional(action))
            name = ", ".join(f"`{o}{metavar}`" for o in action.option_strings)
        else:
            name = f"`{formatter._get_default_metavar_for_positional(action)}`"
        if action.required and action.option_strings:
            name += " (required)"
        rows.append(f"| {name} | {_text(formatter._expand_help(action) if action.help else '')} |")
    return ["| argument | what it does |", "| --- | --- |", *rows] if rows else []


def _section(path: str, parser: argparse.ArgumentParser, summary: str) -> list[str]:
    level = "#" * (path.count(" ") + 1)
    lines = [f"{level} {path}", ""]
    if parser.description or summary:
        lines += [_text(parser.description or summary), ""]
    lines += ["```text", _usage(parser), "```", "", *_commands(parser, path),
              *_arguments(parser), ""]
    return lines


def render() -> str:
    parser = build_parser()
    lines = ["# Command-line reference", "",
             "Every `convlab` command with its arguments, as `convlab COMMAND --help` prints "
             "them (every command also takes `-h`/`--help`). This page is written from the "
             "command's own parser at each build of the site.", "",
             "```text", _usage(parser), "```", "", *_commands(parser, "convlab"),
             *_arguments(parser), ""]
    for path, child, summary in subcommands(parser):
        lines += _section(path, child, summary)
    return "\n".join(lines)


@event_priority(50)  # before the plugins read the pages
def on_files(files, config):
    files.append(File.generated(config, PAGE, content=render()))
    return files
