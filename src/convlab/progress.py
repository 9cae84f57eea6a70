"""One progress bar for the commands that take more than a few seconds (rich, on stderr so
that machine-readable stdout stays clean; it clears itself when done)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(show: bool, total: int, description: str
                 ) -> Iterator[Callable[..., None]]:
    """Yields `advance(n=1, description=None)`; does nothing when `show` is False."""
    if not show:
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
