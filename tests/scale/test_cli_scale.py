"""The scale-out options of the CLI: s3:// inputs and lakes, --dask, and their one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner
from wpipe.cli import app

from tests.conftest import MODELS
from tests.scale.conftest import slow

runner = CliRunner()
BLOCK = "import sys; sys.modules[{m!r}] = None; from wpipe.cli import app; app()"


def _blocked(module: str, *args: str) -> subprocess.CompletedProcess:
    """The real CLI in a fresh interpreter where `module` cannot be imported (not installed)."""
    return subprocess.run(
        [sys.executable, "-c", BLOCK.format(m=module), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("module", "args", "extra"),
    [
        ("s3fs", ["ingest", "s3://bucket/models/"], "s3"),
        ("distributed", ["ingest", str(MODELS / "k2_conv2d.h5"), "--dask", "local"], "dask"),
    ],
)
def test_a_missing_extra_is_one_line_naming_the_pip_command(module, args, extra, tmp_path):
    result = _blocked(module, *args, "--db", str(tmp_path / "x.duckdb"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"pip install 'wpipe[{extra}]'" in lines[0]
    assert "Traceback" not in result.stderr


@slow
def test_ingest_from_s3_with_a_local_dask_cluster(s3, bucket, tmp_path):
    for name in ("k2_conv2d.h5", "k3_lstm.h5"):
        s3.put_file(str(MODELS / name), f"{bucket}/cli/{name}")
    s3.invalidate_cache()
    db = tmp_path / "c.duckdb"
    args = ["ingest", f"s3://{bucket}/cli/", "--db", str(db), "--dask", "local", "-j", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 ingested" in result.output
    listed = runner.invoke(app, ["query", "SELECT path FROM models ORDER BY 1", "--db", str(db),
                                 "-f", "csv"])  # fmt: skip
    assert listed.output.split() == ["path", *(f"s3://{bucket}/cli/{n}" for n in
                                               ("k2_conv2d.h5", "k3_lstm.h5"))]  # fmt: skip


def test_a_missing_bucket_is_one_line(s3_endpoint, tmp_path):
    result = runner.invoke(app, ["ingest", "s3://no-such-bucket-here/x/", "--db",
                                 str(tmp_path / "m.duckdb")])  # fmt: skip
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: s3://no-such-bucket-here/x/: ")
    assert len(result.output.strip().splitlines()) == 1


def test_an_unreachable_scheduler_is_one_line(tmp_path):
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        db = str(tmp_path / "d.duckdb")
        args = ["ingest", str(MODELS / "k2_conv2d.h5"), "--db", db, "--dask", "tcp://127.0.0.1:9"]
        result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "tcp://127.0.0.1:9" in result.output
