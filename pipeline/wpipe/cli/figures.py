"""Figures: `wpipe chart` (one figure into a file) and `wpipe report` (the HTML report)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from wpipe.cli.common import MODELS_HELP, DbOption, connect, fail, resolve, say

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
        for chart_name in charts.CHARTS:
            sys.stdout.write(f"{chart_name:<13} {charts.summary(chart_name)}\n")
        return
    if name is None:
        fail("name the chart to draw (`wpipe chart --list` lists them)")
    if name not in charts.CHARTS:
        fail(f"no chart is named {name!r}; one of: {', '.join(charts.CHARTS)}")
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
    try:
        chart = draw(con, **kwargs)
    except charts.NoData as exc:
        say(f"nothing to draw: {exc}")
        raise typer.Exit(1) from None
    except (LookupError, ValueError) as exc:
        fail(str(exc))
    try:
        charts.save_chart(chart, output)
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}")
    say(f"wrote {output}")


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
    from wpipe import report  # imported here: Altair adds 0.3 s to every command's start

    con = connect(db)
    ids = resolve(con, model) or None
    try:
        path = report.write_report(con, output, models=ids, input_set=input_set)
    except LookupError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}")
    say(f"wrote {path}")
