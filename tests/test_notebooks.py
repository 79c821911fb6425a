"""The notebooks: saved without outputs, each runs top to bottom in a fresh kernel on the demo
database alone (what `make demo` writes: the `demo_db` fixture of tests/conftest.py runs its
writer commands), and the executed notebook draws its figures offline (no script comes from the
network)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.charts.test_notebook import REMOTE_SCRIPT

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


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
