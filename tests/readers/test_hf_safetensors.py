"""KerasHub's Hugging Face exports (safetensors) against the weights Keras held when it exported
them (tests/fixtures/make_safetensors_fixtures.py), and crafted hostile headers."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
from wpipe.readers import ModelReadError, hf_safetensors, open_model
from wpipe.readers.walk import walk

from tests.conftest import EXPECTED, Warehouse
from tests.readers import safetensors_write as sw

EXPORTS = sw.EXPORTS
TRUTH = {name: json.loads((EXPECTED / "safetensors" / f"{name}.json").read_text())
         for name in ("gpt2", "llama", "llama_bf16")}  # fmt: skip
EXPORT_OF = {"gpt2": "gpt2", "llama": "llama", "llama_sharded": "llama", "llama_bf16": "llama_bf16"}


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Warehouse:
    """The five exports and the two .keras twins, ingested once."""
    root = tmp_path_factory.mktemp("safetensors")
    shutil.copytree(EXPORTS, root / "exports")
    w = Warehouse(root)
    report = w.ingest(root / "exports")
    assert not report.failed and report.ingested == 7
    return w


def _model_id(lake: Warehouse, folder: str, fmt: str) -> str:
    [(model_id,)] = lake.query(
        "SELECT model_id FROM models WHERE path LIKE ? AND format = ?", [f"%/{folder}/%", fmt]
    )
    return model_id


def _weights(lake: Warehouse, model_id: str) -> dict[str, tuple]:
    rows = lake.query(
        "SELECT source_name, layer_path, weight_name, role, layout, shape, size, mean, std, "
        "content_sha FROM weights WHERE model_id = ?",
        [model_id],
    )
    return {r[0].split(":")[-1]: r[1:] for r in rows}


EXPORTED = [("gpt2", "safetensors"), ("llama", "safetensors"),
            ("llama_sharded", "safetensors-sharded"), ("llama_bf16", "safetensors")]  # fmt: skip


@pytest.mark.parametrize(("folder", "fmt"), EXPORTED)
def test_parameters_equal_keras_count_params(lake, folder, fmt):
    truth = TRUTH[EXPORT_OF[folder]]
    model_id = _model_id(lake, folder, fmt)
    [(n_params, n_trainable, n_tensors)] = lake.query(
        "SELECT n_params, n_trainable, n_tensors FROM models WHERE model_id = ?", [model_id]
    )
    assert n_params == n_trainable == truth["count_params"]
    assert n_tensors == len(truth["tensors"])


@pytest.mark.parametrize(("folder", "fmt"), EXPORTED)
def test_every_tensor_has_the_statistics_of_the_keras_arrays_it_was_exported_from(
    lake, folder, fmt
):
    truth = TRUTH[EXPORT_OF[folder]]["tensors"]
    weights = _weights(lake, _model_id(lake, folder, fmt))
    assert weights.keys() == truth.keys()
    for name, want in truth.items():
        _, _, _, _, shape, size, mean, std, _ = weights[name]
        assert (list(shape), size) == (want["shape"], want["size"]), name
        assert mean == pytest.approx(want["mean"], rel=1e-6, abs=1e-9), name
        assert std == pytest.approx(want["std"], rel=1e-6), name


GPT2_LAYERS = {
    # layer path: (class, {weight name: role}, layout of its matrix)
    "transformer/wte": ("Embedding", {"embeddings": "embeddings"}, "keras"),
    "transformer/wpe": ("Embedding", {"embeddings": "embeddings"}, "keras"),
    "transformer/h/0/attn/c_attn": ("Dense", {"kernel": "kernel", "bias": "bias"}, "keras"),
    "transformer/h/1/mlp/c_fc": ("Dense", {"kernel": "kernel", "bias": "bias"}, "keras"),
    "transformer/h/0/ln_1": ("LayerNormalization", {"gamma": "gamma", "beta": "beta"}, "keras"),
    "transformer/ln_f": ("LayerNormalization", {"gamma": "gamma", "beta": "beta"}, "keras"),
}
LLAMA_LAYERS = {
    "model/embed_tokens": ("Embedding", {"embeddings": "embeddings"}, "keras"),
    "model/layers/0/self_attn/q_proj": ("Dense", {"kernel": "kernel"}, "out_in"),
    "model/layers/1/mlp/down_proj": ("Dense", {"kernel": "kernel"}, "out_in"),
    "model/layers/0/input_layernorm": ("LayerNormalization", {"gamma": "gamma"}, "keras"),
    "model/norm": ("LayerNormalization", {"gamma": "gamma"}, "keras"),
    "lm_head": ("Dense", {"kernel": "kernel"}, "out_in"),
}


@pytest.mark.parametrize(("folder", "fmt", "expected"), [
    ("gpt2", "safetensors", GPT2_LAYERS), ("llama", "safetensors", LLAMA_LAYERS),
    ("llama_sharded", "safetensors-sharded", LLAMA_LAYERS)])  # fmt: skip
def test_layers_classes_roles_and_layout_from_the_hugging_face_names(lake, folder, fmt, expected):
    model_id = _model_id(lake, folder, fmt)
    layers = dict(lake.query("SELECT layer_path, class_name FROM layers WHERE model_id = ?",
                             [model_id]))  # fmt: skip
    n_layers = 2 * (6 if folder == "gpt2" else 9) + 3  # two blocks, embeddings, final norm
    assert len(layers) == n_layers
    weights = lake.query("SELECT layer_path, weight_name, role, layout FROM weights "
                         "WHERE model_id = ?", [model_id])  # fmt: skip
    for path, (cls, roles, layout) in expected.items():
        assert layers[path] == cls, path
        mine = {w: (r, lay) for p, w, r, lay in weights if p == path}
        assert {w: r for w, (r, _) in mine.items()} == roles, path
        matrix = "embeddings" if cls == "Embedding" else "kernel"
        assert mine[next(w for w in mine if w in (matrix, "gamma"))][1] == layout, path
    assert {lay for *_, lay in weights} <= {"keras", "out_in"}


def test_a_bfloat16_export_is_read_as_bfloat16_widened_exactly(lake):
    """Keras's bfloat16 values, widened to float64 by numpy (the truth), are the ones read:
    float32 holds every bfloat16 exactly, so sums agree to float64 rounding."""
    model_id = _model_id(lake, "llama_bf16", "safetensors")
    rows = lake.query("SELECT DISTINCT dtype FROM weights WHERE model_id = ?", [model_id])
    assert rows == [("bfloat16",)]
    truth = TRUTH["llama_bf16"]["tensors"]
    sums = dict(lake.query("SELECT source_name, mean * size FROM weights WHERE model_id = ?",
                           [model_id]))  # fmt: skip
    for name, want in truth.items():
        assert sums[name] == pytest.approx(want["sum"], rel=1e-9, abs=1e-9), name


def test_units_of_a_pytorch_kernel_are_its_outputs(lake):
    """down_proj is (out=16, in=24) as stored: 16 units of 24 weights (Keras's axis -1 of
    its (24, 16) kernel); each unit's mean is numpy's over Keras's column."""
    model_id = _model_id(lake, "llama", "safetensors")
    rows = lake.query(
        'SELECT "index", size, mean FROM units WHERE model_id = ? AND layer_path = '
        "'model/layers/1/mlp/down_proj' ORDER BY \"index\"",
        [model_id],
    )
    assert [(i, s) for i, s, _ in rows] == [(i, 24) for i in range(16)]
    with open_model(EXPORTS / "llama" / "llama.keras") as keras_model:
        [kernel] = [t.load() for layer in keras_model.layers for t in layer.tensors
                    if layer.layer_path == "transformer_layer_1"
                    and t.weight_name.startswith("feedforward_output_dense/")]  # fmt: skip
    assert kernel.shape == (24, 16)
    assert [m for *_, m in rows] == pytest.approx(kernel.mean(axis=0).tolist(), rel=1e-5)


def test_sharded_export_equals_the_single_file(lake):
    single = _weights(lake, _model_id(lake, "llama", "safetensors"))
    shards = _weights(lake, _model_id(lake, "llama_sharded", "safetensors-sharded"))
    assert shards == single
    rows = lake.query(
        "SELECT format, weights_sha, arch_id, n_layers, model_class FROM models "
        "WHERE (path LIKE '%/llama/%' OR path LIKE '%/llama_sharded/%') "
        "AND format LIKE 'safetensors%' ORDER BY format"
    )
    assert len(rows) == 2 and rows[0][1:] == rows[1][1:]
    assert rows[0][4] == "LlamaForCausalLM"


def test_a_tied_head_written_twice_is_counted_once(lake):
    """export_to_transformers writes a GPT2CausalLM's tied head again as lm_head.weight:
    Keras counts the variable once, and so does wpipe (the head is the embedding's tied
    source); the other tensors are the backbone's export."""
    model_id = _model_id(lake, "gpt2_lm_head", "safetensors")
    [(n_params,)] = lake.query("SELECT n_params FROM models WHERE model_id = ?", [model_id])
    assert n_params == TRUTH["gpt2"]["count_params"]
    assert "lm_head.weight" in json.loads(
        (EXPECTED / "safetensors" / "gpt2_lm_head.json").read_text())["tensors"]  # fmt: skip
    rows = lake.query("SELECT source_name, tied_sources FROM weights WHERE model_id = ? "
                      "AND tied_sources IS NOT NULL", [model_id])  # fmt: skip
    assert rows == [("transformer.wte.weight", ["lm_head.weight"])]
    assert _weights(lake, model_id) == _weights(lake, _model_id(lake, "gpt2", "safetensors"))


def test_an_untied_head_is_its_own_tensor(lake):
    weights = _weights(lake, _model_id(lake, "llama", "safetensors"))
    assert weights["lm_head.weight"][:2] == ("lm_head", "kernel")


def _layouts(path) -> dict[str, str]:
    with open_model(path) as model:
        return {t.source_name: t.layout for layer in model.layers for t in layer.tensors
                if t.role == "kernel"}  # fmt: skip


def test_gpt2_conv1d_kernels_are_in_out_and_its_untied_head_out_in(tmp_path):
    """GPT-2's c_attn/c_fc/c_proj are Conv1D, (in, out); its lm_head is a Linear, (out, in):
    here untied (one byte of the head changed), with and without the config beside."""
    data = bytearray((EXPORTS / "gpt2_lm_head" / "model.safetensors").read_bytes())
    header, _ = sw.split(bytes(data))
    begin = 8 + int.from_bytes(data[:8], "little") + header["lm_head.weight"]["data_offsets"][0]
    data[begin] ^= 0x01
    sw.write(tmp_path / "model.safetensors", bytes(data))
    for with_config in (True, False):
        if with_config:
            shutil.copy2(EXPORTS / "gpt2_lm_head" / "config.json", tmp_path / "config.json")
        else:
            (tmp_path / "config.json").unlink()
        layouts = _layouts(tmp_path / "model.safetensors")
        assert layouts.pop("lm_head.weight") == "out_in"
        assert set(layouts.values()) == {"keras"} and len(layouts) == 8


def test_llama_kernels_are_out_in_without_the_config_too(tmp_path):
    shutil.copy2(EXPORTS / "llama" / "model.safetensors", tmp_path / "model.safetensors")
    layouts = _layouts(tmp_path / "model.safetensors")
    assert set(layouts.values()) == {"out_in"} and len(layouts) == 15


def test_a_model_type_that_names_linear_layers_c_attn_keeps_them_out_in(tmp_path):
    """Qwen 1 calls its nn.Linear layers c_attn and c_proj: the config's type decides."""
    shutil.copy2(EXPORTS / "gpt2" / "model.safetensors", tmp_path / "model.safetensors")
    config = json.loads((EXPORTS / "gpt2" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "qwen"}))
    assert set(_layouts(tmp_path / "model.safetensors").values()) == {"out_in"}


def test_the_config_beside_is_recorded(lake):
    [(config,)] = lake.query("SELECT source_config FROM models WHERE path LIKE '%/gpt2/%' "
                             "AND format = 'safetensors'")  # fmt: skip
    assert json.loads(config) == json.loads((EXPORTS / "gpt2" / "config.json").read_text())


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_export_and_keras_twin_share_the_tensors_kept_whole(lake, name):
    """content_sha is equal where the exporter copied a Keras variable (same shape) or only
    transposed it ((out, in) of a 2-D kernel, hashed in Keras's order); a tensor it reshaped
    or concatenated is other bytes."""
    truth = TRUTH[name]["tensors"]
    export = _weights(lake, _model_id(lake, name, "safetensors"))
    twin = {r[0] for r in lake.query(
        "SELECT content_sha FROM weights w JOIN models m USING (model_id) "
        "WHERE m.path LIKE ? AND m.format = 'keras-zip'", [f"%/{name}/%"])}  # fmt: skip
    kept = 0
    for tensor, want in truth.items():
        [*_, sha] = export[tensor]
        shapes = want["keras_shapes"]
        whole = len(shapes) == 1 and (shapes[0] == want["shape"]
                                      or shapes[0][::-1] == want["shape"])  # fmt: skip
        assert (sha in twin) == whole, tensor
        kept += whole
    assert kept == {"gpt2": 22, "llama": 13}[name]  # counted by hand from the exporter


def test_a_sharded_export_is_one_model_and_its_shards_are_not_walked_alone():
    found, skipped = walk([EXPORTS])
    names = sorted(p.relative_to(EXPORTS).as_posix() for p in found)
    assert names == [
        "gpt2/gpt2.keras",
        "gpt2/model.safetensors",
        "gpt2_lm_head/model.safetensors",
        "llama/llama.keras",
        "llama/model.safetensors",
        "llama_bf16/model.safetensors",
        "llama_sharded/model.safetensors.index.json",
    ]
    assert not skipped


def test_bfloat16_is_widened_exactly(tmp_path):
    """bfloat16 (numpy has none) read from its checked range: values whose low 16 bits are
    zero in float32 are exactly the bfloat16 values."""
    values = np.array([[1.5, -2.25, 0.0], [3.0e-3, 65280.0, -0.15625]], np.float32)
    values = (values.view(np.uint32) & 0xFFFF0000).view(np.float32)
    raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = {"embed.weight": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, len(raw)]}}
    path = sw.write(tmp_path / "bf.safetensors", sw.join(header, raw))
    with open_model(path) as model:
        [tensor] = model.layers[0].tensors
        assert (tensor.dtype, tensor.role) == ("bfloat16", "embeddings")
        np.testing.assert_array_equal(tensor.load(), values)


# --- hostile headers -----------------------------------------------------------------------------


def _lie(field: str, value):
    def edit(header):
        header[sw.first_tensor(header)][field] = value

    return edit


def _overlap(header):
    names = sorted((k for k in header if k != "__metadata__"),
                   key=lambda k: header[k]["data_offsets"][0])  # fmt: skip
    a, b = header[names[0]], header[names[1]]
    b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + b["data_offsets"][1]
                         - b["data_offsets"][0]]  # fmt: skip


def _body():
    return sw.split((EXPORTS / "gpt2" / "model.safetensors").read_bytes())


TERABYTE_TENSOR = {"w": {"dtype": "U8", "shape": [1 << 40], "data_offsets": [0, 1 << 40]}}
TWO_SPELLINGS = {
    "a.b.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
    "a/b.weight": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
}
LONG_NAME = {"n" * 1_000_000: {"dtype": "??"}}
HOSTILE = {
    "header length of a terabyte": (
        lambda: sw.join(b"{}", b"", length=1 << 40),
        "oversized-metadata",
    ),
    "header longer than the file": (lambda: sw.join(b'{"a": 1}', b"", length=4096), "truncated"),
    "7 bytes": (lambda: b"\x07" * 7, "truncated"),
    "header not JSON": (lambda: sw.join(b"{not json", b""), "bad-json"),
    "header 100,000 deep": (lambda: sw.join(b"[" * 100_000 + b"]" * 100_000, b""), "bad-json"),
    "offsets past the end": (lambda: sw.edited(_lie("data_offsets", [0, 10**12])), "corrupt"),
    "overlapping tensors": (lambda: sw.edited(_overlap), "corrupt"),
    "shape not its bytes": (lambda: sw.edited(_lie("shape", [1000, 1000])), "corrupt"),
    "dtype not its bytes": (lambda: sw.edited(_lie("dtype", "F64")), "corrupt"),
    "unknown dtype": (lambda: sw.edited(_lie("dtype", "Q7")), "corrupt"),
    "negative dimension": (lambda: sw.edited(_lie("shape", [-4, 4])), "corrupt"),
    "data past the last tensor": (lambda: sw.join(*_body()) + b"\0" * 64, "corrupt"),
    "file cut inside a tensor": (lambda: sw.join(*_body())[:-100], "truncated"),
    "tensor of 2**40 bytes": (lambda: sw.join(TERABYTE_TENSOR, b""), "oversized-tensor"),
    "a name of a megabyte, bad dtype": (lambda: sw.join(LONG_NAME, b""), "corrupt"),
    "a.b and a/b": (lambda: sw.join(TWO_SPELLINGS, b"\0" * 8), "duplicate-name"),
    "no tensors": (lambda: sw.join({"__metadata__": {"format": "pt"}}, b""), "not-keras"),
    "metadata not an object": (lambda: sw.join({"__metadata__": [1]}, b""), "bad-json"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_header_is_one_clear_error(tmp_path, case):
    make, code = HOSTILE[case]
    path = sw.write(tmp_path / "model.safetensors", make())
    with pytest.raises(ModelReadError) as err, open_model(path) as model:
        for layer in model.layers:
            for t in layer.tensors:
                t.load()
    assert err.value.code == code, err.value.message
    assert str(path) in err.value.message and "\n" not in err.value.message
    assert len(err.value.message) < len(str(path)) + 200  # names and values clipped


def test_too_many_tensors_is_refused_before_they_are_read(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_safetensors, "MAX_TENSORS", 10)
    path = sw.write(tmp_path / "model.safetensors", (EXPORTS / "gpt2" /
                                                     "model.safetensors").read_bytes())  # fmt: skip
    with pytest.raises(ModelReadError) as err, open_model(path):
        pass
    assert err.value.code == "too-many-objects"


def _index(folder, weight_map):
    folder.mkdir()
    for f in (EXPORTS / "llama_sharded").iterdir():
        shutil.copy2(f, folder / f.name)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder / "model.safetensors.index.json"


SHARD_CASES = {
    "shard path leaving the folder": (
        {"lm_head.weight": "../model-00001-of-00004.safetensors"},
        "unsafe-archive",
    ),
    "absolute shard path": ({"lm_head.weight": "/etc/passwd"}, "unsafe-archive"),
    "shard missing": ({"lm_head.weight": "model-00009-of-00009.safetensors"}, "missing-member"),
    "tensor not in its shard": (
        {"nope.weight": "model-00001-of-00004.safetensors"},
        "missing-object",
    ),
    "index lists itself": ({"lm_head.weight": "model.safetensors.index.json"}, "bad-json"),
    "weight map of numbers": ({"lm_head.weight": 3}, "bad-json"),
}


@pytest.mark.parametrize("case", SHARD_CASES)
def test_a_hostile_index_is_one_clear_error(tmp_path, case):
    weight_map, code = SHARD_CASES[case]
    index = _index(tmp_path / "m", weight_map)
    with pytest.raises(ModelReadError) as err, open_model(index):
        pass
    assert err.value.code == code, err.value.message


def test_bad_files_give_one_error_row_each_and_the_run_goes_on(tmp_path, warehouse):
    folder = tmp_path / "runs"
    shutil.copytree(EXPORTS / "gpt2", folder / "good")
    (folder / "good" / "gpt2.keras").unlink()
    sw.write(folder / "long.safetensors", HOSTILE["header length of a terabyte"][0]())
    sw.write(folder / "overlap.safetensors", HOSTILE["overlapping tensors"][0]())
    (folder / "escape").mkdir()
    (folder / "escape" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"lm_head.weight": "../good/model.safetensors"}})
    )
    report = warehouse.ingest(folder)
    assert report.ingested == 1
    rows = warehouse.query("SELECT path, error FROM ingest_errors ORDER BY path")
    assert [(p.removeprefix(str(folder) + "/"), e) for p, e in rows] == [
        ("escape/model.safetensors.index.json", "unsafe-archive"),
        ("long.safetensors", "oversized-metadata"),
        ("overlap.safetensors", "corrupt"),
    ]


def test_a_header_length_is_checked_before_any_byte_of_it_is_read(tmp_path):
    """A sparse 128 MB file claiming a 100 MB header: refused from its first 8 bytes."""
    path = tmp_path / "model.safetensors"
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", 100 << 20))
        fh.truncate(128 << 20)
    with pytest.raises(ModelReadError) as err, open_model(path):
        pass
    assert err.value.code == "oversized-metadata"


def test_a_sharded_export_is_fingerprinted_and_hashed_with_its_shards(tmp_path):
    """A changed shard is a changed model: the files of the save are the index and its
    shards (the config beside is not part of it)."""
    from wpipe.ingest.filemap import sha256_of
    from wpipe.ingest.plan import fingerprint
    from wpipe.readers import model_files

    shutil.copytree(EXPORTS / "llama_sharded", tmp_path / "m")
    index = tmp_path / "m" / "model.safetensors.index.json"
    files = sorted(p.name for p in model_files(index))
    assert files == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)] + [
        "model.safetensors.index.json"]  # fmt: skip
    size = sum((index.parent / f).stat().st_size for f in files)
    assert fingerprint(index)[0] == size
    before = sha256_of(str(index))
    shard = index.parent / "model-00003-of-00004.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    assert sha256_of(str(index)) != before
