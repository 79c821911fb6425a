"""Bad invocations of every command: one clear line, a meaningful exit code, no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import duckdb
import pytest
from typer.testing import CliRunner
from wpipe.cli import app

from tests.conftest import MODELS

runner = CliRunner()


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A wpipe database, a text file, a folder, another program's DuckDB file, a CSV."""
    root = tmp_path_factory.mktemp("bad")
    zoo = root / "zoo"
    zoo.mkdir()
    for name in ("k2_lstm.h5", "k2_conv2d.h5"):
        shutil.copy2(MODELS / name, zoo / name)
    db = root / "w.duckdb"
    result = runner.invoke(app, ["ingest", str(zoo), "--db", str(db), "-j", "1", "-q"])
    assert result.exit_code == 0, result.output
    (root / "notes.txt").write_text("not a database\n" * 50)
    (root / "folder").mkdir()
    other = duckdb.connect(str(root / "other.duckdb"))
    other.execute("CREATE TABLE invoices (id INT)")
    other.close()
    (root / "readme.csv").write_text("\n".join(f"line {i}, text" for i in range(600)))
    (root / "binary.csv").write_bytes(bytes(range(256)) * 4)
    (root / "ro").mkdir()
    return root


# (arguments with {db}, {root} placeholders, exit code, a fragment of the one line)
BAD = [
    # ingest
    (["ingest", "{root}/nope", "--db", "{db}"], 2, "no such file or folder"),
    (["ingest", "{root}/zoo", "--db", "{db}", "--values", "some"], 2, "sample:N"),
    (["ingest", "{root}/zoo", "--db", "{db}", "--tag-pattern", "("], 2, "not a valid regex"),
    (["ingest", "{root}/zoo", "--db", "{db}", "--tag-pattern", "abc"], 2, "no group named key"),
    (["ingest", "{root}/zoo", "--db", "{db}", "--spectra", "maybe"], 2, "spectra"),
    (["ingest", "{root}/zoo", "--db", "{root}/folder"], 2, "is a folder"),
    (["ingest", "{root}/zoo", "--db", "{root}/notes.txt"], 2, "not a DuckDB database"),
    (["ingest", "{root}/zoo", "--db", "{root}/other.duckdb"], 2, "another program"),
    (["ingest", "{root}/zoo", "--db", "{root}/no/such/dir/w.duckdb"], 2, "does not exist"),
    (["ingest", "{root}/zoo", "--db", "{db}", "--jobs", "0"], 2, "jobs"),
    # every reader on a missing or odd database
    (["models", "--db", "{root}/absent.duckdb"], 2, "wpipe ingest"),
    (["models", "--db", "{root}/folder"], 2, "is a folder"),
    (["models", "--db", "{root}/notes.txt"], 2, "not a DuckDB database"),
    (["models", "--db", "{root}/other.duckdb"], 2, "not a wpipe database"),
    (["health", "--db", "{root}/other.duckdb"], 2, "not a wpipe database"),
    (["report", "--db", "{root}/other.duckdb", "-o", "{root}/r.html"], 2, "not a wpipe"),
    (["models", "--db", "{db}", "--format", "xml"], 2, "xml"),
    # layers, compare, health, spectra, chart, report: unknown models
    (["layers", "nope", "--db", "{db}"], 2, "no model is named 'nope'"),
    (["compare", "k2_lstm", "--db", "{db}"], 2, "at least two models"),
    (["compare", "k2_lstm", "nope", "--db", "{db}"], 2, "no model is named 'nope'"),
    (["compare", "k2_lstm", "zz*", "--db", "{db}"], 2, "no model matches 'zz*'"),
    (["health", "-m", "nope", "--db", "{db}"], 2, "no model is named"),
    (["spectra", "-m", "nope", "--db", "{db}"], 2, "no model is named"),
    (["chart", "params", "-m", "nope", "-o", "{root}/c.png", "--db", "{db}"], 2, "no model"),
    (["report", "-m", "nope", "-o", "{root}/r.html", "--db", "{db}"], 2, "no model"),
    # query: empty, invalid, writing
    (["query", "", "--db", "{db}"], 2, "no SQL given"),
    (["query", "   ", "--db", "{db}"], 2, "no SQL given"),
    (["query", "SELEC 1", "--db", "{db}"], 2, "syntax error"),
    (["query", "SELECT * FROM nowhere", "--db", "{db}"], 2, "nowhere"),
    (["query", "DROP TABLE models", "--db", "{db}"], 2, "only reads"),
    # outputs that cannot be written
    (["chart", "params", "-o", "{root}/no/such/c.png", "--db", "{db}"], 2, "cannot write"),
    (["chart", "params", "-o", "{root}/c.txt", "--db", "{db}"], 2, "unknown format"),
    (["chart", "nope", "-o", "{root}/c.png", "--db", "{db}"], 2, "no chart is named"),
    (["chart", "--db", "{db}"], 2, "name the chart"),
    (["report", "-o", "{root}/no/such/r.html", "--db", "{db}"], 2, "cannot write"),
    (["report", "-o", "{root}/folder", "--db", "{db}"], 2, "cannot write"),
    # metrics and correlate
    (["metrics", "add", "{root}/absent.csv", "--db", "{db}"], 2, "absent.csv"),
    (["metrics", "add", "{root}/binary.csv", "--db", "{db}"], 2, "binary.csv"),
    (["correlate", "nope", "--db", "{db}"], 2, "no metric 'nope'"),
    (["correlate", "x", "--top", "0", "--db", "{db}"], 2, "top"),
    # unknown commands and options
    (["nope"], 2, "nope"),
    (["models", "--no-such-option"], 2, "no-such-option"),
]


def _args(args: list[str], place) -> list[str]:
    return [a.format(db=place / "w.duckdb", root=place) for a in args]


@pytest.mark.parametrize(("args", "code", "fragment"), BAD, ids=[" ".join(b[0]) for b in BAD])
def test_a_bad_invocation_is_one_line_and_an_exit_code(place, args, code, fragment):
    result = runner.invoke(app, _args(args, place), env={"COLUMNS": "200"})
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert fragment.lower() in text.lower(), result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) <= 12


def test_a_file_that_is_no_metrics_csv_is_summarised(place):
    result = runner.invoke(app, _args(["metrics", "add", "{root}/readme.csv", "--db", "{db}"],
                                      place))  # fmt: skip
    assert result.exit_code == 2
    lines = result.output.splitlines()
    # 599 rows after the header: the first five problems, then a count of the rest
    assert len(lines) == 6, result.output
    assert "… and 594 more problems; nothing was loaded" in lines[-1]


def test_an_unexpected_error_is_one_line_naming_the_command(place, monkeypatch):
    # the guard is what is tested: make the query stage fail in a way no handler expects
    from wpipe.cli import browse

    def broken(*_args, **_kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(browse, "emit", broken)
    args = _args(["query", "SELECT 1", "--db", "{db}"], place)
    result = runner.invoke(app, args)
    assert result.exit_code == 3
    assert result.output.count("\n") == 1
    assert "wpipe query failed unexpectedly (ZeroDivisionError: boom)" in result.output
    assert "bug" in result.output and "--debug" in result.output
    debug = runner.invoke(app, ["--debug", *args])
    assert isinstance(debug.exception, ZeroDivisionError)  # --debug lets the traceback out


def test_the_installed_command_prints_no_traceback(place):
    # a real process: what a user's shell shows, stderr included
    env = {**os.environ, "COLUMNS": "100"}
    result = subprocess.run(
        [sys.executable, "-m", "wpipe.cli", "query", "", "--db", str(place / "w.duckdb")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: no SQL given")
    assert "Traceback" not in result.stderr + result.stdout


def test_a_reader_that_goes_away_ends_the_command_quietly(place):
    """`wpipe query … | head -1`: the pipe closes after one line; no error, no traceback."""
    sql = "SELECT range AS i FROM range(500000)"
    with subprocess.Popen(
        [sys.executable, "-m", "wpipe.cli", "query", sql, "--format", "csv",
         "--db", str(place / "w.duckdb")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as proc:  # fmt: skip
        assert proc.stdout.readline() == b"i\n"
        proc.stdout.close()  # what `head -1` does once it has its line
        stderr = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
    assert code == 1, stderr
    assert stderr == ""


def test_a_database_of_another_wpipe_version_is_one_line(place, tmp_path):
    # a read-only reader cannot upgrade it: it says so and how (an ingest upgrades)
    old = tmp_path / "old.duckdb"
    shutil.copy2(place / "w.duckdb", old)
    con = duckdb.connect(str(old))
    con.execute("DROP VIEW IF EXISTS weight_health CASCADE")
    con.execute("ALTER TABLE weights DROP COLUMN abs_mean")
    con.close()
    result = runner.invoke(app, ["models", "--db", str(old)])
    assert result.exit_code == 2, result.output
    assert "another wpipe version" in result.output and "wpipe ingest" in result.output
    assert result.output.count("\n") == 1
