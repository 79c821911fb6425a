"""Names are data: file, folder, layer and output names are printed verbatim (never read as
markup), stored losslessly (an undecodable byte as `\\xHH`), and escaped where rendered; a
control character in a layer name does not crash the SVG renderer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import duckdb
import numpy as np
import pytest

from tests.conftest import MODELS, dense_config, write_legacy_h5

WPIPE = [sys.executable, "-m", "wpipe.cli"]
LAYER = "d\x07\x1b[31m<b>"


@pytest.fixture(scope="module")
def named(tmp_path_factory):
    root = tmp_path_factory.mktemp("names")
    folder = root / "run[bold]x["  # with the file name below, the path holds "[/b]"
    folder.mkdir()
    shutil.copy2(MODELS / "k2_uncompiled.h5", folder / "b].h5")
    shutil.copy2(MODELS / "k2_uncompiled.h5", os.fsencode(folder) + b"/caf\xe9.h5")
    (folder / "junk[red].h5").write_bytes(b"not a model")
    kernel = np.ones((2, 3), "f4")
    write_legacy_h5(folder / "ctl.h5", {LAYER: {f"{LAYER}/kernel:0": kernel}}, dense_config(LAYER))
    out = root / "out["
    out.mkdir()
    db = out / "b]w.duckdb"  # "out[/b]w.duckdb"
    run = subprocess.run([*WPIPE, "ingest", str(folder), "--db", str(db)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    return folder, db, run


def test_names_are_printed_verbatim(named):
    folder, db, run = named
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert f"failed: {folder}/junk[red].h5: not a Keras model file" in run.stderr
    assert f"→ {db}" in run.stderr  # the output path too, markup and all


def test_an_undecodable_byte_is_stored_as_backslash_x(named):
    folder, db, _ = named
    with duckdb.connect(str(db), read_only=True) as con:
        paths = {p for (p,) in con.execute("SELECT path FROM models").fetchall()}
        layers = {n for (n,) in con.execute("SELECT layer_name FROM layers").fetchall()}
    assert paths == {f"{folder}/b].h5", f"{folder}/caf\\xe9.h5", f"{folder}/ctl.h5"}
    assert LAYER in layers  # control characters kept as they are


def test_a_control_character_in_a_layer_name_renders_to_svg(named, tmp_path):
    _, db, _ = named
    svg = tmp_path / "h[b].svg"
    run = subprocess.run([*WPIPE, "chart", "heatmap", "-o", str(svg), "--db", str(db)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert f"wrote {svg}" in run.stderr
    text = svg.read_text()
    assert "d\u2407\u241b[31m&lt;b&gt;" in text and "<b>" not in text
