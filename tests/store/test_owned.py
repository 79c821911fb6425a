"""The lake is wpipe's folder: a --lake holding files wpipe did not write is refused, and no
ingest, re-ingest, prune, compaction or roll-back ever deletes or changes a file someone else
put anywhere a lake reaches."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner
from wpipe import api, store
from wpipe.cli import app
from wpipe.core import schema
from wpipe.ingest import filemap
from wpipe.ingest.driver import commit_batch
from wpipe.store import owned, sync

from tests.conftest import MODELS, Warehouse
from tests.store.test_lake import _settings, assert_lake_equals_database

runner = CliRunner()
TABLES = [t.name for t in schema.MODEL_TABLES]


def snapshot(paths: list[Path]) -> dict[str, tuple[bytes, int]]:
    """Each file's bytes and modification time (ns): any deletion or change shows."""
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in paths}


def tree(folder: Path) -> dict[str, tuple[bytes, int]]:
    return snapshot([p for p in sorted(folder.rglob("*")) if p.is_file()])


def plant(folder: Path, relative: list[str], source: Path | None = None) -> list[Path]:
    """User files at `relative` places under `folder` (a copy of `source`, or a line of text)."""
    planted = []
    for rel in relative:
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if source is not None:
            shutil.copy2(source, path)
        else:
            path.write_text(f"the user's own {rel}\n")
        planted.append(path)
    return planted


def cli(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.parametrize(
    "layout",
    [
        ["notes.txt"],  # the models folder itself as the lake (`--lake .`)
        ["layers/part-mine.parquet"],  # userdata/layers/… : a table-named folder of the user's
        ["layers/_delta_log/00000000000000000000.json", "layers/mine.csv"],  # a lake look-alike
        [".tmp/keep.txt"],
    ],
)
def test_a_lake_folder_holding_the_users_files_is_refused_and_left_alone(folder, tmp_path, layout):
    lake = folder if layout == ["notes.txt"] else tmp_path / "userdata"
    plant(lake, layout)
    before = tree(lake)
    db = tmp_path / "w.duckdb"
    for args in (["ingest", str(folder), "-q"], ["compact"]):
        result = cli(*args, "--db", str(db), "--lake", str(lake))
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2, result.output
        assert len(lines) == 1 and "holds files wpipe did not write" in lines[0], lines
        assert tree(lake) == before  # nothing deleted, changed or added
    assert not (lake / owned.OWN).exists() and not (lake / "models").exists()


def test_no_ingest_prune_compaction_or_roll_back_touches_a_file_in_the_lake_it_did_not_write(
    folder, warehouse: Warehouse
):
    warehouse.ingest(folder)
    lake_dir = warehouse.lake
    data_file = next((lake_dir / "weights").glob("part-*.parquet"))
    places = [
        "mine.csv", "notes/keep.txt", "layers/mine.csv", "layers/part-mine.parquet",
        "layers/sub/keep.txt", "units/layers/part-x.parquet", "models/_delta_log.bak",
        "models/_delta_log/notes.txt", ".spectra-cache/mine.txt", "_wpipe/mine.txt",
    ]  # fmt: skip
    planted = plant(lake_dir, places)
    # named as wpipe names its data files, with a data file's bytes: still not wpipe's
    planted += plant(lake_dir, [f"weights/part-{'0' * 32}.parquet"], data_file)
    before = snapshot(planted)

    def unchanged_and_clean(step: str) -> None:
        assert snapshot(planted) == before, step
        lake = store.Lake.open(str(lake_dir))
        leftovers = {t: lake.unreferenced(t) for t in TABLES}  # wpipe's own: swept
        assert leftovers == {**{t: [] for t in TABLES}, "weights": [f"part-{'0' * 32}.parquet"]}
        assert_lake_equals_database(warehouse)

    warehouse.ingest(folder)
    unchanged_and_clean("an ingest with nothing to do")
    changed = folder / "k3_lstm.h5"
    shutil.copy2(MODELS / "k2_uncompiled.h5", changed)  # other content under the same name
    assert warehouse.ingest(folder).ingested == 1
    unchanged_and_clean("a re-ingest replacing a model's rows")
    changed.unlink()
    assert warehouse.ingest(folder, prune=True).pruned == 1
    unchanged_and_clean("--prune")
    result = cli("compact", "--db", str(warehouse.db_path), "--lake", str(lake_dir))
    assert result.exit_code == 0, result.output
    unchanged_and_clean("wpipe compact")
    # a batch committed to the lake and never loaded (a failed or killed load): rolled back
    db, lake = store.Database(warehouse.db_path), store.Lake.open(str(lake_dir))
    try:
        job = filemap.FileJob(str(MODELS / "k3_conv2d.keras"), lake.location, 1, 1.0,
                              filemap.Settings(*_settings()))  # fmt: skip
        commit_batch(lake, [filemap.process_file(job)], set())
        sync.reconcile(db, lake)
        lake.sweep()
    finally:
        db.close()
    unchanged_and_clean("a batch rolled back")
    warehouse.ingest(folder)
    unchanged_and_clean("the ingest after the roll-back")


def test_a_lake_of_an_older_wpipe_is_taken_and_its_strays_swept(folder, warehouse: Warehouse):
    """A lake without wpipe's marker and records (an older wpipe wrote it) holding only
    wpipe's files is taken as wpipe's; a data file its killed run left is swept."""
    warehouse.ingest(folder)
    shutil.rmtree(warehouse.lake / owned.OWN)
    data_file = next((warehouse.lake / "weights").glob("part-*.parquet"))
    stray = warehouse.lake / "weights" / f"part-{'a' * 32}.parquet"
    shutil.copy2(data_file, stray)
    assert warehouse.ingest(folder).unchanged == 3
    assert not stray.exists() and (warehouse.lake / owned.MARKER).is_file()
    assert_lake_equals_database(warehouse)


def test_a_lake_in_a_new_or_empty_folder_is_taken(folder, tmp_path):
    for lake in (tmp_path / "new" / "lake", tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        result = cli("ingest", str(folder), "--db", str(tmp_path / f"{lake.name}.duckdb"),
                     "--lake", str(lake), "-q")  # fmt: skip
        assert result.exit_code == 0, result.output
        assert (lake / owned.MARKER).is_file() and (lake / "models" / "_delta_log").is_dir()


def test_a_data_file_wpipe_wrote_is_recorded_before_it_exists(tmp_path):
    lake = store.Lake.open(str(tmp_path / "lake"))
    lake.claim()
    lake.table("weights")  # its folder
    writer = store.DataFileWriter(lake.location, "weights")
    assert owned.recorded(lake.location, "weights") == [writer.name]
    writer.abort()  # deleted, and its record with it
    assert owned.recorded(lake.location, "weights") == []
    assert os.listdir(tmp_path / "lake" / "weights") == ["_delta_log"]


def test_querying_a_folder_that_is_no_lake_writes_nothing_there(folder):
    before = tree(folder)
    with pytest.raises(LookupError, match="no wpipe lake here"):
        api.connect_lake(folder)
    assert tree(folder) == before and not (folder / "models").exists()


def test_the_refusal_is_one_line_whatever_the_users_file_is_named(tmp_path, folder):
    lake = tmp_path / "mine"
    plant(lake, ["a\nb [bold]c\x1b[2J.txt"])
    result = cli("ingest", str(folder), "--db", str(tmp_path / "w.duckdb"), "--lake", str(lake))
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, lines
    assert "'a\\nb [bold]c\\x1b[2J.txt'" in lines[0]


def test_the_spectra_cache_folder_is_known_as_wpipes():
    from wpipe.analyse.spectra_tables import CACHE_FOLDER

    assert owned._CACHE == CACHE_FOLDER  # a lake holding one is still taken as wpipe's
