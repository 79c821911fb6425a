"""Keras 3 quantized Embedding tables read as Keras dequantizes them: the rows the reader
returns for the recorded token ids equal the outputs Keras computed for those ids."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import h5py
import numpy as np
import pytest
from wpipe.readers import open_model
from wpipe.readers.base import ModelReadError
from wpipe.readers.quantized import dequantize
from wpipe.readers.roles import QUANTIZED_ROLES

from tests.conftest import EXPECTED, FIXTURES
from tests.forward.keras_cases import MODELS, expected

FILES = [f"{w}_quantized.{ext}" for w in ("k3", "k3j") for ext in ("keras", "h5")]


@pytest.mark.parametrize("fname", FILES)
@pytest.mark.parametrize(
    ("layer", "roles"),
    [
        ("q8_embed", {"embeddings", "embeddings_scale"}),
        ("q4_embed", {"embeddings", "embeddings_scale", "embeddings_zero", "g_idx"}),
    ],
)
def test_quantized_embedding_table_is_keras_lookup(fname: str, layer: str, roles: set) -> None:
    inputs, outputs = expected(fname.split(".")[0])
    ids = inputs[1]  # (x, ids)
    with open_model(MODELS / fname) as model:
        (found,) = [x for x in model.layers if x.layer_path == layer]
        by_role = {t.role: t for t in found.tensors}
        assert set(by_role) == roles
        table = by_role["embeddings"]
        assert table.quantization in ("int8", "int4") and table.dtype == "int8"
        assert not any(t.trainable for t in found.tensors)  # Keras: quantized tables are frozen
        np.testing.assert_allclose(
            np.asarray(table.load())[ids], outputs[f"{layer}:0:0"], rtol=1e-6, atol=1e-7
        )


# Every mode Keras 3 writes (tests/fixtures/arch_quant.py): each tensor read against what Keras
# reported for the model it saved; a quantized kernel against the kernel Keras dequantizes.
ARCH = FIXTURES / "models" / "arch"
ARCH_EXPECTED = EXPECTED / "arch"
MODE_FILES = [
    "k3_quant_float8.keras", "k3_quant_float8.h5", "k3_quant_float8.weights.h5",
    "k3_quant_gptq.h5", "k3_quant_awq.h5",
    "k3_quant_einsum_int8.keras", "k3_quant_einsum_int8.h5", "k3_quant_einsum_int8.weights.h5",
    "k3_quant_int4_odd.keras", "k3_quant_int4_odd.h5", "k3_quant_int4_odd.weights.h5",
    "k313_quant_int4_odd.keras", "k313_quant_int4_odd.h5",
    "k3_quant_einsum_int4.keras", "k3_quant_einsum_int4.h5", "k3_quant_einsum_int4.weights.h5",
    "k313_quant_einsum_int4.keras", "k313_quant_einsum_int4.h5",
]  # fmt: skip


def _stats(a: np.ndarray) -> dict:
    a = np.asarray(a, dtype=np.float64).ravel()
    return {"size": a.size, "mean": a.mean(), "std": a.std(), "min": a.min(), "max": a.max(),
            "l2": np.linalg.norm(a), "zero_count": int((a == 0).sum())}  # fmt: skip


@pytest.mark.parametrize("fname", MODE_FILES)
def test_every_mode_reads_as_keras_holds_it(fname: str) -> None:
    spec = json.loads((ARCH_EXPECTED / f"{fname}.json").read_text())
    with open_model(ARCH / fname) as model:
        found = {(x.layer_path, t.weight_name): t for x in model.layers for t in x.tensors}
        assert sum(t.size for t in found.values()) == spec["count_params"]
        assert sum(t.size for t in found.values() if t.trainable) == spec["n_trainable"]
        assert len(found) == len(spec["weights"])
        for entry in spec["weights"]:
            tensor = found[(entry["layer_path"], entry["weight_name"])]
            assert (tensor.role, tensor.trainable, tensor.quantization) == (
                entry["role"], entry["trainable"], entry["quantization"]), entry  # fmt: skip
            got, want = _stats(tensor.load()), entry["stats"]
            for key, value in got.items():
                assert value == pytest.approx(want[key], rel=1e-5, abs=1e-7), (entry, key)


def test_float8_keeps_its_float_kernel_and_trains_its_scales() -> None:
    with open_model(ARCH / "k3_quant_float8.keras") as model:
        (dense,) = [x for x in model.layers if x.layer_path == "f8_dense"]
        assert [t.role for t in dense.tensors] == list(QUANTIZED_ROLES["float8"])
        assert all(t.trainable and t.dtype == "float32" for t in dense.tensors)


def test_int4_packing_axis_follows_the_files_keras_version() -> None:
    """Keras 3.13 packed along the input axis: the same stored bytes read with the layout of
    Keras since 3.14 give another kernel (another shape, other values)."""
    spec = json.loads((ARCH_EXPECTED / "k313_quant_int4_odd.h5.json").read_text())
    want = next(e for e in spec["weights"] if e["layer_path"] == "q1" and e["role"] == "kernel")
    assert want["shape"] == [4, 5]  # stored: ceil(7 / 2) rows of packed codes
    path = ARCH / "k313_quant_int4_odd.h5"
    with open_model(path) as model:
        assert model.keras_version.startswith("3.13")
        (q1,) = [x for x in model.layers if x.layer_path == "q1"]
        assert np.asarray(next(t for t in q1.tensors if t.role == "kernel").load()).shape == (7, 5)
    with h5py.File(path, "r", locking=False) as f:
        stored = [replace(t, load=lambda v=f[t.source_name][()]: v) for t in q1.tensors]
    dequantize(stored, "int4", q1.config, "3.15.1")
    assert np.asarray(next(t for t in stored if t.role == "kernel").load()).shape == (4, 5)


@pytest.mark.parametrize("ext", ["keras", "weights.h5"])
@pytest.mark.parametrize("mode", ["gptq", "awq"])
def test_native_gptq_awq_without_zero_point_is_not_dequantized(mode: str, ext: str) -> None:
    """Keras 3.15's native saves leave kernel_zero out: roles still right (from the config,
    or from dtypes and count without one), parameters are what the file holds (Keras's own
    count less the zero points), the kernel is not analysed."""
    spec = json.loads((ARCH_EXPECTED / f"k3_quant_{mode}.h5.json").read_text())
    zeros = sum(math.prod(e["shape"]) for e in spec["weights"] if e["role"] == "kernel_zero")
    with open_model(ARCH / f"k3_quant_{mode}.{ext}") as model:
        (up,) = [x for x in model.layers if x.layer_path == "block/up"]
        want = [r for r in QUANTIZED_ROLES[mode] if r != "kernel_zero"]
        assert [t.role for t in up.tensors] == want
        assert sum(t.size for x in model.layers for t in x.tensors) == spec["count_params"] - zeros
        kernel = next(t for t in up.tensors if t.role == "kernel")
        assert kernel.status.startswith("not-dequantized")
        assert all(t.role != "unknown" for x in model.layers for t in x.tensors)


@pytest.mark.parametrize(
    ("fname", "layer", "damage"),
    [
        ("k3_quant_gptq.h5", "up", "group out of range"),
        ("k3_quant_gptq.h5", "up", "g_idx too long"),
        ("k3_quant_int4.h5", "q1", "group out of range"),
        ("k3_quant_int4.h5", "q1", "g_idx too long"),
    ],
)
def test_damaged_quantization_parameters_are_one_clear_error(tmp_path, fname, layer, damage):
    """Group indices past the scales, or more of them than the kernel has rows (which would
    make the gathered scales far larger than the file): `corrupt`, naming file and tensor."""
    path = tmp_path / fname
    path.write_bytes((ARCH / fname).read_bytes())
    with h5py.File(path, "r+") as f:
        name = next(n for n in _dataset_names(f) if n.endswith(f"{layer}/g_idx:0") or
                    n.endswith(f"{layer}/g_idx"))  # fmt: skip
        values = f[name][()]
        del f[name]
        f[name] = values + 99 if damage == "group out of range" else np.zeros(10_000, "float32")
    with open_model(path) as model:
        (found,) = [x for x in model.layers if x.layer_path.endswith(layer)]
        kernel = next(t for t in found.tensors if t.role == "kernel")
        with pytest.raises(ModelReadError) as err:
            kernel.load()
    assert err.value.code == "corrupt" and str(path) in err.value.message
    assert "quantization parameters" in err.value.message


def _dataset_names(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
    return names
