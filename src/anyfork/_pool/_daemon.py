"""The threads engine's own threads, started with asynchronous signals blocked, and the main
thread's sleeps on locks, cut short (``nap``) so that Ctrl-C is never lost.

CPython runs signal handlers only in the main thread, but the kernel delivers a process-directed
signal (Ctrl-C's SIGINT, a ``kill``) to any thread that does not block it.  When it picks one of
our threads (one blocked in ``recv`` on a worker, say), the main thread, asleep on a lock in
``result()`` or ``map``, is never woken, and the ``KeyboardInterrupt`` waits until that lock is
released: with busy workers, forever (seen: 2 runs in 40 of a Ctrl-C test under load).  Threads
we start therefore block every asynchronous signal, so the kernel delivers them to a thread that
can act on them.  Signals a thread raises itself (faults, ``SIGPIPE``) stay unblocked.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["nap", "start"]

#: The longest the main thread sleeps on a lock at once (see ``nap``).
NAP = 0.1

#: Signals the kernel sends to the thread that caused them: blocking them would hide a crash.
_SYNCHRONOUS = {
    signal.SIGSEGV,
    signal.SIGBUS,
    signal.SIGFPE,
    signal.SIGILL,
    signal.SIGTRAP,
    signal.SIGSYS,
    signal.SIGABRT,
    signal.SIGPIPE,
    signal.SIGKILL,
    signal.SIGSTOP,
}
_ASYNCHRONOUS = signal.valid_signals() - _SYNCHRONOUS


def start(target: Callable[..., object], name: str, args: tuple[Any, ...] = ()) -> threading.Thread:
    """Start a daemon thread running ``target(*args)`` with asynchronous signals blocked (a new
    thread inherits the mask of the thread that starts it: ours is restored at once)."""
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _ASYNCHRONOUS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return thread


def nap(timeout: float | None) -> float | None:
    """The timeout of one sleep on a lock by a caller that then looks again (and sleeps again):
    ``timeout``, cut to ``NAP`` in the main thread.

    CPython acts on a signal (Ctrl-C's ``KeyboardInterrupt``) in the main thread between two
    bytecodes, and the signal interrupts a lock's sleep only if the sleep has begun: one that
    lands just before (the caller was woken a moment earlier, on a loaded machine) is acted on
    at the first bytecode after the sleep, which without a timeout may never come (seen: 1 run
    in 15 of the Ctrl-C test of ``BlockingPool.map`` under load, with every other thread
    blocking signals)."""
    if (timeout is not None and timeout <= NAP) or threading.current_thread() is not (
        threading.main_thread()
    ):
        return timeout
    return NAP
