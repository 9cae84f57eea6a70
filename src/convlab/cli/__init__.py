"""The `convlab` command line (entry point `convlab.cli:main`); see `convlab.cli.main`."""

from convlab.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
