"""User text (file and class names, paths) made safe for each place convlab writes it.

A file name may hold anything but `/` and NUL: terminal escape sequences (`\\x1b[2J` clears
the screen), newlines that forge output lines, bidirectional overrides that reorder what is
shown, or a leading `=` that a spreadsheet runs as a formula. Each output has one function:
`visible` for a terminal or log line, `csv_cell` (and `from_csv_cell` to read it back) for a
CSV cell. HTML is escaped where it is written (`html.escape`), rich markup by
`cli.console.plain`. A leaf module: it imports nothing from convlab.
"""

from __future__ import annotations

import unicodedata

# Characters that change how the rest of a line is shown, beyond the C0/C1 controls:
# bidirectional embeddings, overrides and isolates, and the line / paragraph separators.
_REORDERING = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                        "\u2066\u2067\u2068\u2069\u2028\u2029")


def _shown(char: str) -> str:
    code = ord(char)
    if char == "\n":
        return "\\n"
    if char == "\t":
        return "\\t"
    if char == "\r":
        return "\\r"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def is_control(char: str) -> bool:
    """A C0 or C1 control character: a newline, ESC, BEL, DEL, ..."""
    return unicodedata.category(char) == "Cc"


def visible(text) -> str:
    """`text` with every control character written out as its escape (`\\x1b`, `\\n`,
    `\\u202e`), so that printing it can neither move the cursor, clear or recolour the
    terminal, start a new line nor reorder what follows. Other characters (accents, CJK,
    emoji and their joiners) are kept as they are."""
    text = str(text)
    if text.isprintable() and not _REORDERING.intersection(text):
        return text  # the common case, at C speed
    return "".join(_shown(c) if is_control(c) or c in _REORDERING else c for c in text)


# A spreadsheet reads a cell that starts with one of these as a formula (OWASP's list).
FORMULA_START = frozenset("=+-@\t\r")


def _needs_quote(text: str) -> bool:
    return text[:1] in FORMULA_START or (text[:1] == "'" and _needs_quote(text[1:]))


def csv_cell(value):
    """A value for a CSV cell: text that a spreadsheet would run as a formula is prefixed
    with `'` (shown, not run; OWASP's rule); numbers and other text are unchanged. Text that
    already starts with `'` before such a character gets one more, so `from_csv_cell` gives
    back exactly the text written."""
    if isinstance(value, str) and _needs_quote(value):
        return "'" + value
    return value


def from_csv_cell(text: str) -> str:
    """The text `csv_cell` was given, from the cell it wrote."""
    return text[1:] if text[:1] == "'" and _needs_quote(text[1:]) else text


def csv_row(values) -> list:
    """`csv_cell` of each value of a row."""
    return [csv_cell(v) for v in values]
