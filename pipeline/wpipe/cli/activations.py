"""`wpipe activations`: layer outputs of ingested models on sample inputs (docs:
layer-outputs); a writer, like ingest."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

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
from wpipe.cli.render import emit

if TYPE_CHECKING:  # numpy and the forward pass load when the command runs
    from wpipe.compare import layer_outputs as lo


def activations_command(
    model: list[str] | None = models_option(),
    input_file: Path | None = typer.Option(
        None,
        "--input",
        help=".npy (one-input models) or .npz (one array per input, by name or order).",
    ),
    random: int | None = typer.Option(
        None,
        "--random",
        help="N seeded random samples of each model's input shape (a probe, not data).",
    ),
    name: str | None = typer.Option(
        None, "--name", help="Name of the input set (default: the input file's name)."
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Samples per forward batch."),
    seed: int = typer.Option(0, "--seed", help="Seed of --random inputs."),
    db: str | None = DbOption,
    fmt: Format = FormatOption,
) -> None:
    """Run each model's layers in numpy on sample inputs and store what their outputs show.

    No TensorFlow and no code from the file: per-layer output statistics, histograms and
    per-unit activity."""
    from wpipe.analyse.stats import StatsOptions
    from wpipe.compare import layer_outputs as lo

    if (input_file is None) == (random is None):
        fail("give exactly one of --input FILE or --random N")
    file_inputs = None
    if input_file is not None:
        try:
            file_inputs = lo.load_input_file(input_file, name)
        except lo.InputError as exc:
            fail(str(exc))
    elif random is not None and random < 1:
        fail("--random needs N >= 1")
    con = connect(db, read_only=False)  # a writer: the layer-output tables are stored
    lo.drop_orphans(con)
    ids = resolve(con, model)
    rows = con.execute(
        "SELECT model_id, name, path, sha256 FROM models "
        "WHERE len(?::VARCHAR[]) = 0 OR list_contains(?::VARCHAR[], model_id) ORDER BY name",
        [ids, ids],
    ).fetchall()
    options = StatsOptions()
    report, failed = [], 0
    for model_id, model_name, path, sha in rows:
        inputs = file_inputs or _random_for(path, random or 0, seed, name)
        if isinstance(inputs, str):
            report.append((model_name, name or f"random:{random}", "failed", 0, None, None, inputs))
            say(f"{path}: {inputs}")  # whole, as for a failed run: a table cuts the reason
            failed += 1
            continue
        outcome = lo.compute(
            model_id, path, sha, inputs, batch_size, options,
            skip=lambda s, mid=model_id, sha=sha: lo.stored_sha(con, mid, s) == sha,
        )  # fmt: skip
        if outcome is None:
            report.append((model_name, inputs.name, "unchanged", None, None, None, None))
            continue
        lo.save(con, outcome)
        run = outcome.run
        failed += run["status"] == "failed"
        if run["status"] == "failed":
            say(f"{path}: {run['reason']}")
        dead = _flagged(con, model_id, run["input_set"], "dead_units_by_activation", "dead_units")
        saturated = _flagged(con, model_id, run["input_set"], "saturated", "saturated_units")
        report.append((model_name, inputs.name, run["status"], run["n_outputs"], dead, saturated,
                       run["reason"]))  # fmt: skip
    columns = ["model", "input_set", "status", "outputs", "dead_units_by_activation",
               "saturated_units", "reason"]  # fmt: skip
    emit(columns, report, fmt, title="layer outputs")
    if failed:
        raise typer.Exit(1)


def _random_for(path: str, n: int, seed: int, name: str | None) -> lo.InputSet | str:
    """Random inputs shaped for this model, or the reason they cannot be made."""
    from wpipe.compare import layer_outputs as lo
    from wpipe.forward import Unsupported, graph_of
    from wpipe.readers import ModelReadError, open_model

    try:
        with open_model(path) as model:
            inputs = lo.random_inputs(graph_of(model), n, seed)
    except (ModelReadError, Unsupported, lo.InputError, OSError) as exc:
        return getattr(exc, "message", None) or getattr(exc, "reason", None) or str(exc)
    inputs.name = name or inputs.name
    return inputs


def _flagged(con, model_id: str, input_set: str, flag: str, count: str) -> str | None:
    """Layer outputs with an activation_health flag and its unit count, e.g.
    `conv2 15/16, fc 15/16`."""
    rows = con.execute(
        f"SELECT layer_path, {count}, n_units FROM activation_health WHERE model_id = ? "
        f"AND input_set = ? AND {flag} ORDER BY layer_path",
        [model_id, input_set],
    ).fetchall()
    return ", ".join(f"{p} {d}/{n}" for p, d, n in rows) or None
