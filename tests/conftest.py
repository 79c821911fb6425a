"""Shared test helpers: fixture locations, a fresh database, and layout-true files made by h5py.

Files made here by h5py follow keras_formats.md §3 and are used where a real Keras cannot make
the case (hostile or broken files, Keras 1 layouts); everything else uses the real Keras files
in tests/fixtures/models, written by tests/fixtures/make_fixtures.py.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from wpipe import store
from wpipe.analyse.stats import StatsOptions
from wpipe.analyse.tables import ValuesMode
from wpipe.ingest.driver import Report, ingest

# A test sees no terminal size unless it sets one, as under CI (pytest-xdist's workers export
# the controller's COLUMNS and LINES, which would make piped output look like a terminal's).
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = FIXTURES / "models"
EXPECTED = FIXTURES / "expected"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "models"  # the demo's models
REPO = Path(__file__).resolve().parents[1]


class Warehouse:
    """A database and lake in a temporary folder, ingested through the real pipeline."""

    def __init__(self, root: Path) -> None:
        self.db_path = root / "w.duckdb"
        self.lake = root / "w.lake"

    def ingest(
        self, *paths, values: str = "all", jobs: int = 1, prune: bool = False, drift: bool = True,
        **options,
    ) -> Report:  # fmt: skip
        db = store.Database(self.db_path)
        try:
            return ingest(
                paths,
                db,
                self.lake,
                StatsOptions(),
                ValuesMode.parse(values),
                jobs,
                prune,
                drift=drift,
                **options,
            )
        finally:
            db.close()

    def query(self, sql: str, params=None) -> list[tuple]:
        db = store.Database(self.db_path)
        try:
            return db.con.execute(sql, params or []).fetchall()
        finally:
            db.close()


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    return Warehouse(tmp_path)


@pytest.fixture
def folder(tmp_path):
    """Three real Keras files of different architectures in one folder."""
    target = tmp_path / "zoo"
    target.mkdir()
    for name in ("k2_dense_bn_frozen.h5", "k3_lstm.h5", "k2_conv2d.h5"):
        shutil.copy2(MODELS / name, target / name)
    return target


def write_legacy_h5(path: Path, layers: dict[str, dict[str, np.ndarray]], config=None, **attrs):
    """A Keras 2 style full-model file: layers maps layer name -> {stored weight name: array}."""
    with h5py.File(path, "w") as f:
        if config is not None:
            f.attrs["model_config"] = (
                json.dumps(config).encode() if isinstance(config, dict) else config
            )
        for key, value in attrs.items():
            f.attrs[key] = value
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = [n.encode() for n in layers]
        group.attrs["keras_version"] = b"2.15.0"
        group.attrs["backend"] = b"tensorflow"
        for name, weights in layers.items():
            g = group.create_group(name)
            g.attrs["weight_names"] = [w.encode() for w in weights]
            for wname, array in weights.items():
                g[wname] = array
    return path


def dense_config(*names: str) -> dict:
    return {
        "class_name": "Sequential",
        "config": {
            "name": "seq",
            "layers": [{"class_name": "Dense", "config": {"name": n, "units": 3}} for n in names],
        },
    }


def expected(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    spec = json.loads((EXPECTED / f"{name}.json").read_text())
    with np.load(EXPECTED / f"{name}.npz", allow_pickle=False) as arrays:
        return spec, {k: arrays[k] for k in arrays.files}


WRITERS = ("ingest", "activations", "metrics")  # the demo's commands that change its database


def demo_commands() -> list[list[str]]:
    """The `wpipe` commands of the Makefile's demo target that write demo.duckdb, as argv."""
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    recipe = text.split("\ndemo:", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    commands = [shlex.split(line.strip()) for line in recipe if line.startswith("\t")]
    return [c for c in commands if c[0] == "$(BIN)/wpipe" and c[1] in WRITERS]


@pytest.fixture(scope="session")
def demo_db(tmp_path_factory) -> Path:
    """demo.duckdb as `make demo` writes it (built once a session: the notebooks and the
    browser test read it)."""
    db = tmp_path_factory.mktemp("demo") / "demo.duckdb"
    wpipe = Path(sys.executable).with_name("wpipe")
    commands = demo_commands()
    assert [c[1] for c in commands][:1] == ["ingest"] and len(commands) >= 2
    for argv in commands:
        argv = [str(wpipe), *[str(db) if a == "demo.duckdb" else a for a in argv[1:]]]
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (argv, done.stderr)
    return db
