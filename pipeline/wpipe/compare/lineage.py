"""Fine-tunes against their base: the user names a model's base (`wpipe lineage set`), and the
update of every tensor (τ = W_child − W_base) is computed from the two files and stored in
`updates`, with the agreement of the child's update with each sibling's (children of the same
base) in `update_pairs`. Only new or changed pairs are computed; the views in sql/ turn the rows
into per-child summaries, N×N agreement matrices and sign-conflict rates.
"""

from __future__ import annotations

from contextlib import ExitStack
from datetime import datetime, timezone

import duckdb
import pyarrow as pa

from wpipe.analyse.updates import tensor_update, update_pair
from wpipe.compare import comparable_layers, model_files
from wpipe.core import schema
from wpipe.readers import Model
from wpipe.store import insert_arrow
from wpipe.store.remote import open_save


def set_base(
    con: duckdb.DuckDBPyConnection, child: str, base: str, source: str = "user"
) -> tuple[int, int]:  # fmt: skip
    """Record `base` as `child`'s base and compute their updates and the pairs with the
    child's siblings; (update rows, pair rows) written. A model is never its own base, nor
    its descendant's."""
    if child == base:
        raise ValueError("a model cannot be its own base")
    if child in _ancestors(con, base):
        raise ValueError("that base descends from the child: lineage cannot be a loop")
    pairs = comparable_layers(con, base, child)
    siblings = [s for (s,) in con.execute(
        "SELECT child_id FROM lineage WHERE base_id = ? AND child_id <> ?", [base, child]
    ).fetchall()]  # fmt: skip
    files = model_files(con, [base, child, *siblings])
    with ExitStack() as stack:
        models = {m: stack.enter_context(open_save(f.path)) for m, f in files.items()}
        updates, pair_rows = _rows(models, base, child, siblings, pairs, con)
    if not updates:
        raise ValueError("the two models share no tensor of one shape, so nothing of the "
                         "child is an update of the base (different architectures?)")  # fmt: skip
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM lineage WHERE child_id = ?", [child])
        con.execute("DELETE FROM updates WHERE child_id = ?", [child])
        con.execute("DELETE FROM update_pairs WHERE child_a = ? OR child_b = ?", [child, child])
        row = {"child_id": child, "base_id": base, "source": source,
               "sha256_child": files[child].sha256, "sha256_base": files[base].sha256,
               "set_at": datetime.now(timezone.utc)}  # fmt: skip
        insert_arrow(con, schema.LINEAGE, _table(schema.LINEAGE, [row]))
        insert_arrow(con, schema.UPDATES, _table(schema.UPDATES, updates))
        insert_arrow(con, schema.UPDATE_PAIRS, _table(schema.UPDATE_PAIRS, pair_rows))
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return len(updates), len(pair_rows)


def clear_base(con: duckdb.DuckDBPyConnection, child: str) -> bool:
    """Forget `child`'s base and its computed rows; False if it had none."""
    had = con.execute("SELECT count(*) FROM lineage WHERE child_id = ?", [child]).fetchall()[0][0]
    con.execute("BEGIN TRANSACTION")
    con.execute("DELETE FROM lineage WHERE child_id = ?", [child])
    con.execute("DELETE FROM updates WHERE child_id = ?", [child])
    con.execute("DELETE FROM update_pairs WHERE child_a = ? OR child_b = ?", [child, child])
    con.execute("COMMIT")
    return bool(had)


def stale(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """(child, base) pairs whose files changed since their updates were computed."""
    return con.execute(
        "SELECT l.child_id, l.base_id FROM lineage AS l "
        "JOIN models AS c ON c.model_id = l.child_id JOIN models AS b ON b.model_id = l.base_id "
        "WHERE c.sha256 IS DISTINCT FROM l.sha256_child OR b.sha256 IS DISTINCT FROM l.sha256_base"
    ).fetchall()


def _ancestors(con: duckdb.DuckDBPyConnection, model: str) -> set[str]:
    bases = dict(con.execute("SELECT child_id, base_id FROM lineage").fetchall())
    seen: set[str] = set()
    while model in bases and model not in seen:
        seen.add(model)
        model = bases[model]
    return seen | {model}


def _tensors(model: Model, layer_path: str) -> dict:
    return {t.weight_name: t for la in model.layers if la.layer_path == layer_path
            for t in la.tensors if t.status == "ok"}  # fmt: skip


def _rows(models: dict[str, Model], base: str, child: str, siblings: list[str],
          pairs: dict[str, str], con: duckdb.DuckDBPyConnection) -> tuple[list, list]:  # fmt: skip
    """The child's update rows, and its pair rows with each sibling (one tensor of each file
    in memory at a time, per base tensor)."""
    sibling_layers = {s: comparable_layers(con, base, s) for s in siblings}
    updates, pair_rows = [], []
    for base_path, child_path in pairs.items():
        base_tensors = _tensors(models[base], base_path)
        child_tensors = _tensors(models[child], child_path)
        for name, tb in base_tensors.items():
            tc = child_tensors.get(name)
            if tc is None or tuple(tc.shape) != tuple(tb.shape):
                continue
            w_base, w_child = tb.load(), tc.load()
            updates.append({"child_id": child, "base_id": base, "layer_path": child_path,
                            "weight_name": name, "base_layer_path": base_path,
                            **tensor_update(w_base, w_child)})  # fmt: skip
            for sibling in siblings:
                ts = _tensors(models[sibling], sibling_layers[sibling].get(base_path, "")).get(name)
                if ts is None or tuple(ts.shape) != tuple(tb.shape):
                    continue
                a, b = sorted((child, sibling))
                arrays = {child: w_child, sibling: ts.load()}
                pair_rows.append({"base_id": base, "child_a": a, "child_b": b,
                                  "base_layer_path": base_path, "weight_name": name,
                                  **update_pair(w_base, arrays[a], arrays[b])})  # fmt: skip
    return updates, pair_rows


def _table(table: schema.Table, rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=table.arrow_schema)


# Suggestions: a model's most likely base, from the weights alone (after Horwitz et al., "On the
# Origin of Llamas: Model Tree Heritage Recovery", 2024), over the tensors' tile means (the same
# cells in every model of one arch_id). Models closer than UNRELATED_DISTANCE form a family
# whose root is its least trained model (lowest mean excess kurtosis of the kernels: training
# grows heavy tails); a model's age is its distance from that root (training moves weights away
# from where they started; kurtosis is too flat to order a fine-tune against its base). With
# edges only from older to younger models, the minimum directed spanning tree (Chu-Liu/Edmonds)
# is each model's cheapest incoming edge: its nearest older model, taken in order of age. Two
# rules tell a child from a close sibling, using the base's own base (the grandparent):
# - a child lies beyond its base: the angle grandparent-base-child at the base is obtuse (at a
#   sibling, such as a fine-tune beside one that froze a layer, it is about 90° or less);
# - an update is a training step, concentrated in a few directions per matrix; the difference
#   of two fine-tunes of one base on the same data (another seed) is spread like noise. When
#   the update from the nearest candidate is SIBLING_SPREAD times more spread (participation
#   ratio of its singular values) than the update from the candidate's base, the model is that
#   candidate's sibling: its base is the candidate's base.
SUGGEST_MAX_MODELS = 2000  # per architecture: the most recently ingested
UNRELATED_DISTANCE = 1.0  # relative distance; unrelated weights of equal norm are ~1.41 apart
# On the test families a true base's update is at most 1.1 times as spread as the update from
# its base's base; a same-recipe twin's is 2.2-2.8 times: the threshold sits between.
SIBLING_SPREAD = 1.5


def suggest(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """One row per model of a shared architecture without a named base: its likely base,
    the relative distance, a confidence (0-1, below), the kurtosis gap, the angle
    grandparent-base-child at the base in degrees (None when the base is a root) and the rule
    that chose it: `nearest` (confidence 1 − nearest / second nearest candidate distance) or
    `sibling` (placed beside a same-recipe twin; confidence 1 − SIBLING_SPREAD / spread ratio)."""
    named = named_bases(con)
    out = []
    for ids in architectures(con).values():
        out += [r for r in suggest_among(con, ids, named) if r["child_id"] not in named]
    return out


def named_bases(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """child_id -> base_id of every base the user named (or accepted)."""
    return dict(con.execute("SELECT child_id, base_id FROM lineage").fetchall())


def architectures(con: duckdb.DuckDBPyConnection) -> dict[str | None, list[str]]:
    """arch_id -> its models, most recently ingested first (the SUGGEST_MAX_MODELS latest), for
    every architecture shared by two models or more."""
    groups = con.execute(
        "SELECT arch_id, list(model_id ORDER BY ingested_at DESC) FROM models "
        "GROUP BY arch_id HAVING count(*) > 1"
    ).fetchall()
    return {arch: ids[:SUGGEST_MAX_MODELS] for arch, ids in groups}


def suggest_among(
    con: duckdb.DuckDBPyConnection, ids: list[str], named: dict[str, str]
) -> list[dict]:  # fmt: skip
    """`suggest`'s rows for the models `ids` of one architecture, the models with a `named`
    base included (what their weights say; their named base serves the others' rules)."""
    vectors, kurtosis, shapes = _features(con, ids)
    if vectors is None:
        return []
    index = {m: i for i, m in enumerate(ids)}
    known = {index[c]: index[b] for c, b in named.items() if c in index and b in index}
    out = []
    for row in _Tree(vectors, kurtosis, shapes).grow(known):
        child, base = row.pop("child"), row.pop("base")
        out.append({"child_id": ids[child], "base_id": ids[base], **row,
                    "kurtosis_gap": float(kurtosis[child] - kurtosis[base])})  # fmt: skip
    return out


class _Tree:
    """The suggested tree of one architecture's models (the comment above)."""

    def __init__(self, vectors, kurtosis, shapes: list[tuple[int, int]]) -> None:
        import numpy as np

        self.vectors, self.groups = vectors, _shape_groups(shapes)
        sq = (vectors**2).sum(axis=1)
        dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * vectors @ vectors.T, 0))
        np.fill_diagonal(dist, 0.0)
        scale = (np.sqrt(sq)[:, None] + np.sqrt(sq)[None, :]) / 2
        self.dist = dist
        self.rel = np.divide(dist, scale, out=np.full_like(dist, np.inf), where=scale > 0)
        self.ages = self._ages(kurtosis)
        self.parent = np.full(len(kurtosis), -1)

    def _ages(self, kurtosis):
        """Each model's distance from the least trained model of its family (the models
        linked by relative distances below UNRELATED_DISTANCE)."""
        import numpy as np
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import connected_components

        linked = csr_matrix(self.rel < UNRELATED_DISTANCE)
        _, family = connected_components(linked, directed=False)
        ages = np.empty(len(kurtosis))
        for f in np.unique(family):
            members = np.flatnonzero(family == f)
            root = members[np.argmin(kurtosis[members])]
            ages[members] = self.dist[root, members]
        return ages

    def grow(self, known: dict[int, int]):
        """One row per model with an older relative, in order of age (a model with a `known`
        base too); `known` bases are kept and serve as their children's base in the rules."""
        import numpy as np

        for child in np.argsort(self.ages, kind="stable"):
            older = np.flatnonzero(
                (self.ages < self.ages[child]) & (self.rel[child] < UNRELATED_DISTANCE)
            )
            if known:  # a named base may be younger: never suggest a descendant (a loop)
                older = np.array([m for m in older if not self._descends(m, child)], dtype=int)
            row = self._choose(int(child), older) if older.size else None
            if child in known:  # what its weights say; the named base serves the rules
                self.parent[child] = known[child]
            elif row is not None:
                self.parent[child] = row["base"]
            if row is not None:
                yield row

    def _choose(self, child: int, older) -> dict:
        import numpy as np

        angles = self._angles_at(older, child)
        beyond = older[~(angles <= 90)]  # NaN (no grandparent) passes
        pool = beyond if beyond.size else older
        ranked = pool[np.argsort(self.dist[child, pool], kind="stable")]
        base, rule = int(ranked[0]), "nearest"
        second = self.dist[child, ranked[1]] if ranked.size > 1 else np.inf
        confidence = 1 - self.dist[child, base] / second if second > 0 else 0.0
        grand = int(self.parent[base])
        if grand >= 0 and grand != child and self.rel[child, grand] < UNRELATED_DISTANCE:
            spread_base, spread_grand = self._spreads(child, [base, grand])
            ratio = spread_base / max(spread_grand, 1e-12)
            if ratio > SIBLING_SPREAD:
                base, rule, confidence = grand, "sibling", 1 - SIBLING_SPREAD / ratio
        at = older == base
        angle = angles[at][0] if at.any() else self._angles_at(np.array([base]), child)[0]
        return {"child": child, "base": base, "distance": float(self.rel[child, base]),
                "confidence": float(confidence), "rule": rule,
                "angle_at_base": None if np.isnan(angle) else float(angle)}  # fmt: skip

    def _descends(self, model: int, ancestor: int) -> bool:
        for _ in range(len(self.parent)):  # bounded: named bases never form a loop
            model = int(self.parent[model])
            if model < 0:
                return False
            if model == ancestor:
                return True
        return False

    def _angles_at(self, bases, child: int):
        """The angle grandparent-base-child at each base, in degrees (law of cosines); NaN
        where the base has no base, or coincides with its base or the child."""
        import numpy as np

        grand = self.parent[bases]
        a, b = self.dist[grand, bases], self.dist[bases, child]
        c = self.dist[grand, child]
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = (a**2 + b**2 - c**2) / (2 * a * b)
        cos[(grand < 0) | (a == 0) | (b == 0)] = np.nan
        return np.degrees(np.arccos(np.clip(cos, -1, 1)))

    def _spreads(self, child: int, bases: list[int]):
        """How spread each update base → child is: the participation ratio of each matrix's
        singular values, (Σσ²)² / Σσ⁴ (1 for a rank-1 update), averaged over the matrices it
        changed; the matrices of one shape in one batched product."""
        import numpy as np

        updates = self.vectors[child] - self.vectors[bases]
        sums, counts = np.zeros(len(bases)), np.zeros(len(bases))
        for (rows, cols), cells in self.groups.items():
            stack = updates[:, cells].reshape(len(bases), -1, rows, cols)
            if cols > rows:
                stack = stack.swapaxes(2, 3)
            gram = stack.swapaxes(2, 3) @ stack  # the smaller side's Gram matrices
            total = (stack**2).sum(axis=(2, 3))  # Σσ²
            fourth = (gram**2).sum(axis=(2, 3))  # Σσ⁴
            changed = total > 0
            sums += np.where(changed, total**2 / np.where(changed, fourth, 1), 0).sum(axis=1)
            counts += changed.sum(axis=1)
        return np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)


def _shape_groups(shapes: list[tuple[int, int]]) -> dict:
    """Cell indices of the matrices of each (rows, cols) shape, matrix after matrix."""
    import numpy as np

    groups, start = {}, 0
    for rows, cols in shapes:
        groups.setdefault((rows, cols), []).append(np.arange(start, start + rows * cols))
        start += rows * cols
    return {shape: np.concatenate(parts) for shape, parts in groups.items()}


def _features(con: duckdb.DuckDBPyConnection, ids: list[str]):
    """(models × cells) tile means in one cell order, each model's mean kernel kurtosis, and
    the (rows, cols) of each tensor's cells in that order; (None, None, None) unless every
    model has the same cells."""
    import numpy as np
    import pyarrow.compute as pc

    # as Arrow, not Python lists: half the time of the whole for some hundred models
    means = (
        con.sql(
            "SELECT t.model_id, list(t.mean ORDER BY w.weight_index, t.tile_row, t.tile_col) "
            "FROM weight_tiles AS t JOIN weights AS w USING (model_id, layer_path, weight_name) "
            "WHERE list_contains($ids, t.model_id) GROUP BY t.model_id",
            params={"ids": ids},
        )
        .to_arrow_reader()
        .read_all()
    )
    ages = dict(con.execute(
        "SELECT model_id, avg(kurtosis) FROM weights WHERE list_contains(?, model_id) "
        "AND role IN ('kernel', 'depthwise_kernel', 'pointwise_kernel', 'recurrent_kernel', "
        "'embeddings') GROUP BY model_id", [ids]
    ).fetchall())  # fmt: skip
    shapes = con.execute(
        "SELECT max(t.tile_row) + 1, max(t.tile_col) + 1 FROM weight_tiles AS t "
        "JOIN weights AS w USING (model_id, layer_path, weight_name) WHERE t.model_id = ? "
        "GROUP BY w.weight_index ORDER BY w.weight_index", [ids[0]]
    ).fetchall()  # fmt: skip
    lists = means.column(1).combine_chunks()
    lengths = set(pc.list_value_length(lists).to_pylist())
    if (means.num_rows != len(ids) or len(lengths) != 1 or any(ages.get(m) is None for m in ids)
            or sum(r * c for r, c in shapes) != lengths.pop()):  # fmt: skip
        return None, None, None
    cells = pc.fill_null(lists.flatten(), 0.0).to_numpy(zero_copy_only=False)
    row = {m: i for i, m in enumerate(means.column(0).to_pylist())}
    vectors = cells.reshape(means.num_rows, -1)[[row[m] for m in ids]].astype(np.float64)
    return vectors, np.array([ages[m] for m in ids]), shapes


def compare_updates(
    con: duckdb.DuckDBPyConnection, base: str, a: str, b: str
) -> list[tuple]:  # fmt: skip
    """Per layer of `base`: how far A and B moved it (‖τ‖/‖W_base‖), the cosine of their
    updates and the share of weights both changed that they pushed apart; computed from the
    files now, stored nowhere (`wpipe compare A B --base BASE`)."""
    import numpy as np

    layers_a, layers_b = comparable_layers(con, base, a), comparable_layers(con, base, b)
    out = []
    with ExitStack() as stack:
        models = {m: stack.enter_context(open_save(f.path))
                  for m, f in model_files(con, [base, a, b]).items()}  # fmt: skip
        for layer in (la for la in models[base].layers if la.tensors):
            path = layer.layer_path
            if path not in layers_a or path not in layers_b:
                continue
            ta, tb = _tensors(models[a], layers_a[path]), _tensors(models[b], layers_b[path])
            sums = dict.fromkeys(("base", "a", "b", "dot", "both", "conflicts"), 0.0)
            for name, tensor in _tensors(models[base], path).items():
                if name not in ta or name not in tb:
                    continue
                w = tensor.load().astype(np.float64)
                wa, wb = ta[name].load(), tb[name].load()
                if wa.shape != w.shape or wb.shape != w.shape:
                    continue
                pair = update_pair(w, wa, wb)
                sums["base"] += float(np.sum(w * w))
                sums["a"] += float(np.sum((wa - w) ** 2))
                sums["b"] += float(np.sum((wb - w) ** 2))
                sums["dot"] += pair["dot"]
                sums["both"] += pair["both_changed"]
                sums["conflicts"] += pair["sign_conflicts"]
            norm = sums["base"] ** 0.5
            out.append((
                path,
                sums["a"] ** 0.5 / norm if norm else None,
                sums["b"] ** 0.5 / norm if norm else None,
                sums["dot"] / (sums["a"] * sums["b"]) ** 0.5 if sums["a"] and sums["b"] else None,
                sums["conflicts"] / sums["both"] if sums["both"] else None,
            ))  # fmt: skip
    return out
