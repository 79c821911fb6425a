"""The `wpipe` command line: thin Typer commands over the API and the pipeline stages.

Exit codes: 0 success; 1 some model files could not be read (the rest were stored);
2 usage error (bad option, unknown model, invalid SQL, missing database); 3 wpipe itself
failed (a broken install or a bug: one line says so, `--debug` shows the traceback).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn

import duckdb
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from wpipe import api, dblock, schema, store, workers
from wpipe.analysis import StatsOptions
from wpipe.ingest import Outcome, StoreFailed, ingest
from wpipe.spectra import SpectraOptions
from wpipe.tables import ValuesMode
from wpipe.views import ViewsMissing

EXIT_BUG = 3


class GuardedGroup(TyperGroup):
    """The top-level command group: an unexpected exception in any command becomes one line
    that names the command and says it is a bug (the traceback only with --debug)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ViewsMissing as exc:
            _fail(str(exc), EXIT_BUG)
        except Exception as exc:
            if ctx.params.get("debug") or not _is_unexpected(exc):
                raise
            command = ctx.invoked_subcommand or "wpipe"
            _fail(
                f"wpipe {command} failed unexpectedly ({type(exc).__name__}: {exc}); this is a "
                "bug in wpipe: rerun with --debug for the traceback and report it",
                EXIT_BUG,
            )


# click's base of usage errors, whether Typer vendors click or depends on it
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _is_unexpected(exc: BaseException) -> bool:
    # Typer/click control flow (usage errors, --help, typer.Exit) is not an error here
    return not isinstance(exc, _CLICK_ERROR | typer.Exit | typer.Abort)


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


app = typer.Typer(
    cls=GuardedGroup,
    pretty_exceptions_enable=False,
    help="Compare many trained Keras models by their weights: ingest, query, compare.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
# Piped output is not cut to 80 columns: scripts and logs get whole tables.
_WIDE = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
out = Console(width=_WIDE)
# Messages carry file, folder, layer and output names: printed verbatim, never as markup
# (a folder called `[bold]` or `[/b]` is a name); markup is opted into where wpipe writes it.
err = Console(stderr=True, markup=False)


def _print_version(value: bool) -> None:
    if value:
        from wpipe import __version__

        sys.stdout.write(f"wpipe {__version__}\n")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of an internal error."),
) -> None:
    """Compare many trained Keras models by their weights: ingest, query, compare."""


DbOption = typer.Option(
    None, "--db", envvar="WPIPE_DB", help="DuckDB file \\[default: wpipe.duckdb]"
)


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


FormatOption = typer.Option(Format.table, "--format", "-f", help="Output format.")


def _usage_error(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(2)


READ_WAIT = 30.0  # seconds a read command waits for an ingest to release the database


def _connect(db: str | None) -> duckdb.DuckDBPyConnection:
    try:
        wait = float(os.environ.get("WPIPE_WAIT", READ_WAIT))
    except ValueError:
        raise _usage_error("WPIPE_WAIT must be a number of seconds") from None

    def waiting() -> None:
        err.print(f"waiting up to {wait:g} s: an ingest is writing the database", highlight=False)

    try:
        return api.connect(db, wait=wait, on_wait=waiting)
    except FileNotFoundError as exc:
        raise _usage_error(str(exc)) from None
    except dblock.DatabaseBusy as exc:
        raise _usage_error(str(exc)) from None
    except duckdb.IOException as exc:
        raise _usage_error(f"cannot open the database: {str(exc).splitlines()[0]}") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def emit(columns: list[str], rows: list[tuple], fmt: Format, title: str | None = None) -> None:
    """Print rows as a rich table, CSV or JSON (a list of objects)."""
    if fmt is Format.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    elif fmt is Format.json:
        records = [{c: _jsonable(v) for c, v in zip(columns, row, strict=True)} for row in rows]
        sys.stdout.write(json.dumps(records, indent=2, default=str) + "\n")
    else:
        table = Table(title=escape(title) if title else None, header_style="bold")
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(_cell(v) for v in row))
        out.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "[dim]–[/dim]"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value).replace("[", r"\[")


@app.command("ingest")
def ingest_command(
    paths: list[Path] = typer.Argument(..., help="Model files or folders (searched recursively)."),
    db: str | None = DbOption,
    lake: Path | None = typer.Option(
        None, help=r"Parquet lake folder \[default: the database path with suffix .lake]"
    ),
    jobs: int = typer.Option(os.cpu_count() or 1, "--jobs", "-j", min=1, help="Worker processes."),
    values: str = typer.Option(
        "all", help="Per-value rows in weight_values: all, none, or sample:N per tensor."
    ),
    near_zero: float = typer.Option(
        1e-3, min=0.0, help="|w| below this counts as near zero (weights.near_zero_frac)."
    ),
    bins: int = typer.Option(64, min=1, max=65536, help="Histogram bins per tensor."),
    prune: bool = typer.Option(False, help="Drop models whose files were deleted."),
    tag_pattern: str | None = typer.Option(
        None, help="Regex with groups key and value for tags in names [README: Tags]."
    ),
    drift: bool = typer.Option(True, help="Compute drift between consecutive checkpoints."),
    spectra: str = typer.Option(
        "auto",
        help="Spectral metrics per weight matrix: auto (matrices up to the size limit in the "
        "README), all, or none.",
    ),
    file_timeout: float = typer.Option(
        workers.DEFAULT_FILE_TIMEOUT,
        min=0.0,
        help="Seconds one file may take before it is stopped and recorded as `timeout` "
        "(0: no limit).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Read every Keras model file under PATHS into the Parquet lake and the database."""
    try:
        mode = ValuesMode.parse(values)
        spectra_options = SpectraOptions.parse(spectra)
    except ValueError as exc:
        raise _usage_error(str(exc)) from None
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise _usage_error(f"no such file or folder: {', '.join(missing)}")
    db_path = db or api.default_db()
    lake_path = lake or store.default_lake(db_path)
    try:
        database = store.Database(db_path)
    except (duckdb.IOException, dblock.DatabaseBusy) as exc:
        raise _usage_error(
            f"{db_path}: cannot open for writing ({str(exc).splitlines()[0]})"
        ) from None
    progress = Progress(
        TextColumn("[bold]ingest"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}", markup=False),
        console=err,
        disable=quiet or not err.is_terminal,
        transient=True,
    )
    task = progress.add_task("", total=0)

    def started(total: int) -> None:
        progress.update(task, total=total)

    def done(outcome: Outcome) -> None:
        if outcome.status == "failed":
            progress.console.print(
                f"[red]failed:[/red] {escape(outcome.message)}",
                markup=True,
                highlight=False,
                soft_wrap=True,
            )
        progress.update(task, advance=1, description=Path(outcome.path).name)

    try:
        with progress:
            report = ingest(
                paths,
                database,
                lake_path,
                options=StatsOptions(near_zero=near_zero, bins=bins),
                values=mode,
                jobs=jobs,
                prune=prune,
                tag_pattern=tag_pattern,
                drift=drift,
                on_start=started,
                on_done=done,
                spectra=spectra_options,
                file_timeout=file_timeout or None,
            )
    except StoreFailed as exc:
        err.print(
            f"error: {exc}; the models loaded before it are kept — free space and run again",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None
    finally:
        with contextlib.suppress(duckdb.Error):  # a connection a full disk invalidated
            database.close()
    for warning in report.warnings:
        err.print(f"warning: {warning}", highlight=False, soft_wrap=True, markup=False)
    if not quiet:
        for outcome in report.failed:
            if outcome.error == "unchanged-failure":
                err.print(
                    f"failed earlier, unchanged: {outcome.message}",
                    highlight=False,
                    soft_wrap=True,
                )
        mb = report.bytes_read / 1e6
        rate = f", {mb / report.seconds:.1f} MB/s" if report.seconds and mb else ""
        err.print(
            f"{report.files} files: {report.ingested} ingested, {report.unchanged} unchanged, "
            f"{len(report.failed)} failed"
            + (f", {report.pruned} pruned" if prune else "")
            + (f", {report.drift_pairs} drift pairs" if report.drift_pairs else "")
            + f" — {report.n_tensors:,} tensors, {report.n_params:,} parameters, "
            f"{mb:.1f} MB read in {report.seconds:.1f} s{rate} → {db_path}",
            highlight=False,
            soft_wrap=True,
        )
    raise typer.Exit(1 if report.failed else 0)


@app.command("models")
def models_command(db: str | None = DbOption, fmt: Format = FormatOption) -> None:
    """List the ingested models: size, format, versions, architecture group."""
    con = _connect(db)
    result = con.execute(
        "SELECT name, format, keras_version, model_class, n_layers, n_params, n_trainable, "
        "n_non_trainable, arch_id, model_id FROM models ORDER BY name"
    )
    emit([d[0] for d in result.description], result.fetchall(), fmt, title="models")


@app.command("layers")
def layers_command(
    model: str = typer.Argument(..., help="Model name, path, or model_id prefix."),
    db: str | None = DbOption,
    fmt: Format = FormatOption,
) -> None:
    """List one model's layers with their classes and parameter counts."""
    con = _connect(db)
    try:
        model_id = api.resolve_model(con, model)
    except LookupError as exc:
        raise _usage_error(str(exc)) from None
    result = con.execute(
        "SELECT layer_index, layer_path, class_name, trainable, n_params, n_trainable, "
        "n_tensors, activation, units, filters, kernel_size FROM layers "
        "WHERE model_id = ? ORDER BY layer_index",
        [model_id],
    )
    emit([d[0] for d in result.description], result.fetchall(), fmt, title=model)


@app.command("query")
def query_command(
    sql: str = typer.Argument(..., help="SQL over the tables and views (see `wpipe schema`)."),
    db: str | None = DbOption,
    fmt: Format = FormatOption,
) -> None:
    """Run SQL against the database and print the result."""
    con = _connect(db)
    try:
        result = con.execute(sql)
    except duckdb.Error as exc:
        raise _usage_error(str(exc).splitlines()[0]) from None
    if result.description is None:
        return
    emit([d[0] for d in result.description], result.fetchall(), fmt)


@app.command("schema")
def schema_command(fmt: Format = FormatOption) -> None:
    """Describe every table and column of the database contract."""
    rows = [
        (table.name, column.name, str(column.type), column.doc)
        for table in schema.ALL_TABLES
        for column in table.columns
    ]
    emit(["table", "column", "type", "meaning"], rows, fmt, title="wpipe tables")


# Options of `wpipe chart`, by the chart function parameter they fill.
_CHART_OPTION_NAMES = {
    "models": "--model",
    "layers": "--layer",
    "roles": "--role",
    "weight": "--weight",
    "stat": "--stat",
    "bins": "--bins",
    "series": "--series",
    "metric": "--metric",
}


def _models(con: duckdb.DuckDBPyConnection, refs: list[str]) -> list[str]:
    try:
        return [api.resolve_model(con, ref) for ref in refs]
    except LookupError as exc:
        raise _usage_error(str(exc)) from None


@app.command("health")
def health_command(
    models: list[str] = typer.Argument(None, help="Model names, paths or id prefixes [all]."),
    db: str | None = DbOption,
    fmt: Format = FormatOption,
) -> None:
    """Flagged weight tensors across models, worst first (exit 0: findings are not errors)."""
    con = _connect(db)
    ids = _models(con, models or [])
    result = con.execute(
        "SELECT * EXCLUDE (model_id, severity) FROM health_findings "
        "WHERE len(?::VARCHAR[]) = 0 OR list_contains(?::VARCHAR[], model_id)",
        [ids, ids],
    )
    rows = result.fetchall()
    if fmt is Format.table and not rows:
        err.print("no findings: no tensor crosses a threshold in the settings table")
        return
    emit([d[0] for d in result.description], rows, fmt, title="health findings")


COMPARE_SQL = """
SELECT * FROM (
SELECT al.position_a, al.path_a, al.path_b, al.class_name, al.matched_by,
       al.n_params_a, al.n_params_b,
       sa.std AS std_a, sb.std AS std_b, sa.max_abs AS max_abs_a, sb.max_abs AS max_abs_b,
       sqrt(sum(d.l2_diff ^ 2)) / nullif(sqrt(sum(d.l2_a ^ 2)), 0) AS rel_l2,
       sum(d.l2_a * d.l2_b * d.cosine) / nullif(sqrt(sum(d.l2_a ^ 2) * sum(d.l2_b ^ 2)), 0)
           AS cosine
FROM align_layers($a, $b) AS al
LEFT JOIN (SELECT layer_path, sqrt(sum(size * std ^ 2) / sum(size)) AS std,
                  max(max_abs) AS max_abs FROM weights WHERE model_id = $a GROUP BY ALL) AS sa
       ON sa.layer_path = al.path_a
LEFT JOIN (SELECT layer_path, sqrt(sum(size * std ^ 2) / sum(size)) AS std,
                  max(max_abs) AS max_abs FROM weights WHERE model_id = $b GROUP BY ALL) AS sb
       ON sb.layer_path = al.path_b
LEFT JOIN drift AS d ON d.model_a = $a AND d.model_b = $b AND d.layer_path = al.path_a
GROUP BY ALL)
ORDER BY coalesce(position_a, 1e9), path_b
"""


@app.command("compare")
def compare_command(
    models: list[str] = typer.Argument(..., help="Two or more models: name, path or id prefix."),
    matrix: bool = typer.Option(
        False, "--matrix", help="Model x model distance per layer (same-architecture models)."
    ),
    db: str | None = DbOption,
    fmt: Format = FormatOption,
) -> None:
    """Layer by layer differences between models (the first is the reference)."""
    from wpipe import compare

    if len(models) < 2:
        raise _usage_error("compare needs at least two models")
    con = _connect(db)
    ids = _models(con, models)
    names = dict(con.execute("SELECT model_id, name FROM models").fetchall())
    if matrix:
        rows = compare.distance_matrix(con, ids)
        if fmt is not Format.table:
            emit(["layer_path", "model_a", "model_b", "distance"],
                 [(p, names[a], names[b], d) for p, a, b, d in rows], fmt)  # fmt: skip
            return
        for layer_path in dict.fromkeys(p for p, *_ in rows):
            cells = {(a, b): d for p, a, b, d in rows if p == layer_path}
            cells.update({(b, a): d for (a, b), d in list(cells.items())})
            grid = [(names[a], *[0.0 if a == b else cells.get((a, b)) for b in ids]) for a in ids]
            emit(["model", *[names[b] for b in ids]], grid, fmt, title=f"{layer_path}: distance")
        return
    out_rows, columns = [], None
    for other in ids[1:]:
        compare.pair_drift(con, ids[0], other, renamed=compare.aligned_renames(con, ids[0], other))
        result = con.execute(COMPARE_SQL, {"a": ids[0], "b": other})
        columns = ["model", *[d[0] for d in result.description]]
        out_rows += [(names[other], *row) for row in result.fetchall()]
    emit(columns, out_rows, fmt, title=f"compared with {names[ids[0]]}")


metrics_app = typer.Typer(help="Attach validation results to models.", no_args_is_help=True)
app.add_typer(metrics_app, name="metrics")


@metrics_app.command("add")
def metrics_add_command(
    csv_file: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV of results."),
    db: str | None = DbOption,
) -> None:
    """Load a CSV of per-model results (or a Keras CSVLogger file) into model_metrics."""
    from wpipe import compare

    con = _connect(db)
    try:
        n = compare.add_metrics(con, csv_file.resolve())
    except compare.MetricsError as exc:
        for line in str(exc).splitlines():
            err.print(f"error: {line}", highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(2) from None
    err.print(f"{n} metric values from {csv_file}", highlight=False)


@app.command("correlate")
def correlate_command(
    metric: str = typer.Argument(..., help="A metric in model_metrics, e.g. val_accuracy."),
    top: int = typer.Option(20, min=1, help="How many statistics to show."),
    db: str | None = DbOption,
    fmt: Format = FormatOption,
) -> None:
    """Weight statistics ranked by Spearman rank correlation with a metric across models."""
    from wpipe import compare

    con = _connect(db)
    known = [m for (m,) in con.execute("SELECT DISTINCT metric FROM model_metrics").fetchall()]
    if metric not in known:
        raise _usage_error(f"no metric {metric!r}; known: {', '.join(sorted(known)) or 'none'}")
    rows = compare.correlate(con, metric)
    n_models = con.execute(
        "SELECT count(DISTINCT model_id) FROM model_metrics WHERE metric = ?", [metric]
    ).fetchone()[0]
    if n_models < 8:
        err.print(
            f"warning: only {n_models} models have {metric}; rank correlations over fewer "
            "than ~8 models are mostly noise",
            highlight=False,
        )
    emit(["statistic", "n_models", "spearman_rho"], rows[:top], fmt, title=f"vs {metric}")


@app.command("chart")
def chart_command(
    name: str | None = typer.Argument(None, help="Chart to draw (`wpipe chart --list`)."),
    output: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        help="File to write; the suffix gives the format: .vl.json/.json, .html, .png, .svg.",
    ),
    model: list[str] | None = typer.Option(
        None,
        "--model",
        "-m",
        help=r"Model name, path or model_id prefix; repeat for more \[default: all].",
    ),
    layer: list[str] | None = typer.Option(
        None,
        "--layer",
        "-l",
        help="Layer path or glob pattern; repeat for more (histogram, gates, distance and "
        "metric take one).",
    ),
    role: list[str] | None = typer.Option(
        None,
        "--role",
        "-r",
        help=r"Weight role for heatmap and boxes (kernel, bias, …); repeat \[default: kernel].",
    ),
    weight: str | None = typer.Option(
        None,
        "--weight",
        "-w",
        help="Weight name for histogram and metric (kernel, forward/kernel, …).",
    ),
    stat: str | None = typer.Option(
        None,
        "--stat",
        "-s",
        help="weights column for heatmap (std, l2, max_abs, …); for metric a model_summary "
        "column, a weights column with --layer, or a `wpipe correlate` statistic.",
    ),
    series: list[str] | None = typer.Option(
        None, "--series", help="Checkpoint series for drift: folder, short name or glob; repeat."
    ),
    metric: str | None = typer.Option(
        None, "--metric", help=r"Metric for the metric chart \[default: a validation metric]."
    ),
    bins: int | None = typer.Option(
        None, min=1, max=1000, help=r"Bins for histogram and gates \[default: 40]."
    ),
    list_charts: bool = typer.Option(False, "--list", help="List the charts, one a line."),
    db: str | None = DbOption,
) -> None:
    """Draw one figure into a file: Vega-Lite JSON, offline HTML, PNG or SVG."""
    import inspect

    from wpipe import charts  # imported here: Altair adds 0.3 s to every command's start

    if list_charts:
        for chart_name in charts.CHARTS:
            sys.stdout.write(f"{chart_name:<13} {charts.summary(chart_name)}\n")
        return
    if name is None:
        raise _usage_error("name the chart to draw (`wpipe chart --list` lists them)")
    if name not in charts.CHARTS:
        raise _usage_error(f"no chart is named {name!r}; one of: {', '.join(charts.CHARTS)}")
    if output is None:
        raise _usage_error("give the file to write: -o FILE (.vl.json, .json, .html, .png, .svg)")
    if not output.name.lower().endswith(charts.SAVE_FORMATS):
        raise _usage_error(
            f"{output}: unknown format; the suffix must be one of {', '.join(charts.SAVE_FORMATS)}"
        )
    draw = charts.CHARTS[name]
    accepted = inspect.signature(draw).parameters
    given = {"models": model, "layers": layer, "roles": role, "weight": weight, "stat": stat}
    given.update(bins=bins, series=series, metric=metric)
    kwargs: dict[str, Any] = {}
    for key, value in given.items():
        if not value:
            continue
        if key == "layers" and "layer" in accepted:
            if len(value) > 1:
                raise _usage_error(f"chart {name} draws one layer; give --layer once")
            kwargs["layer"] = value[0]
        elif key in accepted:
            kwargs[key] = value
        else:
            raise _usage_error(f"chart {name} takes no {_CHART_OPTION_NAMES[key]}")
    con = _connect(db)
    try:
        chart = draw(con, **kwargs)
    except charts.NoData as exc:
        err.print(f"nothing to draw: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except (LookupError, ValueError) as exc:
        raise _usage_error(str(exc)) from None
    try:
        charts.save_chart(chart, output)
    except OSError as exc:
        raise _usage_error(f"cannot write {output}: {exc.strerror or exc}") from None
    err.print(f"wrote {output}", highlight=False, soft_wrap=True)


@app.command("report")
def report_command(
    output: Path = typer.Option(Path("report.html"), "--output", "-o", help="HTML file to write."),
    model: list[str] | None = typer.Option(
        None,
        "--model",
        "-m",
        help=r"Only these models (name, path or model_id prefix); repeat \[default: all].",
    ),
    db: str | None = DbOption,
) -> None:
    """Write one self-contained HTML report of the tables and figures; it opens offline."""
    from wpipe import report  # imported here: Altair adds 0.3 s to every command's start

    con = _connect(db)
    try:
        path = report.write_report(con, output, models=model or None)
    except LookupError as exc:
        raise _usage_error(str(exc)) from None
    except OSError as exc:
        raise _usage_error(f"cannot write {output}: {exc.strerror or exc}") from None
    err.print(f"wrote {path}", highlight=False, soft_wrap=True)


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


@app.command("spectra")
def spectra_command(
    models: list[str] = typer.Argument(None, help="Model names, paths or id prefixes [all]."),
    summary: bool = typer.Option(
        False, "--summary", "-s", help="One row per model: means over its analysed matrices."
    ),
    db: str | None = DbOption,
    fmt: Format = FormatOption,
) -> None:
    """Spectral health of every weight matrix (alpha, norms, stable rank), as WeightWatcher."""
    con = _connect(db)
    ids = _models(con, models or [])
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
    emit(columns, rows, fmt, title="spectra")
    if fmt is Format.table and not rows:
        err.print("no spectra: ingest with --spectra auto or all (the default is auto)")


if __name__ == "__main__":  # python -m wpipe.cli
    app()

from wpipe import activations_cli  # noqa: E402,F401  (registers `wpipe activations`)
