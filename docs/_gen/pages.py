"""Reference pages generated from the code at build time: the CLI (from the Typer app), the
table contract (from `wpipe.core.schema`), the views with their SQL and the settings (from the
package's SQL files), and the figures (drawn from the demo database by `wpipe.charts`).

Every generator imports from a few public places only — `wpipe.cli.app`, `wpipe.core.schema`,
`wpipe.views`, `wpipe.charts`, `wpipe.connect` — so a module moved inside the package is fixed
here in one spot. Each returns Markdown (or writes files); `hooks.py` puts them into pages.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# --- CLI -------------------------------------------------------------------------------------


def cli_commands() -> Iterator[tuple[str, Any, Any]]:
    """Every command of the `wpipe` app, depth first, with its full name ("lineage set"), and
    its click context. Click's own introspection, duck-typed: Typer may vendor click."""
    import typer
    from wpipe.cli import app

    root = typer.main.get_command(app)
    yield from _walk(root, root.context_class(root, info_name="wpipe"), "")


def _walk(group: Any, ctx: Any, prefix: str):
    if not hasattr(group, "list_commands"):
        return
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        full = f"{prefix}{name}"
        sub = command.context_class(command, info_name=name, parent=ctx)
        yield full, command, sub
        yield from _walk(command, sub, f"{full} ")


def _plain(text: str | None) -> str:
    """Help text as Markdown: Rich markup tags dropped, Typer's paragraph breaks kept."""
    text = re.sub(r"\[/?(?:bold|italic|dim|red|green|yellow|blue|cyan|magenta)\]", "", text or "")
    return text.replace("\b\n", "").replace("\\[", "[").strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def cli_reference() -> str:
    """One section per command: usage, what it does, its arguments and options."""
    out = []
    for full, command, ctx in cli_commands():
        out.append(f"## `wpipe {full}`\n")
        out.append(f"```text\n{command.get_usage(ctx)}\n```\n")
        out.append(_plain(command.help) + "\n")
        rows = []
        for param in command.get_params(ctx):
            record = param.get_help_record(ctx) if param.name != "help" else None
            if record:
                kind = param.param_type_name + _required(param)
                rows.append((f"`{record[0]}`", kind, record[1] or ""))
        if rows:
            out.append("| name | kind | meaning |\n|---|---|---|")
            out.extend(f"| {_cell(n)} | {k} | {_cell(_plain(h))} |" for n, k, h in rows)
            out.append("")
    return "\n".join(out)


def _required(param: Any) -> str:
    return " (required)" if param.required else ""


# --- Tables ----------------------------------------------------------------------------------


def contract_tables():
    from wpipe.core import schema

    return schema.ALL_TABLES


def tables_reference() -> str:
    """Every table of the contract with its grain and every column's type and meaning."""
    out = []
    for table in contract_tables():
        out.append(f"## `{table.name}` — one row per {_cell(table.grain)}\n")
        out.append("| column | type | meaning |\n|---|---|---|")
        out.extend(f"| `{c.name}` | {c.type} | {_cell(c.doc)} |" for c in table.columns)
        out.append("")
    return "\n".join(out)


# --- Views and settings ----------------------------------------------------------------------

_DEFINED = re.compile(
    r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:TEMP\s+)?(VIEW|MACRO|TABLE)\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"(\w+)",
    re.IGNORECASE,
)


def view_files() -> list[tuple[str, str]]:
    """(file name, SQL text) of every view file, in the order a database applies them."""
    from wpipe import views

    return [(f.name, f.read_text()) for f in views.sql_files()]


def defined_names(sql: str) -> list[tuple[str, str]]:
    """(kind, name) of what one SQL file creates, in order, each once."""
    seen: dict[str, str] = {}
    for kind, name in _DEFINED.findall(sql):
        seen.setdefault(name, kind.lower())
    return [(kind, name) for name, kind in seen.items()]


def views_reference() -> str:
    out = []
    for name, sql in view_files():
        defined = ", ".join(f"`{n}` ({k})" for k, n in defined_names(sql))
        out.append(f"## {name}\n\nDefines: {defined or 'nothing'}.\n")
        out.append(f"```sql\n{sql.strip()}\n```\n")
    return "\n".join(out)


def settings_rows() -> list[tuple[str, float, str]]:
    """The `settings` table as a new database gets it."""
    import duckdb

    sql = dict(view_files())["00_settings.sql"]
    con = duckdb.connect()
    try:
        con.execute(sql)
        return con.execute("SELECT name, value, doc FROM settings ORDER BY name").fetchall()
    finally:
        con.close()


def settings_reference() -> str:
    rows = ["| name | default | meaning |", "|---|---|---|"]
    rows += [f"| `{n}` | {v:g} | {_cell(d)} |" for n, v, d in settings_rows()]
    return "\n".join(rows) + "\n"


# --- Figures ---------------------------------------------------------------------------------

# file name -> (chart name as `wpipe chart` knows it, keyword arguments): drawn from the demo
FIGURES = {
    "params.svg": ("params", {}),
    "heatmap-std.svg": ("heatmap", {"stat": "std"}),
    "drift.svg": ("drift", {}),
    "health.svg": ("health", {}),
    "dead-units.svg": ("dead-units", {}),
}


def render_figures(db: Path, folder: Path) -> list[Path]:
    """Draw FIGURES from the database `db` into `folder` as SVG (vl-convert, no network)."""
    import wpipe
    from wpipe import charts

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    con = wpipe.connect(str(db))
    try:
        for file_name, (chart, kwargs) in FIGURES.items():
            figure = charts.CHARTS[chart](con, **kwargs)
            written.append(charts.save_chart(figure, folder / file_name))
    finally:
        con.close()
    return written
