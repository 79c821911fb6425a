"""Reading the database: `wpipe models`, `layers`, `query`, `schema`, `health`, `spectra`."""

from __future__ import annotations

import typer

from wpipe.cli.common import (
    DbOption,
    Format,
    FormatOption,
    connect,
    fail,
    models_option,
    resolve,
    say,
)
from wpipe.cli.render import Layout, emit
from wpipe.core.textsafe import first_line

# What each table keeps at any width (render.Layout): the columns naming a row and the numbers.
MODELS_LAYOUT = Layout(key=("name",), numbers=("n_layers", "n_params", "n_trainable"))
LAYERS_LAYOUT = Layout(
    key=("model", "layer_path", "class_name"), numbers=("n_params", "n_trainable", "macs")
)
SCHEMA_LAYOUT = Layout(key=("table", "column"), wrap=("meaning",))
# What a row needs at 80 columns; the other figures follow, in the `then` order, where the
# terminal is wider (a table that cannot keep key and numbers falls back to one block per row)
HEALTH_LAYOUT = Layout(
    key=("model", "layer_path", "weight_name", "flags"),
    numbers=("dead",),
    then=("max_abs_ratio", "nonfinite_count", "max_abs", "near_zero_frac", "forget_bias_mean"),
)
SPECTRA_LAYOUT = Layout(
    key=("model", "layer_path", "weight_name", "matrix"),
    numbers=("alpha", "stable_rank"),
    then=("alpha_weighted", "log_norm"),
)


def models_command(db: str | None = DbOption, fmt: Format = FormatOption) -> None:
    """List the ingested models: size, format, versions, architecture group."""
    con = connect(db)
    result = con.execute(
        "SELECT name, format, keras_version, model_class, n_layers, n_params, n_trainable, "
        "n_non_trainable, arch_id, model_id FROM models ORDER BY name"
    )
    emit(
        [d[0] for d in result.description],
        result.fetchall(),
        fmt,
        title="models",
        layout=MODELS_LAYOUT,
    )


def layers_command(
    model: str = typer.Argument(
        ..., help="Model name, path, model_id prefix, or a glob (then a model column too)."
    ),
    db: str | None = DbOption,
    fmt: Format = FormatOption,
) -> None:
    """List a model's layers with their classes, parameters, multiply-adds and shapes."""
    con = connect(db)
    ids = resolve(con, [model])
    result = con.execute(
        "SELECT m.name AS model, l.layer_index, l.layer_path, l.class_name, l.trainable, "
        "l.n_params, l.n_trainable, l.n_tensors, l.macs, l.output_shape, l.activation, "
        "l.units, l.filters, l.kernel_size FROM layers AS l JOIN models AS m USING (model_id) "
        "WHERE list_contains(?::VARCHAR[], model_id) ORDER BY m.name, l.layer_index",
        [ids],
    )
    columns, rows = [d[0] for d in result.description], result.fetchall()
    if len(ids) == 1:  # one model: it is the title, not a column
        columns, rows = columns[1:], [r[1:] for r in rows]
    emit(columns, rows, fmt, title=model, layout=LAYERS_LAYOUT)


def query_command(
    sql: str = typer.Argument(..., help="SQL over the tables and views (see `wpipe schema`)."),
    write: bool = typer.Option(
        False,
        "--write",
        help="Open the database for writing (UPDATE settings …); no other "
        "process may have it open meanwhile.",
    ),
    db: str | None = DbOption,
    fmt: Format = FormatOption,
) -> None:
    """Run SQL against the database (read-only unless --write) and print the result."""
    if not sql.strip():
        fail('no SQL given: write a query, e.g. wpipe query "SELECT * FROM model_summary"')
    import duckdb

    con = connect(db, read_only=not write)
    try:
        result = con.execute(sql)
        if result.description is None:
            return
        rows = result.fetchall()
    except duckdb.Error as exc:
        message = first_line(exc)
        if "read-only" in message:
            message += " (wpipe query only reads; add --write to change the database)"
        fail(message)
    emit([d[0] for d in result.description], rows, fmt)


def schema_command(fmt: Format = FormatOption) -> None:
    """Describe every table and column of the database contract."""
    from wpipe.core import schema

    rows = [
        (table.name, column.name, column.type_name, column.doc)
        for table in schema.ALL_TABLES
        for column in table.columns
    ]
    emit(
        ["table", "column", "type", "meaning"],
        rows,
        fmt,
        title="wpipe tables",
        layout=SCHEMA_LAYOUT,
    )


def health_command(
    model: list[str] | None = models_option(),
    db: str | None = DbOption,
    fmt: Format = FormatOption,
) -> None:
    """Flagged weight tensors across models, worst first (exit 0: findings are not errors)."""
    con = connect(db)
    ids = resolve(con, model)
    result = con.execute(
        "SELECT * EXCLUDE (model_id, severity) FROM health_findings "
        "WHERE len(?::VARCHAR[]) = 0 OR list_contains(?::VARCHAR[], model_id)",
        [ids, ids],
    )
    rows = result.fetchall()
    if fmt is Format.table and not rows:
        say("no findings: no tensor crosses a threshold in the settings table")
        return
    emit(
        [d[0] for d in result.description], rows, fmt, title="health findings", layout=HEALTH_LAYOUT
    )


SPECTRA_SQL = """
SELECT m.name AS model, s.layer_path, l.class_name, s.weight_name, s.matrix, s.N, s.M, s.rf,
       s.alpha, s.alpha_weighted, s.log_norm, s.log_spectral_norm, s.stable_rank, s.D,
       s.num_pl_spikes, s.warning, s.status
FROM spectra AS s
JOIN models AS m USING (model_id)
JOIN weights AS w USING (model_id, layer_path, weight_name)
LEFT JOIN layers AS l USING (model_id, layer_path)
WHERE len(w.shape) >= 2 AND w.role <> 'bias'
  AND (len($ids::VARCHAR[]) = 0 OR list_contains($ids::VARCHAR[], s.model_id))
ORDER BY m.name, w.weight_index, s.matrix
"""
SPECTRA_TABLE_COLUMNS = ["model", "layer_path", "weight_name", "matrix", "N", "M", "rf",
                         "alpha", "alpha_weighted", "log_norm", "stable_rank", "warning",
                         "status"]  # fmt: skip


def spectra_command(
    model: list[str] | None = models_option(),
    summary: bool = typer.Option(
        False, "--summary", help="One row per model: means over its analysed matrices."
    ),
    db: str | None = DbOption,
    fmt: Format = FormatOption,
) -> None:
    """Spectral health of every weight matrix (alpha, norms, stable rank), as WeightWatcher."""
    con = connect(db)
    ids = resolve(con, model)
    if summary:
        sql = (
            "SELECT * EXCLUDE (model_id) FROM model_spectral_summary "
            "WHERE len($ids::VARCHAR[]) = 0 OR list_contains($ids::VARCHAR[], model_id)"
        )
    else:
        sql = SPECTRA_SQL
    result = con.execute(sql, {"ids": ids})
    columns, rows = [d[0] for d in result.description], result.fetchall()
    if fmt is Format.table and not summary:  # what fits a terminal; csv and json get all
        keep = [columns.index(c) for c in SPECTRA_TABLE_COLUMNS]
        columns, rows = SPECTRA_TABLE_COLUMNS, [tuple(r[i] for i in keep) for r in rows]
    emit(columns, rows, fmt, title="spectra", layout=SPECTRA_LAYOUT)
    if fmt is Format.table and not rows:
        say("no spectra: ingest with --spectra auto or all (the default is auto)")
