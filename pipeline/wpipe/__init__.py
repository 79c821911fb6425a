"""wpipe: compare many trained Keras models by their weights."""

from __future__ import annotations

import importlib
from typing import Any

from wpipe.api import connect, resolve_model

__all__ = ["charts", "connect", "report", "resolve_model"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `wpipe.charts` and `wpipe.report` import Altair (0.3 s); load them on first use only,
    # so `import wpipe` and the CLI stay quick.
    if name in ("charts", "report"):
        return importlib.import_module(f"wpipe.{name}")
    raise AttributeError(f"module 'wpipe' has no attribute {name!r}")
