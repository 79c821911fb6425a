"""TF checkpoints and SavedModels written by tf_keras give what Keras held and what their `.h5`
twins give (expected values: tests/fixtures/make_tf_fixtures.py, from Keras's own API)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from wpipe.analyse.tables import arch_id
from wpipe.readers import ModelReadError, open_model
from wpipe.readers.keras_config import parse_json

from tests.conftest import EXPECTED, MODELS
from tests.readers import tf_write

TF = MODELS / "tf"
NAMES = ("mlp", "cnn_bn", "lstm", "bigru", "nested", "lstm_legacy_adam")
ALL = (*NAMES, "subclassed")  # tf_keras writes no .h5 of a subclassed model


def keras_says(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    info = json.loads((EXPECTED / "tf" / f"k2_{name}.json").read_text())
    with np.load(EXPECTED / "tf" / f"k2_{name}.npz") as arrays:
        return info, dict(arrays)


def rows(path) -> tuple:
    """Everything a model's rows are made of, with each tensor's values."""
    with open_model(path) as model:
        layers = [
            (layer.layer_path, layer.class_name, layer.config, layer.trainable,
             [(t.weight_name, t.role, t.trainable, t.shape, t.dtype, t.status, t.load().tolist())
              for t in layer.tensors])
            for layer in model.layers
        ]  # fmt: skip
        head = (model.model_class, model.optimizer, model.loss, model.keras_version,
                model.backend, model.n_optimizer_tensors, model.n_optimizer_params)  # fmt: skip
        return head, layers, arch_id(model)


SERIALIZATION_KEYS = {"module", "registered_name", "shared_object_id"}


def plain(config):
    """A config without the keys only one of Keras's serializers writes: tf_keras writes a
    SavedModel's metadata with its legacy serializer (shared-object ids) and a .h5's config
    with the new one (module, registered_name)."""
    if isinstance(config, dict):
        return {k: plain(v) for k, v in config.items() if k not in SERIALIZATION_KEYS}
    if isinstance(config, list):
        return [plain(v) for v in config]
    return config


def weighted(layers) -> dict[str, list]:
    """Leaf name -> its tensors (bundles name a nested model by its place, so by leaf name)."""
    return {path.rsplit("/", 1)[-1]: tensors for path, _, _, _, tensors in layers if tensors}


@pytest.mark.parametrize("name", ALL)
def test_savedmodel_gives_what_keras_held(name):
    info, arrays = keras_says(name)
    _, layers, _ = rows(TF / "savedmodel" / f"k2_{name}")
    want = [layer for layer in info["layers"] if layer["class_name"] != "InputLayer"]
    got = [layer for layer in layers if layer[1] != "InputLayer"]
    assert [(p, c) for p, c, *_ in got] == [(w["path"], w["class_name"]) for w in want]
    for (_, _, _, _, tensors), layer in zip(got, want, strict=True):
        assert len(tensors) == len(layer["weights"])
        for tensor, weight in zip(tensors, layer["weights"], strict=True):
            assert tensor[1] == weight["name"].rsplit("/", 1)[-1].split(":")[0]  # role
            assert tensor[2] == weight["trainable"]
            assert tensor[3] == tuple(weight["shape"])
            np.testing.assert_array_equal(np.array(tensor[6], "f4"), arrays[weight["key"]])
    sizes = [(np.prod(t[3]), t[2]) for layer in got for t in layer[4]]
    assert sum(int(s) for s, _ in sizes) == info["n_params"]
    assert sum(int(s) for s, trainable in sizes if trainable) == info["n_trainable"]


@pytest.mark.parametrize("name", NAMES)
def test_savedmodel_gives_what_its_h5_twin_gives(name):
    saved_head, saved_layers, saved_arch = rows(TF / "savedmodel" / f"k2_{name}")
    h5_head, h5_layers, h5_arch = rows(TF / "h5" / f"k2_{name}.h5")
    # paths, classes, configs, trainable flags, values
    assert [(*x[:2], plain(x[2]), *x[3:]) for x in saved_layers] == [
        (*x[:2], plain(x[2]), *x[3:]) for x in h5_layers
    ]
    assert saved_arch == h5_arch
    assert saved_head == h5_head  # class, optimizer, loss, versions, optimizer state
    info, _ = keras_says(name)
    assert saved_head[5] == info["n_optimizer_variables"]


def test_savedmodel_keeps_the_model_config_h5_keeps():
    with open_model(TF / "savedmodel" / "k2_nested") as saved, \
         open_model(TF / "h5" / "k2_nested.h5") as h5:  # fmt: skip
        saved_config = parse_json(saved.model_config, "", "")
        assert plain(saved_config) == plain(parse_json(h5.model_config, "", ""))
        assert saved.format == "tf-savedmodel"


@pytest.mark.parametrize("name", NAMES)
def test_bundle_gives_what_keras_held_and_its_h5_twin_gives(name):
    info, arrays = keras_says(name)
    head, layers, arch = rows(TF / "bundles" / f"k2_{name}.index")
    _, twin_layers, twin_arch = rows(TF / "bundles" / f"k2_{name}.weights_only.h5")
    assert weighted(layers) == weighted(twin_layers)
    if name != "nested":  # the weights-only .h5 lists a nested model's frozen layer last
        assert arch == twin_arch
    assert head[0] is None and head[5] == info["n_optimizer_variables"]
    for layer in info["layers"]:
        tensors = weighted(layers).get(layer["name"], [])
        assert [np.array(t[6], "f4").tolist() for t in tensors] == [
            arrays[w["key"]].tolist() for w in layer["weights"]
        ]
    params = sum(int(np.prod(t[3])) for ts in weighted(layers).values() for t in ts)
    assert params == info["n_params"]


def test_bundle_names_a_nested_models_layers_by_its_place():
    _, layers, _ = rows(TF / "bundles" / "k2_nested.index")
    assert [p for p, *_ in layers] == [
        "layer_with_weights-0/enc_d1", "layer_with_weights-0/enc_bn",
        "layer_with_weights-0/enc_d2", "out",
    ]  # fmt: skip


@pytest.mark.parametrize("name", ["lstm", "lstm_legacy_adam"])  # `_variables` list, slots
def test_optimizer_slots_are_optimizer_state_never_layers(name):
    with open_model(TF / "bundles" / f"k2_{name}.index") as model:
        sources = [t.source_name for layer in model.layers for t in layer.tensors]
        assert not any(s.startswith("optimizer") or ".OPTIMIZER_SLOT" in s for s in sources)
        # Adam: iterations + m and v of each of the 5 variables
        assert model.n_optimizer_tensors == 1 + 2 * len(sources)


def test_a_deep_object_graph_is_refused_without_recursion(tmp_path):
    depth = 5_000
    nodes = [tf_write.node([("layer-0", i + 1)]) for i in range(depth)]
    nodes.append(tf_write.node(attributes=[("d/kernel", "k")]))
    tf_write.write_bundle(tmp_path / "m", {"k": np.ones((2, 2), "f4")}, nodes)
    with pytest.raises(ModelReadError) as err, open_model(tmp_path / "m.index"):
        pass
    assert err.value.code == "corrupt" and "nest" in err.value.message


def test_a_cyclic_object_graph_ends(tmp_path):
    nodes = [
        tf_write.node([("layer-0", 1)]),
        tf_write.node([("kernel", 2), ("again", 0), ("self", 1)]),
        tf_write.node([("loop", 1)], attributes=[("d/kernel", "k")]),
    ]
    tf_write.write_bundle(tmp_path / "m", {"k": np.ones((2, 2), "f4")}, nodes)
    with open_model(tmp_path / "m.index") as model:
        assert [(la.layer_path, [t.weight_name for t in la.tensors]) for la in model.layers] == [
            ("d", ["kernel"])
        ]


def test_a_graph_naming_a_missing_node_or_key_is_refused(tmp_path):
    tf_write.write_bundle(tmp_path / "a", {}, [tf_write.node([("layer-0", 7)])])
    with pytest.raises(ModelReadError) as err, open_model(tmp_path / "a.index"):
        pass
    assert err.value.code == "corrupt"
    nodes = [tf_write.node([("layer-0", 1)]), tf_write.node(attributes=[("d/kernel", "gone")])]
    tf_write.write_bundle(tmp_path / "b", {}, nodes)
    with pytest.raises(ModelReadError) as err, open_model(tmp_path / "b.index"):
        pass
    assert err.value.code == "corrupt" and "gone" in err.value.message


def test_a_checkpoint_without_object_graph_is_named(tmp_path):
    tf_write.write_bundle(tmp_path / "m", {"dense/kernel": np.ones((2, 2), "f4")}, None)
    with pytest.raises(ModelReadError) as err, open_model(tmp_path / "m.index"):
        pass
    assert err.value.code == "unsupported-format" and "object graph" in err.value.message


@pytest.mark.parametrize("name", ALL)
def test_bundle_layers_are_keras_layers_by_name_and_value(name):
    info, arrays = keras_says(name)
    _, layers, _ = rows(TF / "bundles" / f"k2_{name}.index")
    got = weighted(layers)
    want = {layer["name"]: layer["weights"] for layer in info["layers"] if layer["weights"]}
    assert list(got) == list(want)
    for layer, weights in want.items():
        assert [t[1] for t in got[layer]] == [w["name"].split(":")[0].rsplit("/", 1)[-1]
                                              for w in weights]  # fmt: skip
        for tensor, weight in zip(got[layer], weights, strict=True):
            np.testing.assert_array_equal(np.array(tensor[6], "f4"), arrays[weight["key"]])


def test_an_object_graph_past_its_reference_budget_is_refused(tmp_path, monkeypatch):
    from wpipe.readers import tf_protos

    monkeypatch.setattr(tf_protos, "MAX_GRAPH_REFS", 1000)  # the rule, not the real budget
    wide = tf_write.node([("x", 0)] * 1001)
    tf_write.write_bundle(tmp_path / "m", {}, [wide])
    with pytest.raises(ModelReadError) as err, open_model(tmp_path / "m.index"):
        pass
    assert err.value.code == "too-many-objects"


def test_savedmodel_of_tf_2_4_layout_gives_what_keras_metadata_gives():
    """TF 2.0-2.4 kept Keras's metadata in saved_model.pb (the fixture's copy moved it there
    with TensorFlow's own protobuf classes) and wrote no keras_metadata.pb."""
    assert not (TF / "savedmodel" / "k2_mlp_tf24" / "keras_metadata.pb").exists()
    assert rows(TF / "savedmodel" / "k2_mlp_tf24") == rows(TF / "savedmodel" / "k2_mlp")
