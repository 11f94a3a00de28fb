"""Functions for the Dask tests (importable by the workers)."""

from __future__ import annotations

import os


def inc(x: int) -> int:
    return x + 1


def pid(_: object) -> int:
    return os.getpid()


def fail(x: int) -> int:
    raise ZeroDivisionError(f"item {x}")
