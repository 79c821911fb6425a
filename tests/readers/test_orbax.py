"""Orbax checkpoints written by Keras 3's OrbaxCheckpoint give what Keras held at each saved step
and what the `.keras` save of the same model gives (expected values:
tests/fixtures/make_orbax_fixtures.py, from Keras's own API and numpy). tensorstore (the `orbax`
extra) is in the dev extras: these tests need it, but for the one that hides it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import duckdb
import numpy as np
import pytest
from wpipe.analyse.tables import arch_id
from wpipe.readers import ModelReadError, open_model
from wpipe.readers.walk import walk

from tests.conftest import EXPECTED, MODELS, REPO

ORBAX = MODELS / "orbax"
# nested: a frozen layer, MHA, a Bidirectional GRU; tf_cnn_bn: saved on the TensorFlow backend
# (numpy arrays and Python scalars in the tree); both one step
NAMES = ("mlp", "cnn_bn", "lstm", "nested", "tf_cnn_bn")
STEPS = (2, 4, 6)


def truth(name: str) -> dict:
    return json.loads((EXPECTED / "orbax" / f"{name}.json").read_text())


def step_folder(name: str, step: int):
    return ORBAX / name / "ckpt" / str(step)


SAVED = [(name, int(step)) for name in NAMES for step in truth(name)["steps"]]


def rows(path) -> tuple:
    """A model's layers as its rows are made of them (values left out), and its arch_id."""
    with open_model(path) as model:
        layers = [
            (layer.layer_path, layer.class_name, layer.trainable,
             [(t.weight_name, t.role, t.trainable, t.shape, t.dtype) for t in layer.tensors])
            for layer in model.layers
        ]  # fmt: skip
        return layers, arch_id(model)


@pytest.mark.parametrize(("name", "step"), SAVED)
def test_parameter_counts_and_statistics_equal_what_keras_held(name, step):
    want = truth(name)["steps"][str(step)]
    with open_model(step_folder(name, step)) as model:
        assert model.format == "orbax-checkpoint"
        tensors = {t.source_name: t for layer in model.layers for t in layer.tensors}
        sizes = [t.size for t in tensors.values()]
        assert sum(sizes) == want["count_params"]
        assert sum(t.size for t in tensors.values() if t.trainable) == want["n_trainable"]
        assert model.n_optimizer_params == sum(want["optimizer_sizes"])
        assert model.n_optimizer_tensors == len(want["optimizer_sizes"])
        assert len(tensors) == len(want["variables"])
        for var in want["variables"]:
            collection = "trainable" if var["trainable"] else "non_trainable"
            t = tensors[f"{collection}_variables.{var['path'].replace('/', '.')}"]
            values = t.load().astype("f8")
            assert list(t.shape) == var["shape"] == list(values.shape)
            assert values.mean() == pytest.approx(var["mean"], rel=1e-9, abs=1e-12)
            assert values.std() == pytest.approx(var["std"], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_layers_and_classes_equal_the_keras_save_of_the_same_model(name):
    want = truth(name)
    last = max(int(step) for step in want["steps"])
    with open_model(step_folder(name, last)) as model:
        assert model.model_class == want["model_class"]
        assert model.optimizer == "Adam" and model.loss == "mse"
        got = [(layer.layer_path, layer.class_name) for layer in model.layers]
    keras_layers = [(x["name"], x["class_name"]) for x in want["layers"]]
    assert got == keras_layers  # model.layers: a Functional model lists its InputLayer
    assert rows(step_folder(name, last)) == rows(ORBAX / name / f"{name}.keras")


def test_the_last_step_holds_the_weights_of_the_keras_save():
    with (
        open_model(step_folder("cnn_bn", 6)) as a,
        open_model(ORBAX / "cnn_bn" / "cnn_bn.keras") as b,
    ):
        for la, lb in zip(a.layers, b.layers, strict=True):
            for ta, tb in zip(la.tensors, lb.tensors, strict=True):
                assert np.array_equal(ta.load(), tb.load())


def test_a_folder_of_steps_gives_one_model_per_step_and_the_keras_file_beside_it():
    found, skipped = walk([ORBAX / "mlp"])
    assert sorted(str(p.relative_to(ORBAX / "mlp")) for p in found) == [
        "ckpt/2", "ckpt/4", "ckpt/6", "mlp.keras"
    ]  # fmt: skip
    assert not skipped


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    from tests.conftest import Warehouse

    root = tmp_path_factory.mktemp("orbax_series")
    shutil.copytree(ORBAX / "cnn_bn", root / "runs" / "cnn_bn")
    w = Warehouse(root)
    report = w.ingest(root / "runs")
    assert not report.failed and report.ingested == 4
    return w


def test_the_steps_are_named_by_their_step_and_form_a_series_with_drift(series):
    names = series.query("SELECT name, format FROM models ORDER BY name")
    assert names == [
        ("cnn_bn/ckpt/2", "orbax-checkpoint"), ("cnn_bn/ckpt/4", "orbax-checkpoint"),
        ("cnn_bn/ckpt/6", "orbax-checkpoint"), ("cnn_bn/cnn_bn", "keras-zip"),
    ]  # fmt: skip
    drift = series.query(
        "SELECT a.name, b.name, d.layer_path, d.weight_name, d.rel_l2 FROM drift d "
        "JOIN models a ON a.model_id = d.model_a JOIN models b ON b.model_id = d.model_b"
    )
    got = {(a.rsplit("/", 1)[1], b.rsplit("/", 1)[1], f"{p}/{n}"): v for a, b, p, n, v in drift}
    want = {
        (str(d["step_a"]), str(d["step_b"]), d["path"].split("/", 1)[1]): d["rel_l2"]
        for d in truth("cnn_bn")["drift"]
    }
    assert got.keys() == want.keys() and len(got) == 2 * 8
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6)


def test_the_last_step_and_the_keras_save_are_recognisably_the_same_weights(series):
    shas = dict(series.query("SELECT name, weights_sha FROM models"))
    assert shas["cnn_bn/ckpt/6"] == shas["cnn_bn/cnn_bn"] is not None
    assert len({shas[f"cnn_bn/ckpt/{s}"] for s in STEPS}) == 3


def test_without_tensorstore_each_step_is_one_line_and_one_row_naming_the_extra(tmp_path):
    """An ingest in a fresh interpreter where `import tensorstore` fails, as when it is
    absent; the .keras beside the steps is still read."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "tensorstore.py").write_text("raise ImportError('No module named tensorstore')\n")
    shutil.copytree(ORBAX / "mlp", tmp_path / "mlp")
    db = tmp_path / "w.duckdb"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO / "pipeline")])}
    run = subprocess.run(
        [sys.executable, "-m", "wpipe.cli", "ingest", str(tmp_path / "mlp"), "--db", str(db)],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    lines = [line for line in (run.stdout + run.stderr).splitlines() if "wpipe[orbax]" in line]
    assert sorted(line.split(": ", 2)[1] for line in lines) == [
        str(tmp_path / "mlp" / "ckpt" / str(s)) for s in STEPS
    ]
    assert all(line.endswith("pip install 'wpipe[orbax]'") for line in lines)
    assert "Traceback" not in run.stdout + run.stderr
    con = duckdb.connect(str(db), read_only=True)
    try:
        errors = con.execute("SELECT path, error FROM ingest_errors ORDER BY path").fetchall()
        models = con.execute("SELECT format FROM models").fetchall()
    finally:
        con.close()
    assert errors == [(str(tmp_path / "mlp" / "ckpt" / str(s)), "missing-extra") for s in STEPS]
    assert models == [("keras-zip",)]


@pytest.fixture
def step(tmp_path):
    target = tmp_path / "7"
    shutil.copytree(step_folder("mlp", 2), target)
    return target


def refused(path) -> ModelReadError:
    with pytest.raises(ModelReadError) as info, open_model(path):
        pass
    assert "\n" not in info.value.message and str(path) in info.value.message
    return info.value


def test_bad_metadata_json_is_a_clean_error(step):
    (step / "pytree" / "_METADATA").write_text('{"tree_metadata": {"x": ')
    assert refused(step).code == "bad-json"


def test_a_deeply_nested_metadata_is_refused_before_parsing(step):
    (step / "pytree" / "_METADATA").write_text("[" * 100_000 + "]" * 100_000)
    assert refused(step).code == "bad-json"


def set_shape(step, name: str, shape: list[int]) -> None:
    """Rewrite the array's own zarr.json inside the step's OCDBT store, with tensorstore."""
    import tensorstore as ts

    store = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{step / 'pytree'}/"}).result()
    meta = json.loads(store.read(f"{name}/zarr.json").result().value)
    meta["shape"] = shape
    store.write(f"{name}/zarr.json", json.dumps(meta).encode()).result()


def test_a_huge_declared_shape_is_refused_before_reading(step):
    """The array's own zarr.json (inside the OCDBT store) declares 10^12 floats."""
    name = "trainable_variables.mlp.hidden.kernel"
    set_shape(step, name, [1_000_000, 1_000_000])
    error = refused(step)
    assert error.code == "oversized-tensor" and name in error.message


def test_arrays_declaring_far_more_than_the_folder_stores_are_refused_before_reading(step):
    """Each array within 4 GiB, together a thousand times the folder's bytes (an array never
    written reads as its fill value)."""
    name = "trainable_variables.mlp.hidden.kernel"
    set_shape(step, name, [1 << 14, 1 << 14])  # 1 GiB of float32
    error = refused(step)
    assert error.code == "compression-bomb"


def test_a_symlink_out_of_the_checkpoint_is_never_followed(step, tmp_path):
    data = next((step / "pytree" / "d").iterdir())
    outside = tmp_path / "outside"
    shutil.move(data, outside)
    data.symlink_to(outside)
    assert refused(step).code == "unsafe-archive"


def test_a_fifo_in_the_checkpoint_is_never_opened(step):
    data = next((step / "pytree" / "d").iterdir())
    data.unlink()
    os.mkfifo(data)
    assert refused(step).code == "not-a-regular-file"


def test_a_missing_data_file_is_a_clean_error(step):
    for data in (step / "pytree" / "d").iterdir():
        data.unlink()
    for data in (step / "pytree" / "ocdbt.process_0" / "d").iterdir():
        data.unlink()
    assert refused(step).code == "corrupt"


def test_a_step_saved_with_weights_only_names_layers_by_their_variables(step):
    shutil.rmtree(step / "model_config")
    with open_model(step) as model:
        got = [(layer.layer_name, [t.weight_name for t in layer.tensors]) for layer in model.layers]
        assert model.model_class is None
    assert got == [("hidden", ["kernel", "bias"]), ("out", ["kernel", "bias"])]


def test_an_empty_collection_in_the_tree_holds_no_array(step):
    """A model without non-trainable variables: Orbax records `non_trainable_variables: {}`
    as an entry of type Dict with nothing stored (seen in a real save of a Dense stack)."""
    path = step / "pytree" / "_METADATA"
    meta = json.loads(path.read_text())
    meta["tree_metadata"]["('non_trainable_variables',)"] = {
        "key_metadata": [{"key": "non_trainable_variables", "key_type": 2}],
        "value_metadata": {"value_type": "Dict", "skip_deserialize": True},
    }
    path.write_text(json.dumps(meta))
    with open_model(step) as model:
        assert sum(t.size for layer in model.layers for t in layer.tensors) == 75


def test_a_tree_key_spelling_a_path_is_only_a_key_in_the_store(step):
    path = step / "pytree" / "_METADATA"
    meta = json.loads(path.read_text())
    keys = ["trainable_variables", "..", "..", "..", "etc", "passwd"]
    meta["tree_metadata"]["x"] = {
        "key_metadata": [{"key": k, "key_type": 2} for k in keys],
        "value_metadata": {"value_type": "jax.Array", "skip_deserialize": False},
    }
    path.write_text(json.dumps(meta))
    error = refused(step)
    assert error.code == "corrupt" and repr(".".join(keys)) in error.message


def test_an_unfinished_step_is_reported_not_read(tmp_path):
    run = tmp_path / "ckpt"
    shutil.copytree(step_folder("mlp", 2), run / "2")
    shutil.copytree(step_folder("mlp", 4), run / "4.orbax-checkpoint-tmp")
    found, skipped = walk([run])
    assert found == [run / "2", run / "4.orbax-checkpoint-tmp"] and not skipped
    error = refused(run / "4.orbax-checkpoint-tmp")
    assert error.code == "unsupported-format" and "never finished" in error.message
