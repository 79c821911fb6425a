"""wpipe's numpy forward pass against every layer output real Keras recorded (tf_keras 2,
Keras 3 on TensorFlow and on JAX; legacy .h5 and .keras), at atol = rtol = 1e-4."""

from __future__ import annotations

import numpy as np
import pytest
from wpipe.forward.activations import sparsemax

from tests.forward.keras_cases import MODELS, cases, computed, expected

# Outputs where the recorded Keras value is not Keras's own definition; checked separately below.
KERAS_DEVIATIONS = {
    # Keras 3.15's Activation("sparsemax") returns all zeros on both backends.
    ("k3", "act_sparsemax:0:0"),
    ("k3j", "act_sparsemax:0:0"),
}
# Keras 3 on TensorFlow's CPU kernels pads a channels_first stride-2 `same` Conv2D on the
# wrong side (tf_keras and Keras 3 on JAX agree with TensorFlow's NHWC rule and with wpipe).
K3_TF_CHANNELS_FIRST = {"c_cf:0:0", "mp_cf:0:0", "flat_cf:0:0", "head:0:0", "bn_cf:0:0"}


@pytest.mark.parametrize(("stem", "fname"), cases(), ids=[f for _, f in cases()])
def test_every_layer_output_matches_keras(stem: str, fname: str) -> None:
    inputs, want = expected(stem)
    got, stops = computed(fname, inputs)
    writer = stem.split("_", 1)[0]
    if stem.endswith("_lambda"):
        want = {k: v for k, v in want.items() if k.startswith("before:")}
        assert [s.layer_path for s in stops] == ["lam"]
    else:
        assert stops == []
    skipped = {k for w, k in KERAS_DEVIATIONS if w == writer}
    if stem == "k3_channels_first":
        skipped |= K3_TF_CHANNELS_FIRST
    assert want, "the fixture recorded no outputs"
    for key, value in want.items():
        if key in skipped:
            continue
        assert key in got, f"{fname}: no output {key}"
        assert got[key].shape == value.shape, key
        np.testing.assert_allclose(got[key], value, atol=1e-4, rtol=1e-4, err_msg=f"{fname} {key}")
    # nothing computed that Keras did not record (InputLayers are not rows)
    assert set(got) <= set(want) | skipped


def test_channels_first_agrees_across_the_other_writers() -> None:
    """The Keras 3/TensorFlow deviation above is Keras's: JAX and tf_keras match each other."""
    for stem in ("k2_channels_first", "k3j_channels_first"):
        inputs, want = expected(stem)
        got, _ = computed(f"{stem}.h5", inputs)
        np.testing.assert_allclose(got["c_cf:0:0"], want["c_cf:0:0"], atol=1e-4, rtol=1e-4)


def test_sparsemax_definition() -> None:
    """Martins & Astudillo (2016): a projection onto the simplex; worked example by hand."""
    x = np.array([[0.5, 1.2, -1.0, 1.0]], np.float32)
    # sorted 1.2, 1.0, 0.5: k = 2 (1 + 2*1.0 > 2.2, 1 + 3*0.5 = 2.5 < 2.7); tau = (2.2 - 1) / 2
    np.testing.assert_allclose(sparsemax(x), [[0.0, 0.6, 0.0, 0.4]], atol=1e-6)


def test_lambda_code_never_runs(tmp_path, monkeypatch) -> None:
    """The Lambda's function writes a sentinel file when run; the pass stops there instead."""
    sentinel = tmp_path / "sentinel"
    monkeypatch.setenv("WPIPE_LAMBDA_SENTINEL", str(sentinel))
    for writer in ("k2", "k3", "k3j"):
        inputs, want = expected(f"{writer}_lambda")
        got, stops = computed(f"{writer}_lambda.h5", inputs)
        assert set(got) == {"before:0:0"}
        np.testing.assert_allclose(got["before:0:0"], want["before:0:0"], atol=1e-4, rtol=1e-4)
        assert stops[0].reason == "Lambda: code stored in the file is never run"
    assert not sentinel.exists()
    assert (MODELS / "k2_lambda.h5").stat().st_size > 0
