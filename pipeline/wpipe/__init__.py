"""wpipe: compare many trained Keras models by their weights."""

from wpipe.api import connect, resolve_model

__all__ = ["connect", "resolve_model"]
__version__ = "0.1.0"
