"""The user's own files around a lake, through the real CLI (the fuzz suite's `lake` family).

A --lake that already holds the user's files is refused in one line with exit 2 and left as
it was; user files put into an owned lake — its root, table folders, table-named subfolders,
beside and inside `_delta_log`, named like wpipe's data files — stay byte- and mtime-identical
through ingest, a re-ingest of changed files, --prune, compact and a run killed mid-ingest
(rolled back by the next); `--db` on a model file leaves nothing beside it; a project folder
copied whole works in the copy.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from wpipe.store import Lake
from wpipe.store.lake import TABLES

from tests.conftest import MODELS
from tests.fuzz.cases import Case

WPIPE_ARGS = ("-j", "2", "-q")
SOURCES = ("k2_conv2d.h5", "k3_lstm.h5", "k3_conv2d.keras", "k2_mha.weights.h5")
# places a lake can reach, relative to the lake (a `{data}` one gets a data file's bytes)
AROUND = ("mine.csv", "notes/keep.txt", "layers/mine.csv", "layers/part-mine.parquet",
          "layers/sub/keep.txt", "units/layers/part-x.parquet", "models/_delta_log.bak",
          "models/_delta_log/notes.txt", ".spectra-cache/mine.txt", "_wpipe/mine.txt",
          "{data}weights/part-" + "0" * 32 + ".parquet")  # fmt: skip


SNAPSHOT_DEPTH = 64  # levels looked into: the walk family's 1,200-deep folder is not a place
# wpipe writes to, and os.walk would recurse once per level (RecursionError)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root` (SNAPSHOT_DEPTH levels deep at most, with an explicit stack):
    its kind, size, mtime (ns) and, for small files, bytes."""
    paths, stack = [], [(str(root), 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:  # gone, unreadable, or past PATH_MAX
            continue
        for entry in entries:
            paths.append(entry.path)
            if depth < SNAPSHOT_DEPTH and entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, depth + 1))
    return stamps(paths)


def stamps(paths) -> dict[str, tuple]:
    """Each path's kind, size, mtime (ns) and, for a small regular file, its bytes (a FIFO or
    a device is never opened); a path that is gone is left out."""
    out = {}
    for path in paths:
        try:
            st = os.lstat(path)
        except OSError:  # gone, or a path past PATH_MAX
            continue
        small = stat.S_ISREG(st.st_mode) and st.st_size < 1 << 20
        body = Path(path).read_bytes() if small else None
        out[str(path)] = (st.st_mode, st.st_size, st.st_mtime_ns, body)
    return out


def changes(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    gone = [f"deleted {p}" for p in before if p not in after]
    return gone + [f"changed {p}" for p in before if p in after and after[p] != before[p]]


def _wpipe(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wpipe.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=900)  # fmt: skip


def _zoo(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in SOURCES:
        shutil.copy2(MODELS / name, folder / name)
    return folder


def _one_line_refusal(run: subprocess.CompletedProcess, fragment: str) -> list[str]:
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    if run.returncode == 2 and len(lines) == 1 and fragment in lines[0]:
        return []
    return [f"not one refusal line with exit 2 ({run.returncode}): {lines[-3:]}"]


def models_folder_as_lake(root: Path) -> list[str]:
    """`cd project && wpipe ingest models --lake .`, and `wpipe compact --lake .`."""
    zoo = _zoo(root / "models")
    before = snapshot(zoo)
    problems = []
    for args in (("ingest", zoo, *WPIPE_ARGS), ("compact",)):
        run = _wpipe(*args, "--db", root / "w.duckdb", "--lake", zoo)
        problems += _one_line_refusal(run, "holds files wpipe did not write")
    return problems + changes(before, snapshot(zoo)) + _added(before, zoo)


def userdata_as_lake(root: Path) -> list[str]:
    """A folder of the user's that happens to hold `layers/part-mine.parquet`."""
    zoo, userdata = _zoo(root / "models"), root / "userdata"
    (userdata / "layers").mkdir(parents=True)
    shutil.copy2(MODELS / SOURCES[0], userdata / "layers" / "part-mine.parquet")
    before = snapshot(userdata)
    run = _wpipe("ingest", zoo, "--db", root / "w.duckdb", "--lake", userdata, *WPIPE_ARGS)
    problems = _one_line_refusal(run, "holds files wpipe did not write")
    return problems + changes(before, snapshot(userdata)) + _added(before, userdata)


def _added(before: dict[str, tuple], root: Path) -> list[str]:
    return [f"added {p}" for p in snapshot(root) if p not in before]


def user_files_in_an_owned_lake(root: Path) -> list[str]:
    """Ingest, plant the user's files, then every step that writes or deletes in the lake."""
    zoo, db, lake = _zoo(root / "models"), root / "w.duckdb", root / "w.lake"
    ingest = ("ingest", zoo, "--db", db, *WPIPE_ARGS)
    steps: list[tuple[str, Callable[[], object]]] = [("first ingest", lambda: _wpipe(*ingest))]
    problems = _checked_steps(steps, {})
    data_file = next((lake / "weights").glob("part-*.parquet"))
    for rel in AROUND:
        path = lake / rel.removeprefix("{data}")
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.startswith("{data}"):
            shutil.copy2(data_file, path)
        else:
            path.write_text(f"the user's {rel}\n")
    planted = stamps(lake / r.removeprefix("{data}") for r in AROUND)

    def change_a_file() -> subprocess.CompletedProcess:
        shutil.copy2(MODELS / "k2_uncompiled.h5", zoo / SOURCES[1])
        return _wpipe(*ingest)

    def prune() -> subprocess.CompletedProcess:
        (zoo / SOURCES[1]).unlink()
        return _wpipe(*ingest, "--prune")

    steps = [("ingest, nothing to do", lambda: _wpipe(*ingest)),
             ("re-ingest of a changed file", change_a_file), ("--prune", prune),
             ("compact", lambda: _wpipe("compact", "--db", db)),
             ("a run killed mid-ingest, then one more", lambda: _killed_then_again(ingest, zoo)),
             ("compact again", lambda: _wpipe("compact", "--db", db))]  # fmt: skip
    problems += _checked_steps(steps, planted)
    # and wpipe's own leftovers are still swept: only the user's look-alike is unreferenced
    handle = Lake.open(str(lake))
    left = [f"{t}/{f}" for t in TABLES for f in handle.unreferenced(t)]
    if left != [AROUND[-1].removeprefix("{data}")]:
        problems.append(f"orphaned lake files: {left[:3]}")
    return problems


def _checked_steps(steps, planted: dict[str, tuple]) -> list[str]:
    problems = []
    for name, step in steps:
        run = step()
        if run.returncode != 0 or "Traceback" in run.stderr:
            problems.append(f"{name}: exit {run.returncode} {run.stderr[-300:]}")
        problems += [f"{name}: {c}" for c in changes(planted, stamps(planted))]
    return problems


def _killed_then_again(ingest: tuple, zoo: Path) -> subprocess.CompletedProcess:
    for i in range(3):  # more files, so the run is still reading when it is killed
        for name in SOURCES:
            shutil.copy2(MODELS / name, zoo / f"more{i}_{name}")
    proc = subprocess.Popen([sys.executable, "-m", "wpipe.cli", *map(str, ingest)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    time.sleep(3.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return _wpipe(*ingest)


def model_file_as_db(root: Path) -> list[str]:
    zoo = _zoo(root / "models")
    before = snapshot(zoo)
    run = _wpipe("ingest", zoo, "--db", zoo / SOURCES[0], *WPIPE_ARGS)
    problems = _one_line_refusal(run, "not a DuckDB database")
    return problems + changes(before, snapshot(zoo)) + _added(before, zoo)


def copied_project(root: Path) -> list[str]:
    project = root / "project"
    zoo = _zoo(project / "models")
    first = _wpipe("ingest", zoo, "--db", project / "w.duckdb", *WPIPE_ARGS)
    shutil.copytree(project, root / "copy", symlinks=True)
    again = _wpipe("ingest", zoo, "--db", root / "copy" / "w.duckdb", *WPIPE_ARGS)
    shutil.rmtree(project / "w.lake")  # the copy reads its own lake, not this one
    read = _wpipe("query", "SELECT count(*) FROM units", "--db", root / "copy" / "w.duckdb")
    return [f"{name}: exit {run.returncode} {run.stderr[-300:]}"
            for name, run in (("ingest", first), ("ingest in the copy", again),
                              ("query in the copy", read)) if run.returncode != 0]  # fmt: skip


SCENARIOS = {
    "the models folder as --lake": models_folder_as_lake,
    "a user's folder holding layers/part-mine.parquet as --lake": userdata_as_lake,
    "user files in every place of an owned lake": user_files_in_an_owned_lake,
    "a model file as --db": model_file_as_db,
    "a project folder copied whole": copied_project,
}


def lake_cases() -> list[Case]:
    return [Case("lake", name, lambda d: None) for name in SCENARIOS]
