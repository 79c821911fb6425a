"""A real install: build the sdist and, from it, the wheel; install the wheel into a fresh venv
with no repository on its path; run the README's commands from a folder outside the repo.

The fresh venv borrows the test interpreter's third-party packages through a .pth line (a
folder listed in a .pth file is not a site folder, so the repo's editable install does not come
along); wpipe itself, its SQL views and its console script come from the wheel only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
from wpipe import views

from tests.conftest import MODELS

REPO = Path(__file__).resolve().parents[1]
SQL_FILES = sorted(p.name for p in (REPO / "sql").glob("*.sql"))


def test_every_view_file_is_required():
    # views.VIEW_FILES is what an install must hold; a new sql/ file belongs in it
    assert sorted(views.VIEW_FILES) == SQL_FILES


def test_build_output_is_ignored_by_git():
    ignored = subprocess.run(
        ["git", "check-ignore", "build/lib/x.py", "dist/wpipe.whl"], cwd=REPO, capture_output=True
    )
    if ignored.returncode == 128:
        pytest.skip("not a git checkout")
    assert ignored.stdout.decode().split() == ["build/lib/x.py", "dist/wpipe.whl"]


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the dev extras carry setuptools and build, so no download is needed
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)],
        check=True,
        capture_output=True,
    )
    return out


def test_sdist_and_wheel_ship_the_views_and_the_license(dist):
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    with tarfile.open(sdist) as tar:
        members = {Path(*Path(n).parts[1:]).as_posix() for n in tar.getnames()}
    assert {f"sql/{name}" for name in SQL_FILES} <= members
    assert "LICENSE" in members
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
    assert {f"wpipe/sql/{name}" for name in SQL_FILES} <= names
    assert any(n.endswith("dist-info/licenses/LICENSE") for n in names)
    assert not any(n.startswith(("build/", "tests/")) for n in names)


@pytest.fixture(scope="module")
def installed(dist, tmp_path_factory) -> Path:
    """bin/ of a fresh venv with the wheel installed (no pip of its own: the test's pip
    installs into it)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "borrowed_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    (wheel,) = dist.glob("*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    return venv / "bin"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "WPIPE", "VIRTUAL"))}
    env["COLUMNS"] = "120"
    return env


def _run(bin_dir: Path, cwd: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(bin_dir / "wpipe"), *args], cwd=cwd, env=_env(), capture_output=True, text=True
    )
    assert result.returncode == code, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result


def test_the_installed_wheel_works_outside_the_repo(installed, tmp_path):
    where = subprocess.run(
        [installed / "python", "-c", "import wpipe, wpipe.views as v; print(wpipe.__file__); "
         "print(v.sql_dir())"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert all(str(installed.parent) in w and str(REPO) not in w for w in where), where

    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for name in ("k2_conv2d.h5", "k3_conv2d.h5", "k2_lstm.h5"):
        shutil.copy2(MODELS / name, zoo / name)
    assert _run(installed, tmp_path, "--version").stdout.strip().startswith("wpipe ")
    _run(installed, tmp_path, "ingest", "zoo", "-j", "1", "-q")
    names = _run(installed, tmp_path, "models", "-f", "csv").stdout.splitlines()[1:]
    assert sorted(n.split(",")[0] for n in names) == ["k2_conv2d", "k2_lstm", "k3_conv2d"]
    listed = _run(
        installed, tmp_path, "query", "SELECT view_name FROM duckdb_views() "
        "WHERE NOT internal ORDER BY 1", "-f", "csv",
    ).stdout.split()[1:]  # fmt: skip
    assert {"layer_weights", "model_summary", "health_findings", "layer_drift"} <= set(listed)
    # every view answers, in one process (a command per view cost a start-up each)
    subprocess.run(
        [installed / "python", "-c", "import sys, wpipe; con = wpipe.connect('wpipe.duckdb'); "
         "[con.execute(f'SELECT * FROM {v}').fetchall() for v in sys.argv[1:]]", *listed],
        cwd=tmp_path, env=_env(), check=True, capture_output=True,
    )  # fmt: skip
    _run(installed, tmp_path, "health")
    compared = _run(installed, tmp_path, "compare", "k2_conv2d", "k3_conv2d", "-f", "csv")
    assert "conv" in compared.stdout
    _run(installed, tmp_path, "report", "-o", "report.html")
    assert (tmp_path / "report.html").stat().st_size > 10_000


def test_a_missing_view_file_is_a_loud_error(installed, tmp_path):
    sql = Path(
        subprocess.run(
            [installed / "python", "-c", "import wpipe.views as v; print(v.sql_dir())"],
            cwd=tmp_path, env=_env(), capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    shutil.copy2(MODELS / "k2_lstm.h5", tmp_path / "m.h5")
    _run(installed, tmp_path, "ingest", "m.h5", "-q")
    (sql / "30_weight_health.sql").rename(tmp_path / "kept.sql")
    try:
        result = _run(installed, tmp_path, "health", code=3)
    finally:
        (tmp_path / "kept.sql").rename(sql / "30_weight_health.sql")
    assert "30_weight_health.sql" in result.stderr and "reinstall" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
