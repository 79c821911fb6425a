"""The package's layout is its architecture: one sub-package per stage, each importing only the
stages below it, and no import circle (issue #28; README: Layout).

Every module's imports are read with `ast` from the source (nothing is imported). Counted:
`import wpipe.x` and `from wpipe.x import y` anywhere in a module, at its top, inside a
function or under `if TYPE_CHECKING:`, where `y` counts as the module `wpipe.x.y` when that is a
module and as `wpipe.x` otherwise. The direction rule applies to every one of them (a lazy
import still ties the stages together); the circle rule to the imports that run when the
module is imported (those at its top, outside functions and TYPE_CHECKING blocks), which is
where a circle breaks an import. A package's own `__init__` running before its sub-modules is
Python's doing, not an import of the module's, and is not counted.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline" / "wpipe"

# Lowest first: a module may import its own stage and the stages before it. `core` holds leaf
# pieces (table contract, names as text, tags, extras, the writer lock); `views` applies sql/ to
# a connection and sits below `store`, which applies the views when it opens a database;
# `forward` sits below `analyse`, whose cost tables use its shape inference; `api` (connect,
# resolve a model) sits below the charts that resolve models through it.
STAGES = (
    "core",
    "readers",
    "forward",
    "analyse",
    "views",
    "store",
    "compare",
    "ingest",
    "api",
    "charts",
    "report",
    "cli",
)


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the wpipe module imported
    line: int
    at_import_time: bool  # at the module's top, not in a function nor under TYPE_CHECKING


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = modules()


def stage_of(module: str) -> str | None:
    """The stage of `module`; None for the package root (`wpipe/__init__.py`)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _resolve(name: str) -> str:
    while name not in MODULES:
        name = name.rsplit(".", 1)[0]
    return name


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(module: str) -> list[Import]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[Import] = []

    def visit(node: ast.AST, at_import_time: bool) -> None:
        for child in ast.iter_child_nodes(node):
            deferred = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) or (
                isinstance(child, ast.If) and _is_type_checking(child)
            )
            now = at_import_time and not deferred
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: resolved against the importing module's package
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" for a in child.names]
            for target in targets:
                if target == "wpipe" or target.startswith("wpipe."):
                    resolved = _resolve(target)
                    if resolved != module:
                        found.append(Import(module, resolved, child.lineno, now))
            visit(child, now)

    visit(ast.parse(path.read_text(encoding="utf-8")), True)
    return found


IMPORTS = [i for m in MODULES for i in imports_of(m)]


def test_every_module_belongs_to_a_stage():
    outside = [
        m for m in MODULES if stage_of(m) is not None and stage_of(m) not in STAGES
    ]  # a new top-level module or package needs its place in STAGES
    assert outside == [], f"modules outside every stage: {outside}"


def test_the_package_root_imports_nothing_at_import_time():
    # `import wpipe` (and `wpipe --version`) must stay free: the root loads stages on first use
    eager = [i for i in IMPORTS if i.module == "wpipe" and i.at_import_time]
    assert eager == [], eager


def test_no_stage_imports_a_stage_above_its_own():
    upward = []
    for i in IMPORTS:
        here, there = stage_of(i.module), stage_of(i.target)
        if here is None or there is None:  # the root: lazy facade, importable by anyone
            continue
        if STAGES.index(there) > STAGES.index(here):
            where = MODULES[i.module].relative_to(PACKAGE.parent)
            upward.append(f"{where}:{i.line} ({here}) imports {i.target} ({there})")
    assert upward == [], "imports of a stage above the importer's own:\n" + "\n".join(upward)


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return circles


def test_no_import_circle():
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in IMPORTS:
        if i.at_import_time:
            edges[i.module].add(i.target)
    circles = _circles(edges)
    assert circles == [], f"import circles (modules importing each other at import time): {circles}"


def test_the_rules_catch_what_they_are_for():
    # the checks themselves: an upward import and a circle are found
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []
    assert STAGES.index("readers") < STAGES.index("analyse") < STAGES.index("store")
    assert stage_of("wpipe.readers.base") == "readers" and stage_of("wpipe") is None


def test_modules_stay_small():
    # ≲600 lines, unless the module says at its top why it is longer
    long = [
        f"{path.relative_to(PACKAGE.parent)}: {n} lines"
        for path in MODULES.values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > 600
        and "longer than 600 lines" not in path.read_text(encoding="utf-8")[:2000]
    ]
    assert long == [], long
