"""Tasks for the joblib backend's tests (a module of its own: workers import it cheaply)."""

from __future__ import annotations

import fcntl
import os
import signal
import sys


def square(x: int) -> int:
    return x * x


def whereami(_: int) -> tuple[int, int]:
    """The worker's pid and its parent's (the template's)."""
    return os.getpid(), os.getppid()


def has_module(name: str) -> bool:
    return name in sys.modules


def fail_at(x: int, bad: int) -> int:
    if x == bad:
        raise KeyError(f"item {x}")
    return x


def fail_or_wait(x: int, lock_path: str, done_dir: str) -> int:
    """Item 0 fails at once; the others wait for a shared lock on ``lock_path`` (held by the
    test), then leave a file in ``done_dir``: the items that ran."""
    if x == 0:
        raise ValueError("item 0")
    with open(lock_path) as f:
        fcntl.flock(f, fcntl.LOCK_SH)
    with open(os.path.join(done_dir, str(x)), "w"):
        pass
    return x


def die(x: int) -> int:
    if x == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return x
