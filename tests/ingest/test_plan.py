"""Planning an ingest: chunks, series order and each checkpoint's predecessor."""

from __future__ import annotations

from wpipe.analyse.stats import StatsOptions
from wpipe.ingest.filemap import FileJob, Settings
from wpipe.ingest.plan import CHUNK_FILE_BYTES, CHUNK_FILES, chunked, predecessors, series_order


def test_predecessors_follow_epochs_in_each_folder_not_text_order() -> None:
    paths = ["a/epoch_10.h5", "a/epoch_2.h5", "a/epoch_1.h5", "b/epoch_1.h5", "c/only.h5"]
    got = predecessors(paths, None)
    assert {k: v[0] for k, v in got.items()} == {"a/epoch_2.h5": "a/epoch_1.h5",
                                                  "a/epoch_10.h5": "a/epoch_2.h5"}  # fmt: skip
    assert {v[1] for v in got.values()} == {"a"}  # one series label: the folder


def test_a_large_file_is_a_chunk_of_its_own_and_small_ones_share() -> None:
    sizes = [1, 1, CHUNK_FILE_BYTES + 1, 1, 1]
    chunks = chunked(list("abcde"), sizes, workers=1)
    assert ["c"] in chunks
    assert sorted(x for c in chunks for x in c) == list("abcde")  # nothing lost or repeated
    assert all(len(c) <= CHUNK_FILES for c in chunks)


def test_chunks_shrink_so_every_worker_gets_several() -> None:
    chunks = chunked(list(range(32)), [1] * 32, workers=2)
    assert len(chunks) >= 8 and max(len(c) for c in chunks) <= 2


SETTINGS = Settings(StatsOptions(), None, None, "")  # planning never looks at them


def _job(path: str, previous: str | None) -> FileJob:
    return FileJob(path, "lake", 1, 0.0, SETTINGS, previous=previous, series="s")


def test_series_order_puts_each_checkpoint_right_after_its_predecessor() -> None:
    jobs = [_job("s/e3", "s/e2"), _job("t/e1", None), _job("s/e1", None), _job("s/e2", "s/e1")]
    assert [j.path for j in series_order(jobs)] == ["t/e1", "s/e1", "s/e2", "s/e3"]
