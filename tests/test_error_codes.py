"""Every `ingest_errors.error` code the code base can produce is documented on the docs site's
error-code page (docs/reference/error-codes.md), and no other."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# ModelReadError("code", ...), WorkerFailure("code", ...), error="code",
# outcome.error, outcome.message = "code", ...; code = "a" if ... else "b"
CODE = re.compile(
    r"(?:(?:ModelReadError|WorkerFailure)\(\s*|error(?:, \w+\.message)?\s*=\s*|code\s*=\s*)"
    r'"([a-z][a-z0-9-]*)"(?:[^\n]* else "([a-z][a-z0-9-]*)")?'
)


def produced_codes() -> set[str]:
    codes = set()
    for source in (ROOT / "pipeline" / "wpipe").rglob("*.py"):
        for match in CODE.finditer(source.read_text()):
            codes.update(code for code in match.groups() if code)
    return codes


PAGE = ROOT / "docs" / "reference" / "error-codes.md"


def documented_codes() -> set[str]:
    page = PAGE.read_text()
    section = page.split("Error codes (`ingest_errors.error`)", 1)[1].split("\n\n", 2)[1]
    return set(re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.M))


def test_every_error_code_is_on_the_error_code_page() -> None:
    produced = produced_codes()
    assert {"timeout", "worker-died", "internal-error", "corrupt"} <= produced
    assert produced - documented_codes() == set(), f"add a row to {PAGE.relative_to(ROOT)}"


def test_the_error_code_page_documents_no_code_that_nothing_produces() -> None:
    assert documented_codes() - produced_codes() == set()
