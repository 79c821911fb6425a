"""Printing results: CSV, JSON, one record per row, or a terminal table that fits its width.

A table never breaks a number or a name across lines: it keeps the columns that fit (the
first always), shortens long text with an ellipsis, prints numbers with four significant
digits, and says which columns it left out and how to see them."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table

from wpipe.cli.common import Format, say

MAX_TEXT = 40  # widest text column; longer values end in an ellipsis
MIN_TEXT = 10  # a text column is shortened to no less than this (or its header)
SIGNIFICANT = 4
PIPED_WIDTH = 10_000  # piped output (no COLUMNS): scripts and logs get whole tables


def emit(columns: list[str], rows: list[tuple], fmt: Format, title: str | None = None) -> None:
    """Print rows as a table, CSV, JSON (a list of objects) or records."""
    if fmt is Format.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    elif fmt is Format.json:
        records = [{c: _jsonable(v) for c, v in zip(columns, row, strict=True)} for row in rows]
        sys.stdout.write(json.dumps(records, indent=2, default=str) + "\n")
    elif fmt is Format.records:
        _records(columns, rows, title)
    else:
        _table(columns, rows, title, width())


def width() -> int:
    if "COLUMNS" in os.environ or sys.stdout.isatty():
        return shutil.get_terminal_size((80, 24)).columns
    return PIPED_WIDTH


def cell(value: Any) -> str:
    """A value as one unbreakable piece of text."""
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


@dataclass
class _Column:
    name: str
    cells: list[str]
    numeric: bool
    whole: bool = False  # the first column names the row: never shortened if it fits
    piped: bool = False  # no terminal: text is never shortened

    @property
    def need(self) -> int:
        longest = max((len(c) for c in self.cells), default=0)
        full = max(len(self.name), longest)
        if self.numeric or self.whole or self.piped:
            return full
        return min(full, max(MAX_TEXT, len(self.name)))

    @property
    def least(self) -> int:
        return self.need if self.numeric else min(self.need, max(MIN_TEXT, len(self.name)))


def fit(columns: list[_Column], space: int) -> list[tuple[_Column, int]]:
    """The columns that fit in `space` characters, in order, with their widths: each gets what
    it needs where it can, text columns give way down to their least, the rest are left out."""
    chosen: list[tuple[_Column, int]] = []
    used = 1  # the table's left border
    for i, column in enumerate(columns):
        room = space - used - 3  # a cell's padding and border
        if column.need <= room or i == 0:
            width = max(1, min(column.need, room))
        elif column.least <= room:
            width = room
        else:
            continue
        chosen.append((column, width))
        used += width + 3
    return chosen


def _table(names: list[str], rows: list[tuple], title: str | None, space: int) -> None:
    columns = [
        _Column(
            name,
            [cell(r[i]) for r in rows],
            all(isinstance(r[i], int | float | Decimal) or r[i] is None for r in rows)
            and any(r[i] is not None for r in rows),
            whole=i == 0,
            piped=space >= PIPED_WIDTH,
        )
        for i, name in enumerate(names)
    ]
    chosen = fit(columns, space)
    table = Table(title=title, header_style="bold", title_justify="left")
    for column, w in chosen:
        table.add_column(
            column.name,
            justify="right" if column.numeric else "left",
            no_wrap=True,
            overflow="ellipsis",
            min_width=w,
            max_width=w,
        )
    for r in range(len(rows)):
        table.add_row(*(column.cells[r] for column, _ in chosen))
    console = Console(width=space, markup=False, highlight=False, emoji=False)
    console.print(table)
    left_out = [c.name for c in columns if all(c is not k for k, _ in chosen)]
    if left_out:
        say(
            f"{len(left_out)} of {len(columns)} columns left out to fit {space} columns: "
            f"{', '.join(left_out)}; see them with --format records, csv or json"
        )


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
    return value
