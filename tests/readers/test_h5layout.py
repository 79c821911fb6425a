"""A remembered HDF5 layout gives the Model a full parse gives, with the file's own values read
by h5py; it never serves a file whose structure differs, nor one it cannot read exactly."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from wpipe.readers import ModelReadError, h5layout, open_model

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "models"
RUN = sorted((EXAMPLES / "cnn_lr1e-3").glob("e*.h5"))  # Keras's ModelCheckpoint of one run


def _fields(model) -> tuple:
    tensors = [
        [(t.weight_name, t.role, t.trainable, t.source_name, t.shape, t.dtype, t.layout,
          t.quantization, t.status) for t in layer.tensors]
        for layer in model.layers
    ]  # fmt: skip
    layers = [(x.layer_path, x.layer_name, x.class_name, x.config, x.trainable)
              for x in model.layers]  # fmt: skip
    rest = {k: v for k, v in vars(model).items() if k != "layers"}
    return rest, layers, tensors


def _same_as_h5py(model, path: Path) -> None:
    """Each tensor's values as h5py reads its dataset (an independent path)."""
    with h5py.File(path, "r", locking=False) as f:
        for layer in model.layers:
            for t in layer.tensors:
                ours, theirs = t.load(), f[t.source_name][()]
                assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
                assert np.array_equal(ours, theirs)
                if np.ndim(ours):  # a scalar dataset reads as a numpy scalar
                    assert ours.flags.writeable and ours.flags.c_contiguous


def _is_hit(model) -> bool:  # a full parse's loaders read through h5py (h5safe.lazy_array)
    return all(not hasattr(t.load, "dataset") for layer in model.layers for t in layer.tensors)


def test_a_run_of_checkpoints_after_the_second_is_read_from_its_layout():
    layouts = h5layout.Layouts()
    hits = []
    for path in RUN:
        with open_model(path, layouts=layouts) as model, open_model(path) as parsed:
            assert _fields(model) == _fields(parsed)
            _same_as_h5py(model, path)
            hits.append(_is_hit(model))
    # the first file of a size is only remembered, the second one's layout is learned
    assert hits == [False, False] + [True] * (len(RUN) - 2)


def test_another_run_of_the_same_size_has_its_own_configuration(tmp_path):
    layouts = h5layout.Layouts()
    for path in RUN[:3]:
        with open_model(path, layouts=layouts):
            pass
    other = EXAMPLES / "cnn_lr1e-2" / "e01.h5"  # same size and tensors, another learning rate
    assert other.stat().st_size == RUN[0].stat().st_size
    with open_model(other, layouts=layouts) as model, open_model(other) as parsed:
        assert not _is_hit(model)
        assert _fields(model) == _fields(parsed)


def test_a_changed_byte_outside_the_data_is_parsed_again(tmp_path):
    layouts = h5layout.Layouts()
    for path in RUN[:2]:
        with open_model(path, layouts=layouts):
            pass
    (layout,) = layouts.layouts
    offset, gap = layout.gaps[-1]
    damaged = tmp_path / "damaged.h5"
    data = bytearray(RUN[2].read_bytes())
    data[offset + len(gap) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))

    def outcome(**kw):
        try:
            with open_model(damaged, **kw) as model:
                return _fields(model), [t.load().tolist() for x in model.layers for t in x.tensors]
        except ModelReadError as exc:
            return exc.code, exc.message

    assert outcome(layouts=layouts) == outcome()


def test_a_file_changed_between_its_read_and_its_parse_is_not_learned(tmp_path):
    copy = tmp_path / "e.h5"
    shutil.copy(RUN[0], copy)
    layouts = h5layout.Layouts()
    layouts.wants(layouts.read(copy, copy.stat().st_size, ""))
    read = layouts.read(copy, copy.stat().st_size, "")
    st = copy.stat()
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with open_model(copy) as model, h5py.File(copy, "r", locking=False) as f:
        layouts.learn(f, model, read, copy)
    assert layouts.layouts == []


@pytest.mark.parametrize("kind", ["compressed", "big_endian", "scalar"])
def test_a_layout_whose_tensors_are_not_plain_bytes_is_not_learned(tmp_path, kind):
    """Chunked (compressed) data, another byte order, a scalar: parsed each time."""
    paths = []
    for i in range(3):
        path = tmp_path / f"w{i}.h5"
        rng = np.random.default_rng(i)
        with h5py.File(path, "w") as f:
            f.attrs["layer_names"] = [b"d"]
            g = f.create_group("d")
            g.attrs["weight_names"] = [b"d/kernel:0", b"d/bias:0"]
            kernel = rng.normal(size=(64, 8)).astype(">f4" if kind == "big_endian" else "<f4")
            if kind == "compressed":
                g.create_dataset("d/kernel:0", data=kernel, compression="gzip")
            else:
                g["d/kernel:0"] = kernel
            g["d/bias:0"] = np.float32(i) if kind == "scalar" else rng.normal(size=8)
        paths.append(path)
    layouts = h5layout.Layouts()
    for path in paths:
        with open_model(path, layouts=layouts) as model, open_model(path) as parsed:
            assert _fields(model) == _fields(parsed) and not _is_hit(model)
            _same_as_h5py(model, path)
    assert layouts.layouts == []
