"""`wpipe lineage`: name a model's base, see what fine-tunes changed and whether they agree,
and the bases the weights suggest (a writer: set, clear, and suggest, which stores them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from wpipe.cli.common import DbOption, Format, FormatOption, connect, fail, resolve, say
from wpipe.cli.render import Layout, emit

if TYPE_CHECKING:  # DuckDB loads with the command's connection
    import duckdb

# What each table keeps at any width (render.Layout): without these a narrow terminal kept the
# numbers and left out the base, the one column the command is about.
FINE_TUNES_LAYOUT = Layout(key=("model", "base"), numbers=("rel_update", "untouched_tensors"))
AGREEMENT_LAYOUT = Layout(key=("model_a", "model_b"), numbers=("cosine", "sign_conflict_rate"))
SUGGEST_LAYOUT = Layout(key=("model", "suggested_base"), numbers=("confidence", "distance"))

app = typer.Typer(
    help="Fine-tunes against their base: name bases, compare updates, see suggestions.",
    no_args_is_help=True,
)


def _one(con: duckdb.DuckDBPyConnection, ref: str) -> str:
    ids = resolve(con, [ref])
    if len(ids) != 1:
        fail(f"{ref!r} names {len(ids)} models; name one")
    return ids[0]


def _name(con: duckdb.DuckDBPyConnection, model_id: str) -> str:
    return con.execute("SELECT name FROM models WHERE model_id = ?", [model_id]).fetchall()[0][0]


def _set(con: duckdb.DuckDBPyConnection, child: str, base: str, source: str) -> None:
    from wpipe.compare import lineage
    from wpipe.readers import ModelReadError

    try:
        n_updates, n_pairs = lineage.set_base(con, child, base, source)
    except ValueError as exc:
        fail(str(exc))
    except (ModelReadError, OSError) as exc:
        fail(f"cannot read the files again: {getattr(exc, 'message', None) or exc}")
    siblings = f", {n_pairs} tensor pairs with its siblings" if n_pairs else ""
    say(f"{_name(con, child)}: base {_name(con, base)} ({n_updates} tensors compared{siblings})")


@app.command("set")
def set_command(
    child: str = typer.Argument(..., help="The fine-tuned model (name, path, id prefix)."),
    base: str = typer.Argument(..., help="The model it was tuned from."),
    db: str | None = DbOption,
) -> None:
    """Name CHILD's base and compute the update of every tensor (τ = W_child − W_base)."""
    con = connect(db, read_only=False)
    _set(con, _one(con, child), _one(con, base), "user")


@app.command("clear")
def clear_command(
    child: str = typer.Argument(..., help="The model whose base to forget."),
    db: str | None = DbOption,
) -> None:
    """Forget CHILD's base and its computed updates."""
    from wpipe.compare import lineage

    con = connect(db, read_only=False)
    if not lineage.clear_base(con, _one(con, child)):
        say(f"{child}: no base was named")


@app.command("show")
def show_command(db: str | None = DbOption, fmt: Format = FormatOption) -> None:
    """Every model with a named base: how much it changed and how many tensors it left."""
    con = connect(db)
    result = con.execute(
        "SELECT model, base, source, n_tensors, untouched_tensors, rel_update, "
        "max_tensor_rel_update, stale FROM fine_tunes"
    )
    columns = [d[0] for d in result.description]
    emit(columns, result.fetchall(), fmt, title="fine-tunes", layout=FINE_TUNES_LAYOUT)
    stale = [m for m, s in con.execute("SELECT model, stale FROM fine_tunes").fetchall() if s]
    if stale:
        say(f"{len(stale)} fine-tunes changed since: `wpipe lineage set` computes them again")


@app.command("agreement")
def agreement_command(
    base: str = typer.Argument(..., help="The common base of the fine-tunes."),
    layer: str | None = typer.Option(None, "--layer", "-l", help="One layer of the base."),
    db: str | None = DbOption,
    fmt: Format = FormatOption,
) -> None:
    """Children of BASE × children: the cosine of their updates and their sign conflicts."""
    con = connect(db)
    base_id = _one(con, base)
    where = "layer_path = ?" if layer else "layer_path IS NULL"
    result = con.execute(
        f"SELECT model_a, model_b, cosine, sign_conflict_rate FROM update_agreement "
        f"WHERE base_id = ? AND {where} ORDER BY model_a, model_b",
        [base_id, layer] if layer else [base_id],
    )
    rows = result.fetchall()
    if not rows:
        fail(f"{base!r} has fewer than two fine-tunes with computed updates"
             + (f" in layer {layer!r}" if layer else ""))  # fmt: skip
    title = f"agreement of {base}'s fine-tunes"
    emit([d[0] for d in result.description], rows, fmt, title=title, layout=AGREEMENT_LAYOUT)


@app.command("suggest")
def suggest_command(
    accept: bool = typer.Option(False, "--accept", help="Name every suggested base."),
    min_confidence: float = typer.Option(
        0.0, "--min-confidence", help="Only suggestions at least this confident (0–1)."
    ),
    db: str | None = DbOption,
    fmt: Format = FormatOption,
) -> None:
    """The likely base of each model without one, from the weights alone.

    The suggestions are stored: the lineage_suggestions view shows them with the bases named."""
    from wpipe.compare import suggestions

    con = connect(db, read_only=False)
    suggestions.refresh(con)
    rows = con.execute(
        "SELECT model, suggested_base, distance, confidence, kurtosis_gap, angle_at_base, rule, "
        "child_id, base_id FROM lineage_suggestions "
        "WHERE named_base IS NULL AND confidence >= ? ORDER BY model",
        [min_confidence],
    ).fetchall()
    emit(["model", "suggested_base", "distance", "confidence", "kurtosis_gap", "angle_at_base",
          "rule"], [r[:7] for r in rows], fmt, title="suggested bases",
         layout=SUGGEST_LAYOUT)  # fmt: skip
    if accept:
        for *_, child, base in rows:
            _set(con, child, base, "suggested")
