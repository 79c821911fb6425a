"""h5safe's low-level shortcuts give what h5py's high-level API gives (attributes, datasets)
and still never follow an external link, wherever it sits on a path."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from wpipe.readers import ModelReadError, h5safe

ATTRIBUTES = {
    "vlen_text": '{"class_name": "Sequential"}',
    "vlen_list": np.array(["conv1", "dense_ü"], dtype=h5py.string_dtype()),
    "fixed_bytes": np.array([b"conv1/kernel:0", b"conv1/bias:0"]),
    "fixed_scalar": np.bytes_(b"2.15.0"),
    "empty_list": np.array([], dtype=np.float64),  # Keras's weight_names of a layer without
    "int_scalar": np.int64(7),
    "floats": np.arange(6, dtype=np.float32).reshape(2, 3),
    "nothing": h5py.Empty("f4"),
}


@pytest.fixture
def h5(tmp_path):
    path = tmp_path / "attrs.h5"
    with h5py.File(path, "w") as f:
        for name, value in ATTRIBUTES.items():
            f.attrs[name] = value
        # a top-level array type: numpy sees shape (2, 3) of float64
        f.attrs.create("array_type", np.ones((2, 3)), dtype=np.dtype("(3,)f8"), shape=(2, 3))
        f.attrs["names0"] = [b"a", b"b"]  # a name list Keras chunked
        f.attrs["names1"] = [b"c"]
        f["group/inner/data"] = np.arange(4, dtype=np.float32)
        f["data_big_endian"] = np.arange(5, dtype=">f4")
        f["data_half"] = np.arange(5, dtype=np.float16)
        f["data_int"] = np.arange(5, dtype=np.int64).reshape(5, 1)
        f["data_scalar"] = np.float32(2.5)
        f["data_empty"] = np.zeros((0, 3), dtype=np.float32)
        f["soft"] = h5py.SoftLink("/group")
        f["outside"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/group")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["group/inner/data"] = np.zeros(4, dtype=np.float32)
    with h5py.File(path, "r") as f:
        yield f


@pytest.mark.parametrize("name", [*ATTRIBUTES, "array_type"])
def test_an_attribute_reads_as_h5py_reads_it(h5, name):
    ours = h5safe.attr(h5, name)
    theirs = h5safe.text(h5.attrs[name])
    if isinstance(theirs, h5py.Empty):
        assert isinstance(ours, h5py.Empty) and ours.dtype == theirs.dtype
    else:
        assert ours == theirs and type(ours) is type(theirs)
        if isinstance(ours, np.generic):
            assert ours.dtype == theirs.dtype


def test_a_chunked_name_list_is_reassembled_and_an_absent_attribute_is_none(h5):
    assert h5safe.name_list(h5, "names") == ["a", "b", "c"]
    assert h5safe.name_list(h5, "vlen_list") == ["conv1", "dense_ü"]
    assert h5safe.name_list(h5, "empty_list") == []
    assert h5safe.attr(h5, "absent") is None and h5safe.name_list(h5, "absent") is None


@pytest.mark.parametrize("name", ["group/inner/data", "data_big_endian", "data_half",
                                  "data_int", "data_scalar", "data_empty"])  # fmt: skip
def test_a_dataset_reads_as_h5py_reads_it(h5, name):
    ds = h5safe.dataset(h5, name, "f.h5")
    ours, theirs = h5safe.read_array(ds), h5[name][()]
    assert np.array_equal(ours, theirs) and ours.dtype == theirs.dtype
    assert np.shape(ours) == np.shape(theirs)


def test_paths_through_soft_links_resolve_and_external_links_are_refused_anywhere(h5):
    assert np.array_equal(h5safe.dataset(h5, "soft/inner/data", "f.h5")[()], np.arange(4))
    for path in ("outside", "outside/inner/data"):
        with pytest.raises(ModelReadError) as err:
            h5safe.child(h5, path, "f.h5")
        assert err.value.code == "external-link" and "other.h5" in err.value.message
    with pytest.raises(ModelReadError, match="crosses a dataset"):
        h5safe.child(h5, "data_int/x", "f.h5")
    with pytest.raises(ModelReadError, match="not in the file") as err:
        h5safe.child(h5, "group/nothing/data", "f.h5")
    assert err.value.code == "missing-object"


def test_a_tensors_fields_come_from_one_look_at_its_dataset(h5, tmp_path):
    ds = h5safe.dataset(h5, "data_half", "f.h5")
    fields = h5safe.tensor_fields(ds, "f.h5")
    assert fields["shape"] == (5,) and fields["dtype"] == "float16" and fields["status"] == "ok"
    assert np.array_equal(fields["load"](), np.arange(5, dtype=np.float16))
    with h5py.File(tmp_path / "null.h5", "w") as f:
        f.create_dataset("x", data=h5py.Empty("f4"))
    with h5py.File(tmp_path / "null.h5", "r") as f, pytest.raises(ModelReadError) as err:
        h5safe.tensor_fields(h5safe.dataset(f, "x", "null.h5"), "null.h5")
    assert "null dataspace" in err.value.message
    assert err.value.code == "corrupt"
