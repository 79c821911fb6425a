"""wpipe: compare many trained Keras models by their weights."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["charts", "connect", "report", "resolve_model"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Everything loads on first use: `wpipe.api` brings DuckDB, Arrow and numpy, and
    # `wpipe.charts` and `wpipe.report` Altair, which `wpipe --version` and `--help` never need.
    if name in ("charts", "report", "api"):
        return importlib.import_module(f"wpipe.{name}")
    if name in ("connect", "resolve_model"):
        return getattr(importlib.import_module("wpipe.api"), name)
    raise AttributeError(f"module 'wpipe' has no attribute {name!r}")
