"""wpipe.analyse.eigen's threads change nothing but time: a stack's slices split over threads give
the
eigenvalues of one thread (and of a float64 SVD, within docs: spectral's bounds), the
spectra collector's background thread gives the rows of the synchronous one in the same order,
and a pinned section keeps one BLAS thread, nested contexts and other threads included."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_info
from wpipe.analyse import eigen, spectra_tables
from wpipe.analyse.spectra import SpectraOptions
from wpipe.analyse.tables import GatheredRows, gather_spectra
from wpipe.readers import open_model

from tests.conftest import MODELS


def svd_evals(slices: np.ndarray) -> np.ndarray:
    sv = [np.linalg.svd(s.astype(np.float64), compute_uv=False) for s in slices]
    return np.sort(np.concatenate(sv) ** 2)[::-1]


@pytest.mark.parametrize(
    "shape",
    [(9, 96, 96), (9, 200, 64), (5, 130, 40)],  # float64 Grams (square), float32, uneven runs
)
def test_slices_split_over_threads_equal_one_thread_and_the_svd(monkeypatch, shape):
    w = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    monkeypatch.setattr(eigen, "pool_share", lambda: 1)
    assert eigen._split_ways(*shape) == 1
    one = eigen.spectrum(w)
    monkeypatch.setattr(eigen, "pool_share", lambda: 3)
    monkeypatch.setattr(eigen, "SPLIT_WORK", 1)
    assert eigen._split_ways(*shape) == 3
    split = eigen.spectrum(w)
    assert split.evals == pytest.approx(one.evals, rel=1e-12)
    assert split.noise == pytest.approx(one.noise, rel=1e-12)
    want = svd_evals(w)
    assert split.evals == pytest.approx(want, rel=1e-6, abs=max(split.noise, 1e-12 * want[0]))
    assert split.evals.sum() == pytest.approx(want.sum(), rel=1e-7)


def test_small_stacks_stay_on_one_thread(monkeypatch):
    monkeypatch.setattr(eigen, "pool_share", lambda: 2)
    assert eigen._split_ways(9, 512, 512) == 2
    assert eigen._split_ways(9, 64, 64) == 1  # ~1 ms of work: a thread costs more
    assert eigen._split_ways(1, 4096, 4096) == 1  # one slice: nothing to split


def _blas_threads() -> set[int]:
    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_a_pinned_section_keeps_one_blas_thread_everywhere(monkeypatch):
    monkeypatch.setattr(eigen, "spare_threads", lambda: 2)
    big = eigen.THREADED_WORK * 4
    with eigen.blas_threads(big):
        assert _blas_threads() == {2}
        with eigen.blas_threads(eigen.UNLIMITED_BELOW, pin=True):
            assert _blas_threads() == {1}
            with eigen.blas_threads(big):  # nested: the pin holds
                assert _blas_threads() == {1}

            def on_another_thread():
                with eigen.blas_threads(big):
                    return _blas_threads()

            assert eigen.thread_pool("slices", 2).submit(on_another_thread).result() == {1}
        assert _blas_threads() == {2}


def _collect(monkeypatch, share: int, overlap: int, least: int = 0):
    monkeypatch.setattr(spectra_tables, "pool_share", lambda: share)
    monkeypatch.setattr(spectra_tables, "OVERLAP_BYTES", overlap)
    monkeypatch.setattr(spectra_tables, "OVERLAP_MIN", least)
    collector = spectra_tables.SpectraCollector(SpectraOptions("all"))
    assert collector.background == (share > 1)
    sizes = []
    with open_model(MODELS / "k2_health_cnn.h5") as model:
        for layer in model.layers:
            for tensor in layer.tensors:
                array = tensor.load()
                sizes.append(array.nbytes)
                key = {"model_id": "m", "layer_path": layer.layer_path,
                       "weight_name": tensor.weight_name}  # fmt: skip
                collector.add(key, layer.class_name, layer.config, tensor, array)
    pending = len(collector.pending)
    gathered = GatheredRows()
    gather_spectra(gathered, collector)
    return gathered.tables(), pending, sizes


def test_background_spectra_give_the_synchronous_rows_in_order(monkeypatch):
    sync, pending, sizes = _collect(monkeypatch, 1, 1 << 30)
    assert pending == 0 and sync["spectra"].num_rows > 5
    matrices = sum(r["status"] == "ok" for r in sync["spectra"].to_pylist())
    assert matrices >= 2
    middle = sorted(sizes)[len(sizes) // 2]
    # every tensor in the background; then the larger half inline (above the overlap budget);
    # then the smaller half at once, queued behind the background ones
    for overlap, least in ((1 << 30, 0), (middle, 0), (1 << 30, middle // 4)):
        tables, pending, _ = _collect(monkeypatch, 2, overlap, least)
        assert pending > 0  # still queued when the last tensor was added
        for name in ("spectra", "eigenvalues"):
            assert tables[name].to_pylist() == sync[name].to_pylist()
    assert eigen._PINNED == [0]  # BLAS has its threads back
