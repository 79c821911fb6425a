"""Optional extras (`wpipe[s3]`, `wpipe[dask]`, `wpipe[orbax]`): a one-line error when one is
missing."""

from __future__ import annotations

import importlib


class MissingExtra(RuntimeError):
    """A feature was asked for whose optional dependencies are not installed."""


def require(module: str, extra: str, feature: str) -> None:
    """Raise MissingExtra naming the pip command unless `module` imports."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise MissingExtra(
            f"{feature} need the {extra!r} extra ({module} is not installed): "
            f"pip install 'wpipe[{extra}]'"
        ) from None
