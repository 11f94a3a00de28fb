"""Functions the pool tests serve in worker processes.  Stdlib only, cheap to import.

Handshakes, never sleeps: ``init_gate`` keeps the pipe ends a test sends to the template (every
worker forked from it inherits them); ``gated`` reports that it started with an event, then
waits for one byte on the gate pipe, so the test decides exactly when each call may finish.
"""

from __future__ import annotations

import os
from typing import Any

import anyfork.worker

_gate: Any = None
_hoard: list[bytearray] = []


def init_gate(gate: Any) -> None:
    global _gate
    _gate = gate


def double(x: Any) -> Any:
    return x * 2


def pid(x: Any = None) -> tuple[Any, int]:
    return x, os.getpid()


def kwargs(*args: Any, **kw: Any) -> Any:
    return list(args), kw


class PoolError(Exception):
    """Picklable: the parent rebuilds it as itself."""


def fail(msg: str) -> None:
    raise PoolError(msg)


def gated(tag: Any) -> tuple[Any, int]:
    """Tell the parent we run, then wait for one byte on the gate (a release from the test)."""
    anyfork.worker.event("started", tag, os.getpid())
    if not _gate.read(1):
        raise EOFError("the gate was closed")
    return tag, os.getpid()


def retire_after(x: Any) -> tuple[Any, int]:
    anyfork.worker.retire()
    anyfork.worker.retire()  # harmless twice
    return x, os.getpid()


def hoard(mib: int) -> tuple[int, int]:
    """Keep ``mib`` MiB resident (touched), so the worker's RSS grows."""
    if mib:
        _hoard.append(bytearray(b"x" * (mib << 20)))
    return mib, os.getpid()


def die(code: int) -> None:
    os._exit(code)


def record(path: str, x: Any) -> Any:
    """Append ``x`` to the file ``path`` (one line): what ran is known after the pool is gone."""
    with open(path, "a") as f:
        f.write(f"{x}\n")
    return x


def gated_record(path: str, x: Any) -> Any:
    """:func:`record`, once the gate lets it (one byte)."""
    if not _gate.read(1):
        raise EOFError("the gate was closed")
    return record(path, x)


def chatty(tag: Any, n: int) -> Any:
    """Raise ``n`` events ``(tag, i)`` (to the call's own handler, or the pool's), return
    ``tag``."""
    for i in range(n):
        anyfork.worker.event(tag, i)
    return tag


_path: str | None = None


def init_path(path: str) -> None:
    """The worker's init: keep the path ``done_mark`` writes to (sent to the template)."""
    global _path
    _path = path


def done_mark() -> None:
    """A worker's ``done``: append its pid to the path its init kept."""
    assert _path is not None
    with open(_path, "a") as f:
        f.write(f"{os.getpid()}\n")


def fail_at(bad: Any, x: Any) -> Any:
    """``x``, or raise ``PoolError`` for ``bad``."""
    if x == bad:
        raise PoolError(f"item {x}")
    return x


def has_multiprocessing() -> bool:
    import sys

    return "multiprocessing" in sys.modules


def checked(x: Any) -> Any:
    """``x``, or raise ``PoolError`` for a negative one."""
    if x < 0:
        raise PoolError(f"item {x}")
    return x
