"""The stored weights member read in place, against zipfile's own reader of the same bytes."""

from __future__ import annotations

import shutil
import zipfile

import h5py
import numpy as np
import pytest
from wpipe.readers import open_model
from wpipe.readers.base import ModelReadError
from wpipe.readers.keras_zip import _stored_window

from tests.conftest import MODELS

ARCHIVE = MODELS / "k3_lstm.keras"


def _tensors(path) -> dict[str, np.ndarray]:
    with open_model(path) as model:
        return {f"{layer.layer_path}/{t.weight_name}": t.load() for layer in model.layers
                for t in layer.tensors}  # fmt: skip


def _dataset_names(group: h5py.Group) -> list[str]:
    names: list[str] = []
    group.visit(names.append)  # append returns None: the visit goes on
    return [name for name in names if isinstance(group[name], h5py.Dataset)]


def test_window_holds_the_members_bytes_and_reads_no_further():
    with zipfile.ZipFile(ARCHIVE) as zf:
        info = zf.getinfo("model.weights.h5")
        assert info.compress_type == zipfile.ZIP_STORED  # what Keras writes
        expected = zf.read(info)
        window = _stored_window(zf, info, "x")
        assert window.read() == expected
        window.seek(-10, 2)
        assert window.read(100) == expected[-10:]  # stops at the member's end
        window.seek(5)
        buffer = bytearray(7)
        assert window.readinto(buffer) == 7 and bytes(buffer) == expected[5:12]


def test_tensors_equal_h5py_on_the_extracted_member(tmp_path):
    with zipfile.ZipFile(ARCHIVE) as zf:
        zf.extract("model.weights.h5", tmp_path)
    arrays = []
    with h5py.File(tmp_path / "model.weights.h5", "r") as f:
        for name in _dataset_names(f["layers"]):
            arrays.append(f["layers"][name][()].tobytes())
    ours = [a.tobytes() for a in _tensors(ARCHIVE).values()]
    assert len(ours) == len(arrays) > 0
    assert sorted(ours) == sorted(arrays)


def _damage(tmp_path, offset_from_header: int, data: bytes):
    bad = tmp_path / "bad.keras"
    shutil.copy(ARCHIVE, bad)
    with zipfile.ZipFile(bad) as zf:
        header = zf.getinfo("model.weights.h5").header_offset
    with open(bad, "r+b") as fh:
        fh.seek(header + offset_from_header)
        fh.write(data)
    return bad


def test_a_damaged_local_header_is_one_clear_error(tmp_path):
    bad = _damage(tmp_path, 0, b"XXXX")
    with pytest.raises(ModelReadError) as err:
        _tensors(bad)
    assert err.value.code == "bad-zip" and "local header" in str(err.value)


def test_a_member_running_past_the_archive_is_refused(tmp_path):
    bad = _damage(tmp_path, 28, b"\xff\xff")  # a 64 KB extra field pushes the data past the end
    with pytest.raises(ModelReadError) as err:
        _tensors(bad)
    assert err.value.code == "bad-zip" and "past the archive" in str(err.value)
