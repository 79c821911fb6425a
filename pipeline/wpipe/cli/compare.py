"""Across models: `wpipe compare`, `correlate` and `metrics add` (a writer)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from wpipe.cli.common import DbOption, Format, FormatOption, connect, fail, resolve, say
from wpipe.cli.render import Layout, emit
from wpipe.core.textsafe import first_line

if TYPE_CHECKING:  # DuckDB loads with the command's connection
    import duckdb

COMPARE_LAYOUT = Layout(
    key=("model", "layer", "path_a", "path_b"),
    numbers=("rel_l2", "rel_l2_aligned", "cosine", "std_a", "std_b", "max_abs_a", "max_abs_b"),
)
ALIGNED_LAYOUT = Layout(key=("model_a", "model_b"), numbers=("distance", "distance_aligned"))
BASE_LAYOUT = Layout(
    key=("model", "layer_path"),
    numbers=("rel_update_a", "rel_update_b", "cosine", "sign_conflict_rate"),
)
CORRELATE_LAYOUT = Layout(key=("statistic",), numbers=("n_models", "spearman_rho"))

# Per aligned layer: sizes and statistics always; drift and cosine only where the layers are
# comparable (one class, the same weight roles and shapes).
COMPARE_SQL = """
SELECT * EXCLUDE (position_a) FROM (
SELECT al.position_a, al.path_a, al.path_b, al.class_name,
       CASE WHEN al.comparable THEN 'yes'
            WHEN al.path_b IS NULL THEN 'only in A'
            WHEN al.path_a IS NULL THEN 'only in B'
            WHEN al.same_shapes THEN 'no: class differs'
            ELSE 'no: shapes differ'
       END AS comparable, al.matched_by, al.certain,
       sqrt(sum(d.l2_diff ^ 2)) / nullif(sqrt(sum(d.l2_a ^ 2)), 0) AS rel_l2,
       sum(d.l2_a * d.l2_b * d.cosine) / nullif(sqrt(sum(d.l2_a ^ 2) * sum(d.l2_b ^ 2)), 0)
           AS cosine,
       al.n_params_a, al.n_params_b,
       sa.std AS std_a, sb.std AS std_b, sa.max_abs AS max_abs_a, sb.max_abs AS max_abs_b
FROM align_layers($a, $b) AS al
LEFT JOIN (SELECT layer_path, sqrt(sum(size * std ^ 2) / sum(size)) AS std,
                  max(max_abs) AS max_abs FROM weights WHERE model_id = $a GROUP BY ALL) AS sa
       ON sa.layer_path = al.path_a
LEFT JOIN (SELECT layer_path, sqrt(sum(size * std ^ 2) / sum(size)) AS std,
                  max(max_abs) AS max_abs FROM weights WHERE model_id = $b GROUP BY ALL) AS sb
       ON sb.layer_path = al.path_b
LEFT JOIN pair_drift_rows AS d ON al.comparable AND d.layer_path = al.path_b
GROUP BY ALL)
ORDER BY coalesce(position_a, 1e9), path_b
"""


def compare_command(
    models: list[str] = typer.Argument(
        ..., help="Two or more models (name, path, id prefix or glob); the first is the reference."
    ),
    matrix: bool = typer.Option(
        False, "--matrix", help="Model x model distance per layer (same-architecture models)."
    ),
    aligned: bool = typer.Option(
        False,
        "--aligned",
        help="Also the distance after matching hidden units (weight matching; chains of "
        "Dense/Conv layers): a column rel_l2_aligned, or with --matrix a whole-model matrix.",
    ),
    base: str | None = typer.Option(
        None,
        "--base",
        help="A common base model: compare what the models changed relative to it (the "
        "cosine and sign conflicts of their updates) instead of their weights.",
    ),
    db: str | None = DbOption,
    fmt: Format = FormatOption,
) -> None:
    """Layer by layer differences between models (the first is the reference)."""
    from wpipe import compare

    con = connect(db)
    ids = resolve(con, models)
    if len(ids) < 2:
        fail("compare needs at least two models")
    names = dict(con.execute("SELECT model_id, name FROM models").fetchall())
    try:
        if base is not None:
            _against_base(con, ids, resolve(con, [base]), names, fmt)
            return
        if matrix:
            _matrix(con, ids, names, fmt)
            if aligned:
                _aligned_matrix(con, ids, names, fmt)
            return
        out_rows, columns = [], []
        for other in ids[1:]:
            con.register("pair_drift_rows", compare.pair_drift(con, ids[0], other))
            result = con.execute(COMPARE_SQL, {"a": ids[0], "b": other})
            columns = ["model", *[d[0] for d in result.description]]
            rows = result.fetchall()
            if aligned:
                columns, rows = _with_aligned(con, ids[0], other, names, columns, rows, fmt)
            out_rows += [(names[other], *row) for row in rows]
            flags = [r[columns.index("comparable") - 1] for r in rows]
            guessed = [r[columns.index("path_a") - 1] for r in rows
                       if r[columns.index("certain") - 1] is False]  # fmt: skip
            if fmt is Format.table:  # scripts read the comparable and certain columns instead
                say(_verdict(con, ids[0], other, names, flags))
                if guessed:
                    say(_guessed(guessed))
            con.unregister("pair_drift_rows")
    except OSError as exc:  # a model file moved or deleted since it was ingested
        fail(f"cannot read the model files again: {exc.strerror or first_line(exc)}")
    title = f"compared with {names[ids[0]]}"
    if fmt is Format.table:
        columns, out_rows, title = _for_terminal(columns, out_rows, title, names[ids[1]], len(ids))
    emit(columns, out_rows, fmt, title=title, layout=COMPARE_LAYOUT)


def _with_aligned(
    con: duckdb.DuckDBPyConnection, a: str, b: str, names: dict[str, str],
    columns: list[str], rows: list[tuple], fmt: Format,
) -> tuple[list[str], list[tuple]]:  # fmt: skip
    """The pair's rows with rel_l2_aligned after rel_l2 (NULL where not aligned), and one line
    with the whole-model distances or why the architecture is not aligned."""
    from wpipe.compare.aligned import aligned_pair, per_layer

    result = aligned_pair(con, a, b)
    layers = per_layer(result) if result.status == "ok" else {}
    at = columns.index("rel_l2") - 1  # rows lack the model column
    path = columns.index("path_a") - 1
    rows = [(*r[: at + 1], layers.get(r[path], {}).get("rel_l2_aligned"), *r[at + 1 :])
            for r in rows]  # fmt: skip
    columns = [*columns[: at + 2], "rel_l2_aligned", *columns[at + 2 :]]
    if result.status == "ok":
        say(f"{names[b]} vs {names[a]}: whole-model distance {result.raw:.4g} raw, "
            f"{result.aligned:.4g} after matching hidden units")  # fmt: skip
    else:
        say(f"{names[b]} vs {names[a]}: not aligned: {result.status}")
    return columns, rows


def _aligned_matrix(
    con: duckdb.DuckDBPyConnection, ids: list[str], names: dict[str, str], fmt: Format
) -> None:
    from wpipe.compare.aligned import aligned_matrix

    rows, refused = aligned_matrix(con, ids)
    listed = [(names[a], names[b], raw, al) for a, b, raw, al in rows]
    title = "whole model: before and after matching hidden units"
    columns = ["model_a", "model_b", "distance", "distance_aligned"]
    emit(columns, listed, fmt, title=title, layout=ALIGNED_LAYOUT)
    for (a, b), reason in refused.items():
        say(f"{names[a]} / {names[b]}: not aligned: {reason}")


def _against_base(
    con: duckdb.DuckDBPyConnection, ids: list[str], base: list[str], names: dict[str, str],
    fmt: Format,
) -> None:  # fmt: skip
    from wpipe.compare.lineage import compare_updates

    if len(base) != 1:
        fail("--base names one model")
    if base[0] in ids:
        fail("--base must not be one of the models compared")
    out = []
    for other in ids[1:]:
        out += [(names[other], *row) for row in compare_updates(con, base[0], ids[0], other)]
    columns = ["model", "layer_path", "rel_update_a", "rel_update_b", "cosine",
               "sign_conflict_rate"]  # fmt: skip
    if not out:
        fail(f"no layer of {names[base[0]]} pairs with both models")
    title = f"updates from {names[base[0]]}, A = {names[ids[0]]}"
    emit(columns, out, fmt, title=title, layout=BASE_LAYOUT)


def _for_terminal(
    columns: list[str], rows: list[tuple], title: str, b_name: str, n_models: int
) -> tuple[list[str], list[tuple], str]:
    """The table without what it would repeat on every row: the model when one is compared
    with A (it goes in the title), path_b when every layer has the same path in both."""
    if n_models == 2:
        columns, rows, title = columns[1:], [r[1:] for r in rows], f"{b_name} {title}"
    a, b = columns.index("path_a"), columns.index("path_b")
    if rows and all(r[a] == r[b] for r in rows):
        columns = [("layer" if c == "path_a" else c) for c in columns if c != "path_b"]
        rows = [tuple(v for i, v in enumerate(r) if i != b) for r in rows]
    return columns, rows, title


def _verdict(
    con: duckdb.DuckDBPyConnection, a: str, b: str, names: dict[str, str], flags: list[str]
) -> str:
    """One plain line: how many layers are comparable, and whether the architectures differ."""
    labels = dict(
        con.execute(
            "SELECT m.model_id, a.label FROM models AS m JOIN architectures AS a USING (arch_id) "
            "WHERE m.model_id IN (?, ?)",
            [a, b],
        ).fetchall()
    )
    comparable = flags.count("yes")
    head = f"B = {names[b]} vs A = {names[a]}: "
    if labels.get(a) != labels.get(b):
        head += f"different architectures ({labels.get(a)} vs {labels.get(b)}); "
    rest = len(flags) - comparable
    return (
        head + f"{comparable} of {len(flags)} layers comparable (same class, roles and shapes): "
        "rel_l2 and cosine for those"
        + (f", sizes and statistics only for the {rest} others" if rest else "")
    )


def _guessed(paths: list[str]) -> str:
    shown = ", ".join(paths[:6]) + (", …" if len(paths) > 6 else "")
    return (
        f"uncertain pairs ({len(paths)}: {shown}): other layers of the same class and shapes, "
        "or only a Keras auto-generated name, could be the match (column certain)"
    )


def _matrix(con, ids: list[str], names: dict[str, str], fmt: Format) -> None:
    from wpipe import compare

    found = compare.distance_table(con, ids)
    rows, members, uncertain = found.rows, found.members, found.uncertain
    if fmt is not Format.table:
        emit(["layer_path", "model_a", "model_b", "distance", "certain"],
             [(p, names[a], names[b], d, not {a, b} & set(uncertain.get(p, [])))
              for p, a, b, d in rows], fmt)  # fmt: skip
        return
    for layer_path, having in members.items():
        cells = {(a, b): d for p, a, b, d in rows if p == layer_path}
        cells.update({(b, a): d for (a, b), d in list(cells.items())})
        cells.update({(a, a): 0.0 for a in having})  # only a model that has the layer
        grid = [(names[a], *[cells.get((a, b)) for b in ids]) for a in ids]
        missing = [names[m] for m in ids if m not in having]
        emit(
            ["model", *[names[b] for b in ids]],
            grid,
            fmt,
            title=f"{layer_path}: distance",
            layout=Layout(key=("model",), numbers=tuple(names[b] for b in ids)),
        )
        if missing:  # a table only: csv and json carry no diagonal for them
            say(f"{layer_path}: not in (or shaped otherwise in) {', '.join(missing)}: –")
        if found.renamed.get(layer_path):
            other = ", ".join(f"{p} in {names[m]}" for m, p in found.renamed[layer_path].items())
            say(f"{layer_path}: paired with {other}")
        if uncertain.get(layer_path):
            guessed = ", ".join(names[m] for m in uncertain[layer_path])
            say(f"{layer_path}: paired with an uncertain match in {guessed} (align_layers)")


MAX_PROBLEMS = 5  # lines of a refused metrics file shown before the count of the rest


def metrics_add_command(
    csv_file: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV of results."),
    db: str | None = DbOption,
) -> None:
    """Load a CSV of per-model results (or a Keras CSVLogger file) into model_metrics."""
    from wpipe import compare

    con = connect(db, read_only=False)
    try:
        n = compare.add_metrics(con, csv_file.resolve())
    except compare.MetricsError as exc:
        problems = str(exc).splitlines()
        for line in problems[:MAX_PROBLEMS]:
            say(f"error: {line}")
        if len(problems) > MAX_PROBLEMS:
            say(f"error: … and {len(problems) - MAX_PROBLEMS} more problems; nothing was loaded")
        raise typer.Exit(2) from None
    except (UnicodeDecodeError, csv.Error) as exc:
        fail(f"{csv_file}: not a CSV file ({first_line(exc)}); nothing was loaded")
    say(f"{n} metric values from {csv_file}")


def correlate_command(
    metric: str = typer.Argument(..., help="A metric in model_metrics, e.g. val_accuracy."),
    top: int = typer.Option(20, min=1, help="How many statistics to show."),
    db: str | None = DbOption,
    fmt: Format = FormatOption,
) -> None:
    """Weight statistics ranked by Spearman rank correlation with a metric across models."""
    from wpipe import compare

    con = connect(db)
    known = [m for (m,) in con.execute("SELECT DISTINCT metric FROM model_metrics").fetchall()]
    if metric not in known:
        fail(f"no metric {metric!r}; known: {', '.join(sorted(known)) or 'none'}")
    rows = compare.correlate(con, metric)
    n_models, n_copies = con.execute(
        "SELECT count(DISTINCT model_id) FILTER (WHERE d.model_id IS NULL), "
        "count(DISTINCT model_id) FILTER (WHERE d.model_id IS NOT NULL) "
        "FROM model_metrics LEFT JOIN duplicate_models AS d USING (model_id) WHERE metric = ?",
        [metric],
    ).fetchone()
    if n_copies:
        say(
            f"{n_copies} duplicates left out: files with the same content as another model "
            "(duplicate_models) count once"
        )
    if n_models < 8:
        say(
            f"warning: only {n_models} models have {metric}; rank correlations over fewer "
            "than ~8 models are mostly noise"
        )
    emit(
        ["statistic", "n_models", "spearman_rho"],
        rows[:top],
        fmt,
        title=f"vs {metric}",
        layout=CORRELATE_LAYOUT,
    )
