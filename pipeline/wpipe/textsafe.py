"""File names as data: stored and printed losslessly, whatever bytes they hold.

A POSIX file name is bytes; Python gives undecodable bytes as lone surrogates
(`surrogateescape`), which neither UTF-8 output, DuckDB nor Arrow accept. wpipe stores and
prints such a byte as the four characters `\\xHH` (Python's `backslashreplace` spelling):
`café` saved in Latin-1 (`caf\\xe9`) becomes the text `caf\\xe9`. Valid UTF-8 names, markup
characters such as `[bold]` and control characters are kept as they are; every printer and
renderer escapes them where it shows them.
"""

from __future__ import annotations

import re

_ESCAPED = re.compile(r"\\x([89a-f][0-9a-f])")


def display(text: str) -> str:
    """`text` with each undecodable byte (a lone surrogate) spelled `\\xHH`."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def to_os(text: str) -> str:
    """The file name `display` made `text` from (for opening it again)."""
    return _ESCAPED.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), text)
