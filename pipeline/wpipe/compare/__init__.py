"""Comparing models: checkpoint series and their drift, ad-hoc pairs, distance matrices,
tags from names and user metrics. Reads model files again (drift needs both tensors), writes
the derived tables `drift`, `model_tags` and `model_metrics`."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import combinations, pairwise
from pathlib import Path
from typing import NamedTuple

import duckdb
import pyarrow as pa

from wpipe.analyse.drift import drift_row, position_pairs, symmetric_distance, tensor_drift
from wpipe.compare.checkpoints import (
    Save,
    checkpoint_number,
    has_training_log,
    name_series,
    series_of,
)
from wpipe.core import schema
from wpipe.readers import Model, ModelReadError
from wpipe.store import insert_arrow
from wpipe.store.remote import is_url, open_save

LOG_NAMES = ("training.log",)  # CSVLogger's usual name besides *.csv


def folder_of(path: str) -> str:
    """A model's folder: a local parent directory, or a URL up to its last `/`."""
    return path.rsplit("/", 1)[0] if is_url(path) else str(Path(path).parent)


def series(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """Checkpoint series: models of one arch_id, folder and format (two or more) with evidence
    of training order, in that order (docs: checkpoints; wpipe.compare.checkpoints)."""
    rows = con.execute(
        "SELECT m.model_id, m.path, m.arch_id, m.name, coalesce(e.value, s.value), m.sha256 "
        "FROM models AS m "
        "LEFT JOIN model_tags AS e ON e.model_id = m.model_id AND e.key = 'epoch' "
        "LEFT JOIN model_tags AS s ON s.model_id = m.model_id AND s.key = 'step'"
    ).fetchall()
    groups: dict[tuple[str, str], list[Save]] = {}
    for model_id, path, arch, name, order, sha in rows:
        groups.setdefault((folder_of(path), arch), []).append(
            Save(model_id, path, name, order, sha)
        )
    logged = {folder: has_training_log(folder) for folder, _ in groups}
    found = {
        (folder, arch): series_of(saves, logged[folder])
        for (folder, arch), saves in groups.items()
        if len(saves) > 1
    }
    return {name: [s.key for s in chain] for name, chain in name_series(found).items()}


class ModelFile(NamedTuple):
    path: str
    sha256: str | None


def model_files(
    con: duckdb.DuckDBPyConnection, model_ids: Iterable[str] | None = None
) -> dict[str, ModelFile]:  # fmt: skip
    """model_id -> its file (path, content hash), for each of `model_ids` stored (None: all)."""
    query = "SELECT model_id, path, sha256 FROM models"
    if model_ids is None:
        rows = con.execute(query).fetchall()
    else:
        rows = con.execute(f"{query} WHERE list_contains(?, model_id)", [list(model_ids)])
        rows = rows.fetchall()
    return {m: ModelFile(path, sha) for m, path, sha in rows}


def _drift_rows(
    model_a: Model, model_b: Model, ids: tuple[str, str], shas: tuple[str, str],
    series_name: str | None, pairs: dict[str, str],
) -> list[dict]:  # fmt: skip
    """Drift of every tensor of A's layers in `pairs` (A's layer path -> B's, as
    comparable_layers gives them) against the tensor in the same place of B's layer, keyed by
    B's layer path and weight name."""
    layers_b = {layer.layer_path: layer for layer in model_b.layers}
    rows = []
    for layer in model_a.layers:
        other = layers_b.get(pairs.get(layer.layer_path, ""))
        if other is None or len(other.tensors) != len(layer.tensors):
            continue
        for t, u in zip(layer.tensors, other.tensors, strict=True):
            # both analysable: a complex or string tensor on either side is never cast
            if u.shape != t.shape or (t.status, u.status) != ("ok", "ok"):
                continue
            key = (other.layer_path, u.weight_name)
            rows.append(drift_row(ids, key, t.load(), u.load(), series_name, shas))
    return rows


def comparable_layers(con: duckdb.DuckDBPyConnection, a: str, b: str) -> dict[str, str]:
    """A's layer path -> B's, for the layers align_layers (the one pairing every comparison
    uses) finds comparable: paired, of one class, with the same weight roles and shapes."""
    return {path_a: path_b for path_a, path_b, _ in layer_pairs(con, a, b)}


def layer_pairs(con: duckdb.DuckDBPyConnection, a: str, b: str) -> list[tuple[str, str, bool]]:
    """(A's layer path, B's, certain) for the comparable pairs of align_layers, in A's order."""
    return con.execute(
        "SELECT path_a, path_b, certain FROM align_layers(?, ?) WHERE comparable", [a, b]
    ).fetchall()


PAIRED_SCHEMA = pa.schema([("model_id", pa.string()), ("layer_path", pa.string()),
                           ("ref_path", pa.string()), ("certain", pa.bool_())])  # fmt: skip


def paired_paths(con: duckdb.DuckDBPyConnection, model_ids: list[str]) -> pa.Table:
    """(model_id, layer_path, ref_path, certain): the weighted layers of each model of the first
    model's arch_id named by the first model's layer in the same place (align_layers pairs one
    arch_id by position), so figures put a model and its fine-tune saved in another session
    (`conv1d` vs `conv1d_1`) on one row. Models of other architectures keep their own paths:
    pairing each of them would cost a query, and a figure across architectures compares by
    name only (compare A B pairs them)."""
    if not model_ids:
        return PAIRED_SCHEMA.empty_table()
    listing = con.execute(
        "SELECT l.model_id, any_value(m.arch_id), list(l.layer_path ORDER BY l.layer_index) "
        "FROM layers AS l JOIN models AS m USING (model_id) "
        "WHERE list_contains($ids, l.model_id) AND l.n_tensors > 0 GROUP BY l.model_id",
        {"ids": model_ids},
    ).fetchall()
    layers = {m: (arch, paths) for m, arch, paths in listing}
    first_arch, first_paths = layers.get(model_ids[0], (None, []))
    out: dict[str, list] = {name: [] for name in PAIRED_SCHEMA.names}
    for model_id in model_ids:
        arch, paths = layers.get(model_id, (None, []))
        same = arch == first_arch and len(paths) == len(first_paths)
        refs = first_paths if same else paths
        for path, ref in zip(paths, refs, strict=True):
            for name, value in zip(PAIRED_SCHEMA.names, (model_id, path, ref, True), strict=True):
                out[name].append(value)
    return pa.table(out, schema=PAIRED_SCHEMA)


def pair_drift(con: duckdb.DuckDBPyConnection, a: str, b: str) -> pa.Table:
    """Drift rows (the drift table's columns) for the comparable layers of A and B, computed
    from the files now and stored nowhere: an on-demand comparison changes no table."""
    files = model_files(con, [a, b])
    (path_a, sha_a), (path_b, sha_b) = files[a], files[b]
    layers = comparable_layers(con, a, b)
    with open_save(path_a) as model_a, open_save(path_b) as model_b:
        rows = _drift_rows(model_a, model_b, (a, b), (sha_a, sha_b), None, layers)
    return pa.Table.from_pylist(rows, schema=schema.DRIFT.arrow_schema)


def _replace_pairs(
    con: duckdb.DuckDBPyConnection, pairs: list[tuple[str, str]], rows: list[dict]
) -> None:
    replace_drift(con, pairs, pa.Table.from_pylist(rows, schema=schema.DRIFT.arrow_schema))


def replace_drift(
    con: duckdb.DuckDBPyConnection, pairs: list[tuple[str, str]], rows: pa.Table
) -> None:
    """Swap the drift rows of `pairs` for `rows`, in one transaction (one scan per step)."""
    gone = pa.table({"a": [a for a, _ in pairs], "b": [b for _, b in pairs]}, schema=_PAIRS)
    con.execute("BEGIN TRANSACTION")
    con.register("gone_pairs", gone)
    try:
        con.execute(
            "DELETE FROM drift USING gone_pairs g WHERE drift.model_a = g.a AND drift.model_b = g.b"
        )
    finally:
        con.unregister("gone_pairs")
    insert_arrow(con, schema.DRIFT, rows)
    con.execute("COMMIT")


_PAIRS = pa.schema([("a", pa.string()), ("b", pa.string())])


def series_drift(
    con: duckdb.DuckDBPyConnection, advance: Callable[..., None] | None = None
) -> tuple[int, list[str]]:
    """Drift of every consecutive pair of every series; only new or changed pairs are read,
    each file opened once as it slides from pair (a, b) to (b, c). Returns (pairs, problems)."""
    problems: list[str] = []
    wanted: set[tuple[str, str]] = set()
    done: list[tuple[str, str]] = []
    rows: list[dict] = []
    files = model_files(con)
    known = set(
        con.execute(
            # an on-demand pair (series NULL) becomes a series pair when its files join one
            "SELECT DISTINCT d.model_a, d.model_b FROM drift d, models ma, models mb "
            "WHERE ma.model_id = d.model_a AND mb.model_id = d.model_b "
            "AND d.sha256_a = ma.sha256 AND d.sha256_b = mb.sha256 AND d.series IS NOT NULL"
        ).fetchall()
    )
    labels: dict[tuple[str, str], str] = {}
    for name, members in series(con).items():
        todo = [p for p in pairwise(members) if p not in wanted and p not in known]
        wanted.update(pairwise(members))
        labels.update(dict.fromkeys(pairwise(members), name))
        held: tuple[str, Model, ExitStack] | None = None
        for a, b in todo:
            try:
                if held is None or held[0] != a:
                    if held is not None:
                        held[2].close()
                    stack = ExitStack()
                    held = (a, stack.enter_context(open_save(files[a].path)), stack)
                stack_b = ExitStack()
                model_b = stack_b.enter_context(open_save(files[b].path))
                shas = (files[a].sha256, files[b].sha256)
                try:
                    # a series is one arch_id: align_layers pairs it by position
                    pairs = position_pairs(held[1], model_b)
                    rows += _drift_rows(held[1], model_b, (a, b), shas, name, pairs)
                except BaseException:
                    stack_b.close()
                    raise
                done.append((a, b))
                if advance is not None:
                    advance(1, f"{name}: {Path(files[b][0]).name}")
                held[2].close()
                held = (b, model_b, stack_b)
            except (ModelReadError, OSError) as exc:
                problems.append(f"drift {name}: {exc}")
                if held is not None:
                    held[2].close()
                held = None
        if held is not None:
            held[2].close()
    if done:
        _replace_pairs(con, done, rows)
    # a series that lost or gained a member no longer has its old consecutive pairs
    stale = [
        pair
        for pair in con.execute(
            "SELECT DISTINCT model_a, model_b FROM drift WHERE series IS NOT NULL"
        ).fetchall()
        if pair not in wanted
    ]
    if stale:
        replace_drift(con, stale, schema.DRIFT.arrow_schema.empty_table())
    _label_series(con, labels)
    return len(done), problems


def _label_series(con: duckdb.DuckDBPyConnection, labels: dict[tuple[str, str], str]) -> None:
    """Rows computed at ingest carry their folder as series; a folder holding two
    architectures has one series per architecture, labelled folder#arch."""
    table = pa.table({"a": [a for a, _ in labels], "b": [b for _, b in labels],
                      "series": list(labels.values())})  # fmt: skip
    con.register("series_labels", table)
    try:
        con.execute(
            "UPDATE drift SET series = l.series FROM series_labels l WHERE drift.model_a = l.a "
            "AND drift.model_b = l.b AND drift.series IS DISTINCT FROM l.series"
        )
    finally:
        con.unregister("series_labels")


def distance_matrix(con: duckdb.DuckDBPyConnection, model_ids: list[str]) -> list[tuple]:
    """(layer_path, model_a, model_b, distance) for every pair: ‖A−B‖ / mean(‖A‖, ‖B‖)
    over the layer's tensors, for the models whose layer is comparable with the first's."""
    return distance_table(con, model_ids).rows


@dataclass
class Distances:
    """distance_matrix's rows; per layer of the first model, the models that have a layer
    paired with it (align_layers, comparable: only those are compared; a model is at distance
    0 from itself only on a layer it has), those among them whose pair is uncertain, and the
    path of the paired layer in the models that name it otherwise."""

    rows: list[tuple]
    members: dict[str, list[str]]
    uncertain: dict[str, list[str]]
    renamed: dict[str, dict[str, str]] = field(default_factory=dict)  # model -> its path


def distance_table(con: duckdb.DuckDBPyConnection, model_ids: list[str]) -> Distances:
    """Every model's layers paired with the first model's by align_layers, then the distance
    of every two models' layers paired with the same layer of the first."""
    files = model_files(con, model_ids)
    paths = [files[m].path for m in model_ids]
    first = model_ids[0]
    pairs = [{}] + [
        {a: (b, certain) for a, b, certain in layer_pairs(con, first, m)} for m in model_ids[1:]
    ]
    out = Distances([], {}, {})
    with ExitStack() as stack:
        models = [stack.enter_context(open_save(p)) for p in paths]
        layers = [{layer.layer_path: layer for layer in m.layers} for m in models]
        for layer in [layer for layer in models[0].layers if layer.tensors]:
            mine = {0: layer}  # the layer of each model paired with the first's
            for i in range(1, len(models)):
                path, certain = pairs[i].get(layer.layer_path, (None, True))
                if path is not None and path in layers[i]:
                    mine[i] = layers[i][path]
                    if path != layer.layer_path:  # named otherwise in that model
                        out.renamed.setdefault(layer.layer_path, {})[model_ids[i]] = path
                    if not certain:
                        out.uncertain.setdefault(layer.layer_path, []).append(model_ids[i])
            out.members[layer.layer_path] = [model_ids[i] for i in mine]
            arrays = {i: [t.load() for t in other.tensors] for i, other in mine.items()}
            for i, j in combinations(mine, 2):
                parts = [tensor_drift(x, y) for x, y in zip(arrays[i], arrays[j], strict=True)]
                l2 = [sum((p[f] or 0.0) ** 2 for p in parts) ** 0.5 for f in
                      ("l2_a", "l2_b", "l2_diff")]  # fmt: skip
                distance = symmetric_distance(*l2)
                out.rows.append((layer.layer_path, model_ids[i], model_ids[j], distance))
    return out


class MetricsError(ValueError):
    """A metrics file that cannot be joined to the models (every problem, one per line)."""


ID_COLUMNS = ("model", "name", "path", "file", "model_id")


def add_metrics(con: duckdb.DuckDBPyConnection, csv_path: Path) -> int:
    """Load a CSV of per-model results into model_metrics (all rows or none).

    The model column is the first of model/name/path/file/model_id (else the first column);
    its values match a model's name, path (absolute or relative to the CSV), file name, or
    model_id prefix. A Keras CSVLogger file (an `epoch` column and no model column) is
    attached to the checkpoints in its folder: its epoch k (0-based) is the checkpoint tagged
    epoch k+1, or numbered k+1 by ModelCheckpoint's own names (it counts from 1).
    Every other numeric column is a metric."""
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        records = list(reader)
    if not header:
        raise MetricsError(f"{csv_path}: empty CSV")
    id_column = next((c for c in ID_COLUMNS if c in header), None)
    problems: list[str] = []
    rows: list[tuple] = []
    if id_column is None and "epoch" in header:
        targets = _epoch_targets(con, csv_path.parent)
        for line, record in enumerate(records, start=2):
            try:
                epoch = int(float(record["epoch"])) + 1
            except ValueError:
                problems.append(f"{csv_path}:{line}: epoch {record['epoch']!r} is not a number")
                continue
            if epoch not in targets:
                continue  # a logged epoch without a saved checkpoint
            rows += _metric_rows(targets[epoch], record, {"epoch"}, str(csv_path))
        if not rows and not problems:
            problems.append(f"{csv_path}: no checkpoint in {csv_path.parent} has an epoch tag "
                            "matching the log's epochs")  # fmt: skip
    else:
        id_column = id_column or header[0]
        for line, record in enumerate(records, start=2):
            ref = (record.get(id_column) or "").strip()
            matches = _match_model(con, ref, csv_path.parent)
            if len(matches) != 1:
                what = "matches no model" if not matches else f"matches {len(matches)} models"
                problems.append(f"{csv_path}:{line}: {id_column} {ref!r} {what}")
                continue
            rows += _metric_rows(matches[0], record, {id_column}, str(csv_path))
    if problems:
        raise MetricsError("\n".join(problems))
    # the file replaces what it said before, and any other file's value of the same metric
    # for the same model (the latest file wins): one value per model and metric
    con.execute("BEGIN TRANSACTION")
    con.execute("DELETE FROM model_metrics WHERE source = ?", [str(csv_path)])
    table = pa.Table.from_pylist(
        [dict(zip(schema.MODEL_METRICS.column_names, row, strict=True)) for row in rows],
        schema=schema.MODEL_METRICS.arrow_schema,
    )
    con.register("new_metrics", table)
    con.execute(
        "DELETE FROM model_metrics WHERE (model_id, metric) IN "
        "(SELECT (model_id, metric) FROM new_metrics)"
    )
    con.unregister("new_metrics")
    insert_arrow(con, schema.MODEL_METRICS, table)
    con.execute("COMMIT")
    return len(rows)


def attach_training_logs(con: duckdb.DuckDBPyConnection) -> list[str]:
    """CSVLogger files (an `epoch` column) next to ingested checkpoints -> model_metrics."""
    folders = {str(Path(p).parent) for (p,) in con.execute("SELECT path FROM models").fetchall()}
    problems = []
    for folder in sorted(folders):
        logs = [p for p in Path(folder).glob("*.csv")] + [
            Path(folder, n) for n in LOG_NAMES if Path(folder, n).is_file()
        ]
        for log in sorted(logs):
            try:
                with open(log, newline="", encoding="utf-8") as fh:
                    header = next(csv.reader(fh), [])
                if "epoch" in header and not set(ID_COLUMNS) & set(header):
                    add_metrics(con, log)
            except (MetricsError, OSError, UnicodeDecodeError) as exc:
                problems.append(str(exc).splitlines()[0])
    return problems


def _epoch_targets(con: duckdb.DuckDBPyConnection, folder: Path) -> dict[int, str]:
    """epoch -> model of the folder's checkpoints: by their epoch tags (`e05.h5`), else by the
    counter of ModelCheckpoint's own names when they share a prefix (`weights.05-0.42.h5`,
    `model.05.keras`, `ckpt_0010.keras`: Keras fills the counter with the epoch)."""
    where = folder.resolve()
    here = [(m, f.path) for m, f in model_files(con).items() if Path(f.path).parent == where]
    tags = dict(
        con.execute("SELECT model_id, value FROM model_tags WHERE key = 'epoch'").fetchall()
    )
    tagged = {int(tags[m]): m for m, _ in here if m in tags}
    if tagged:
        return tagged
    numbered = {m: n for m, p in here if (n := checkpoint_number(p)) is not None}
    if len({prefix for prefix, _ in numbered.values()}) != 1:
        return {}
    return {n: m for m, (_, n) in numbered.items()}


def _match_model(con: duckdb.DuckDBPyConnection, ref: str, base: Path) -> list[str]:
    if not ref:
        return []
    absolute = str((base / ref).resolve())
    rows = con.execute(
        "SELECT model_id FROM models WHERE name = ? OR path = ? OR path = ? "
        "OR regexp_extract(path, '[^/]+$') = ?",
        [ref, ref, absolute, ref],
    ).fetchall()
    if not rows and len(ref) >= 6:
        rows = con.execute(
            "SELECT model_id FROM models WHERE starts_with(model_id, ?)", [ref.lower()]
        ).fetchall()
    return [r[0] for r in rows]


def _metric_rows(model_id: str, record: dict, skip: set[str], source: str) -> list[tuple]:
    rows = []
    for key, value in record.items():
        if key in skip or key is None or value in (None, ""):
            continue
        try:
            rows.append((model_id, key, float(value), source))
        except ValueError:
            continue  # a text column (run name, notes): not a metric
    return rows


# Spearman's ρ per feature over a relation j(feature, x, y): the Pearson correlation of
# average ranks (tied values share the mean of their ranks).
SPEARMAN_SQL = """
ranked AS (
    SELECT feature,
           (rank() OVER (PARTITION BY feature ORDER BY x)
            + count(*) OVER (PARTITION BY feature) + 1
            - rank() OVER (PARTITION BY feature ORDER BY x DESC)) / 2.0 AS rx,
           (rank() OVER (PARTITION BY feature ORDER BY y)
            + count(*) OVER (PARTITION BY feature) + 1
            - rank() OVER (PARTITION BY feature ORDER BY y DESC)) / 2.0 AS ry
    FROM j
)
SELECT feature, count(*) AS n_models, corr(rx, ry) AS rho FROM ranked GROUP BY feature
"""


def correlate(
    con: duckdb.DuckDBPyConnection, metric: str, model_ids: list[str] | None = None
) -> list[tuple]:
    """Weight statistics ranked by |Spearman ρ| with `metric` across the models that have it
    (or those of `model_ids`): (feature, n_models, rho). Ties get average ranks; features
    need 3+ models. A model's metric is the mean of its values. Duplicates (a file with the
    same content as another model's, see duplicate_models) are left out."""
    return con.execute(
        """
        WITH chosen AS (SELECT model_id FROM models
                        WHERE ($ids IS NULL OR list_contains($ids, model_id))
                          -- a copy of another model's file would count one model twice
                          AND model_id NOT IN (SELECT model_id FROM duplicate_models)),
        y AS (SELECT model_id, avg(value) AS value FROM model_metrics
              WHERE metric = $metric AND model_id IN (SELECT model_id FROM chosen)
              GROUP BY model_id),
        model_level AS (
            UNPIVOT (SELECT model_id, n_params::DOUBLE AS n_params, max_abs, zero_frac,
                            near_zero_frac, nonfinite_count::DOUBLE AS nonfinite_count
                     FROM model_summary WHERE model_id IN (SELECT model_id FROM y))
            ON COLUMNS(* EXCLUDE (model_id)) INTO NAME stat VALUE x),
        tensor_level AS (
            UNPIVOT (SELECT model_id, layer_path || '/' || weight_name AS tensor,
                            mean, std, l2, max_abs, near_zero_frac, kurtosis FROM weights
                     WHERE model_id IN (SELECT model_id FROM y))
            ON mean, std, l2, max_abs, near_zero_frac, kurtosis INTO NAME stat VALUE x),
        features AS (
            SELECT model_id, 'model: ' || stat AS feature, x FROM model_level
            UNION ALL
            SELECT model_id, tensor || ': ' || stat, x FROM tensor_level),
        j AS (
            SELECT f.feature, f.x, y.value AS y FROM features AS f JOIN y USING (model_id)
            WHERE f.x IS NOT NULL AND isfinite(f.x) AND isfinite(y.value)),
        """
        + SPEARMAN_SQL
        + """
        HAVING count(*) >= 3 AND rho IS NOT NULL AND isfinite(rho)
        ORDER BY abs(rho) DESC, n_models DESC, feature
        """,
        {"metric": metric, "ids": model_ids},
    ).fetchall()
