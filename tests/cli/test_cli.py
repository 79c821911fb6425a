"""The CLI: every command, its formats and its exit codes (0 ok, 1 some files failed, 2 usage)."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner
from wpipe.cli import app
from wpipe.core import schema

from tests.conftest import MODELS

runner = CliRunner()


@pytest.fixture
def db(tmp_path):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for name in ("k2_dense_bn_frozen.h5", "k3_nested.h5"):
        shutil.copy2(MODELS / name, zoo / name)
    path = tmp_path / "t.duckdb"
    result = runner.invoke(app, ["ingest", str(zoo), "--db", str(path), "-j", "1"])
    assert result.exit_code == 0, result.output
    return str(path)


def test_ingest_reports_a_summary_and_exits_1_when_a_file_fails(tmp_path):
    (tmp_path / "bad.h5").write_bytes(b"not a model")
    shutil.copy2(MODELS / "k2_uncompiled.h5", tmp_path / "good.h5")
    db = str(tmp_path / "t.duckdb")
    result = runner.invoke(app, ["ingest", str(tmp_path), "--db", db])
    assert result.exit_code == 1
    assert f"{tmp_path / 'bad.h5'}: not a Keras model file" in result.output
    assert "1 ingested" in result.output and "1 failed" in result.output


def test_the_summary_of_one_file_says_file(tmp_path):
    shutil.copy2(MODELS / "k2_uncompiled.h5", tmp_path / "one.h5")
    result = runner.invoke(app, ["ingest", str(tmp_path / "one.h5"), "--db", str(tmp_path / "t")])
    assert result.exit_code == 0 and "1 file: 1 ingested" in result.output, result.output


def test_ingest_usage_errors_exit_2(tmp_path):
    db = str(tmp_path / "t.duckdb")
    assert runner.invoke(app, ["ingest", str(tmp_path / "nope"), "--db", db]).exit_code == 2
    bad_values = runner.invoke(app, ["ingest", str(tmp_path), "--db", db, "--values", "some"])
    assert bad_values.exit_code == 2 and "sample:N" in bad_values.output
    assert runner.invoke(app, ["ingest", "--no-such-option"]).exit_code == 2


def test_db_comes_from_the_environment(db):
    result = runner.invoke(app, ["models", "-f", "json"], env={"WPIPE_DB": db})
    assert result.exit_code == 0
    assert len(json.loads(result.output)) == 2


def test_models_in_every_format(db):
    as_json = json.loads(runner.invoke(app, ["models", "--db", db, "-f", "json"]).output)
    assert {m["name"] for m in as_json} == {"k2_dense_bn_frozen", "k3_nested"}
    rows = list(
        csv.DictReader(io.StringIO(runner.invoke(app, ["models", "--db", db, "-f", "csv"]).output))
    )
    assert [r["name"] for r in rows] == ["k2_dense_bn_frozen", "k3_nested"]
    table = runner.invoke(app, ["models", "--db", db], env={"COLUMNS": "200"}).output
    assert "k2_dense_bn_frozen" in table and "┃" in table


def test_layers_by_name_path_and_id_prefix(db):
    sql = "SELECT model_id, path FROM models WHERE name = 'k3_nested'"
    found = runner.invoke(app, ["query", sql, "--db", db, "-f", "json"])
    model_id = json.loads(found.output)[0]
    outputs = [
        runner.invoke(app, ["layers", ref, "--db", db, "-f", "json"])
        for ref in ("k3_nested", model_id["path"], model_id["model_id"][:6])
    ]
    assert all(o.exit_code == 0 for o in outputs)
    assert outputs[0].output == outputs[1].output == outputs[2].output
    paths = [row["layer_path"] for row in json.loads(outputs[0].output)]
    assert any(p.startswith("encoder/") for p in paths)


def test_unknown_model_and_bad_sql_are_usage_errors(db, tmp_path):
    missing = runner.invoke(app, ["layers", "nope", "--db", db])
    assert missing.exit_code == 2 and "no model is named 'nope'" in missing.output
    bad_sql = runner.invoke(app, ["query", "SELEC 1", "--db", db])
    assert bad_sql.exit_code == 2 and "syntax error" in bad_sql.output.lower()
    no_db = runner.invoke(app, ["models", "--db", str(tmp_path / "absent.duckdb")])
    assert no_db.exit_code == 2 and "wpipe ingest" in no_db.output


def test_query_csv_output(db):
    result = runner.invoke(
        app, ["query", "SELECT count(*) AS n FROM weights", "--db", db, "--format", "csv"]
    )
    assert result.exit_code == 0
    assert result.output.splitlines()[0] == "n" and int(result.output.splitlines()[1]) > 0


def test_schema_lists_every_contract_column():
    rows = json.loads(runner.invoke(app, ["schema", "-f", "json"]).output)
    listed = {(r["table"], r["column"]) for r in rows}
    assert listed == {(t.name, c.name) for t in schema.ALL_TABLES for c in t.columns}
    assert all(r["meaning"] for r in rows)


def test_every_command_has_help():
    # that the docs' generated reference lists every command: tests/test_docs.py
    commands = [c.name for c in app.registered_commands]
    assert commands
    for name in commands:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


def _every_command():
    import click
    import typer

    root = typer.main.get_command(app)
    ctx = click.Context(root)
    todo = [("", root)]
    while todo:
        prefix, group = todo.pop()
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            yield f"{prefix}{name}", command
            if hasattr(command, "list_commands"):
                todo.append((f"{prefix}{name} ", command))


def test_help_texts_survive_rich_markup_and_summaries_are_one_line():
    # `wpipe --help` renders with rich markup: "[the file's name]" in a help text is a markup
    # tag and vanishes ("Name of the input set ."); the list of commands shows each summary
    # (the first paragraph) with its line breaks, so a wrapped docstring breaks mid-sentence
    from rich.markup import RE_TAGS

    commands = list(_every_command())
    assert len(commands) > 15
    for full, command in commands:
        summary = (command.help or "").strip().split("\n\n")[0]
        assert summary and "\n" not in summary, f"wpipe {full}: {summary!r}"
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        for text in texts:
            tags = [m for m in RE_TAGS.finditer(text) if len(m.group(2)) % 2 == 0]  # unescaped
            assert not tags, f"wpipe {full}: {text!r} loses its [...] text"


def test_a_help_text_reads_whole_on_the_terminal():
    result = runner.invoke(app, ["activations", "--help"], env={"COLUMNS": "200"})
    assert "Name of the input set (default: the input file's name)." in result.output


def test_no_help_text_is_cut_at_80_columns():
    # rich cuts a word wider than the help column with an ellipsis ("(weights.near_zero_f…")
    for full, _ in _every_command():
        result = runner.invoke(app, [*full.split(), "--help"], env={"COLUMNS": "80"})
        cut = [line for line in result.output.splitlines() if re.search(r"\w… *│$", line)]
        assert not cut, f"wpipe {full}: {cut}"


def _hold(db: str, read_only: bool):
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", f"import wpipe, time; c = wpipe.connect({db!r}, "
         f"read_only={read_only}); print('held', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_database_held_by_a_writer_is_a_clear_error_naming_the_process(db):
    holder = _hold(db, read_only=False)
    try:
        for args in (["models", "--db", db], ["ingest", str(MODELS / "k2_lstm.h5"), "--db", db]):
            result = runner.invoke(app, args, env={"WPIPE_WAIT": "0"})  # no wait: refused
            assert result.exit_code == 2, args
            assert "locked" in result.output and "Traceback" not in result.output
            assert f"process {holder.pid}" in result.output
    finally:
        holder.kill()
        holder.wait()


def test_a_notebook_connection_does_not_lock_readers_out(db):
    # wpipe.connect() is read-only by default: every read command still works beside it
    holder = _hold(db, read_only=True)
    try:
        for args in (["models"], ["health"], ["query", "SELECT count(*) FROM model_summary"],
                     ["compare", "k2_dense_bn_frozen", "k3_nested"]):  # fmt: skip
            result = runner.invoke(app, [*args, "--db", db])
            assert result.exit_code == 0, (args, result.output)
        writer = runner.invoke(
            app, ["ingest", str(MODELS / "k2_lstm.h5"), "--db", db], env={"WPIPE_WAIT": "0"}
        )
        assert writer.exit_code == 2 and f"process {holder.pid}" in writer.output
    finally:
        holder.kill()
        holder.wait()


HEAVY = ("numpy", "pyarrow", "duckdb", "deltalake", "altair", "numba", "h5py", "pandas")


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["ingest", "--help"]])
def test_help_and_version_load_no_part_of_the_pipeline(args):
    import subprocess
    import sys

    probe = (
        "import sys\nfrom wpipe.cli import app\n"
        f"try:\n    app({args!r})\nexcept SystemExit:\n    pass\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_version_loads_not_even_rich_or_pydantic():
    import subprocess
    import sys

    probe = (
        "import sys\nfrom wpipe.cli import app\n"
        "try:\n    app(['--version'])\nexcept SystemExit:\n    pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'rich', 'pydantic'}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    version, loaded = out.stdout.strip().splitlines()
    assert version.startswith("wpipe ") and loaded == "[]"


# What reading the database needs: DuckDB alone; never Arrow or numpy (the contract names its
# types without them), the lake (deltalake), the readers, the kernels or the charts; nor
# pydantic (typer 0.29 checks option values with it: pinned below, pyproject.toml).
NOT_FOR_READERS = ("pyarrow", "numpy", "deltalake", "altair", "numba", "h5py", "pandas", "scipy",
                   "pydantic")  # fmt: skip


@pytest.mark.parametrize(
    "command", [["models"], ["query", "SELECT count(*) FROM models"], ["layers", "*"]]
)
def test_reading_the_database_loads_neither_arrow_nor_the_lake_nor_the_readers(db, command):
    import subprocess
    import sys

    probe = (
        "import sys\nfrom wpipe.cli import app\n"
        f"try:\n    app({[*command, '--db', db]!r})\nexcept SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        f"print(sorted(m for m in {NOT_FOR_READERS!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_reingest_that_changes_nothing_loads_no_arrow_compute_or_datasets(db):
    # Arrow's compute and dataset modules (~0.15 s) load where rows are read or written
    import subprocess
    import sys

    folder = str(Path(db).parent / "zoo")
    probe = (
        "import sys\nfrom wpipe.cli import app\n"
        f"try:\n    app({['ingest', folder, '--db', db, '-q']!r})\nexcept SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print(sorted(m for m in ('pyarrow.compute', 'pyarrow.dataset') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_cli_default_of_values_is_the_pipelines():
    from wpipe.analyse import tables
    from wpipe.cli import ingest as cli_ingest

    assert cli_ingest.DEFAULT_VALUES == tables.DEFAULT_VALUES


def test_the_pool_starts_with_the_command_only_for_a_new_database_without_a_lake(tmp_path):
    """`wpipe ingest` starts its readers' pool first only when every file will be read: a new
    database whose lake does not exist either (a lake is loaded without reading files)."""
    from wpipe.cli.ingest import reads_every_file

    db = tmp_path / "new.duckdb"
    assert reads_every_file(str(db), None)
    db.with_suffix(".lake").mkdir()
    assert not reads_every_file(str(db), None)
    assert reads_every_file(str(db), str(tmp_path / "elsewhere.lake"))
    assert not reads_every_file(str(db), "s3://bucket/lake")
    db.write_bytes(b"")
    assert not reads_every_file(str(db), str(tmp_path / "elsewhere.lake"))


def test_json_output_is_strict_json(db):
    # Python's json writes NaN and Infinity, which strict parsers (jq, JavaScript) refuse
    sql = "SELECT 'nan'::DOUBLE AS a, 'inf'::DOUBLE AS b, 1.5::DOUBLE AS c"
    result = runner.invoke(app, ["query", sql, "--db", db, "-f", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output, parse_constant=lambda c: pytest.fail(c)) == [
        {"a": None, "b": None, "c": 1.5}
    ]
