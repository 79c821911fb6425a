"""Figures: `wpipe chart` (one figure into a file) and `wpipe report` (the HTML report)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from wpipe.cli import render
from wpipe.cli.common import MODELS_HELP, DbOption, connect, fail, resolve, say
from wpipe.cli.progress import phases
from wpipe.core.suggest import did_you_mean, listing

if TYPE_CHECKING:  # DuckDB loads with the command's connection
    import duckdb

# Options of `wpipe chart`, by the chart function parameter they fill.
CHART_OPTION_NAMES = {
    "models": "--model",
    "layers": "--layer",
    "roles": "--role",
    "weight": "--weight",
    "stat": "--stat",
    "bins": "--bins",
    "series": "--series",
    "metric": "--metric",
    "input_set": "--input-set",
    "shared_scale": "--shared-scale",
}

INPUT_SET_HELP = (
    "Input set of `wpipe activations` to draw (its name or an id prefix) "
    r"\[default: the most recent real data, not a --random probe]."
)


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
        help=MODELS_HELP + r"; repeat for more \[default: all].",
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
    input_set: str | None = typer.Option(
        None, "--input-set", help=INPUT_SET_HELP + " For act-histogram, dead-units, unit-activity."
    ),
    shared_scale: bool = typer.Option(
        False,
        "--shared-scale",
        help="matrix, filters: one colour scale for every model \\[default: one per model].",
    ),
    list_charts: bool = typer.Option(False, "--list", help="List the charts, one a line."),
    db: str | None = DbOption,
) -> None:
    """Draw one figure into a file: Vega-Lite JSON, offline HTML, PNG or SVG."""
    import inspect

    from wpipe import charts  # imported here: Altair adds 0.3 s to every command's start

    if list_charts:
        _list_charts(charts)
        return
    if name is None:
        fail("name the chart to draw (`wpipe chart --list` lists them)")
    if name not in charts.CHARTS:
        fail(
            f"no chart is named {name!r}{did_you_mean(name, charts.CHARTS)}; one of: "
            f"{', '.join(charts.CHARTS)}"
        )
    if output is None:
        fail("give the file to write: -o FILE (.vl.json, .json, .html, .png, .svg)")
    if not output.name.lower().endswith(charts.SAVE_FORMATS):
        fail(
            f"{output}: unknown format; the suffix must be one of {', '.join(charts.SAVE_FORMATS)}"
        )
    draw = charts.CHARTS[name]
    accepted = inspect.signature(draw).parameters
    con = connect(db)
    model = resolve(con, model) or None  # globs and names become model_ids
    given = {"models": model, "layers": layer, "roles": role, "weight": weight, "stat": stat}
    given.update(bins=bins, series=series, metric=metric, input_set=input_set)
    given.update(shared_scale=shared_scale)
    kwargs: dict[str, Any] = {}
    for key, value in given.items():
        if not value:
            continue
        if key == "layers" and "layer" in accepted:
            if len(value) > 1:
                fail(f"chart {name} draws one layer; give --layer once")
            kwargs["layer"] = value[0]
        elif key in accepted:
            kwargs[key] = value
        else:
            fail(f"chart {name} takes no {CHART_OPTION_NAMES[key]}")
    _check_layers(con, layer or [], model or [])
    with phases("query", name) as step:
        try:
            chart = draw(con, **kwargs)
        except charts.NoData as exc:
            say(f"nothing to draw: {exc}")
            raise typer.Exit(1) from None
        except (LookupError, ValueError) as exc:
            fail(str(exc))
        step("render", f"{output}")
        try:
            charts.save_chart(chart, output)
        except OSError as exc:
            fail(f"cannot write {output}: {exc.strerror or exc}")
    say(f"wrote {output}")


def _check_layers(con: duckdb.DuckDBPyConnection, patterns: list[str], ids: list[str]) -> None:
    """A --layer that is no layer of the models drawn (all, if none named) is a usage error
    that lists their layers, closest first, so a typo never reads as "nothing to draw"."""
    for pattern in patterns:
        (found,) = con.execute(
            "SELECT count(*) FROM layers WHERE (len($ids) = 0 OR list_contains($ids, model_id)) "
            "AND layer_path GLOB $pattern",
            {"ids": ids, "pattern": pattern},
        ).fetchone()
        if found:
            continue
        known = [path for (path,) in con.execute(
            "SELECT layer_path FROM layers WHERE len($ids) = 0 OR list_contains($ids, model_id) "
            "GROUP BY layer_path ORDER BY min(layer_index), layer_path",
            {"ids": ids},
        ).fetchall()]  # fmt: skip
        whose = "the models drawn" if ids else "any model"
        if len(ids) == 1:
            (name,) = con.execute("SELECT name FROM models WHERE model_id = ?", ids).fetchone()
            whose = name
        fail(
            f"no layer {pattern!r} in {whose}{did_you_mean(pattern, known)}; "
            + (f"layers: {listing(known)}" if known else "it has no layers")
        )


def _list_charts(charts: Any) -> None:
    """One chart a line (piped), or its description wrapped at word boundaries under the
    terminal's width, never cut."""
    lines = [(name, charts.summary(name)) for name in charts.CHARTS]
    if render.width() >= render.PIPED_WIDTH:
        pad = max(len(name) for name, _ in lines)
        sys.stdout.writelines(f"{name:<{pad}}  {text}\n" for name, text in lines)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 2, 0, 0))
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for name, text in lines:
        table.add_row(name, text)
    console = Console(width=render.width(), markup=False, highlight=False, emoji=False)
    with console.capture() as captured:
        console.print(table)
    sys.stdout.writelines(line.rstrip() + "\n" for line in captured.get().splitlines())


def report_command(
    output: Path = typer.Option(Path("report.html"), "--output", "-o", help="HTML file to write."),
    model: list[str] | None = typer.Option(
        None,
        "--model",
        "-m",
        help=MODELS_HELP + r"; repeat for more \[default: all].",
    ),
    input_set: str | None = typer.Option(
        None, "--input-set", help=INPUT_SET_HELP + " Default: each real set, up to 3."
    ),
    db: str | None = DbOption,
) -> None:
    """Write one self-contained HTML report of the tables and figures; it opens offline."""
    # imported here: Altair adds 0.3 s to every command's start
    from wpipe import report
    from wpipe.report import document as report_page

    con = connect(db)
    ids = resolve(con, model) or None
    with phases("query", "summary") as step:
        following = report_page.ON_STEP.set(step)
        try:
            path = report.write_report(con, output, models=ids, input_set=input_set)
        except LookupError as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"cannot write {output}: {exc.strerror or exc}")
        finally:
            report_page.ON_STEP.reset(following)
    say(f"wrote {path}")
