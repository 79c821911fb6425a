"""The per-file map over a chunk: the chunk's small tables hold exactly its ingested files'
rows (the same as each file read on its own), none of a file that failed half-way."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pyarrow.parquet as pq
from wpipe.analyse.spectra import SpectraOptions
from wpipe.analyse.stats import StatsOptions
from wpipe.analyse.tables import GATHERED, ValuesMode
from wpipe.core import schema
from wpipe.ingest.filemap import FileJob, Settings, process_chunk, process_file
from wpipe.store import remote

from tests.conftest import dense_config, write_legacy_h5


def layers(rng: np.random.Generator) -> dict:
    def weights(name: str) -> dict:
        kernel, bias = rng.normal(size=(6, 6)), rng.normal(size=6)
        return {f"{name}/kernel:0": kernel.astype("f4"), f"{name}/bias:0": bias.astype("f4")}

    return {name: weights(name) for name in ("d", "e")}


def corrupt_last_kernel(path) -> None:
    """e's kernel stored gzip-compressed, its one chunk overwritten: reading it fails, after
    layer d was analysed."""
    with h5py.File(path, "r+") as f:
        group = f["model_weights/e"]
        data = group["e/kernel:0"][()]
        del group["e/kernel:0"]
        ds = group.create_dataset("e/kernel:0", data=data, compression="gzip", chunks=(6, 6))
        offset = ds.id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * 16)


def test_a_chunk_holds_its_ingested_files_rows_and_none_of_a_failed_one(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "m"
    folder.mkdir()
    a = write_legacy_h5(folder / "a.h5", layers(rng), dense_config("d", "e"))
    b = write_legacy_h5(folder / "b.h5", layers(rng), dense_config("d", "e"))
    corrupt_last_kernel(b)
    c = shutil.copy2(a, folder / "c.h5")
    lake = remote.open_lake(tmp_path / "lake")
    for table in schema.MODEL_TABLES:
        lake.table(table.name)
    options, values, spectra = StatsOptions(), ValuesMode.default(), SpectraOptions()
    settings = Settings(options, values, spectra, "test")
    jobs = [FileJob(str(p), lake.location, p.stat().st_size, p.stat().st_mtime, settings)
            for p in (a, b, c)]  # fmt: skip
    chunk = process_chunk(jobs)
    assert [o.status for o in chunk.outcomes] == ["ingested", "failed", "ingested"]
    assert chunk.outcomes[1].error == "corrupt" and "b.h5" in chunk.outcomes[1].message
    written = {f.table: pq.read_table(tmp_path / "lake" / f.table / f.name) for f in chunk.files}
    alone = [process_file(job) for job in (jobs[0], jobs[2])]  # each file on its own
    ids = [o.model_id for o in alone]
    for name in GATHERED:
        rows = written[name].drop([c for c in ("ingested_at",) if c in written[name].column_names])
        assert rows["model_id"].unique().to_pylist() == ids, name
        expected = [o.tables[name] for o in alone]
        assert rows.num_rows == sum(t.num_rows for t in expected) > 0, name
        own = [t.drop([c for c in ("ingested_at",) if c in t.column_names]) for t in expected]
        for model_id, table in zip(ids, own, strict=True):
            mine = rows.filter(np.asarray(rows["model_id"].to_pylist()) == model_id)
            assert mine.equals(table), name
