"""The ingest's last steps, once every file is read: models whose files are gone dropped
(`prune_gone`) or counted (`is_gone`), derived tables, names, series drift and suggested bases
refreshed, the lake's small files compacted (`finish`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from wpipe import compare, store
from wpipe.compare import suggestions
from wpipe.core import schema
from wpipe.core.textsafe import to_os
from wpipe.ingest.batches import Driver, release
from wpipe.store import remote, sync
from wpipe.store.duck import refresh_tags
from wpipe.store.lake import Lake

# Tables with more files than this are compacted (small files merged) at the end of a run.
COMPACT_FILES = 64


def prune_gone(
    db: store.Database, lake: Lake, roots: list[Path], urls: list[str], present: set[str]
) -> int:
    """Drop models (and recorded failures) whose files under `roots` no longer exist, or that
    were not listed under `urls` this time."""
    gone = is_gone(roots, urls, present)
    stale = {model_id for model_id, (path, *_) in db.known_files_by_id().items() if gone(path)}
    if stale:
        versions = {t.name: lake.replace(t.name, stale, [])
                    for t in (*schema.MODEL_TABLES[1:], schema.MODELS)}  # fmt: skip
        db.load_batch(lake, {}, stale, versions)
    db.clear_errors(p for p in db.known_failures() if gone(p))
    return len(stale)


def is_gone(roots: list[Path], urls: list[str], present: set[str]) -> Callable[[str], bool]:
    """Whether a stored path's file is gone: under `roots` and no longer there, or under
    `urls` and not listed this time."""
    prefixes = [u.rstrip("/") for u in urls]

    def gone(path: str) -> bool:
        if remote.is_url(path):
            under = any(path == u or path.startswith(f"{u}/") for u in prefixes)
            return under and path not in present
        p = Path(to_os(path))  # as stored (textsafe): the roots are names on disk
        return any(p == r or r in p.parents for r in roots) and not os.path.lexists(p)

    return gone


def finish(db, lake: Lake, driver: Driver, tag_pattern, drift: bool, progress, roots) -> None:
    """Derived tables, the lake's copy of names and times, compaction. A run that changed no
    model skips what only a change of the model set can change (names, tags, logs, series)."""
    report = driver.report
    changed = report.ingested or report.pruned
    renamed = db.refresh_names(roots) if changed else 0  # names kept in model_names
    if changed or tag_pattern is not None:
        refresh_tags(db.con, tag_pattern)
    if changed:
        report.warnings += compare.attach_training_logs(db.con)
    no_drift = db.con.execute("SELECT count(*) = 0 FROM drift").fetchall()[0][0]
    # pending: models were loaded by a run killed before this point, or run with --no-drift
    if drift and (changed or no_drift or db.drift_pending()):
        progress.phase("drift", 0)
        pairs, problems = compare.series_drift(db.con, progress.advance)
        report.drift_pairs += pairs
        report.warnings += problems
        db.drift_done()
    if changed:  # the architectures whose models changed, only
        progress.phase("lineage", 0)
        suggestions.refresh(db.con, suggestions.AT_INGEST_MAX_MODELS)
    if renamed or changed or driver.touched:  # names are given (and mtimes touched) here
        release(db)
        sync.push_models(db, lake)
    if changed and any(n > COMPACT_FILES for n in lake.file_count().values()):
        progress.phase("compact", 0)
        sync.compact(db, lake)
