"""One name, one model: file names are stored in one spelling each (textsafe.stored), so the
file named with the byte 0xff and the one literally named `bad\\xff.h5` stay two models."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
from typer.testing import CliRunner
from wpipe.cli import app
from wpipe.core.textsafe import stored, to_os

from tests.conftest import MODELS, Warehouse

RAW = os.fsdecode(b"bad\xff.h5")  # the byte 0xff: a lone surrogate in Python
LITERAL = "bad\\xff.h5"  # backslash, x, f, f


def test_every_name_has_its_own_spelling_and_comes_back():
    rng = np.random.default_rng(0)
    # the characters escapes are made of, an undecodable byte, and a plain letter
    alphabet = ["\\", "x", "f", "8", "a", os.fsdecode(b"\xff"), os.fsdecode(b"\xe9"), "é", "/"]
    names = {"".join(rng.choice(alphabet, size=rng.integers(1, 8))) for _ in range(20000)}
    spellings = {stored(n) for n in names}
    assert len(spellings) == len(names)
    assert all(to_os(stored(n)) == n for n in names)
    assert all(s.encode("utf-8") for s in spellings)  # valid UTF-8: DuckDB and Arrow take it
    assert stored("/m/plain [bold] näme.h5") == "/m/plain [bold] näme.h5"  # most names: as is
    assert stored(RAW) == "bad\\xff.h5" and stored(LITERAL) == "bad\\\\xff.h5"


def _weight_datasets(path: bytes) -> int:
    found = []
    with h5py.File(path, "r") as f:
        f["model_weights"].visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset)
                                      else None)  # fmt: skip
    return len(found)


def test_a_raw_byte_name_and_its_literal_spelling_are_two_models(tmp_path):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    files = {RAW: MODELS / "k2_uncompiled.h5", LITERAL: MODELS / "k2_conv2d.h5"}
    for name, source in files.items():
        shutil.copy2(source, os.fsencode(zoo) + b"/" + os.fsencode(name))
    w = Warehouse(tmp_path)
    report = w.ingest(zoo)
    assert (report.ingested, len(report.failed)) == (2, 0)
    rows = w.query("SELECT path, model_id, sha256 FROM models ORDER BY path")
    assert len({r[1] for r in rows}) == 2
    for name, source in files.items():
        path = stored(str(zoo / name))
        [(model_id, sha)] = [(m, s) for p, m, s in rows if p == path]
        assert sha == hashlib.sha256(source.read_bytes()).hexdigest()  # its own content
        [(n,)] = w.query("SELECT count(*) FROM weights WHERE model_id = ?", [model_id])
        assert n == _weight_datasets(os.fsencode(source))  # its own tensors, once
    assert w.ingest(zoo).unchanged == 2  # and each is found again under its own row


def test_the_two_names_are_one_safe_line_each_in_the_cli(tmp_path):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for name in (RAW, LITERAL, "new\nline.h5"):
        shutil.copy2(MODELS / "k2_uncompiled.h5", os.fsencode(zoo) + b"/" + os.fsencode(name))
    w = Warehouse(tmp_path)
    w.ingest(zoo)
    result = CliRunner().invoke(app, ["models", "--db", str(w.db_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "h5-model" in line]
    assert len(rows) == 3 and len(result.output.splitlines()) == 3 + 5  # title, rules, header
    names = sorted(row.split("\u2502")[1].strip() for row in rows)
    assert names == ["bad\\\\xff", "bad\\xff", "new line"]


def test_a_model_under_a_folder_named_with_raw_bytes_is_named_relative_to_it(tmp_path):
    root = Path(os.fsdecode(os.fsencode(tmp_path) + b"/r\xe9sultats"))
    (root / "lr1").mkdir(parents=True)
    shutil.copy2(MODELS / "k2_uncompiled.h5", root / "lr1" / "e05.h5")
    w = Warehouse(tmp_path)
    w.ingest(root)
    assert w.query("SELECT name FROM models") == [("lr1/e05",)]
