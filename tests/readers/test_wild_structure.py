"""Weights files whose structure is only in their names (tests/fixtures/make_wild_structure.py):
Hugging Face `tf_model.h5` (BERT, GPT-2, ViT, DistilBERT, T5, ResNet, ConvNeXt) and Keras 2
`save_weights` files with Keras's default layer names (CuDNNLSTM/CuDNNGRU included).

Expected values are what Keras held when the files were written: count_params (a tied
variable once), the trainable split, every variable's statistics, the class of the Keras layer
that owns it and the role it has there (the generator's OWNER_ROLES for Hugging Face's own
layers).
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner
from wpipe.cli import app

from tests.conftest import EXPECTED, MODELS, Warehouse

WILD = MODELS / "wild_structure"
SPECS = {p.name.removesuffix(".json").replace("__", "/"): p
         for p in sorted((EXPECTED / "wild_structure").glob("*.json"))}  # fmt: skip
STATS = ("size", "mean", "std", "min", "max", "l2")
# Roles wpipe documents (schema: weights.role); a raw framework name is none of them.
ROLES = {"kernel", "recurrent_kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance",
         "embeddings", "depthwise_kernel", "pointwise_kernel"}  # fmt: skip

runner = CliRunner()


@pytest.fixture(scope="module")
def wild(tmp_path_factory) -> Warehouse:
    w = Warehouse(tmp_path_factory.mktemp("wild"))
    report = w.ingest(WILD, values="none", drift=False)
    assert not report.failed, [o.message for o in report.failed]
    return w


def model_id(w: Warehouse, file: str) -> str:
    return w.query("SELECT model_id FROM models WHERE path LIKE ?", [f"%/{file}"])[0][0]


def rows_of(w: Warehouse, file: str) -> list[dict]:
    keys = ["layer_path", "source_name", "role", "trainable", "class_name", "wrapped",
            "tied_sources", *STATS]  # fmt: skip
    rows = w.query(
        "SELECT w.layer_path, w.source_name, w.role, w.trainable, l.class_name, "
        "json_extract_string(l.config, '$.layer.class_name'), "
        f"w.tied_sources, {', '.join('w.' + s for s in STATS)} FROM weights w "
        "JOIN layers l USING (model_id, layer_path) WHERE w.model_id = ?",
        [model_id(w, file)],
    )
    return [dict(zip(keys, r, strict=True)) for r in rows]


@pytest.mark.parametrize("file", sorted(SPECS))
def test_totals_match_keras_count_params(wild, file):
    spec = json.loads(SPECS[file].read_text())
    got = wild.query(
        "SELECT n_params, n_trainable, n_non_trainable FROM models WHERE model_id = ?",
        [model_id(wild, file)],
    )[0]
    assert got == (spec["count_params"], spec["n_trainable"], spec["n_non_trainable"])


@pytest.mark.parametrize("file", sorted(SPECS))
def test_every_variable_once_with_keras_values_role_and_class(wild, file):
    spec = json.loads(SPECS[file].read_text())
    rows = rows_of(wild, file)
    assert len(rows) == len(spec["weights"])  # a tied variable is one row
    for want in spec["weights"]:
        hits = [r for r in rows if r["source_name"].endswith("/" + want["name"])]
        assert len(hits) == 1, (file, want["name"], hits)
        row = hits[0]
        for stat in STATS:
            assert row[stat] == pytest.approx(want["stats"][stat], rel=1e-6, abs=1e-9), (
                file, want["name"], stat)  # fmt: skip
        assert row["role"] == want["role"], (file, want["name"])
        assert row["trainable"] == want["trainable"], (file, want["name"])
        if want["class_name"] is not None:
            assert row["class_name"] == want["class_name"], (file, want["name"])
        assert row["wrapped"] == want.get("wrapped"), (file, want["name"])


def test_no_unknown_roles_and_no_missing_classes(wild):
    roles = {r for (r,) in wild.query("SELECT DISTINCT role FROM weights")}
    assert roles <= ROLES, roles - ROLES
    # every layer has a class but the Hugging Face layers that own variables directly
    # (ViT's embeddings, ConvNeXt's layer scale, BERT's MLM output bias): no Keras class is theirs
    nulls = wild.query(
        "SELECT m.path, l.layer_path FROM layers l JOIN models m USING (model_id) "
        "WHERE l.class_name IS NULL ORDER BY 1, 2"
    )
    assert [(p.rsplit("/", 2)[-2], lp) for p, lp in nulls] == [
        ("hf_bert_pretraining", "mlm___cls/predictions"),  # the output bias alone
        ("hf_convnext", "convnext/encoder/stages.0/layers.0"),
        ("hf_convnext", "convnext/encoder/stages.1/layers.0"),
        ("hf_vit", "vit/embeddings"),
    ]


def test_hugging_face_group_splits_into_its_layers(wild):
    layers = wild.query(
        "SELECT layer_path, class_name FROM layers WHERE model_id = ? ORDER BY layer_index",
        [model_id(wild, "hf_bert/tf_model.h5")],
    )
    assert layers[0] == ("bert/embeddings/word_embeddings", "Embedding")
    assert ("bert/encoder/layer_._0/attention/self/query", "Dense") in layers
    assert len(layers) == 13  # 3 embeddings, 3 LayerNorms, 7 Dense


def test_tied_embedding_is_counted_once_with_its_other_places(wild):
    rows = wild.query(
        "SELECT layer_path, source_name, tied_sources FROM weights "
        "WHERE model_id = ? AND tied_sources IS NOT NULL",
        [model_id(wild, "hf_t5/tf_model.h5")],
    )
    assert rows == [(
        "shared", "/shared/shared/shared/embeddings:0",
        ["/encoder/shared/shared/embeddings:0", "/decoder/shared/shared/embeddings:0"],
    )]  # fmt: skip
    layers = {p for (p,) in wild.query("SELECT layer_path FROM layers WHERE model_id = ?",
                                       [model_id(wild, "hf_t5/tf_model.h5")])}  # fmt: skip
    assert not {p for p in layers if p.endswith("/shared")}  # no layer only listing it


def test_mlm_head_listing_the_embeddings_layer_again_is_counted_once(wild):
    # TFBertForPreTraining's MLM head holds BERT's embeddings layer (its decoder is the word
    # embeddings): every variable of it, LayerNorm's constant beta included, is one variable
    tied = wild.query(
        "SELECT layer_path, weight_name FROM weights WHERE model_id = ? "
        "AND tied_sources IS NOT NULL ORDER BY weight_index",
        [model_id(wild, "hf_bert_pretraining/tf_model.h5")],
    )
    assert tied == [
        ("bert/embeddings/word_embeddings", "embeddings"),
        ("bert/embeddings/token_type_embeddings", "embeddings"),
        ("bert/embeddings/position_embeddings", "embeddings"),
        ("bert/embeddings/LayerNorm", "gamma"),
        ("bert/embeddings/LayerNorm", "beta"),
    ]


def test_hugging_face_config_beside_is_recorded(wild):
    got = wild.query(
        "SELECT model_class, json_extract_string(source_config, '$.model_type'), "
        "json_extract(source_config, '$.hidden_size')::INT FROM models WHERE model_id = ?",
        [model_id(wild, "hf_bert/tf_model.h5")],
    )
    assert got == [("BertModel", "bert", 8)]
    plain = wild.query("SELECT source_config FROM models WHERE model_id = ?",
                       [model_id(wild, "k2w_text.h5")])  # fmt: skip
    assert plain == [(None,)]


def test_cudnn_layers_get_their_layout_and_gate_split(wild):
    mid = model_id(wild, "k2w_cudnn.h5")
    layouts = wild.query(
        "SELECT DISTINCT layer_path, layout FROM weights WHERE model_id = ? ORDER BY 1", [mid]
    )
    assert ("cu_dnnlstm", "cudnn") in layouts and ("cu_dnngru", "cudnn") in layouts
    assert ("gru", "keras") in layouts
    gates = wild.query(
        "SELECT layer_path, string_agg(DISTINCT gate, '' ORDER BY gate) FROM units "
        "WHERE model_id = ? AND role = 'recurrent_kernel' GROUP BY 1 ORDER BY 1",
        [mid],
    )
    assert gates == [("cu_dnngru", "hrz"), ("cu_dnnlstm", "cfio"), ("gru", "hrz")]


def test_units_and_spectra_of_conv_kernels_without_classes_in_the_file(wild):
    mid = model_id(wild, "k2w_conv.h5")
    units = wild.query(
        "SELECT layer_path, axis, count(*) FROM units WHERE model_id = ? AND role = 'kernel' "
        "GROUP BY ALL ORDER BY 1",
        [mid],
    )
    assert units == [("conv2d", "filter", 4), ("dense_3", "unit", 2)]
    # a 4-D kernel of known class has a matrix rule (before: "of unknown class", skipped)
    conv_spectra = wild.query(
        "SELECT DISTINCT status FROM spectra WHERE model_id = ? AND layer_path = 'conv2d' "
        "AND weight_name = 'kernel'",
        [mid],
    )
    assert conv_spectra == [("ok",)]


def chart(w: Warehouse, name: str, tmp_path, *args: str):
    out = tmp_path / f"{name}.vl.json"
    result = runner.invoke(app, ["chart", name, "--db", str(w.db_path), "-o", str(out), *args])
    return result, out


def test_gpt2_kernels_draw(wild, tmp_path):
    for name in ("heatmap", "matrix"):
        result, out = chart(wild, name, tmp_path, "-m", "hf_gpt2/tf_model")
        assert result.exit_code == 0, result.output
        assert out.stat().st_size > 0


def test_filters_draw_from_a_save_weights_file(wild, tmp_path):
    result, out = chart(wild, "filters", tmp_path, "-m", "k2w_conv")
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0


def test_matrix_without_the_weight_says_so_not_older_wpipe(wild, tmp_path):
    result, _ = chart(wild, "matrix", tmp_path, "-m", "k2w_text", "--weight", "nosuch")
    assert result.exit_code != 0
    assert "older wpipe" not in result.output and "nosuch" in result.output
