"""What the threads engine watches besides its calls: idle workers that die, the policy's wake
times, its own changes of state (for ``wait_until``), and the end of the program."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from .._rpc import _for_pools as rpc
from .._rpc._blocking import BlockingClient
from . import _daemon
from ._futures import remaining

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._threads import ThreadsEngine

#: A worker's end closed (EPOLLRDHUP), reported once until re-armed.
_MASK = select.EPOLLRDHUP | select.EPOLLONESHOT


class Watcher:
    """The pool's one thread of its own (started when first needed): it notices idle workers
    that die, so they are replaced without waiting for a call, and calls ``tick()`` under the
    pool's lock at the policy's ``Wake`` times.

    It sleeps in ``epoll`` for ``EPOLLRDHUP`` only (a worker's end closed: a reply does not
    wake it), one-shot: ``on_hangup(worker)`` looks, and calls :meth:`rearm` if the worker
    lives.  :meth:`forget` comes before the client closes its socket (whose fd number may be
    reused at once).  The wake time, moved by every call that leaves a worker idle, is the
    poll's timeout, not a timer per ``Wake``.  Lock order: the pool's lock, then this one's."""

    def __init__(
        self, lock: threading.Lock, on_hangup: Callable[[Any], object], tick: Callable[[], object]
    ) -> None:
        self._pool_lock = lock
        self._on_hangup = on_hangup
        self._tick = tick
        self._lock = threading.Lock()
        self._watched: dict[int, object] = {}
        self._epoll: select.epoll | None = None
        self._wake = -1  # an eventfd: the wake time moved earlier, or the thread must end
        self._thread: threading.Thread | None = None
        self._at: float | None = None
        self._closed = False

    def _start(self) -> select.epoll | None:
        """With this lock held: the epoll set, and the thread (once; ``None`` once closed)."""
        if self._epoll is None and not self._closed:
            self._epoll = select.epoll()
            self._wake = os.eventfd(0, os.EFD_CLOEXEC)
            self._epoll.register(self._wake, select.EPOLLIN)
            self._thread = _daemon.start(self._run, "anyfork-pool-watch", (self._epoll, self._wake))
        return self._epoll

    def watch(self, fd: int, worker: object) -> None:
        with self._lock:
            epoll = self._start()
            if epoll is not None:
                self._watched[fd] = worker
                epoll.register(fd, _MASK)

    def rearm(self, fd: int, worker: object) -> None:
        with self._lock:
            if self._epoll is not None and self._watched.get(fd) is worker:
                self._epoll.modify(fd, _MASK)

    def forget(self, fd: int, worker: object) -> None:
        with self._lock:
            if self._epoll is not None and self._watched.get(fd) is worker:
                del self._watched[fd]
                with contextlib.suppress(OSError):  # closed already: out of the epoll set
                    self._epoll.unregister(fd)

    def wake_at(self, at: float) -> None:
        """With the pool's lock held: call ``tick()`` at ``at`` (``time.monotonic()``), or
        earlier if an earlier time is asked for (an early look is harmless: the policy looks
        again)."""
        if self._at is not None and at >= self._at:
            return  # (read under the pool's lock, which every change of it holds)
        with self._lock:
            self._at = at
            if self._start() is not None:
                os.eventfd_write(self._wake, 1)

    def _run(self, epoll: select.epoll, wake: int) -> None:
        while True:
            with self._lock:
                if self._epoll is not epoll:
                    return  # closed
                at = self._at
            for fd, _ in epoll.poll(None if at is None else max(0.0, at - time.monotonic())):
                if fd == wake:
                    os.eventfd_read(wake)
                    continue
                with self._lock:
                    worker = self._watched.get(fd)
                if worker is not None:
                    self._on_hangup(worker)
            if at is not None and time.monotonic() >= at:
                with self._pool_lock:
                    with self._lock:
                        if self._epoll is not epoll:
                            return
                        self._at = None  # (only this thread clears it; it only moves earlier)
                    self._tick()

    def close(self) -> None:
        """End the thread (the pool has closed; without the pool's lock held)."""
        with self._lock:
            epoll, thread, wake = self._epoll, self._thread, self._wake
            self._epoll, self._thread, self._wake = None, None, -1
            self._closed = True
            self._watched.clear()
        if thread is not None:
            os.eventfd_write(wake, 1)
            thread.join()
        if epoll is not None:
            epoll.close()
            os.close(wake)


class Changes:
    """A count bumped at each change (under the pool's lock); waiters notified only if any."""

    def __init__(self, lock: threading.Lock) -> None:
        self._cond = threading.Condition(lock)
        self.version = 0
        self._waiting = 0

    def bump(self) -> None:
        self.version += 1
        if self._waiting:
            self._cond.notify_all()

    def wait_past(self, version: int, deadline: float | None) -> bool:
        """With the lock held: ``False`` at the deadline, unchanged since ``version``."""
        while self.version == version:
            wait = remaining(deadline)
            if wait == 0.0:
                return False
            self._waiting += 1
            try:
                self._cond.wait(wait)
            finally:
                self._waiting -= 1
        return True


def died_idle(client: BlockingClient) -> bool:
    """Did the worker die while idle?  Its socket is readable only then (EOF), since an idle
    worker sends nothing unasked.

    Looked at under the client's lock, which a call holds from its request to its reply: a
    call another thread has in flight on this worker (a waiting caller's, next to the
    worker's thread) makes the socket readable too, with its reply, and taking that for a
    death aborted the client under it (seen under CPU load)."""
    with rpc.lock(client):
        sock = rpc.sock(client)
        if sock is None or sock.fileno() < 0:
            return True
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))


# -- the pools still open at exit ------------------------------------------------------------


_live: weakref.WeakSet[ThreadsEngine] = weakref.WeakSet()
#: The program is ending: the pools still open have been closed, and no new call is taken
#: (``RuntimeError`` from an executor's ``submit``, as the standard library's say).
exiting: list[bool] = []


def opened(pool: ThreadsEngine) -> None:
    _live.add(pool)


def closed(pool: ThreadsEngine) -> None:
    _live.discard(pool)


def _close_all() -> None:
    """At exit: every pool still open is closed the graceful way (queued calls still run,
    workers stop, threads end), as ``concurrent.futures`` does for its executors; but the fast
    way (workers killed, queued calls failed) when the program ends with an uncaught
    ``KeyboardInterrupt``: a Ctrl-C that did not land in a wait for the pool must not leave
    the program waiting for every queued call."""
    exiting.append(True)
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    interrupted = last is not None and not isinstance(last, Exception)
    for pool in list(_live):
        pool.close(wait=True, cancel=interrupted)


# Where the stdlib's executors register theirs (when their module is imported): run when the
# main thread ends, before non-daemon threads are joined, and before atexit (whose weakref
# finalizers close the workers' sockets under the pool).
with contextlib.suppress(RuntimeError):  # already shutting down: nothing to do then
    threading._register_atexit(_close_all)  # type: ignore[attr-defined]


os.register_at_fork(after_in_child=_live.clear)  # a forked child has none of those threads
