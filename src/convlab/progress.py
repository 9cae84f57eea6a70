"""Progress for the commands and functions that take more than a few seconds, in the three
places people watch them: a terminal (a live rich bar on stderr, so that machine-readable
stdout stays clean; it clears itself when done), a notebook (Keras' bars, or plain lines when
rich cannot draw there) and a pipe or log file (plain lines: no bars, no control codes)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

PLAIN_EVERY_SECONDS = 15  # a plain progress line at most this often


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (whose output cell shows `\\r` updates)."""
    if "ipykernel" not in sys.modules:
        return False
    from rich.console import Console

    return Console().is_jupyter


def live_output() -> bool:
    """Whether someone watches the output live: a terminal (as rich sees it: a TTY, or
    FORCE_COLOR / TTY_COMPATIBLE set) or a notebook. Anywhere else (a pipe, a log file, CI)
    progress is written as plain lines."""
    from rich.console import Console

    return Console().is_terminal or in_notebook()


def live_display_ok() -> bool:
    """Whether rich can draw a live bar here: a terminal, or a notebook with ipywidgets
    (without it rich would only warn 'install "ipywidgets" for Jupyter support')."""
    if not live_output():
        return False
    if not in_notebook():
        return True
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def duration(seconds: float | None) -> str:
    """A time as people read it: `45 s`, `17.1 min`, `2.3 h`; `-` for none."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def note(text: str) -> None:
    """One plain progress line, flushed (it shows while the work goes on): on stderr, which
    keeps machine-readable stdout clean, except in a notebook, which shows stderr as
    warnings."""
    print(text, file=sys.stdout if in_notebook() else sys.stderr, flush=True)


@contextlib.contextmanager
def progress_bar(show: bool, total: int, description: str, keep: bool = False
                 ) -> Iterator[Callable[..., None]]:
    """Yields `advance(n=1, description=None)`; does nothing when `show` is False. A live bar
    clears itself when done unless `keep`. Without a live display: a plain line every
    `PLAIN_EVERY_SECONDS` while it lasts and one at the end with the time taken."""
    if not show:
        yield lambda n=1, description=None: None
        return
    if not live_display_ok():
        with _plain_progress(total, description) as advance:
            yield advance
        return
    from rich.console import Console
    from rich.progress import MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=not keep) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1, description: str | None = None) -> None:
            bar.update(task, advance=n, **({"description": description} if description
                                           else {}))

        yield advance


@contextlib.contextmanager
def _plain_progress(total: int, description: str) -> Iterator[Callable[..., None]]:
    start = last = time.perf_counter()
    done, current = 0, description

    def advance(n: int = 1, description: str | None = None) -> None:
        nonlocal done, current, last
        done, current = done + n, description or current
        if (now := time.perf_counter()) - last >= PLAIN_EVERY_SECONDS and done < total:
            last = now
            note(f"{current}: {done:,}/{total:,} ({done / total:.0%}), {now - start:.0f} s")

    yield advance
    note(f"{current}: {done:,}/{total:,} in {time.perf_counter() - start:.1f} s")


@contextlib.contextmanager
def step(show: bool, description: str) -> Iterator[None]:
    """A long step that has no count (a model conversion): a line when it starts (a spinner
    with the time so far in a terminal) and its time when it ends."""
    if not show:
        yield
        return
    start = time.perf_counter()
    if live_display_ok():
        from rich.console import Console

        with Console(stderr=True).status(f"{description} ..."):
            yield
    else:
        note(f"{description} ...")
        yield
    note(f"{description}: done in {time.perf_counter() - start:.1f} s")
