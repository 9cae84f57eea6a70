"""The `convlab` command: thin subcommands over the Python API, one module per group."""

from __future__ import annotations

import argparse
import os
import sys

from convlab.cli import data, lrfind, results, runs, serve, train
from convlab.cli.console import show_defaults
from convlab.errors import ConvlabError
from convlab.tfimport import import_tensorflow
from convlab.usertext import visible
from convlab.version import __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convlab",
        description="From a folder of photos to a well-tuned convolutional image classifier.")
    p.add_argument("--version", action="version", version=f"convlab {__version__}")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's own log lines")
    sub = p.add_subparsers(dest="command", required=True)
    for group in (data, train, results, runs, lrfind, serve):
        group.register(sub)
    show_defaults(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # bare `convlab`: what it can do
        build_parser().print_help()
        return 0
    args = build_parser().parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if args.verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
    try:
        if (check := getattr(args, "check", None)) is not None:
            check(args)  # cheap checks of the arguments (a mistyped model) before TensorFlow
        if not args.verbose and getattr(args, "tensorflow", True):  # some never load it
            import_tensorflow()
        return args.func(args)
    except ConvlabError as err:
        print(f"convlab: error: {visible(err)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of the output left (`convlab runs | head`): nothing more to say, and
        # Python's flush at exit must not fail on the closed pipe either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a command killed by SIGPIPE
    except OSError as err:
        # A file the system refused (a read-only run folder, a path under a file, /proc):
        # the file and the reason. With --verbose, the traceback instead.
        if err.filename is None or args.verbose:
            raise
        print(f"convlab: error: cannot write or read '{visible(err.filename)}': "
              f"{err.strerror or err}; check that the path is right and that you may write "
              "there (--verbose shows where it happened)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convlab: interrupted; re-run the same command to resume (for training: "
              "convlab train --resume RUN)", file=sys.stderr)
        return 130
