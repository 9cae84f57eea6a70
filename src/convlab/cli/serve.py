"""`convlab serve`: the web demo of a run and its JSON API (`convlab.webapp`)."""

from __future__ import annotations

import argparse
import errno
import socket

from convlab.cli.console import add_run_args
from convlab.errors import ConvlabError


def check_numbers(args: argparse.Namespace) -> None:
    """A one-line error for a number out of its range, nan and inf included (argparse's
    float takes them; they would surface later as a ValueError or OverflowError)."""
    from convlab.data.decode import MAX_PIXELS  # the shared decoder reads nothing larger

    ranges = {"--port": (1, 65535), "--max-mb": (0.01, 1024),
              "--max-megapixels": (0.01, MAX_PIXELS / 1e6), "--max-batch": (1, 1024)}
    for flag, (low, high) in ranges.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if not low <= value <= high:  # also true of nan
            raise ConvlabError(f"{flag} must be a number between {low:g} and {high:g}, "
                               f"received: {value}")


def check_port(host: str, port: int) -> None:
    """A one-line error now, rather than uvicorn's traceback later, when host:port is taken
    or not this machine's."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    # OverflowError: a port outside 0-65535; UnicodeError, TypeError: a host not encodable.
    except (OSError, OverflowError, UnicodeError, TypeError) as err:
        hint = ("another program listens there: choose another --port"
                if getattr(err, "errno", None) == errno.EADDRINUSE
                else "give an address of this machine")
        reason = getattr(err, "strerror", None) or err
        raise ConvlabError(f"cannot listen on {host}:{port} ({reason}); {hint}") from None


def cmd_serve(args) -> int:
    from convlab.webapp import serve

    check_numbers(args)
    check_port(args.host, args.port)
    if not args.api_only:
        try:
            import gradio  # noqa: F401
        except ImportError:
            raise ConvlabError("the web page needs Gradio: pip install 'convlab[serve]' (or run "
                               "with --api-only for the JSON API alone)") from None
    serve(args.run, host=args.host, port=args.port, model=args.model,
          max_bytes=int(args.max_mb * 2**20), max_pixels=int(args.max_megapixels * 1e6),
          max_batch=args.max_batch, ui=not args.api_only)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `serve` to the `convlab` parser."""
    sv = sub.add_parser(
        "serve", help="a local web demo of a run: drop photos, see the top 5 and where the "
                      "model looked; a JSON API beside it",
        description="Serve RUN on a local web page (Gradio, fully offline): drop or pick "
                    "photos and see each one's top 5 classes and a Grad-CAM heat map; the "
                    "run's accuracy, confusion matrix and curves; a gallery of validation "
                    "photos to classify. Beside it, POST /predict takes one image's bytes and "
                    "answers JSON, e.g. curl --data-binary @rose.jpg "
                    "http://127.0.0.1:8000/predict (add ?heatmap=1 for the heat map, "
                    "?top_k=N). Ctrl-C stops it.")
    add_run_args(sv)
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to listen on; 0.0.0.0 shows the demo to your network")
    sv.add_argument("--port", type=int, default=8000, help="port to listen on")
    sv.add_argument("--max-mb", type=float, default=20.0, help="largest upload, in MB")
    sv.add_argument("--max-megapixels", type=float, default=50.0,
                    help="largest image, in megapixels (decompression bombs stop here)")
    sv.add_argument("--max-batch", type=int, default=16,
                    help="photos that arrive while the model is busy share its next call, up "
                         "to this many (1: one photo per call)")
    sv.add_argument("--api-only", action="store_true",
                    help="the JSON API without the web page (no Gradio needed)")
    sv.set_defaults(func=cmd_serve)
