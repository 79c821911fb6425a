"""Spectral health (docs: spectral): eigenvalues against full SVD and random-matrix
theory, the power-law fit against known exponents and a literal transcription of
WeightWatcher's fit, metrics against numpy on the arrays Keras returned, skip reasons, the
content-hash cache, the view and the command."""

from __future__ import annotations

import json
import math
import shutil
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner
from wpipe.analyse import eigen, spectra, spectra_tables
from wpipe.analyse.eigen import eigenvalues, gram_noise, spectrum
from wpipe.analyse.spectra import SpectraOptions, esd_metrics, fit_power_law, plan
from wpipe.analyse.tables import ValuesMode
from wpipe.cli import app
from wpipe.ingest.driver import ingest
from wpipe.store import Database

from tests.conftest import MODELS, Warehouse, expected

FIXTURES = ["k2_conv2d.h5", "k3_lstm.h5", "k2_mha.h5", "k2_bidi_td.h5", "k3_gru_reset_after.h5",
            "k2_health_cnn.h5"]  # fmt: skip
runner = CliRunner()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    w = Warehouse(tmp_path_factory.mktemp("spectra"))
    assert not w.ingest(*[MODELS / n for n in FIXTURES]).failed
    return w


def svd_evals(w: np.ndarray) -> np.ndarray:
    return np.sort(np.linalg.svd(w.astype(np.float64), compute_uv=False) ** 2)[::-1]


def oriented(w: np.ndarray) -> np.ndarray:
    return w if w.shape[0] >= w.shape[1] else w.T


# ------------------------------------------------------------------ random matrices, known spectra


def test_gaussian_matrix_follows_marchenko_pastur_and_is_flagged_under_trained():
    # W (N×M) with i.i.d. N(0, 1) entries: the eigenvalues of WᵀW fill [(√N−√M)², (√N+√M)²]
    # (Marchenko–Pastur, no 1/N scaling); finite-size edges land within 5 %. The ESD has no
    # heavy tail, so the power law fitted to its sharp upper edge is steep: alpha > 6.
    n, m = 1000, 250
    w = np.random.default_rng(0).standard_normal((n, m)).astype(np.float32)
    evals = eigenvalues(w[None])
    assert evals.max() == pytest.approx((math.sqrt(n) + math.sqrt(m)) ** 2, rel=0.05)
    assert evals.min() == pytest.approx((math.sqrt(n) - math.sqrt(m)) ** 2, rel=0.05)
    metrics = esd_metrics(evals, n)
    assert metrics["status"] == "ok"
    assert metrics["alpha"] > 6 and metrics["warning"] == "under-trained"
    # float32 Gram (N = 4M): the trace is exact to rounding, ~1e-8 (docs: spectral: 1e-5 relative)
    assert metrics["norm"] == pytest.approx(float((w.astype(np.float64) ** 2).sum()), rel=1e-7)


def planted(alpha: float, n: int, m: int, seed: int) -> np.ndarray:
    """W = U diag(√λ) Vᵀ with random orthonormal U, V and λ drawn from the Pareto density
    p(λ) ∝ λ^−alpha on [1, ∞): the ESD is an exact power law of exponent alpha."""
    rng = np.random.default_rng(seed)
    lam = (1 - rng.random(m)) ** (-1 / (alpha - 1))
    u, _ = np.linalg.qr(rng.standard_normal((n, m)))
    v, _ = np.linalg.qr(rng.standard_normal((m, m)))
    return ((u * np.sqrt(lam)) @ v.T).astype(np.float32)


@pytest.mark.parametrize(("alpha", "seed"), [(2.0, 1), (3.0, 2), (4.5, 3)])
def test_planted_power_law_alpha_is_recovered(alpha, seed):
    # Tolerance: three standard errors of the MLE, (alpha − 1)/√n_tail (the fit's own sigma),
    # and never more than 12 % (800 eigenvalues; 30 seeds stay within 2.9 sigma).
    evals = eigenvalues(planted(alpha, 1200, 800, seed)[None])
    metrics = esd_metrics(evals, 1200)
    assert metrics["status"] == "ok"
    assert abs(metrics["alpha"] - alpha) <= 3 * metrics["sigma"]
    assert metrics["alpha"] == pytest.approx(alpha, rel=0.12)
    assert metrics["warning"] == ("over-trained" if metrics["alpha"] < 2 else None)


def test_gram_path_agrees_with_full_svd():
    rng = np.random.default_rng(4)
    dead = rng.standard_normal((120, 60)).astype(np.float32)
    dead[:, [3, 17, 40]] = 0  # dead units: exact zero eigenvalues, recomputed exactly
    low_rank = (rng.standard_normal((90, 5)) @ rng.standard_normal((5, 40))).astype(np.float32)
    for w in [rng.standard_normal((300, 200)).astype(np.float32),
              rng.standard_normal((256, 256)).astype(np.float32),  # square: λmin ~ 1e-8 λmax
              rng.standard_normal((3000, 20)), dead, low_rank]:  # fmt: skip
        want = svd_evals(w)
        exact = eigenvalues(w[None], exact=True)  # float64 Gram
        assert exact == pytest.approx(want, rel=1e-6, abs=1e-12 * want[0])
        esd = spectrum(oriented(w)[None])  # float32 Gram where N >= 2M, within its bound
        assert esd.noise <= gram_noise(max(w.shape)) * want[0] * (1 + 1e-6)
        assert esd.evals == pytest.approx(want, rel=1e-6, abs=max(esd.noise, 1e-12 * want[0]))
        assert esd.evals[0] == pytest.approx(want[0], rel=1e-7)
        assert esd.evals.sum() == pytest.approx(want.sum(), rel=1e-7)
    slices = rng.standard_normal((9, 64, 32)).astype(np.float32)  # batched conv slices
    want = np.sort(np.concatenate([svd_evals(s) for s in slices]))[::-1]
    assert eigenvalues(slices, exact=True) == pytest.approx(want, rel=1e-6)
    bound = gram_noise(64) * max(svd_evals(s)[0] for s in slices)
    assert eigenvalues(slices) == pytest.approx(want, rel=1e-9, abs=bound)


@pytest.mark.parametrize("kind", ["gaussian", "spiked", "power law", "dead units"])
def test_float32_solver_agrees_with_full_svd_and_its_top_with_a_float64_solver(kind):
    # From F32_SOLVER_MIN columns (N >= 2M) the float32 solver: every eigenvalue within its
    # bound, λmax refined in float64 (as exact as a float64 solver of the same Gram), Σλ the
    # float64 trace (docs' tolerance: 1e-5 relative; these keep ~1e-7 or better)
    rng = np.random.default_rng(11)
    n, m = 700, 300
    w = {"gaussian": lambda: rng.standard_normal((n, m)),
         "spiked": lambda: rng.standard_normal((n, m)) * np.r_[[40.0] * 3, [1.0] * (m - 3)],
         "power law": lambda: planted(2.5, n, m, 12),
         "dead units": lambda: rng.standard_normal((n, m)) * (np.arange(m) % 50 != 0),
         }[kind]().astype(np.float32)  # fmt: skip
    assert m >= eigen.F32_SOLVER_MIN and n >= eigen.F32_ASPECT * m
    want = svd_evals(w)
    esd = spectrum(w[None])
    bound = (gram_noise(n) + eigen.solver_noise(m)) * want[0]
    if kind != "dead units":  # else recomputed in float64: no float32 bound left
        assert bound * 0.99 <= esd.noise <= bound * (1 + 1e-6)
    assert esd.evals == pytest.approx(want, rel=1e-6, abs=max(esd.noise, 1e-12 * want[0]))
    assert esd.evals[0] == pytest.approx(want[0], rel=1e-6)  # the float32 Gram's own error
    assert esd.total == pytest.approx(float((w.astype(np.float64) ** 2).sum()), rel=1e-7)
    gram = w.T @ w  # the float32 Gram the solver sees: its top, refined, is a float64 solver's
    top = eigen._solve32(gram, eigen._lapack32())[-1]
    assert top == pytest.approx(np.linalg.eigvalsh(gram.astype(np.float64))[-1], rel=1e-12)
    # the fit and the other columns from these eigenvalues: a full SVD's, alpha well within 1 %
    [p] = plan("Dense", {}, "d/kernel", "kernel", "keras", w.T, SpectraOptions("all"))
    ours = spectra.analyse(p).metrics
    theirs = esd_metrics(want, n)
    assert ours["alpha"] == pytest.approx(theirs["alpha"], rel=1e-4)
    for column in ("lambda_max", "norm", "log_norm", "stable_rank", "entropy", "log_alpha_norm"):
        assert ours[column] == pytest.approx(theirs[column], rel=1e-6), column


def wwfit(data):
    """WeightWatcher's WW_powerlaw.WWFit.fit_power_law, transcribed line by line."""
    data = np.sort(np.asarray(data, dtype=np.float64))
    n_all = len(data)
    log_data = np.log(data)
    alphas, ds = np.zeros(n_all - 1), np.ones(n_all - 1)
    for i, xmin in enumerate(data[:-1]):
        n = float(n_all - i)
        alpha = 1 + n / (np.sum(log_data[i:]) - n * log_data[i])
        alphas[i] = alpha
        if alpha > 1:
            ds[i] = np.max(np.abs(1 - (data[i:] / xmin) ** (-alpha + 1) - np.arange(n) / n))
    sigmas = (alphas - 1) / np.sqrt(n_all - np.arange(n_all - 1))
    i = np.argmin(ds)
    return alphas[i], data[i], ds[i], sigmas[i]


def wwfit_small(data):
    """WeightWatcher 0.7.7's WWFit.fit_powerlaw_smallN (k_min 8, lambda_prior 0), transcribed."""
    data = np.sort(np.asarray(data, dtype=np.float64))
    n_all = len(data)
    log_data = np.log(data)
    alphas, ds, js = np.zeros(n_all - 1), np.ones(n_all - 1), np.full(n_all - 1, np.inf)
    for i, xmin in enumerate(data[:-1]):
        n_int = n_all - i
        if n_int < 8:
            continue
        n = float(n_int)
        s = np.sum(log_data[i:]) - n * log_data[i]
        if s <= 1e-12:
            continue
        alphas[i] = 1.0 + (n - 1.0) / s
        if alphas[i] <= 1.0:
            continue
        f_fit = 1.0 - (data[i:] / xmin) ** (1.0 - alphas[i])
        ds[i] = np.max(np.abs(np.arange(n_int) / n - f_fit))
        js[i] = ds[i] - 0.868 / np.sqrt(n)
    sigmas = (alphas - 1.0) / np.sqrt(n_all - np.arange(n_all - 1))
    i = int(np.nanargmin(js))
    return alphas[i], data[i], ds[i], sigmas[i]


@pytest.mark.parametrize(("seed", "size"), [(5, 380), (6, 1500), (7, 19), (8, 12), (9, 4000)])
def test_fit_equals_weightwatchers_wwfit(seed, size):
    # 20 or more fitted eigenvalues: the MLE/KS fit; fewer: the small-sample variant
    rng = np.random.default_rng(seed)
    body = rng.random(size - size // 5) * 2
    tail = (1 - rng.random(size // 5)) ** -0.7 + 2
    evals = np.concatenate([body, tail, [0, 1e-6]])
    fit = fit_power_law(evals)
    fitted = evals[evals > spectra.EVALS_THRESH]
    want = wwfit(fitted) if fitted.size >= 20 else wwfit_small(fitted)
    assert [fit.alpha, fit.xmin, fit.D, fit.sigma] == pytest.approx(list(want), rel=1e-9)


def test_fit_equals_wwfit_on_a_spectrum_without_a_power_law():
    # Marchenko-Pastur: a flat KS minimum, where bounding the distances prunes least
    w = np.random.default_rng(10).normal(size=(1500, 600))
    evals = np.linalg.eigvalsh(w.T @ w) / 1500
    fit = fit_power_law(evals)
    assert [fit.alpha, fit.xmin, fit.D, fit.sigma] == pytest.approx(list(wwfit(evals)), rel=1e-9)


# ------------------------------------------------------------------ real Keras fixtures


def keras_matrices(cls: str, weight_name: str, a: np.ndarray):
    """The docs' matrix rules (docs: spectral), written out for the fixture layers:
    label -> (slices, scale)."""
    role = weight_name.split("/")[-1]
    if cls == "Conv2D" and role == "kernel":
        kh, kw = a.shape[:2]
        return {"pooled": ([a[i, j] for i in range(kh) for j in range(kw)], 0.5)}
    if cls in ("LSTM", "GRU") and role in ("kernel", "recurrent_kernel"):
        gates = "ifco" if cls == "LSTM" else "zrh"
        u = a.shape[1] // len(gates)
        return {f"gate:{g}": ([a[:, k * u : (k + 1) * u]], 1.0) for k, g in enumerate(gates)}
    if cls == "MultiHeadAttention" and role == "kernel":
        if weight_name.startswith("attention_output"):
            return {"full": ([a.reshape(-1, a.shape[-1])], 1.0)}
        return {"full": ([a.reshape(a.shape[0], -1)], 1.0)}
    if a.ndim == 2 and role in ("kernel", "embeddings"):
        return {"full": ([a], 1.0)}
    return {}


INNER = {"Bidirectional": "LSTM", "TimeDistributed": "Dense"}


@pytest.mark.parametrize("name", FIXTURES[:5])
def test_norms_and_lambda_max_equal_numpy_on_keras_arrays(loaded, name):
    spec, arrays = expected(name)
    classes = {layer["layer_path"]: layer["class_name"] for layer in spec["layers"]}
    model = name.removesuffix(".h5")
    rows = {
        tuple(r[:3]): r[3:]
        for r in loaded.query(
            "SELECT layer_path, weight_name, matrix, lambda_max, spectral_norm, norm, log_norm, "
            "log_spectral_norm, stable_rank, num_evals, N, M, rf FROM spectra "
            "JOIN models USING (model_id) WHERE name = ?",
            [model],
        )
    }
    stored: dict[tuple, list[float]] = {}
    for *where, value in loaded.query(
        "SELECT layer_path, weight_name, matrix, value FROM eigenvalues "
        "JOIN models USING (model_id) WHERE name = ? ORDER BY k",
        [model],
    ):
        stored.setdefault(tuple(where), []).append(value)
    checked = 0
    for weight in spec["weights"]:
        cls = INNER.get(classes[weight["layer_path"]], classes[weight["layer_path"]])
        for label, (mats, scale) in keras_matrices(cls, weight["weight_name"],
                                                   arrays[weight["key"]]).items():  # fmt: skip
            evals = np.sort(np.concatenate([svd_evals(m) for m in mats]))[::-1] * scale
            where = (weight["layer_path"], weight["weight_name"], label)
            n, m = oriented(mats[0]).shape
            # docs' tolerance: 1e-5 relative; a float32 Gram (N >= 2M) keeps ~1e-8
            assert rows[where] == pytest.approx((
                evals[0], evals[0], evals.sum(), math.log10(evals.sum()), math.log10(evals[0]),
                evals.sum() / evals[0], evals.size, n, m, len(mats)), rel=1e-7)  # fmt: skip
            noise = gram_noise(n) * evals[0]  # wpipe.analyse.eigen's float32 bound
            assert stored[where] == pytest.approx(evals, rel=1e-9, abs=noise)
            checked += 1
    assert checked


def test_every_tensor_has_a_row_and_every_skip_a_reason(loaded):
    missing = loaded.query(
        "SELECT w.layer_path, w.weight_name FROM weights w LEFT JOIN spectra s "
        "USING (model_id, layer_path, weight_name) WHERE s.model_id IS NULL"
    )
    assert missing == []
    statuses = {s for (s,) in loaded.query("SELECT DISTINCT status FROM spectra")}
    assert "ok" in statuses
    assert all(s == "ok" or (s.startswith("skipped: ") and len(s) > 12) for s in statuses)
    reasons = dict(loaded.query(
        "SELECT layer_path || '/' || weight_name, status FROM spectra JOIN models "
        "USING (model_id) WHERE name = 'k2_health_cnn'"))  # fmt: skip
    assert reasons["nan_out/kernel"] == "skipped: non-finite values"
    assert reasons["conv/bias"] == "skipped: not a matrix (1-D)"
    assert reasons["hidden/kernel"] == "skipped: 6 eigenvalues, fewer than 8 to fit"
    ok = loaded.query("SELECT count(*) FROM spectra WHERE status = 'ok' AND alpha IS NULL")
    assert ok == [(0,)]


def test_an_exploded_kernel_is_skipped_not_an_ingest_failure():
    """An exploding run's kernel (|w| ~ 1e29, tests/fixtures/models/wild/sick/k2_exploding.h5)
    squares past float32 in its Gram matrix, where LAPACK failed to converge and the whole
    file was an ingest error; it is skipped with the reason, and a large finite one is not."""
    w = np.random.default_rng(0).normal(size=(64, 24)).astype(np.float32)
    [huge] = plan("Dense", {}, "kernel", "kernel", "keras", w * 1e29, SpectraOptions("all"))
    assert huge.skip == "skipped: values above 1e+15 (its Gram matrix overflows)"
    [large] = spectra.tensor_spectra("Dense", {}, "kernel", "kernel", "keras", w * 1e6,
                                     SpectraOptions("all"))  # fmt: skip
    assert large.metrics["lambda_max"] > 0


def test_auto_budget_skips_costly_matrices_with_the_reason():
    big = np.broadcast_to(np.float32(0.5), (5000, 4100))  # a view: no memory
    assert spectra.cost_seconds(1, 5000, 4100) > spectra.AUTO_BUDGET
    [auto] = plan("Dense", {}, "kernel", "kernel", "keras", big, SpectraOptions("auto"))
    assert auto.skip == "skipped: above the auto budget; --spectra all analyses it"
    assert auto.slices is None
    [everything] = plan("Dense", {}, "kernel", "kernel", "keras", big, SpectraOptions("all"))
    assert everything.skip is None and (everything.n, everything.m) == (5000, 4100)
    # VGG16's shapes: the convolutions and the 4096 x 1000 head fit the budget, fc1/fc2 do not
    assert spectra.cost_seconds(9, 512, 512) < spectra.AUTO_BUDGET
    assert spectra.cost_seconds(1, 4096, 1000) < spectra.AUTO_BUDGET
    assert spectra.cost_seconds(1, 4096, 4096) > spectra.AUTO_BUDGET


def test_matrix_rules_for_other_layers():
    rng = np.random.default_rng(7)
    opts = SpectraOptions()
    conv = rng.standard_normal((3, 3, 16, 32)).astype(np.float32)
    unpooled = plan("Conv2D", {}, "kernel", "kernel", "keras", conv, SpectraOptions(pool=False))
    assert [p.label for p in unpooled][:2] == ["slice:0,0", "slice:0,1"] and len(unpooled) == 9
    assert {p.rescale for p in unpooled} == {4.5}  # WeightWatcher pool=False: W·√(rf/2)
    [raw] = plan(
        "Conv2D", {}, "kernel", "kernel", "keras", conv, SpectraOptions(conv_rescale=False)
    )
    [scaled] = plan("Conv2D", {}, "kernel", "kernel", "keras", conv, opts)
    assert (raw.rescale, scaled.rescale, raw.rf, raw.n, raw.m) == (1.0, 0.5, 9, 32, 16)
    theano = np.ascontiguousarray(np.moveaxis(conv, (-1, -2), (0, 1)))  # (filters, in, kh, kw)
    [th] = plan("Convolution2D", {}, "kernel", "kernel", "theano", theano, opts)
    assert np.array_equal(eigenvalues(th.slices), eigenvalues(scaled.slices))
    depthwise = rng.standard_normal((3, 3, 8, 2)).astype(np.float32)
    [dw] = plan("DepthwiseConv2D", {}, "kernel", "kernel", "keras", depthwise, opts)
    assert (dw.label, dw.n, dw.m, dw.rf) == ("filters", 16, 9, 1)
    assert dw.slices[0] == pytest.approx(depthwise.reshape(9, 16).T)
    convlstm = rng.standard_normal((3, 3, 4, 4 * 6)).astype(np.float32)
    gates = plan("ConvLSTM2D", {}, "kernel", "kernel", "keras", convlstm, opts)
    assert [(p.label, p.rf, p.n, p.m) for p in gates] == [(f"gate:{g}", 9, 6, 4) for g in "ifco"]
    wrapped = {"layer": {"class_name": "GRU", "config": {}}}
    rec = rng.standard_normal((5, 15)).astype(np.float32)
    names = [p.label for p in plan("Bidirectional", wrapped, "backward/recurrent_kernel",
                                   "recurrent_kernel", "keras", rec, opts)]  # fmt: skip
    assert names == ["gate:z", "gate:r", "gate:h"]
    assert plan("EinsumDense", {}, "kernel", "kernel", "keras", conv, opts)[0].skip.startswith(
        "skipped: no matrix rule"
    )


# ------------------------------------------------------------------ cache, view, command


def test_a_copied_checkpoint_is_read_from_the_cache(tmp_path, monkeypatch):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    shutil.copy2(MODELS / "k2_conv2d.h5", zoo / "a.h5")
    lake = tmp_path / "w.lake"
    cache = lake / spectra_tables.CACHE_FOLDER

    def run(values: str = "sample:1024") -> dict:
        before = dict(spectra_tables.COUNTS)
        db = Database(tmp_path / "w.duckdb")
        try:
            # counted in this process: read the files here (no worker)
            values_mode = ValuesMode.parse(values)
            assert not ingest([zoo], db, lake, values=values_mode, jobs=1, file_timeout=None).failed
        finally:
            db.close()
        return {k: spectra_tables.COUNTS[k] - before[k] for k in before}

    # by default these small matrices are recomputed, never cached (cheaper than a file)
    assert run() == {"computed": 0, "cached": 0} and not cache.exists()
    shutil.rmtree(lake)
    (tmp_path / "w.duckdb").unlink()
    monkeypatch.setattr(spectra_tables, "CACHE_MIN_WORK", 0)  # cache every matrix
    assert run() == {"computed": 3, "cached": 0}  # conv1, conv2, out kernels
    files = sorted(cache.rglob("*.npz"))
    assert len(files) == 3
    shutil.copy2(zoo / "a.h5", zoo / "b.h5")  # a duplicated checkpoint: its rows are copied
    assert run() == {"computed": 0, "cached": 0}
    # another --values re-reads a (b is still its copy); spectra come from the cache
    assert run("none") == {"computed": 0, "cached": 3}
    assert sorted(cache.rglob("*.npz")) == files
    w = Warehouse(tmp_path)
    sql = ("SELECT layer_path, weight_name, matrix, alpha, norm, status FROM spectra "
           "JOIN models USING (model_id) WHERE name = ? ORDER BY ALL")  # fmt: skip
    assert w.query(sql, ["a"]) == w.query(sql, ["b"])
    assert w.query(sql.replace("spectra", "eigenvalues").replace("alpha, norm, status", "k, value"),
                   ["b"])  # fmt: skip


def test_summary_view_means_the_ok_rows(loaded):
    summary = loaded.query(
        "SELECT n_matrices, alpha, log_norm, stable_rank FROM model_spectral_summary "
        "WHERE model = 'k2_conv2d'"
    )
    want = loaded.query(
        "SELECT count(*), avg(alpha), avg(log_norm), avg(stable_rank) FROM spectra "
        "JOIN models USING (model_id) WHERE name = 'k2_conv2d' AND status = 'ok'"
    )
    assert summary == want and want[0][0] == 2


def test_spectra_command_and_ingest_option(loaded, tmp_path):
    db = str(loaded.db_path)
    rows = json.loads(
        runner.invoke(app, ["spectra", "-m", "k2_conv2d", "--db", db, "-f", "json"]).output
    )
    assert [(r["layer_path"], r["matrix"], r["status"]) for r in rows] == [
        ("conv1", "pooled", "ok"), ("conv2", "pooled", "ok"),
        ("out", "full", "skipped: 3 eigenvalues, fewer than 8 to fit")]  # fmt: skip
    summary = runner.invoke(app, ["spectra", "--summary", "--db", db, "-f", "csv"])
    assert summary.exit_code == 0 and summary.output.count("\n") == len(FIXTURES) + 1
    table = runner.invoke(app, ["spectra", "-m", "k2_conv2d", "--db", db], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "pooled" in table.output
    assert runner.invoke(app, ["spectra", "-m", "nope", "--db", db]).exit_code == 2
    none_db = str(tmp_path / "none.duckdb")
    result = runner.invoke(app, ["ingest", str(MODELS / "k2_conv2d.h5"), "--db", none_db,
                                 "--spectra", "none", "-q"])  # fmt: skip
    assert result.exit_code == 0
    none = runner.invoke(app, ["query", "SELECT count(*) AS n FROM spectra", "--db", none_db,
                               "-f", "csv"])  # fmt: skip
    assert none.output.splitlines()[1] == "0"
    bad = runner.invoke(app, ["ingest", str(MODELS), "--db", none_db, "--spectra", "some"])
    assert bad.exit_code == 2 and "auto, all or none" in bad.output


@pytest.mark.parametrize(
    "scale, dtype, status",
    [
        (1e153, "f8", "skipped: numerical trouble (numpy: overflow encountered in reduce)"),
        (1e20, "f4", "skipped: the eigenvalue solver did not converge (Eigenvalues did not"),
    ],
)
def test_overflow_and_a_solver_that_gives_up_are_the_matrix_status(
    scale, dtype, status, monkeypatch
):
    """Huge weights: squares past the float range (numpy itself warns on them) or a Gram of
    infinities (LAPACK gives up on it): a status, never a warning line nor the file's
    failure (warnings are errors here). Such weights are refused before any Gram is formed
    (GRAM_LIMIT, checked below); lifted here to reach the solver's own guards."""
    a = (np.random.default_rng(0).standard_normal((64, 32)) * scale).astype(dtype)
    [guarded] = spectra.tensor_spectra("Dense", {}, "kernel", "kernel", "keras", a,
                                       SpectraOptions())  # fmt: skip
    assert guarded.metrics["status"].startswith("skipped: values above 1e+15")
    monkeypatch.setattr(spectra, "GRAM_LIMIT", float("inf"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        [s] = spectra.tensor_spectra("Dense", {}, "kernel", "kernel", "keras", a,
                                     SpectraOptions())  # fmt: skip
    assert s.metrics["status"].startswith(status) and s.evals is None
    assert s.metrics["N"] == 64 and s.metrics["M"] == 32
