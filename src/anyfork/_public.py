"""Public objects are defined in private modules and shown as ``anyfork.X``."""

from __future__ import annotations

from typing import Any


def publish(namespace: dict[str, Any]) -> None:
    """Set ``__module__ = "anyfork"`` on the objects a private module lists in ``__all__``, so
    tracebacks, reprs and pickling by reference name them as users import them, from the moment
    they exist (not only once someone has looked them up on the package)."""
    for name in namespace["__all__"]:
        obj = namespace[name]
        if getattr(obj, "__module__", None) == namespace["__name__"]:
            obj.__module__ = "anyfork"
