"""The notebooks: saved without outputs, each runs top to bottom in a fresh kernel on the demo
database alone (what `make demo` writes: its writer commands are read from the Makefile and run
here), and the executed notebook draws its figures offline (no script comes from the network)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.charts.test_notebook import REMOTE_SCRIPT

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
WRITERS = ("ingest", "activations", "metrics")  # the demo's commands that change its database


def demo_commands() -> list[list[str]]:
    """The `wpipe` commands of the Makefile's demo target that write demo.duckdb, as argv."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    recipe = text.split("\ndemo:", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    commands = [shlex.split(line.strip()) for line in recipe if line.startswith("\t")]
    return [c for c in commands if c[0] == "$(BIN)/wpipe" and c[1] in WRITERS]


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("demo") / "demo.duckdb"
    wpipe = Path(sys.executable).with_name("wpipe")
    commands = demo_commands()
    assert [c[1] for c in commands][:1] == ["ingest"] and len(commands) >= 2
    for argv in commands:
        argv = [str(wpipe), *[str(db) if a == "demo.duckdb" else a for a in argv[1:]]]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (argv, done.stderr)
    return db


def test_the_notebooks_read_no_test_fixture():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "tests" not in code and "fixtures" not in code, path.name
        assert "WPIPE_DEMO_DB" in code and "demo.duckdb" in code, path.name


def test_the_notebooks_are_there():
    names = [p.name for p in NOTEBOOKS]
    for name in (
        "01_quick_start.ipynb",
        "02_checkpoints_and_sweeps.ipynb",
        "03_health_walkthrough.ipynb",
    ):
        assert name in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_saved_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, demo_db, monkeypatch):
    monkeypatch.setenv("WPIPE_DEMO_DB", str(demo_db))  # the kernel inherits it
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    # the figures are drawn: chart cells display Vega-Lite (as HTML or as its own mimetype)
    drawn = [
        o
        for c in code
        for o in c.outputs
        if "vegaEmbed" in str(o.get("data", {}).get("text/html", ""))
        or any(k.startswith("application/vnd.vegalite") for k in o.get("data", {}))
    ]
    assert len(drawn) >= 3
    for output in (o for c in code for o in c.outputs):
        page = str(output.get("data", {}).get("text/html", ""))
        assert not REMOTE_SCRIPT.search(page), REMOTE_SCRIPT.search(page)
    assert all("window.vegaEmbed=" in o["data"]["text/html"] for o in drawn)
