"""What the pool reads from the operating system (the CPUs it may use, a worker's memory), and
the settings whose default comes from it."""

from __future__ import annotations

import builtins
import os

from . import _policy


def settings(max: int | None, idle: int, load: int, start: float, stop: float) -> _policy.Settings:
    """The policy's settings from a pool's arguments (``max`` defaults to the usable CPUs, or
    ``idle`` if larger); raises ``ValueError`` for bad values."""
    if max is None:
        max = builtins.max(cpu_count(), idle) if isinstance(idle, int) else cpu_count()
    return _policy.Settings(max, idle, load, start, stop)


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def rss(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes (``VmRSS``), or ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
