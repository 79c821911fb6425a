"""Printing results: CSV, JSON, one record per row, or a terminal table that fits its width.

A table never breaks a number or a name across lines. Each command declares its `Layout`: the
key (the columns that name a row) and the numbers it is about. At any width a table keeps the
key and the numbers; the other columns (paths, long text, ids) fill what room is left, numbers
before short text before long text, and a text column may be shortened with an ellipsis. The
table says which columns it left out. Where even the key and the numbers do not fit, headers
fold at underscores and slashes (`n_non_` over `trainable`), and if that is not enough the rows are
printed as records (one block per row), which also says so."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from functools import cached_property
from typing import TYPE_CHECKING, Any

from wpipe.cli.common import Format, say

if TYPE_CHECKING:  # rich loads with the first table printed
    from rich.console import Console
    from rich.table import Table

MAX_TEXT = 40  # widest text column; longer values end in an ellipsis
MIN_TEXT = 10  # a text column is shortened to no less than this (or its header)
MIN_WRAP = 24  # narrowest a wrapped text column may get
SIGNIFICANT = 4
PIPED_WIDTH = 10_000  # piped output (no COLUMNS): scripts and logs get whole tables
FAST_ROWS = 2  # tables of this many rows or more: rows past the first drawn by wpipe


@dataclass(frozen=True)
class Layout:
    """What a command's table keeps at any width: `key` (the columns that name a row) and
    `numbers`; `wrap`: text worth reading whole, wrapped at word boundaries (schema's
    meanings). Names a result does not have are ignored; without a layout the first column
    is the key."""

    key: tuple[str, ...] = ()
    numbers: tuple[str, ...] = ()
    wrap: tuple[str, ...] = ()
    then: tuple[str, ...] = ()  # the other columns to show first, in this order, where room allows


class Role(Enum):
    KEY = "key"
    NUMBER = "number"
    WRAP = "wrap"
    OTHER = "other"


def emit(
    columns: list[str],
    rows: list[tuple],
    fmt: Format,
    title: str | None = None,
    layout: Layout | None = None,
) -> None:
    """Print rows as a table, CSV, JSON (a list of objects) or records."""
    if fmt is Format.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    elif fmt is Format.json:
        records = [{c: _jsonable(v) for c, v in zip(columns, row, strict=True)} for row in rows]
        sys.stdout.write(json.dumps(records, indent=2, default=str, allow_nan=False) + "\n")
    elif fmt is Format.records:
        _records(columns, rows, title)
    else:
        _table(columns, rows, title, width(), layout or Layout(key=tuple(columns[:1])))


def width() -> int:
    if "COLUMNS" in os.environ or sys.stdout.isatty():
        return shutil.get_terminal_size((80, 24)).columns
    return PIPED_WIDTH


def cell(value: Any) -> str:
    """A value as one unbreakable piece of text."""
    if type(value) is str:  # the most common cell first: a 10,000-row table has 100,000
        return " ".join(value.split())  # newlines and tabs would break the row
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float | Decimal):
        return f"{float(value):.{SIGNIFICANT}g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, date):
        return value.isoformat()
    return " ".join(str(value).split())  # newlines and tabs would break the row


def folded(name: str, fit: int = 0) -> str:
    """A header on as few lines as keep it within `fit` characters (or its longest part),
    each line ending at an underscore or a slash (`n_non_` over `trainable`; `cnn_`,
    `lr1e-2/`, `e05`); a name without one stays whole."""
    parts, start = [], 0
    for i, c in enumerate(name[:-1]):
        if c in "_/":
            parts.append(name[start : i + 1])
            start = i + 1
    parts.append(name[start:])
    room = max(fit, *(len(p) for p in parts))
    lines = [""]
    for part in parts:
        if lines[-1] and len(lines[-1]) + len(part) > room:
            lines.append("")
        lines[-1] += part
    return "\n".join(lines)


@dataclass
class _Column:
    name: str
    cells: list[str]
    numeric: bool  # every value a number: right-aligned, never shortened
    role: Role
    piped: bool = False  # no terminal: text is never shortened
    rank: int = 0  # among the other columns: the layout's `then` order, those it names first

    @cached_property
    def empty(self) -> bool:
        """No row has a value: the column is left out first."""
        return all(c == "–" for c in self.cells)

    @cached_property
    def longest(self) -> int:
        """The widest value's length (asked for at every step of the fit: kept)."""
        return max((len(c) for c in self.cells), default=0)

    @property
    def required(self) -> bool:
        return self.role is not Role.OTHER and not self.empty

    def header(self, fold: bool) -> str:
        """The header, folded (when asked) only where it is wider than every value."""
        longest = self.longest
        return folded(self.name, longest) if fold and len(self.name) > longest else self.name

    def need(self, fold: bool) -> int:
        head = max(len(line) for line in self.header(fold).split("\n"))
        full = max(head, self.longest)
        if self.numeric or self.role in (Role.KEY, Role.NUMBER) or self.piped:
            return full
        if self.role is Role.WRAP:
            return min(full, max(MIN_WRAP, head))
        return min(full, max(MAX_TEXT, head))

    def full(self, fold: bool) -> int:
        """A wrapped column's width with every value on one line."""
        head = max(len(line) for line in self.header(fold).split("\n"))
        return max(head, self.longest)

    def least(self, fold: bool) -> int:
        if self.numeric or self.role is not Role.OTHER:
            return self.need(fold)
        head = max(len(line) for line in self.header(fold).split("\n"))
        return min(self.need(fold), max(MIN_TEXT, head))


@dataclass
class Plan:
    """The columns a table shows, in the result's order, with their widths."""

    chosen: list[tuple[_Column, int]]
    fold: bool


def _others_first(column: _Column) -> tuple:
    """The order in which columns outside the key and numbers get room: those the layout
    names next, then numbers, then short text before long text (paths, messages); empty
    columns last."""
    return (column.empty, column.rank, not column.numeric, column.need(False))


def fit(columns: list[_Column], space: int) -> Plan | None:
    """What fits in `space` characters: the key, the numbers and the wrapped text (at their
    least) first, then the other columns while there is room; the wrapped text takes what is
    left. None when the required columns do not fit even with folded headers."""
    required = [c for c in columns if c.required]
    others = sorted((c for c in columns if not c.required), key=_others_first)
    for fold in (False, True):
        widths = {id(c): c.need(fold) for c in required}
        used = 1 + sum(w + 3 for w in widths.values())  # the left border; padding and border
        if used > space:
            continue
        for column in others:
            room = space - used - 3
            if column.need(fold) <= room:
                widths[id(column)] = column.need(fold)
            elif column.least(fold) <= room:
                widths[id(column)] = room
            else:
                continue
            used += widths[id(column)] + 3
        for column in (c for c in required if c.role is Role.WRAP):
            grow = min(column.full(fold) - widths[id(column)], space - used)
            widths[id(column)] += max(0, grow)
            used += max(0, grow)
        return Plan([(c, widths[id(c)]) for c in columns if id(c) in widths], fold)
    return None


def _role(name: str, layout: Layout) -> Role:
    if name in layout.key:
        return Role.KEY
    if name in layout.numbers:
        return Role.NUMBER
    if name in layout.wrap:
        return Role.WRAP
    return Role.OTHER


def _table(
    names: list[str], rows: list[tuple], title: str | None, space: int, layout: Layout
) -> None:
    columns = [
        _Column(
            name,
            [cell(r[i]) for r in rows],
            all(isinstance(r[i], int | float | Decimal) or r[i] is None for r in rows)
            and any(r[i] is not None for r in rows),
            _role(name, layout),
            piped=space >= PIPED_WIDTH,
            rank=layout.then.index(name) if name in layout.then else len(layout.then),
        )
        for i, name in enumerate(names)
    ]
    plan = fit(columns, space)
    if plan is None:
        required = [c for c in columns if c.required]
        least = 1 + sum(c.need(True) + 3 for c in required)
        say(
            f"{', '.join(c.name for c in required)} need {least} columns, the terminal has "
            f"{space}: one block per row instead (a wider terminal shows a table)"
        )
        _records(names, rows, title)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, header_style="bold", title_justify="left")
    for column, w in plan.chosen:
        wrap = column.role is Role.WRAP
        table.add_column(
            column.header(plan.fold),
            justify="right" if column.numeric or column.role is Role.NUMBER else "left",
            no_wrap=not wrap,
            overflow="fold" if wrap else "ellipsis",
            min_width=w,
            max_width=w,
        )
    console = Console(width=space, markup=False, highlight=False, emoji=False)
    if len(rows) >= FAST_ROWS and all(c.role is not Role.WRAP for c, _ in plan.chosen):
        _print_rows_fast(console, table, plan, len(rows))
    else:
        for r in range(len(rows)):
            table.add_row(*(column.cells[r] for column, _ in plan.chosen))
        console.print(table)
    left_out = [c.name for c in columns if all(c is not k for k, _ in plan.chosen)]
    if left_out:
        say(
            f"{len(left_out)} of {len(columns)} columns left out to fit {space} columns: "
            f"{', '.join(left_out)}; see them with --format records, csv or json"
        )


def _print_rows_fast(console: Console, table: Table, plan: Plan, n_rows: int) -> None:
    """`table` with its rows, rich drawing the title, the header, the first row and the
    bottom border, and this function the other rows in the same form: every column's width is
    fixed by the plan and no cell wraps, so each row is one line of cells padded or cut to
    their width. Rich laid out each row of a 10,000-model list for ~25 s of CPU."""
    table.add_row(*(column.cells[0] for column, _ in plan.chosen))
    with console.capture() as captured:
        console.print(table)
    lines = captured.get().splitlines(keepends=True)
    fitted = [
        _fitted_column(column.cells[1:n_rows], width, column.numeric or column.role is Role.NUMBER)
        for column, width in plan.chosen
    ]
    write = sys.stdout.write
    write("".join(lines[:-1]))
    write("".join(f"│ {' │ '.join(parts)} │\n" for parts in zip(*fitted, strict=True)))
    write(lines[-1])


def _fitted_column(cells: list[str], width: int, right: bool) -> list[str]:
    """`_fitted` of every cell of a column; an ASCII cell that fits is padded by str's own
    method (a call per cell less: a 10,000-row table has 100,000 cells)."""
    pad = str.rjust if right else str.ljust
    return [
        pad(text, width) if len(text) <= width and text.isascii() else _fitted(text, width, right)
        for text in cells
    ]


def _fitted(text: str, width: int, right: bool) -> str:
    """A cell as rich draws it in a no-wrap column: cut with an ellipsis, padded to `width`."""
    if text.isascii():  # a character a cell
        length = len(text)
    else:
        from rich.cells import cell_len

        length = cell_len(text)
    if length > width:
        from rich.cells import set_cell_size

        text = set_cell_size(text, width - 1) + "…"
        length = width
    pad = " " * (width - length)
    return pad + text if right else text + pad


def _records(names: list[str], rows: list[tuple], title: str | None) -> None:
    pad = max((len(n) for n in names), default=0)
    if title:
        sys.stdout.write(f"{title}\n")
    for i, row in enumerate(rows):
        sys.stdout.write(f"-- {i + 1} --\n")
        for name, value in zip(names, row, strict=True):
            sys.stdout.write(f"{name:<{pad}}  {cell(value)}\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN and ±inf are not JSON (strict parsers refuse Python's NaN/Infinity)
    return value
