"""h5py is loaded where files are opened, not by importing wpipe's driver or its commands."""

from __future__ import annotations

import subprocess
import sys

import h5py

from tests.conftest import MODELS


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120).stdout.strip()  # fmt: skip


def test_the_cli_and_the_ingest_driver_do_not_load_h5py():
    assert (
        _run("import sys, wpipe.cli, wpipe.ingest.driver; print('h5py' in sys.modules)") == "False"
    )


def test_the_first_use_loads_h5py_and_files_open():
    path = MODELS / "k3_lstm.h5"
    out = _run(
        "import sys\n"
        "from wpipe.readers import lazy_h5py, open_model\n"
        f"with open_model({str(path)!r}) as model:\n"
        "    n = sum(len(layer.tensors) for layer in model.layers)\n"
        "print('h5py' in sys.modules, lazy_h5py.File is sys.modules['h5py'].File, n)"
    )
    with h5py.File(path, "r") as f:
        expected = []
        f["model_weights"].visit(expected.append)
        datasets = sum(isinstance(f["model_weights"][name], h5py.Dataset) for name in expected)
    assert out == f"True True {datasets}"
