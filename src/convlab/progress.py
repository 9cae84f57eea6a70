"""One progress bar for the commands that take more than a few seconds (rich, on stderr so
that machine-readable stdout stays clean; it clears itself when done)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


def live_display_ok() -> bool:
    """Whether rich can draw a live bar here: anywhere but a Jupyter kernel without
    ipywidgets, where rich would only warn 'install "ipywidgets" for Jupyter support'."""
    from rich.console import Console

    if not Console().is_jupyter:
        return True
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def progress_bar(show: bool, total: int, description: str
                 ) -> Iterator[Callable[..., None]]:
    """Yields `advance(n=1, description=None)`; does nothing when `show` is False."""
    if not (show and live_display_ok()):
        yield lambda n=1, description=None: None
        return
    from rich.console import Console
    from rich.progress import MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1, description: str | None = None) -> None:
            bar.update(task, advance=n, **({"description": description} if description
                                           else {}))

        yield advance
