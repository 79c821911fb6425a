"""Terminal tables at 80 and 120 columns: no number or name broken across lines, long text
shortened with an ellipsis, left-out columns named, every column one `--format records` away."""

from __future__ import annotations

import re
import shutil

import pytest
from typer.testing import CliRunner
from wpipe.cli import app

from tests.conftest import MODELS

runner = CliRunner()


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    zoo = root / "a_rather_long_folder_name_for_runs" / "cnn_lr1e-2"
    zoo.mkdir(parents=True)
    for name in ("k2_conv2d.h5", "k2_lstm.h5", "k2_long_names.h5"):
        shutil.copy2(MODELS / name, zoo / name)
    path = root / "t.duckdb"
    result = runner.invoke(app, ["ingest", str(root), "--db", str(path), "-j", "1", "-q"])
    assert result.exit_code == 0, result.output
    return str(path)


def _run(db: str, width: int, *args: str) -> tuple[list[str], str]:
    result = runner.invoke(app, [*args, "--db", db], env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    table = [line for line in lines if line[:1] in "┏┃┡│└"]
    notes = [line for line in lines if line.startswith(tuple("0123456789")) and "left out" in line]
    return table, " ".join(notes)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip("┃│").split("│" if "│" in line else "┃")]


WIDE_SQL = (
    "SELECT model, layer_path, class_name, weight_name, role, shape, size, mean, std, min, max, "
    "l2, max_abs, near_zero_frac, nonfinite_count, model_id FROM layer_weights"
)


@pytest.mark.parametrize("width", [80, 120])
def test_a_wide_result_fits_and_says_what_it_left_out(db, width):
    table, note = _run(db, width, "query", WIDE_SQL)
    assert table and all(len(line) <= width for line in table)
    header = _cells(table[1])
    assert header[0] == "model" and len(header) < 16
    left_out = [c for c in WIDE_SQL.split("SELECT ")[1].split(" FROM")[0].split(", ")
                if c not in header]  # fmt: skip
    assert note.startswith(f"{len(left_out)} of 16 columns left out to fit {width} columns")
    assert all(c in note for c in left_out) and "--format records" in note
    rows = [_cells(line) for line in table if line.startswith("│")]
    for row in rows:
        # one row per line: a name is whole or ends in an ellipsis, a number is whole
        assert row[0].startswith("a_rather_long") or row[0].startswith("cnn_")
        for value in row:
            assert (
                value == "–"
                or not re.fullmatch(r"-?[\d.,e+-]+", value)
                or re.fullmatch(r"-?\d[\d,]*(\.\d+)?(e[+-]\d+)?|-?\.\d+", value)
            ), value
    names = {r[0] for r in rows}
    assert len(names) == 3  # three models, no name split over two lines


def test_numbers_have_four_significant_digits(db):
    table, _ = _run(db, 200, "query", "SELECT 0.18295437 AS x, 123456.789 AS y, 7 AS n")
    assert _cells(table[3]) == ["0.183", "1.235e+05", "7"]


def test_long_text_ends_in_an_ellipsis_and_records_show_it_whole(db):
    long = "x" * 70
    table, _ = _run(db, 80, "query", f"SELECT 1 AS n, '{long}' AS note")
    cell = _cells(table[3])[1]
    assert cell.endswith("…") and len(cell) < 70
    records = runner.invoke(app, ["query", f"SELECT 1 AS n, '{long}' AS note", "--db", db,
                                  "-f", "records"])  # fmt: skip
    assert records.exit_code == 0
    assert f"note  {long}" in records.output and "n     1" in records.output


def test_models_at_80_columns_keep_whole_names(db):
    # the first column names the row: it is never shortened while the terminal can hold it
    table, note = _run(db, 80, "models")
    names = [_cells(line)[0] for line in table if line.startswith("│")]
    prefix = "a_rather_long_folder_name_for_runs/cnn_lr1e-2/"
    assert sorted(names) == [prefix + n for n in ("k2_conv2d", "k2_long_names", "k2_lstm")]
    assert "model_id" in note
