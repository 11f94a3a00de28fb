"""Reaping of the processes this process created directly (exec'd ones, early and main
templates), without a thread or ``waitpid(-1)``: docs/design.md, "Reaping"."""

from __future__ import annotations

import os
import signal
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from signal import getsignal as _getsignal
else:
    # The C function: signal.getsignal wraps it in enum lookups, which cost ~0.1 ms of CPU
    # after a pause (cold caches) in poll_unhandled, on every anyfork.new().
    from _signal import getsignal as _getsignal

_lock = threading.RLock()
_watched: set[int] = set()
_status: dict[int, int] = {}
_installed = False
_STATUS_LIMIT = 4096


def watch(pid: int) -> None:
    """Reap ``pid`` as soon as it exits and remember its return code."""
    with _lock:
        _watched.add(pid)
        # Pids are recycled: a status remembered for an earlier child with this pid is stale.
        _status.pop(pid, None)
    _install()
    poll()


def returncode(pid: int) -> int | None:
    """The return code of a reaped direct child (``-N`` for signal N), else ``None``."""
    poll()
    with _lock:
        return _status.get(pid)


def known(pid: int) -> int | None:
    """The return code if ``pid`` has been reaped already; no syscall (the SIGCHLD handler and
    every anyfork call keep it fresh)."""
    return _status.get(pid)


def poll() -> None:
    """Reap every watched child that has exited, without blocking."""
    with _lock:
        for pid in list(_watched):
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                # Someone else reaped it (a user's waitpid(-1)): it is gone, status unknown.
                _watched.discard(pid)
                continue
            if got == 0:
                continue
            _watched.discard(pid)
            _status[pid] = os.waitstatus_to_exitcode(status)
        while len(_status) > _STATUS_LIMIT:
            del _status[next(iter(_status))]


def poll_unhandled() -> None:
    """``poll()``, unless our SIGCHLD handler is in place (it keeps the statuses fresh): the
    fallback every anyfork call runs, kept off the hot path when it is not needed."""
    if _getsignal(signal.SIGCHLD) is not _on_sigchld:
        poll()


def watching(pid: int) -> bool:
    """``pid`` is ours and not reaped yet."""
    return pid in _watched


def pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` (readable once it has exited), while it is ours and not reaped yet
    (so the pid cannot have been recycled: it is alive or a zombie of ours); ``None`` if it
    has been reaped, or where the system has no pidfds (Linux < 5.3)."""
    open_pidfd = getattr(os, "pidfd_open", None)
    with _lock:
        if open_pidfd is None or pid not in _watched:
            return None
        try:
            fd: int = open_pidfd(pid)
        except OSError:
            return None
        return fd


def _on_sigchld(signum: int, frame: object) -> None:
    poll()


def _install() -> None:
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    _installed = True
    if signal.getsignal(signal.SIGCHLD) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGCHLD, _on_sigchld)
        # Restart interrupted system calls: our handler must not surface as EINTR in code that
        # does not expect it (C extensions, mostly; Python retries by itself).
        signal.siginterrupt(signal.SIGCHLD, False)


def _reset_in_child() -> None:
    """A forked child inherits our bookkeeping but none of our children."""
    global _installed, _lock
    _lock = threading.RLock()
    _watched.clear()
    _status.clear()
    if _installed and signal.getsignal(signal.SIGCHLD) is _on_sigchld:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _installed = False


os.register_at_fork(after_in_child=_reset_in_child)
