"""The CLI says what is happening and what was meant: model names resolved one way everywhere
(exact names and paths before globs, globs in every command, "did you mean" on a miss), layer
and chart names checked with suggestions, hints after an ingest that found nothing or left
models whose files are gone, and a progress line for `chart` and `report` on a terminal only."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner
from wpipe.cli import app

from tests.conftest import EXPECTED, MODELS

runner = CliRunner()
WPIPE = Path(sys.executable).with_name("wpipe")


@pytest.fixture(scope="module")
def sweep_db(tmp_path_factory):
    """`sweep/[bold]a[red]` (a name that is also a glob), `sweep/bar` (which that glob
    matches) and `sweep/e05`."""
    root = tmp_path_factory.mktemp("guidance")
    sweep = root / "sweep"
    sweep.mkdir()
    shutil.copy2(MODELS / "k2_conv2d.h5", sweep / "[bold]a[red].h5")
    shutil.copy2(MODELS / "k3_conv2d.h5", sweep / "bar.h5")
    shutil.copy2(MODELS / "k2_lstm.h5", sweep / "e05.h5")
    db = root / "g.duckdb"
    result = runner.invoke(app, ["ingest", str(root), "--db", str(db), "-j", "1", "-q"])
    assert result.exit_code == 0, result.output
    return str(db)


def _json(db: str, *args: str) -> list[dict]:
    result = runner.invoke(app, [*args, "--db", db, "-f", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_an_exact_name_is_found_before_it_is_read_as_a_glob(sweep_db):
    rows = _json(sweep_db, "compare", "sweep/[bold]a[red]", "sweep/bar")
    assert {r["model"] for r in rows} == {"sweep/bar"}  # B is bar, so A is the literal name
    layers = _json(sweep_db, "layers", "sweep/[bold]a[red]")
    assert "model" not in layers[0]  # one model, not the glob's match (bar)
    assert [r["layer_path"] for r in layers] == ["conv1", "bn", "conv2", "gap", "out"]
    health = runner.invoke(app, ["health", "-m", "sweep/[bold]a[red]", "--db", sweep_db])
    assert health.exit_code == 0, health.output


def test_every_command_that_takes_a_model_takes_a_glob(sweep_db):
    layers = _json(sweep_db, "layers", "sweep/*")
    assert {r["model"] for r in layers} == {"sweep/[bold]a[red]", "sweep/bar", "sweep/e05"}
    keras = json.loads((EXPECTED / "k2_lstm.h5.json").read_text())  # what Keras saved
    assert [r["layer_path"] for r in layers if r["model"] == "sweep/e05"] == [
        layer["layer_path"] for layer in keras["layers"]
    ]
    one = _json(sweep_db, "layers", "*/e0?")
    assert "model" not in one[0] and {r["class_name"] for r in one} >= {"LSTM"}
    for args in (["spectra", "-m", "sweep/b*"], ["health", "-m", "sweep/*"]):
        result = runner.invoke(app, [*args, "--db", sweep_db, "-f", "json"])
        assert result.exit_code == 0, (args, result.output)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["layers", "sweep/e5"], "no model is named 'sweep/e5' (did you mean sweep/e05?)"),
        (["compare", "sweep/bar", "sweep/baa"], "(did you mean sweep/bar"),
        (["health", "-m", "e05x"], "(did you mean sweep/e05?)"),
        (["layers", "sweep/zz*"], "no model matches 'sweep/zz*'"),
        (["chart", "histogrm", "-o", "x.png"], "(did you mean histogram"),
    ],
)
def test_a_miss_is_a_usage_error_that_suggests_the_closest_names(sweep_db, args, message):
    result = runner.invoke(app, [*args, "--db", sweep_db])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_a_layer_that_does_not_exist_lists_the_layers(sweep_db, tmp_path):
    out = str(tmp_path / "h.vl.json")
    result = runner.invoke(app, ["chart", "histogram", "-l", "nosuchlayer", "-m", "sweep/bar",
                                 "-o", out, "--db", sweep_db])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "no layer 'nosuchlayer' in sweep/bar; layers: conv1, bn, conv2, gap, out" in (
        result.output
    )
    typo = runner.invoke(app, ["chart", "histogram", "-l", "conv3", "-o", out, "--db", sweep_db])
    assert typo.exit_code == 2 and "(did you mean conv1 or conv2?)" in typo.output
    assert not Path(out).exists()
    drawn = runner.invoke(app, ["chart", "histogram", "-l", "conv2", "-m", "sweep/bar", "-o", out,
                                "--db", sweep_db])  # fmt: skip
    assert drawn.exit_code == 0, drawn.output


def test_an_empty_folder_says_why_nothing_was_found(tmp_path):
    db = str(tmp_path / "e.duckdb")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["ingest", str(empty), "--db", db])
    assert result.exit_code == 0
    assert f"hint: 0 model files found in {empty}: the folder is empty" in result.output
    packed = tmp_path / "packed"
    (packed / ".cache").mkdir(parents=True)
    (packed / "models.tar").write_bytes(b"\0" * 1024)
    (packed / "readme.txt").write_text("weights inside")
    shutil.copy2(MODELS / "k2_conv2d.h5", packed / ".cache" / "m.h5")  # not searched
    result = runner.invoke(app, ["ingest", str(packed), "--db", db])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert f"0 model files found in {packed}: none of its 2 files is a Keras save" in text
    assert "archives and compressed files (.tar) are not opened: unpack them first" in text
    hidden = tmp_path / "hidden"
    (hidden / ".runs").mkdir(parents=True)
    shutil.copy2(MODELS / "k2_conv2d.h5", hidden / ".runs" / "m.h5")
    result = runner.invoke(app, ["ingest", str(hidden), "--db", db])
    assert "all in hidden folders" in " ".join(result.output.split())


def test_models_whose_files_are_gone_are_counted_until_pruned(tmp_path):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for name in ("k2_conv2d.h5", "k3_conv2d.h5", "k2_lstm.h5"):
        shutil.copy2(MODELS / name, zoo / name)
    db = str(tmp_path / "m.duckdb")
    first = runner.invoke(app, ["ingest", str(zoo), "--db", db, "-j", "1"])
    assert first.exit_code == 0 and "missing" not in first.output
    (zoo / "k2_conv2d.h5").unlink()
    (zoo / "k2_lstm.h5").unlink()
    again = runner.invoke(app, ["ingest", str(zoo), "--db", db, "-j", "1"])
    assert again.exit_code == 0
    assert "hint: 2 models' files are missing (deleted or moved since ingested): --prune drops " \
        "them" in " ".join(again.output.split())  # fmt: skip
    assert len(_json(db, "models")) == 3
    pruned = runner.invoke(app, ["ingest", str(zoo), "--db", db, "-j", "1", "--prune"])
    assert pruned.exit_code == 0 and "missing" not in pruned.output
    assert [m["name"] for m in _json(db, "models")] == ["k3_conv2d"]


def _on_a_terminal(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run wpipe with stderr on a pseudo-terminal: (exit code, stdout, what the terminal got)."""
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "100"}
    process = subprocess.Popen([str(WPIPE), *args], cwd=cwd, stdout=subprocess.PIPE,
                               stderr=follower, env=env)  # fmt: skip
    os.close(follower)
    seen: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's last writer is gone
                return
            if not data:
                return
            seen.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    stdout, _ = process.communicate(timeout=300)
    reader.join(timeout=10)
    os.close(leader)
    return process.returncode, stdout.decode(), b"".join(seen).decode(errors="replace")


def test_chart_and_report_show_their_phases_on_a_terminal_only(sweep_db, tmp_path):
    code, _, terminal = _on_a_terminal(
        ["report", "-o", str(tmp_path / "r.html"), "--db", sweep_db], tmp_path
    )
    assert code == 0 and (tmp_path / "r.html").exists()
    for phase in ("query", "render", "figure", "write"):
        assert phase in terminal, (phase, terminal[-2000:])
    code, _, terminal = _on_a_terminal(
        ["chart", "params", "-o", str(tmp_path / "p.png"), "--db", sweep_db], tmp_path
    )
    assert code == 0 and "query" in terminal and "render" in terminal
    assert f"wrote {tmp_path / 'p.png'}" in terminal
    # piped or redirected: the one closing line only
    piped = subprocess.run([str(WPIPE), "report", "-o", str(tmp_path / "r2.html"), "--db",
                            sweep_db], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert piped.returncode == 0 and piped.stderr == f"wrote {tmp_path / 'r2.html'}\n"
