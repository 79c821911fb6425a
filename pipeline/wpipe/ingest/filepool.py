"""The ingest's map over files: hashing and reading them in replaceable worker processes
(wpipe.ingest.workers) or on Dask, a chunk of small files per task."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

from wpipe.analyse.tables import model_id_for
from wpipe.ingest import workers
from wpipe.ingest.filemap import (
    ChunkOutcome,
    FileJob,
    Outcome,
    hash_files,
    process_chunk,
    process_file,
)
from wpipe.ingest.plan import chunked, series_order


class FilePool:
    """The map's two phases (hash, read) through wpipe.ingest.workers, small files a chunk per task:
    each task in a replaceable worker under the per-file time limit, or on Dask (`dask`:
    `local` or an address; a task's key follows its files' content and the settings, so a
    retried or duplicated task is one result). A chunk that is stopped or whose worker dies
    is read again one file per task, so only the culprit fails. Files on object storage are
    one task each (each is fetched to a temporary copy by the worker that reads it)."""

    def __init__(self, jobs: int, file_timeout: workers.TimeLimit, dask: str | None = None) -> None:
        self.jobs, self.timeout, self.dask = jobs, file_timeout, dask
        self.stack = ExitStack()
        self.client = None  # one Dask client (and LocalCluster) for both phases

    def __enter__(self) -> FilePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def _map(self, function: Callable, items: list, name: Callable, sizes: Callable) -> Iterator:
        """`sizes(item)`: the bytes of the item's files (for the default time limit)."""
        if self.dask is None:
            limit = self.timeout
            if limit == workers.AUTO:
                limit = lambda item: workers.scaled_limit(sizes(item))  # noqa: E731
            return workers.map_files(function, items, self.jobs, limit, name=name,
                                     preload=workers.READER_MODULES)  # fmt: skip
        if self.client is None and items:
            client = workers.dask_client(self.dask, self.jobs, preload=workers.READER_MODULES)
            self.client = self.stack.enter_context(client)
        keys = [workers.task_key((function.__name__, _identity(item))) for item in items]
        return workers.map_files_on_dask(function, items, self.client, self.jobs, keys, name)

    def hashes(self, jobs: list[FileJob]) -> Iterator[tuple[str, str | None, str | None]]:
        chunks = chunked([j.path for j in jobs], [j.size for j in jobs], self.jobs)
        size = {j.path: j.size for j in jobs}
        sizes = lambda chunk: [size[p] for p in chunk]  # noqa: E731
        for chunk, result in self._map(hash_files, chunks, lambda c: c[0], sizes):
            if isinstance(result, workers.WorkerFailure):
                for path in chunk:
                    yield path, None, result.message
            else:
                yield from result

    def chunk_outcomes(self, jobs: list[FileJob]) -> Iterator[ChunkOutcome]:
        if any(j.remote is not None for j in jobs):
            for outcome in self.outcomes(jobs):
                yield ChunkOutcome([outcome], [])
            return
        jobs = series_order(jobs)
        chunks = chunked(jobs, [j.size for j in jobs], self.jobs)
        again: list[FileJob] = []
        sizes = lambda chunk: [j.size for j in chunk]  # noqa: E731
        for chunk, result in self._map(process_chunk, chunks, lambda c: c[0].path, sizes):
            if not isinstance(result, workers.WorkerFailure):
                yield result
            elif len(chunk) > 1:
                again += chunk  # what the stopped task had written is never committed
            else:
                yield ChunkOutcome([_failure(chunk[0], result)], [])
        for outcome in self.outcomes(again):
            yield ChunkOutcome([outcome], [])

    def outcomes(self, jobs: list[FileJob]) -> Iterator[Outcome]:
        for job, result in self._map(process_file, jobs, lambda job: job.path,
                                     lambda job: [job.size]):  # fmt: skip
            if isinstance(result, workers.WorkerFailure):
                result = _failure(job, result)
            yield result


def _failure(job: FileJob, failure: workers.WorkerFailure) -> Outcome:
    # what a killed worker had written is never committed (vacuumed later)
    return Outcome(job.path, model_id_for(job.path), "failed", error=failure.code,
                   message=failure.message, bytes_read=job.size)  # fmt: skip


def _identity(item: FileJob | str | list) -> tuple:
    """What a task's result depends on: the files, their content tags and the settings."""
    if isinstance(item, list):  # a chunk: its files, in order
        return tuple(_identity(i) for i in item)
    if isinstance(item, str):
        return (item,)
    tag = item.remote.tag if item.remote else ""
    return (item.path, item.size, item.mtime, tag, item.sha256, item.previous,
            item.settings.text, item.lake.root)  # fmt: skip
