"""Keras files compressed whole (readers/compressed.py): a real tf_keras file compressed by
Python's gzip/bz2/lzma is read with the statistics of Keras's own arrays; bombs (declared and
undeclared sizes), damaged streams and non-HDF5 content are refused with one line and a row;
a folder of compressed files that are not named like saves says so."""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import struct

import numpy as np
import pytest
from wpipe.readers import ModelReadError, open_model
from wpipe.readers.walk import walk

from tests.conftest import MODELS, Warehouse, expected

WRITERS = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}
SOURCE = "k2_lstm.h5"


def packed(tmp_path, name: str, data: bytes, suffix: str):
    path = tmp_path / f"{name}.{suffix}"
    path.write_bytes(WRITERS[suffix](data))
    return path


@pytest.mark.parametrize("suffix", sorted(WRITERS))
def test_a_compressed_save_is_read_with_keras_arrays(tmp_path, suffix):
    path = packed(tmp_path, "model.h5", (MODELS / SOURCE).read_bytes(), suffix)
    spec, arrays = expected(SOURCE)
    with open_model(path) as model:
        got = {(layer.layer_path, t.weight_name): t.load() for layer in model.layers
               for t in layer.tensors}  # fmt: skip
    assert len(got) == len(spec["weights"])
    for weight in spec["weights"]:
        np.testing.assert_array_equal(
            got[(weight["layer_path"], weight["weight_name"])], arrays[weight["key"]]
        )


def test_a_folder_of_compressed_saves_ingests_them_all(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    data = (MODELS / SOURCE).read_bytes()
    for name, suffix in (("model.h5", "gz"), ("weights.hdf5", "bz2"), ("m.h5", "xz")):
        packed(folder, name, data, suffix)
    w = Warehouse(tmp_path)
    report = w.ingest(folder)
    assert (report.ingested, report.failed) == (3, [])
    spec, arrays = expected(SOURCE)
    want = {(x["layer_path"], x["weight_name"]): float(np.linalg.norm(
        arrays[x["key"]].astype(np.float64))) for x in spec["weights"]}  # fmt: skip
    rows = w.query("SELECT layer_path, weight_name, l2 FROM weights")
    assert len(rows) == 3 * len(want)
    for layer, weight, l2 in rows:
        assert l2 == pytest.approx(want[(layer, weight)], rel=1e-12)


def zeros_stream(suffix: str, size: int) -> bytes:
    """`size` zero bytes compressed a megabyte at a time (never all in memory)."""
    if suffix == "gz":
        comp = __import__("zlib").compressobj(9, 8, 31)  # wbits 31: a gzip stream
    else:
        comp = bz2.BZ2Compressor() if suffix == "bz2" else lzma.LZMACompressor()
    block = bytes(1 << 20)
    out = [comp.compress(block) for _ in range(size >> 20)]
    return b"".join([*out, comp.flush()])


@pytest.mark.parametrize("suffix", sorted(WRITERS))
def test_a_decompression_bomb_is_refused(tmp_path, suffix):
    path = tmp_path / f"bomb.h5.{suffix}"
    path.write_bytes(zeros_stream(suffix, 64 << 20))  # 64 MB of zeros in well under 100 KB
    assert path.stat().st_size * 100 < 64 << 20
    with pytest.raises(ModelReadError) as err, open_model(path):
        pass
    assert err.value.code == "compression-bomb"


def test_a_gzip_that_lies_about_its_size_is_stopped_while_inflating(tmp_path):
    data = bytearray(zeros_stream("gz", 64 << 20))
    data[-4:] = struct.pack("<I", 1000)  # declares 1,000 bytes
    path = tmp_path / "liar.h5.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelReadError) as err, open_model(path):
        pass
    assert err.value.code == "compression-bomb" and "inflates past" in err.value.message


def test_damaged_and_foreign_content_are_one_line_each(tmp_path):
    good = bz2.compress((MODELS / SOURCE).read_bytes())
    cut = tmp_path / "cut.h5.bz2"  # (a cut gzip's last bytes read as a size: compression-bomb)
    cut.write_bytes(good[: len(good) // 2])
    text = packed(tmp_path, "notes.h5", b"not a model\n" * 100, "gz")
    w = Warehouse(tmp_path)
    report = w.ingest(cut, text)
    assert len(report.failed) == 2
    errors = dict(w.query("SELECT regexp_extract(path, '[^/]+$'), error FROM ingest_errors"))
    assert errors == {"cut.h5.bz2": "bad-compression", "notes.h5.gz": "not-hdf5"}
    message = w.query("SELECT message FROM ingest_errors WHERE error = 'not-hdf5'")[0][0]
    assert "gunzip -k notes.h5.gz" in message


def test_a_folder_of_only_unnamed_compressed_files_says_so(tmp_path):
    folder = tmp_path / "pkg"
    folder.mkdir()
    packed(folder, "model", (MODELS / SOURCE).read_bytes(), "bz2")
    found, skipped = walk([folder])
    assert found == []
    assert [(s.path.name, s.code) for s in skipped] == [("model.bz2", "compressed-file")]
    assert "bunzip2 -k model.bz2" in skipped[0].message
    # beside a model it is some other compressed file: not reported
    shutil.copy(MODELS / SOURCE, folder / SOURCE)
    found, skipped = walk([folder])
    assert [p.name for p in found] == [SOURCE] and skipped == []
