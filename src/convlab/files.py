"""Small helpers every layer shares: convlab's cache folder, atomic file writes, figures.

A leaf module: it imports nothing from convlab but its error type and `usertext` (itself a
leaf), so any module may use it.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """convlab's cache (downloads, converted weights): $CONVLAB_CACHE, else ~/.cache/convlab."""
    root = os.environ.get("CONVLAB_CACHE") or Path.home() / ".cache" / "convlab"
    return Path(root).expanduser().joinpath(*parts)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` when the block ends
    without an error, removed otherwise. Readers never see half a file, and an interrupted
    write leaves the old file (if any) in place and no temporary file behind.

    The temporary name keeps every suffix (`best.tmp123.keras`, `x.tmp123.weights.h5`): Keras
    picks its file format from them.
    """
    path = Path(path)
    stem, _, suffixes = path.name.partition(".")
    tmp = path.with_name(f"{stem}.tmp{os.getpid()}" + (f".{suffixes}" if suffixes else ""))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


LOCK = ".convlab.lock"  # the lock file a folder being written holds


@contextlib.contextmanager
def locked(folder: str | os.PathLike, busy: str, *, remove: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (an flock on its `.convlab.lock`, released by the
    kernel however the process ends); if another process holds it, a one-line error: `busy`.
    `remove`: delete the lock file when the block ends, while still holding it (a process
    that opened it meanwhile fails to lock it; one that comes later makes a new one).
    """
    import fcntl

    from convlab.errors import ConvlabError

    handle = open(Path(folder) / LOCK, "a")  # noqa: SIM115  (closed below)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConvlabError(busy) from None
        try:
            yield
        finally:
            if remove:
                Path(folder, LOCK).unlink(missing_ok=True)
    finally:
        handle.close()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through `atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def figure(**kwargs):
    """A matplotlib Figure that draws off-screen, without pyplot: the caller's backend (e.g.
    a notebook's) is left alone and nothing global is kept. Save it with `fig.savefig`."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def literal(text) -> str:
    """User text (class names, run names) for a matplotlib label, drawn as typed: `$` is
    escaped, so `$\\frac$` is not parsed as mathtext (which fails on it); control characters
    are written out (`\\n`); a character the plots' font has no glyph for (an emoji, CJK
    with the default font) is written as its name or code point (`[rose]`, `U+82B1`) instead
    of an empty box and a "Glyph missing" warning."""
    from convlab.usertext import visible

    text = visible(text)
    if not text.isascii():
        text = "".join(c if _drawable(c) else _spelled(c) for c in text)
    return text.replace("$", r"\$")


@functools.cache
def _drawable(char: str) -> bool:
    return _default_font().get_char_index(ord(char)) != 0


@functools.cache
def _default_font():
    """The plots' default font, opened once."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    return FT2Font(font_manager.findfont(font_manager.FontProperties()))


def _spelled(char: str) -> str:
    import unicodedata

    kind = unicodedata.category(char)
    if kind in ("Mn", "Me", "Cf"):  # a combining mark, variation selector or joiner: drop
        return ""
    name = unicodedata.name(char, "")
    return f"[{name.lower()}]" if kind == "So" and name else f"U+{ord(char):04X}"
