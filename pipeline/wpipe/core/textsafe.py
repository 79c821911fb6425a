"""File names as data: stored and printed losslessly, whatever bytes they hold.

A POSIX file name is bytes; Python gives undecodable bytes as lone surrogates
(`surrogateescape`), which neither UTF-8 output, DuckDB nor Arrow accept. wpipe stores such a
byte as the four characters `\\xHH` (Python's `backslashreplace` spelling): `café` saved in
Latin-1 (`caf\\xe9`) is stored as the text `caf\\xe9` (`stored`). So that no two names share
one spelling, a name that holds such a byte, or a backslash that could be read as an escape
(`\\xHH` or `\\\\` typed literally), has every backslash of its own doubled: the file
literally named `bad\\xff.h5` is stored as `bad\\\\xff.h5`, the one with the byte 0xff as
`bad\\xff.h5`. Every other name is stored as it is. Valid UTF-8 names, markup characters such
as `[bold]` and control characters are kept; every printer and renderer escapes them where it
shows them (`display` only makes a text printable, for messages).
"""

from __future__ import annotations

import re

# what `stored` writes for a backslash or an undecodable byte: a name holding none of these
# spellings is stored as it is
_ESCAPE = re.compile(r"\\(\\|x[89a-f][0-9a-f])")
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def display(text: str) -> str:
    """`text` with each undecodable byte (a lone surrogate) spelled `\\xHH`: printable."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def stored(name: str) -> str:
    """The one spelling wpipe stores file name (or path) `name` under (see the module's doc);
    `to_os` gives the name back."""
    if not _UNDECODABLE.search(name) and not _ESCAPE.search(name):
        return name
    return _UNDECODABLE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}",
                            name.replace("\\", "\\\\"))  # fmt: skip


def to_os(text: str) -> str:
    """The file name `stored` made `text` from (for opening it again)."""
    if not _ESCAPE.search(text):
        return text
    return _ESCAPE.sub(_unescape, text)


def _unescape(match: re.Match) -> str:
    escape = match.group(1)
    return "\\" if escape == "\\" else chr(0xDC00 + int(escape[1:], 16))


def first_line(exc: BaseException) -> str:
    """An error's first line (its type's name when it says nothing): one line for a user."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
