"""Terminal tables at 80 and 120 columns: no number or name broken across lines, long text
shortened with an ellipsis, left-out columns named, every column one `--format records` away."""

from __future__ import annotations

import json
import re
import shutil

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner
from wpipe.cli import app
from wpipe.core.schema import ALL_TABLES

from tests.conftest import EXPECTED, FIXTURES, MODELS

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
    # the key names the row: never shortened; when it and the numbers do not fit, records
    lines, note = _lines(db, 80, "models")
    _, rows = shown(lines)
    prefix = "a_rather_long_folder_name_for_runs/cnn_lr1e-2/"
    assert sorted(r["name"] for r in rows) == [
        prefix + n for n in ("k2_conv2d", "k2_long_names", "k2_lstm")
    ]
    assert "one block per row" in note


# ---------------------------------------------------------------- key and numbers at any width
# Each command's table keeps its key and its numbers (render.Layout); expected values come
# from what Keras recorded when the fixtures were written (tests/fixtures/expected) or numpy.

EXPECTED_FILES = ("k2_conv2d.h5", "k3_conv2d.h5", "k2_lstm.h5", "k2_health_cnn.h5")


@pytest.fixture(scope="module")
def zoo_db(tmp_path_factory):
    root = tmp_path_factory.mktemp("numbers")
    for name in EXPECTED_FILES:
        shutil.copy2(MODELS / name, root / name)
    path = root / "n.duckdb"
    result = runner.invoke(app, ["ingest", str(root), "--db", str(path), "-j", "1", "-q"])
    assert result.exit_code == 0, result.output
    return str(path)


@pytest.fixture(scope="module")
def long_db(tmp_path_factory):
    """The same files under a long folder name: model names of 50+ characters."""
    root = tmp_path_factory.mktemp("long")
    zoo = root / "a_rather_long_folder_name_for_runs" / "cnn_lr1e-2"
    zoo.mkdir(parents=True)
    for name in EXPECTED_FILES:
        shutil.copy2(MODELS / name, zoo / name)
    path = root / "l.duckdb"
    result = runner.invoke(app, ["ingest", str(root), "--db", str(path), "-j", "1", "-q"])
    assert result.exit_code == 0, result.output
    return str(path)


def _lines(db: str | None, width: int, *args: str) -> tuple[list[str], str]:
    extra = ["--db", db] if db else []
    result = runner.invoke(app, [*args, *extra], env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    notes = " ".join(line for line in lines if "left out" in line or "one block per row" in line)
    return lines, notes


def shown(lines: list[str]) -> tuple[list[str], list[dict[str, str]]]:
    """The columns and rows a table or records output shows (folded headers joined, wrapped
    cells joined with spaces)."""
    if any(line.startswith("-- 1 --") for line in lines):
        rows: list[dict[str, str]] = []
        for line in lines:
            if re.fullmatch(r"-- \d+ --", line):
                rows.append({})
            elif rows and re.match(r"\S+  ", line):
                name, value = line.split(None, 1)
                rows[-1][name] = value.strip()
        return list(rows[0]) if rows else [], rows
    head = [_cells(line) for line in lines if line.startswith("┃")]
    columns = ["".join(parts).strip() for parts in zip(*head, strict=True)]
    rows = []
    for line in (line for line in lines if line.startswith("│")):
        cells = _cells(line)
        if rows and not cells[0]:  # a wrapped cell goes on below an empty key
            for name, value in zip(columns, cells, strict=True):
                rows[-1][name] = " ".join(filter(None, [rows[-1][name], value]))
        else:
            rows.append(dict(zip(columns, cells, strict=True)))
    return columns, rows


def _number(value: float) -> str:
    return f"{value:.4g}"


def _expected(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    meta = json.loads((EXPECTED / f"{name}.json").read_text())
    arrays = np.load(EXPECTED / f"{name}.npz")
    by_path = {f"{w['layer_path']}/{w['weight_name']}": arrays[w["key"]] for w in meta["weights"]}
    return meta, by_path


def _stored_shape(path, layer: str) -> tuple[int, ...]:
    """The shape of a layer's kernel as the Keras 2 file stores it (h5py)."""
    with h5py.File(path, "r") as f:
        return f[f"model_weights/{layer}/{layer}/kernel:0"].shape


def _check_width(lines: list[str], width: int) -> None:
    assert all(len(line.rstrip()) <= width for line in lines if line[:1] in "┏┃┡│└")


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("which", ["zoo", "long"])
def test_models_show_the_parameter_counts_keras_counted(zoo_db, long_db, width, which):
    lines, _ = _lines(zoo_db if which == "zoo" else long_db, width, "models")
    _check_width(lines, width)
    columns, rows = shown(lines)
    assert {"name", "n_layers", "n_params", "n_trainable"} <= set(columns)
    by_name = {r["name"].rsplit("/", 1)[-1]: r for r in rows}
    for file in EXPECTED_FILES[:3]:  # the sick model has no recorded Keras counts
        meta, _ = _expected(file)
        row = by_name[file.removesuffix(".h5")]
        assert row["n_params"] == f"{meta['count_params']:,}"
        assert row["n_trainable"] == f"{meta['n_trainable']:,}"


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("which", ["zoo", "long"])
def test_compare_shows_drift_cosine_std_and_max_abs(zoo_db, long_db, width, which):
    lines, _ = _lines(zoo_db if which == "zoo" else long_db, width, "compare", "*k2_conv2d",
                      "*k3_conv2d")  # fmt: skip
    _check_width(lines, width)
    columns, rows = shown(lines)
    assert {"rel_l2", "cosine", "std_a", "std_b", "max_abs_a", "max_abs_b"} <= set(columns)
    _, a = _expected("k2_conv2d.h5")
    _, b = _expected("k3_conv2d.h5")
    for row in rows:
        layer = row.get("layer") or row["path_a"]  # one column when the paths agree
        keys = [k for k in a if k.startswith(f"{layer}/")]
        # trainable learned weights and BatchNorm statistics alike: what the layer holds
        wa = [a[k].astype(np.float64).ravel() for k in keys]
        wb = [b[k].astype(np.float64).ravel() for k in keys]
        diff = np.sqrt(sum(((x - y) ** 2).sum() for x, y in zip(wa, wb, strict=True)))
        norm_a = np.sqrt(sum((x**2).sum() for x in wa))
        assert row["max_abs_a"] == _number(max(np.abs(x).max() for x in wa))
        assert row["max_abs_b"] == _number(max(np.abs(y).max() for y in wb))
        assert float(row["rel_l2"]) == pytest.approx(diff / norm_a, rel=2e-3, abs=1e-6)
        assert row["cosine"] != "–"


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("which", ["zoo", "long"])
def test_health_shows_flags_and_their_numbers(zoo_db, long_db, width, which):
    lines, _ = _lines(zoo_db if which == "zoo" else long_db, width, "health",
                      "-m", "*k2_health_cnn")  # fmt: skip
    _check_width(lines, width)
    columns, _ = shown(lines)  # a table at 80 columns: the names, the flags, dead units
    assert {"layer_path", "flags", "dead"} <= set(columns)
    if which == "zoo":  # room beside short names: the figure the layout shows next
        assert "max_abs_ratio" in columns
    records, _ = _lines(zoo_db if which == "zoo" else long_db, width, "health",
                        "-m", "*k2_health_cnn", "-f", "records")  # fmt: skip
    columns, rows = shown(records)  # every figure, one block per finding
    assert {"max_abs", "nonfinite_count", "near_zero_frac"} <= set(columns)
    truth = json.loads((EXPECTED / "health_truth.json").read_text())
    by_layer = {r["layer_path"]: r for r in rows}
    explode = truth["exploding"]
    assert "exploding" in by_layer[explode["layer_path"]]["flags"]
    assert by_layer[explode["layer_path"]]["max_abs"] == _number(explode["value"])
    nan = truth["nan_or_inf"]
    assert by_layer[nan["layer_path"]]["nonfinite_count"] == str(nan["nan"] + nan["inf"])
    for case in ("dead_filters", "dead_units"):
        where = truth[case]
        n_units = _stored_shape(MODELS / "k2_health_cnn.h5", where["layer_path"])[-1]
        row = by_layer[where["layer_path"]]
        assert "dead_units" in row["flags"] and row["dead"] == f"{len(where['index'])}/{n_units}"


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("which", ["zoo", "long"])
def test_spectra_show_alpha_norms_and_stable_rank(zoo_db, long_db, width, which):
    lines, _ = _lines(zoo_db if which == "zoo" else long_db, width, "spectra",
                      "-m", "*k2_conv2d")  # fmt: skip
    _check_width(lines, width)
    columns, rows = shown(lines)
    assert {"alpha", "stable_rank", "matrix"} <= set(columns)
    if width >= 120 and which == "zoo":  # room beside short names: the next figures
        assert {"alpha_weighted", "log_norm"} <= set(columns)
    _, arrays = _expected("k2_conv2d.h5")
    dense = next(r for r in rows if r["layer_path"] == "out" and r["matrix"] == "full")
    singular = np.linalg.svd(arrays["out/kernel"].astype(np.float64), compute_uv=False)
    assert float(dense["stable_rank"]) == pytest.approx(
        (singular**2).sum() / singular.max() ** 2, rel=1e-3
    )
    assert next(r["alpha"] for r in rows if r["layer_path"] == "conv2") != "–"


@pytest.mark.parametrize("width", [80, 120])
def test_schema_shows_every_meaning_whole(width):
    lines, note = _lines(None, width, "schema")
    _check_width(lines, width)
    columns, rows = shown(lines)
    assert columns[:2] == ["table", "column"] and "meaning" in columns
    docs = {(t.name, c.name): " ".join(c.doc.split()) for t in ALL_TABLES for c in t.columns}
    assert len(rows) == len(docs)
    for row in rows:
        assert row["meaning"] == docs[(row["table"], row["column"])]
    if width == 80:
        assert "type" in note  # the short text gives way to the long text worth reading


def test_numbers_outrank_text_when_columns_are_left_out(zoo_db):
    # without a layout (wpipe query) the first column is the key; numbers before text
    sql = ("SELECT w.model, m.path, w.layer_path, w.std, w.max_abs, w.l2 "
           "FROM layer_weights AS w JOIN models AS m ON m.name = w.model")  # fmt: skip
    lines, note = _lines(zoo_db, 80, "query", sql)
    columns, rows = shown(lines)
    assert {"model", "std", "max_abs", "l2"} <= set(columns)
    columns, rows = shown(lines)
    # the path only gets the room the numbers left: shortened, or left out and named
    assert ("path" in note and "path" not in columns) or all(r["path"].endswith("…") for r in rows)


def test_chart_list_wraps_at_the_terminal_width_without_cutting_a_sentence():
    lines, _ = _lines(None, 80, "chart", "--list")
    assert all(len(line) <= 80 for line in lines)
    from wpipe import charts

    text = " ".join(line.strip() for line in lines)
    for name in charts.CHARTS:
        first = " ".join(charts.CHARTS[name].__doc__.strip().split("\n\n")[0].split())
        assert f"{name} {first}" in " ".join(text.split()), name
    piped = runner.invoke(app, ["chart", "--list"])
    assert len(piped.output.splitlines()) == len(charts.CHARTS)


@pytest.mark.parametrize("terminal", [False, True])
def test_rows_drawn_without_rich_match_rich_cell_for_cell(capsys, monkeypatch, terminal):
    """Past the first row, a table's rows are drawn by wpipe (rich took ~25 s of CPU for
    10,000 models): the output is rich's own, byte for byte, with cut, wide and aligned cells."""
    from wpipe.cli import render
    from wpipe.cli.common import Format

    if terminal:  # rich's escapes for the bold header
        monkeypatch.setenv("FORCE_COLOR", "1")
    columns = ["name", "n_params", "path", "note", "ratio"]
    rows = [
        ("cnn/e01", 3764, "/runs/" + "x" * 70 + "/e01.h5", "日本語のモデル" * 8, 0.123456),
        ("cnn/e02", None, "/runs/short.h5", None, -1e-9),
        ("lstm", 1_234_567, "/p", "plain", None),
    ]
    layout = render.Layout(key=("name",), numbers=("n_params",))
    for width in (80, 200):
        monkeypatch.setenv("COLUMNS", str(width))
        render.emit(columns, rows, Format.table, title="models", layout=layout)
        ours = capsys.readouterr().out
        monkeypatch.setattr(render, "FAST_ROWS", len(rows) + 1)
        render.emit(columns, rows, Format.table, title="models", layout=layout)
        by_rich = capsys.readouterr().out
        monkeypatch.setattr(render, "FAST_ROWS", 2)
        assert ours == by_rich and "…" in ours and len(ours.splitlines()) >= 8
    assert "日本語" in ours  # at 200 columns, cut in the middle of wide characters


@pytest.fixture(scope="module")
def family_db(tmp_path_factory):
    """The lineage family (a run's checkpoints and fine-tunes of its last one), two bases named."""
    root = tmp_path_factory.mktemp("family")
    shutil.copytree(FIXTURES / "lineage", root / "run")
    db = str(root / "f.duckdb")
    assert runner.invoke(app, ["ingest", str(root), "--db", db, "-j", "1", "-q"]).exit_code == 0
    for tune in ("low_digits", "high_digits"):
        named = ["lineage", "set", f"run/tunes/{tune}", "run/series/e5", "--db", db]
        assert runner.invoke(app, named).exit_code == 0
    return db


@pytest.mark.parametrize(
    ("command", "names"),
    [
        (["lineage", "suggest"], ["model", "suggested_base"]),
        (["lineage", "show"], ["model", "base"]),
        (["lineage", "agreement", "run/series/e5"], ["model_a", "model_b"]),
    ],
)
def test_lineage_tables_at_80_columns_keep_the_models_they_pair(family_db, command, names):
    table, _ = _run(family_db, 80, *command)
    assert table and all(len(line) <= 80 for line in table)
    header = _cells(table[1])
    assert header[: len(names)] == names
    bases = {_cells(line)[1] for line in table[3:-1]}
    assert bases and all(b.startswith("run/") for b in bases), bases


@pytest.fixture(scope="module")
def health_db(tmp_path_factory):
    """Models made sick on purpose (tests/fixtures/make_health_fixtures.py): weight findings."""
    root = tmp_path_factory.mktemp("health")
    for name in ("k2_health_cnn.h5", "k2_health_lstm.h5"):
        shutil.copy2(MODELS / name, root / name)
    path = root / "h.duckdb"
    result = runner.invoke(app, ["ingest", str(root), "--db", str(path), "-j", "1", "-q"])
    assert result.exit_code == 0, result.output
    return str(path)


@pytest.mark.parametrize("command", [["health"], ["spectra"]])
def test_health_and_spectra_are_tables_at_80_columns(health_db, command):
    # a new user saw one 14-line block per finding at 80, 100 and 120 columns (health needed
    # 123 columns to keep every figure it called essential, spectra 83)
    lines, notes = _lines(health_db, 80, *command)
    assert "one block per row" not in notes
    _check_width(lines, 80)
    columns, rows = shown(lines)
    assert {"model", "layer_path", "weight_name"} <= set(columns) and rows
