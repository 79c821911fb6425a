"""Real architectures written by real Keras (tests/fixtures/make_arch_fixtures.py), checked
against what Keras's API reported for the model in memory: parameter totals, the trainable
split, every tensor's name, role, shape, dtype and statistics, in every format each Keras
writes; a quantized kernel's statistics against the kernel Keras dequantizes.

What a format cannot know is spelled out here, once (docs: file-formats):
* a weights-only file has no layer order and no frozen flags (none of these models freezes);
* the variables of a custom class are `0`, `1`, … in native files (Keras stores no names)
  and a custom layer's non-trainable variable cannot be told from a trainable one anywhere;
* a native weights file without config cannot say whether BatchNormalization's first of three
  variables is gamma or beta, nor a single LayerNormalization variable's role.
Models saved under tests/fixtures/large (by `make fixtures-large`) are checked the same way
when present and skipped otherwise.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from tests.conftest import EXPECTED, FIXTURES, Warehouse

ARCH = FIXTURES / "models" / "arch"
LARGE = FIXTURES / "large"
# large models' expected values are gzipped (make_arch_fixtures.write_expected)
SPECS = {p.name.removesuffix(".gz").removesuffix(".json"): p
         for p in sorted((EXPECTED / "arch").glob("*.json*"))}  # fmt: skip
SMALL = [n for n in SPECS if (ARCH / n).exists()]
ABSENT = [n for n in SPECS if not (ARCH / n).exists()]
FULL_FORMATS = {"h5-model", "keras-zip"}
# classes wpipe has a variable list for (readers/roles.py); others are custom to the reader
KNOWN = {"Dense", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "BatchNormalization",
         "LayerNormalization", "Embedding", "Normalization", "LayerScale", "Bidirectional",
         "MultiHeadAttention", "GRU", "LSTM"}  # fmt: skip
STAT_KEYS = ("size", "mean", "std", "min", "max", "l2", "p50", "zero_count")
COLUMNS = "layer_path, weight_name, role, shape, dtype, trainable, quantization, " + ", ".join(
    STAT_KEYS
)


def spec_of(name: str) -> dict:
    path = SPECS[name]
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return json.loads(raw)


def path_of(name: str) -> Path:
    return ARCH / name if (ARCH / name).exists() else LARGE / name


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    w = Warehouse(tmp_path_factory.mktemp("arch"))
    report = w.ingest(*[ARCH / n for n in SMALL], values="none", drift=False)
    assert not report.failed, [o.message for o in report.failed]
    return w


def tensors(w: Warehouse, name: str) -> list[dict]:
    keys = [c.strip() for c in COLUMNS.split(",")]
    rows = w.query(
        f"SELECT {COLUMNS} FROM weights JOIN models USING (model_id) WHERE models.path LIKE ?",
        [f"%/{name}"],
    )
    return [dict(zip(keys, r, strict=True)) for r in rows]


def model_row(w: Warehouse, name: str) -> tuple:
    return w.query(
        "SELECT format, model_class, n_params, n_trainable, n_non_trainable, arch_id "
        "FROM models WHERE path LIKE ?",
        [f"%/{name}"],
    )[0]


def same_stats(row: dict, want: dict) -> bool:
    return all(row[k] == pytest.approx(want[k], rel=1e-6, abs=1e-9) for k in STAT_KEYS)


def unknowable(entry: dict, spec: dict, fmt: str, has_layers: bool) -> bool:
    """True where the file itself does not say the role (module docstring)."""
    cls = next(
        lay["class_name"] for lay in spec["layers"] if lay["layer_path"] == entry["layer_path"]
    )
    if cls not in KNOWN:
        return fmt not in ("h5-model", "h5-weights")  # native files: no custom names
    if fmt in FULL_FORMATS and has_layers:
        return False
    n = sum(e["layer_path"] == entry["layer_path"] for e in spec["weights"])
    return (cls == "BatchNormalization" and n == 3 and entry["role"] in ("gamma", "beta")) or (
        cls == "LayerNormalization" and n == 1
    )


def find(rows: list[dict], entry: dict) -> dict:
    """The tensor with the entry's shape, dtype and values; of its role if several are equal
    (zero biases and zero betas of a fresh model look alike)."""
    same = [r for r in rows if r["shape"] == entry["shape"] and r["dtype"] == entry["dtype"]
            and same_stats(r, entry["stats"])]  # fmt: skip
    assert same, entry
    for prefer in (
        lambda r: r["layer_path"] == entry["layer_path"] and r["role"] == entry["role"],
        lambda r: r["layer_path"] == entry["layer_path"],
        lambda r: r["role"] == entry["role"],
        lambda r: r["role"] == "unknown",
    ):
        hit = next((r for r in same if prefer(r)), None)
        if hit is not None:
            return hit
    return same[0]


def check(w: Warehouse, name: str) -> None:
    spec = spec_of(name)
    fmt, _, n_params, n_trainable, n_non, _ = model_row(w, name)
    assert n_params == spec["count_params"]
    custom_frozen = any(
        not e["trainable"] and e["layer_path"] in {
            lay["layer_path"] for lay in spec["layers"] if lay["class_name"] not in KNOWN}
        for e in spec["weights"]
    )  # fmt: skip
    if not custom_frozen:
        assert (n_trainable, n_non) == (spec["n_trainable"], spec["n_non_trainable"])
    classes = {lay["layer_path"]: lay["class_name"] for lay in spec["layers"]}
    rows = tensors(w, name)
    assert len(rows) == len(spec["weights"])
    has_layers = spec["model_class"] in ("Sequential", "Functional")
    by_key = {(r["layer_path"], r["weight_name"]): r for r in rows}
    for entry in spec["weights"]:
        key = (entry["layer_path"], entry["weight_name"])
        if fmt in FULL_FORMATS and has_layers and classes[key[0]] in KNOWN:
            row = by_key[key]  # the full save names every tensor as Keras did
        else:  # the file has fewer names: find the tensor by its shape and values
            row = find(rows, entry)
            rows.remove(row)
        assert same_stats(row, entry["stats"]), (name, key)
        assert (row["shape"], row["dtype"], row["quantization"]) == (
            entry["shape"], entry["dtype"], entry["quantization"]), (name, key)  # fmt: skip
        if row["role"] == "unknown":
            assert unknowable(entry, spec, fmt, has_layers), (name, key, fmt)
        else:
            assert row["role"] == entry["role"], (name, key)
        if not custom_frozen:
            assert row["trainable"] == entry["trainable"], (name, key)


@pytest.mark.parametrize("name", SMALL)
def test_small_architectures_match_keras(small, name):
    check(small, name)


def test_every_kind_and_writer_is_present():
    kinds = {"convbn_variants", "nested_bidi", "custom_layer", "subclassed", "quant_int8",
             "quant_int4", "hub_bert", "hub_gpt2", "app_mobilenet_v2", "quant_float8",
             "quant_einsum_int8", "quant_einsum_int4", "quant_int4_odd", "quant_gptq",
             "quant_awq"}  # fmt: skip
    for kind in kinds:
        assert any(f"_{kind}." in n for n in SMALL), kind
    # k313: Keras 3.13 (int4 packed along the input axis), from its own venv
    assert {n.split("_", 1)[0] for n in SMALL} == {"k2", "k3", "k3j", "k313"}
    # committed fixtures stay small
    assert sum((ARCH / n).stat().st_size for n in SMALL) < 25e6


# One arch_id needs the classes and roles in both files: a custom class's variables have names
# only in .h5, and a config without a layer list (subclassed, keras-hub) gives .h5 no classes.
ONE_ARCH = sorted(
    n.removesuffix(".keras") for n in SMALL if n.endswith(".keras")
    and (ARCH / n.replace(".keras", ".h5")).exists()
    and not any(k in n for k in ("custom_layer", "subclassed", "hub_"))
)  # fmt: skip


@pytest.mark.parametrize("stem", ONE_ARCH)
def test_h5_and_keras_saves_are_one_architecture(small, stem):
    h5, zipped = model_row(small, f"{stem}.h5"), model_row(small, f"{stem}.keras")
    assert h5[5] == zipped[5]  # arch_id
    names = [{(r["layer_path"], r["weight_name"]) for r in tensors(small, f"{stem}{ext}")}
             for ext in (".h5", ".keras")]  # fmt: skip
    assert names[0] == names[1]


def test_weights_file_with_names_keeps_layer_paths_and_weight_names(small):
    # Keras >= 3.6 writes each layer's name: the weights file's names equal the full save's
    for stem in ("k3_convbn_variants", "k3_nested_bidi", "k3_app_mobilenet_v2"):
        full = {(r["layer_path"], r["weight_name"]) for r in tensors(small, f"{stem}.h5")}
        bare = {(r["layer_path"], r["weight_name"]) for r in tensors(small, f"{stem}.weights.h5")}
        known = {k for k in bare if not k[1].isdigit()}
        assert known <= full and len(full - bare) == len(bare - full), stem


def test_no_unknown_roles_where_the_config_says_them(small):
    rows = small.query(
        "SELECT m.path, w.layer_path, w.weight_name, l.class_name FROM weights w "
        "JOIN models m USING (model_id) JOIN layers l USING (model_id, layer_path) "
        "WHERE w.role = 'unknown' AND m.format IN ('h5-model', 'keras-zip') "
        "AND m.model_class IN ('Sequential', 'Functional')"
    )
    assert {r[3] for r in rows} <= {"Affine"}, rows  # the custom layer, only in .keras


def test_no_group_name_passes_for_a_class(small):
    classes = {c for (c,) in small.query("SELECT DISTINCT class_name FROM layers")}
    assert not {c for c in classes if c and (c[0].islower() or "_" in c)}, classes


def test_healthy_architectures_have_no_findings(small):
    assert small.query("SELECT model, layer_path, weight_name, flags FROM health_findings") == []


@pytest.mark.skipif(
    not os.environ.get("WPIPE_TEST_LARGE"), reason="`make test-large` (after `make fixtures-large`)"
)
def test_large_architectures_match_keras_and_look_healthy(tmp_path):
    present = [n for n in ABSENT if (LARGE / n).exists()]
    if not present:
        pytest.skip("run `make fixtures-large`")
    w = Warehouse(tmp_path)
    report = w.ingest(*[LARGE / n for n in present], values="none", drift=False)
    assert not report.failed, [o.message for o in report.failed]
    for name in present:
        check(w, name)
    assert w.query("SELECT model, layer_path, weight_name, flags FROM health_findings") == []


@pytest.mark.parametrize("name", [n for n in SMALL if "_quant_" in n])
def test_quantized_kernels_are_analysed_dequantized(small, name):
    # Σλ of a kernel's ESD is its squared Frobenius norm: that of the kernel Keras
    # dequantizes, not of the int8 codes (which are ~100x larger)
    kernels = {e["layer_path"]: e for e in spec_of(name)["weights"] if e["role"] == "kernel"}
    rows = small.query(
        "SELECT layer_path, norm, lambda_max FROM spectra JOIN models USING (model_id) "
        "WHERE models.path LIKE ? AND weight_name = 'kernel' AND matrix = 'full' "
        "AND norm IS NOT NULL",
        [f"%/{name}"],
    )
    # a kernel stored with more than two axes (EinsumDense) has no matrix rule: no spectrum
    assert {r[0] for r in rows} == {p for p, e in kernels.items() if len(e["shape"]) == 2}
    for layer_path, norm, lambda_max in rows:
        want = kernels[layer_path]["stats"]["l2"] ** 2
        assert norm == pytest.approx(want, rel=1e-5) and 0 < lambda_max <= norm * (1 + 1e-9)
    units = small.query(
        "SELECT sum(size) FROM units JOIN models USING (model_id) WHERE models.path LIKE ? "
        "AND weight_name = 'kernel' AND axis = 'unit'",
        [f"%/{name}"],
    )
    assert units == [(sum(e["stats"]["size"] for e in kernels.values()),)]
