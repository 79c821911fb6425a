"""What every command shares: the consoles, errors that end a command in one line, the --db,
--format and --model options, opening the database and naming models."""

from __future__ import annotations

import sys
from enum import Enum
from typing import TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:  # DuckDB, Arrow and numpy load with the first command that opens a database
    import duckdb
    from rich.console import Console

EXIT_FAILED_FILES = 1
EXIT_USAGE = 2
EXIT_BUG = 3

_CONSOLES: dict[bool, Console] = {}


def console(stderr: bool = False) -> Console:
    """The command's console on stdout or stderr (rich loads with the first one: `--version`
    and `--help` never need it)."""
    if stderr not in _CONSOLES:
        from rich.console import Console

        _CONSOLES[stderr] = Console(stderr=stderr)
    return _CONSOLES[stderr]


def __getattr__(name: str) -> Any:
    if name in ("out", "err"):  # the consoles, by the names commands use
        return console(stderr=name == "err")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


DbOption = typer.Option(
    None, "--db", envvar="WPIPE_DB", help="DuckDB file \\[default: wpipe.duckdb]"
)


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    records = "records"


FormatOption = typer.Option(
    Format.table, "--format", "-f", help="Output format (records: one block per row)."
)

MODELS_HELP = "Model name, path, model_id prefix or glob (`cnn_lr1e-2/*`)"


def models_option(default_all: bool = True) -> typer.models.OptionInfo:
    """`-m/--model`, repeatable: the one way every command takes a list of models."""
    tail = r"; repeat for more \[default: all]." if default_all else "; repeat for more."
    return typer.Option(None, "--model", "-m", help=MODELS_HELP + tail)


def say(message: str) -> None:
    """One line on stderr, no markup."""
    console(stderr=True).print(message, markup=False, highlight=False, soft_wrap=True)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """End the command with one line on stderr and `code` (2: a usage error)."""
    from rich.markup import escape

    text = f"[red]error:[/red] {escape(message)}"
    console(stderr=True).print(text, markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


_OPEN: list[duckdb.DuckDBPyConnection] = []


def waiting(why: str) -> None:
    """The one line a command prints when it starts waiting for a writer to finish."""
    from wpipe import api

    wait = api.default_wait()
    say(f"waiting up to {wait:g} s ({api.WAIT_ENV}): {why}")


def connect(db: str | None, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """The command's connection; closed when the command ends (close_all). While an ingest
    writes the database, waits up to WPIPE_WAIT seconds (saying so), then reads."""
    from wpipe import api

    try:
        con = api.connect(db, read_only=read_only, wait=api.default_wait(), on_wait=waiting)
    except (FileNotFoundError, api.DatabaseError) as exc:
        fail(str(exc))
    _OPEN.append(con)
    return con


def close_all() -> None:
    """Close the connections commands opened: in one process (tests, a script calling the
    app) a leftover read-only connection would refuse a later writer of the same file."""
    while _OPEN:
        _OPEN.pop().close()


def resolve(con: duckdb.DuckDBPyConnection, refs: list[str] | None) -> list[str]:
    """model_ids for `refs` (names, paths, id prefixes, globs); [] for none given."""
    from wpipe import api

    try:
        return api.resolve_models(con, list(refs or []))
    except LookupError as exc:
        fail(str(exc))


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()
