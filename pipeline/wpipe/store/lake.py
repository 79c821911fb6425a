"""store stage: the Delta lake — one Delta Lake table per contract table, `<lake>/<table>/`.

Data files are Parquet files in a table's folder, invisible to every reader until a commit
names them. Workers write the files of their large tables; the ingest driver writes each
batch's small tables as one file per table and alone commits (one committer: no write
conflicts). A commit that replaces models removes their old files in the same transaction
(rewriting a shared file without them), so a reader sees either the old rows or the new ones.
Nothing is renamed, so the lake can live on object storage: the location is a path or URI plus
deltalake `storage_options`, and data files go through a pyarrow filesystem.
The lake's folder is wpipe's (`owned`): each data file is recorded as wpipe's before it is
written, and only recorded files are ever deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError
from deltalake.transaction import AddAction, PostCommitHookProperties, RemoveAction

from wpipe.core import schema
from wpipe.store import owned
from wpipe.store.location import LakeLocation

if TYPE_CHECKING:  # Arrow's compute, dataset and Parquet modules load where rows are read or
    # written: a run that changes nothing (a no-op ingest) never needs them
    import pyarrow.dataset as pads

TABLES = {t.name: t for t in schema.MODEL_TABLES}  # a model's rows: committed per batch
# every contract table by name: the shared ones (drift, errors, names) are overwritten whole
CONTRACT = {t.name: t for t in schema.ALL_TABLES}
# A compacted file's size: large enough that 10,000 small models make a handful of files.
TARGET_FILE_BYTES = 128 << 20
STREAM_BATCH_ROWS = 1 << 16  # rows a batch when files are merged
T = TypeVar("T")


@dataclass(frozen=True)
class DataFile:
    """A Parquet data file written into a table's folder, not yet committed."""

    table: str
    name: str  # relative to the table's folder
    size: int
    num_rows: int
    min_id: str | None  # None: a table without model_id (drift, ingest_errors)
    max_id: str | None

    def add_action(self, data_change: bool = True) -> AddAction:
        stats: dict = {"numRecords": self.num_rows}
        if self.min_id is not None:
            stats |= {
                "minValues": {"model_id": self.min_id},
                "maxValues": {"model_id": self.max_id},
                "nullCount": {"model_id": 0},
            }
        now = int(time.time() * 1000)
        return AddAction(self.name, self.size, {}, now, data_change, json.dumps(stats))


def _encodings(table: str) -> dict[str, str]:
    """Column -> Parquet encoding of a data file: byte-split floats and delta-coded integers
    (with zstd: on MobileNetV2's rows 35 % fewer bytes than dictionary pages and snappy, and
    DuckDB, Polars and Spark read them); strings keep dictionaries (absent here)."""
    out = {}
    for column in CONTRACT[table].arrow_schema:
        if pa.types.is_floating(column.type):
            out[column.name] = "BYTE_STREAM_SPLIT"
        elif pa.types.is_integer(column.type):
            out[column.name] = "DELTA_BINARY_PACKED"
    return out


def _parquet_options(table: str) -> dict:
    """pyarrow's writer options for a data file of `table`."""
    encodings = _encodings(table)
    dictionary = [c for c in CONTRACT[table].arrow_schema.names if c not in encodings]
    return {"compression": "zstd", "use_dictionary": dictionary, "column_encoding": encodings}


def _file_schema(table: str) -> pa.Schema:
    """The Arrow schema a data file is written with: weight_values' key columns
    dictionary-coded, as tables.py emits them (a cast of millions of rows to plain strings
    would cost more memory than the values), the contract's schema otherwise."""
    arrow_schema = CONTRACT[table].arrow_schema
    if table != "weight_values":
        return arrow_schema
    coded = pa.dictionary(pa.int32(), pa.string())
    keys = ("model_id", "layer_path", "weight_name")
    return pa.schema([f.with_type(coded) if f.name in keys else f for f in arrow_schema])


class DataFileWriter:
    """Streams Arrow batches of one table into a new data file of the lake."""

    def __init__(self, location: LakeLocation, table: str) -> None:
        self.table = table
        self.name = f"part-{uuid.uuid4().hex}.parquet"
        self._location = location
        owned.record(location, table, self.name)  # first: a kill after it leaves a swept name
        fs, root = location.filesystem()
        self._fs = fs
        self._path = f"{root.rstrip('/')}/{table}/{self.name}"
        self._sink = fs.open_output_stream(self._path)
        # no ARROW:schema: dictionary-typed key columns read back as plain strings, as the
        # Delta schema says
        self._schema = _file_schema(table)
        import pyarrow.parquet as pq

        self._writer = pq.ParquetWriter(
            self._sink, self._schema, store_schema=False, **_parquet_options(table)
        )
        self.num_rows = 0
        self._ids: set[str] = set()

    @property
    def dictionary_columns(self) -> list[str]:
        """Columns the file holds dictionary-coded (read back so, they need no re-coding)."""
        return [f.name for f in self._schema if pa.types.is_dictionary(f.type)]

    def write(self, data: pa.RecordBatch | pa.Table) -> None:
        if not data.num_rows:
            return
        if "model_id" in data.schema.names:
            ids = data.column("model_id")
            if isinstance(ids, pa.ChunkedArray):
                ids = ids.combine_chunks()
            if pa.types.is_dictionary(ids.type):
                ids = ids.dictionary
            import pyarrow.compute as pc

            self._ids.update(pc.unique(ids).to_pylist())
        if data.schema != self._schema:  # held string-keyed rows into a dictionary-keyed file
            data = data.cast(self._schema)
        if isinstance(data, pa.RecordBatch):
            self._writer.write_batch(data)
        else:
            self._writer.write_table(data)
        self.num_rows += data.num_rows

    def close(self) -> DataFile:
        self._writer.close()
        self._sink.close()
        size = self._fs.get_file_info(self._path).size
        ids = sorted(self._ids) or [None]
        return DataFile(self.table, self.name, size, self.num_rows, ids[0], ids[-1])

    def abort(self) -> None:
        """Best effort: an uncommitted file left behind is invisible and swept later."""
        for step in (
            self._writer.close,
            self._sink.close,
            lambda: self._fs.delete_file(self._path),
            lambda: owned.forget(self._location, self.table, [self.name]),
        ):
            with contextlib.suppress(OSError, ValueError):
                step()


def _one_ahead(items: Iterator[T]) -> Iterator[T]:
    """`items`, the next one produced on a thread while the caller works on this one."""
    with ThreadPoolExecutor(1, "wpipe-read-ahead") as pool:
        future = pool.submit(next, items, None)
        while (item := future.result()) is not None:
            future = pool.submit(next, items, None)
            yield item


def write_data_file(location: LakeLocation, table: str, rows: pa.Table) -> DataFile:
    writer = DataFileWriter(location, table)
    try:
        writer.write(rows)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


@dataclass
class Lake:
    """The driver's handle on a lake: tables, commits, reads, compaction."""

    location: LakeLocation
    _tables: dict[str, DeltaTable] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, root: str, storage_options: dict[str, str] | None = None) -> Lake:
        return cls(LakeLocation(str(root), storage_options))

    @cached_property
    def _fs(self) -> tuple[pafs.FileSystem, str]:
        return self.location.filesystem()

    def claim(self) -> None:
        """Take the lake's folder for wpipe, or refuse one that holds files wpipe did not write
        (owned.LakeNotOwned). Before anything is written or deleted there."""
        owned.claim(self.location)

    def table(self, name: str) -> DeltaTable:
        """The Delta table `name`, created empty (with the contract's schema) if missing."""
        if name not in self._tables:
            uri, options = self.location.table_uri(name), self.location.storage_options
            try:
                self._tables[name] = DeltaTable(uri, storage_options=options)
            except TableNotFoundError:
                self._tables[name] = DeltaTable.create(
                    uri, schema=CONTRACT[name].arrow_schema, mode="ignore", storage_options=options
                )
        return self._tables[name]

    def versions(self) -> dict[str, int]:
        """table -> current version (tables are created where missing)."""
        return {name: self.table(name).version() for name in TABLES}

    def dataset(self, name: str, files: Iterable[str] | None = None) -> pads.Dataset:
        """The table's committed rows, or only those of `files` (names in its folder)."""
        arrow_schema = TABLES[name].arrow_schema
        fs, root = self._fs
        if files is None:
            # the log names files relative to the table's folder
            subtree = pafs.SubTreeFileSystem(f"{root.rstrip('/')}/{name}", fs)
            return self.table(name).to_pyarrow_dataset(filesystem=subtree, schema=arrow_schema)
        paths = [self._logged_path(name, f) for f in files]
        import pyarrow.dataset as pads

        return pads.dataset(paths, schema=arrow_schema, format="parquet", filesystem=fs)

    def _logged_path(self, name: str, file: str) -> str:
        """The path on the lake's filesystem of table `name`'s data file `file`, as the log
        names it (relative to the table's folder, percent-encoded)."""
        return f"{self._fs[1].rstrip('/')}/{name}/{unquote(file)}"

    @property
    def local(self) -> bool:
        """On the local disk, at a path DuckDB would not take for a glob pattern."""
        return "://" not in self.location.root and not any(c in self.location.root for c in "*?[{")

    def current_files(self, name: str) -> list[str]:
        """Table `name`'s current data files, as its log names them (relative to its folder,
        percent-encoded)."""
        return self.table(name).get_add_actions(flatten=True).column("path").to_pylist()

    def current_local_paths(self, name: str) -> list[str]:
        """Absolute paths of table `name`'s current data files (a `local` lake). Not
        file_uris(): it percent-encodes the root (a space becomes %20)."""
        return self.local_paths(name, [unquote(f) for f in self.current_files(name)]) or []

    def local_paths(self, name: str, files: Iterable[str]) -> list[str] | None:
        """Absolute paths of table `name`'s data files `files` on the local disk (None: not
        `local`)."""
        if not self.local:
            return None
        root = os.path.abspath(self.location.root)
        return [f"{root}/{name}/{f}" for f in files]

    def commit(
        self, name: str, adds: list[DataFile], removes: Iterable[str] = (), data_change: bool = True
    ) -> int:
        """One Delta commit on table `name`: add `adds`, remove the files named `removes`
        (`data_change` False: the same rows in other files, as a compaction commits)."""
        removes = list(removes)
        if not adds and not removes:
            return self.table(name).version()
        now = int(time.time() * 1000)
        actions = [f.add_action(data_change) for f in adds]
        actions += [RemoveAction(p, data_change, now) for p in removes]
        dt = self.table(name)
        dt.create_write_transaction(
            actions, mode="append", schema=CONTRACT[name].arrow_schema,
            post_commithook_properties=PostCommitHookProperties(create_checkpoint=True),
        )  # fmt: skip
        dt.update_incremental()
        return dt.version()

    def files_holding(self, name: str, model_ids: set[str]) -> dict[str, int]:
        """Committed files of table `name` with rows of `model_ids`: file -> rows it holds
        of other models (0: drop the whole file). File statistics (min/max model_id) narrow
        the candidates, each candidate's model_id column decides."""
        if not model_ids:
            return {}
        adds = self.table(name).get_add_actions(flatten=True)
        if not adds.num_rows:
            return {}
        lo, hi = min(model_ids), max(model_ids)
        paths = adds.column("path").to_pylist()
        mins = (
            adds.column("min.model_id").to_pylist() if "min.model_id" in adds.column_names else None
        )
        maxs = (
            adds.column("max.model_id").to_pylist() if "max.model_id" in adds.column_names else None
        )
        import pyarrow.compute as pc

        wanted = pa.array(sorted(model_ids))
        out = {}
        for i, path in enumerate(paths):
            if mins and maxs and mins[i] is not None and maxs[i] is not None:
                if maxs[i] < lo or mins[i] > hi:
                    continue
                if mins[i] == maxs[i] and mins[i] not in model_ids:
                    continue
            ids = self.dataset(name, [path]).to_table(columns=["model_id"]).column("model_id")
            hit = pc.is_in(ids, value_set=wanted)
            hits = pc.sum(hit).as_py() or 0
            if hits:
                out[path] = len(ids) - hits
        return out

    def replace(self, name: str, model_ids: set[str], adds: list[DataFile]) -> int:
        """Commit `adds` and drop every older row of `model_ids`, in one commit. A file that
        also holds other models is rewritten without the dropped ones."""
        removes, kept = [], []
        for path, others in self.files_holding(name, model_ids).items():
            removes.append(path)
            if others:
                kept.append(self._rewrite_without(name, path, model_ids))
        return self.commit(name, [*adds, *kept], removes)

    def _rewrite_without(self, name: str, path: str, model_ids: set[str]) -> DataFile:
        source = self.dataset(name, [path])
        import pyarrow.compute as pc

        keep = ~pc.field("model_id").isin(sorted(model_ids))
        writer = DataFileWriter(self.location, name)
        try:
            for batch in source.to_batches(filter=keep, batch_size=1 << 20):
                writer.write(batch)
        except BaseException:
            writer.abort()
            raise
        return writer.close()

    def rows_of(self, name: str, model_ids: set[str]) -> pa.Table:
        """Committed rows of `model_ids` in table `name` (their files only)."""
        files = list(self.files_holding(name, model_ids))
        if not files:
            return TABLES[name].arrow_schema.empty_table()
        import pyarrow.compute as pc

        return self.dataset(name, files).to_table(
            filter=pc.field("model_id").isin(sorted(model_ids))
        )

    def restore(self, name: str, version: int) -> int:
        """Roll table `name` back to `version` (a new commit; used after a killed run)."""
        dt = self.table(name)
        dt.restore(version)
        dt.update_incremental()
        return dt.version()

    def overwrite(self, name: str, data: pa.Table | pa.RecordBatchReader) -> int:
        """Replace the whole table by `data` (the contract's schema) in one commit: one data
        file streamed by pyarrow (deltalake's own writer kept ~45 MB of the driver after
        writing 2,000 models' rows)."""
        self.table(name)  # made first: its folder is the data file's
        writer = DataFileWriter(self.location, name)
        try:
            for batch in data.to_batches() if isinstance(data, pa.Table) else data:
                writer.write(batch)
        except BaseException:
            writer.abort()
            raise
        if writer.num_rows:
            added = [writer.close()]
        else:
            writer.abort()
            added = []
        return self.commit(name, added, self.current_files(name))

    def file_count(self) -> dict[str, int]:
        return {name: len(self.table(name).file_uris()) for name in TABLES}

    def compact(self) -> None:
        """Merge each table's small files into files of about TARGET_FILE_BYTES, one commit
        a table (the sources removed in the same commit). Files are taken in model_id
        order, so a merged file covers a narrow id range and a later replacement opens few.
        pyarrow streams it a row group at a time: deltalake's optimize grew the driver by
        ~130 MB at 10,000 small models whatever the target size (48 MB for `layers`' 370 KB).
        Not z-ordered: a sort holds whole tables. Merged-away files stay until `sweep`."""
        for name in TABLES:
            bins = self._bins(name)
            merged: list[DataFile] = []
            try:
                for group in bins:
                    merged.append(self._merge(name, group))
            except BaseException:
                self.delete_uncommitted(merged)
                raise
            self.commit(name, merged, [f for group in bins for f in group], data_change=False)

    def _bins(self, name: str) -> list[list[str]]:
        """Table `name`'s current files in groups of about TARGET_FILE_BYTES to merge, by
        their smallest model_id; a file alone in its group stays as it is."""
        adds = pa.table(self.table(name).get_add_actions(flatten=True))
        if adds.num_rows < 2:
            return []
        if "min.model_id" in adds.column_names:
            adds = adds.sort_by([("min.model_id", "ascending"), ("path", "ascending")])
        bins: list[list[str]] = [[]]
        filled = 0
        for path, size in zip(
            adds["path"].to_pylist(), adds["size_bytes"].to_pylist(), strict=True
        ):
            if filled >= TARGET_FILE_BYTES:
                bins.append([])
                filled = 0
            bins[-1].append(path)
            filled += size
        return [group for group in bins if len(group) > 1]

    def _merge(self, name: str, files: list[str]) -> DataFile:
        """One new data file with the rows of `files` (uncommitted), read a row group at a
        time (a dataset scan of many files reads ahead: 938 MB peak at 10,000 models); the
        next batch is decoded while this one is encoded (each about half the time)."""
        writer = DataFileWriter(self.location, name)
        try:
            for batch in _one_ahead(self._batches(name, files, writer.dictionary_columns)):
                writer.write(batch)
        except BaseException:
            writer.abort()
            raise
        return writer.close()

    def _batches(
        self, name: str, files: list[str], dictionary: list[str]
    ) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq

        fs = self._fs[0]
        for file in files:
            with fs.open_input_file(self._logged_path(name, file)) as source:
                parquet = pq.ParquetFile(source, read_dictionary=dictionary)
                yield from parquet.iter_batches(batch_size=STREAM_BATCH_ROWS)

    def unreferenced(self, name: str) -> list[str]:
        """Files in table `name`'s folder named as wpipe names data files that its current
        version does not reference (what a sweep leaves: nothing wpipe recorded). Names
        relative to the table's folder."""
        fs, root = self._fs
        folder = f"{root.rstrip('/')}/{name}"
        try:
            listed = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        except (FileNotFoundError, NotADirectoryError):
            return []
        current = {unquote(f) for f in self.current_files(name)}
        return sorted(
            info.base_name
            for info in listed
            if info.type == pafs.FileType.File
            and owned.DATA_NAME.match(info.base_name)
            and info.base_name not in current
        )

    def sweep(self, min_age: float = 0.0, tables: Iterable[str] = TABLES) -> int:
        """Delete the data files wpipe recorded as written (`owned`) that no current version
        references — files a killed or failed run wrote but never committed, and files later
        commits dropped (the lake keeps no history) — without a commit, so the versions the
        database recorded stay current; returns how many. Never a file wpipe did not record.
        Only for a writer holding the lock, after `sync.reconcile` rolled back what a killed
        run committed; a lake other machines may be writing keeps files recorded less than
        `min_age` seconds ago (theirs may be on their way to a commit)."""
        fs, root = self._fs
        swept = 0
        for name in tables:
            written = owned.recorded(self.location, name, min_age)
            if not written:
                continue
            current = {unquote(f) for f in self.current_files(name)}
            gone = [f for f in written if f not in current]
            for file in gone:
                with contextlib.suppress(FileNotFoundError):
                    fs.delete_file(f"{root.rstrip('/')}/{name}/{file}")
                    swept += 1
            owned.forget(self.location, name, gone)
        return swept

    def delete_uncommitted(self, files: Iterable[DataFile]) -> None:
        """Best effort: remove data files that a failed run wrote and never committed."""
        fs, root = self._fs
        by_table: dict[str, list[DataFile]] = {}
        for f in files:
            by_table.setdefault(f.table, []).append(f)
        for name, group in by_table.items():
            with contextlib.suppress(Exception):  # a full disk or a dead store: next run's sweep
                current = {unquote(f) for f in self.current_files(name)}
                gone = [f.name for f in group if f.name not in current]
                for file in gone:
                    with contextlib.suppress(OSError):
                        fs.delete_file(f"{root.rstrip('/')}/{name}/{file}")
                owned.forget(self.location, name, gone)
