"""The parent's end of a process socket, and the two drivers (asyncio and blocking) that wait on it.

A ``Channel`` owns a non-blocking socket, a queue of frames to write (each frame may carry fds,
which the channel owns until the kernel has them) and a ``_wire.Decoder`` for the child's
reports.  It never blocks and never waits: operations that must wait are written once, as
generators that yield ``Wait`` requests, and run by ``drive_async`` on the event loop or by
``drive_blocking`` with ``poll``.  So the asyncio API and its blocking twin share every line of
protocol logic.

Several coroutines may wait on one channel at once (every child of a template flushes the
template's queue): the asyncio side keeps one fd watcher per channel and direction and wakes all
its waiters, because ``loop.add_reader`` on an fd silently replaces the previous callback.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Generator
from typing import TYPE_CHECKING, TypeVar

from .._child import _wire

if TYPE_CHECKING:
    # Only drive_async needs asyncio at run time, and imports it there: an early or main
    # template forked from a program that has not imported asyncio must not carry it.
    import asyncio

T = TypeVar("T")

READ = 0
WRITE = 1

#: Reports are small; a child that claims a bigger one is broken.
MAX_REPORT = 16 << 20


class Wait:
    """A request from a protocol generator: wake me when ``chan`` is readable or writable.

    ``until`` (a ``time.monotonic()`` deadline) bounds this one wait: the generator is resumed
    with ``False`` when it passes, instead of the whole operation failing.  With ``chan``
    ``None`` it is a plain sleep until ``until`` (bounded polling for a fact only the OS knows,
    such as a child's exit status), which the asyncio driver sleeps without blocking the loop.
    """

    __slots__ = ("chan", "kind", "until")

    def __init__(self, kind: int, chan: Channel | None, until: float | None = None):
        self.kind = kind
        self.chan = chan
        self.until = until


Op = Generator[Wait, bool, T]


class Channel:
    """The parent's end of one process's socket."""

    def __init__(self, sock: socket.socket):
        sock.setblocking(False)
        self.sock: socket.socket | None = sock
        self.fd = sock.fileno()
        self.decoder = _wire.Decoder(_wire.REPORTS, MAX_REPORT, stop_after=_wire.RUNNING)
        self._out: deque[list[object]] = deque()
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: tuple[list[asyncio.Future[bool]], list[asyncio.Future[bool]]] = ([], [])

    # -- writing ---------------------------------------------------------------------------

    def queue(self, data: bytes, fds: list[int] | None = None) -> None:
        """Append one frame; the channel owns (and will close) ``fds``."""
        with self._lock:
            if self.sock is None:
                for fd in fds or ():
                    os.close(fd)
                raise BrokenPipeError("the channel is closed")
            self._out.append([memoryview(data), fds or []])

    @property
    def pending(self) -> bool:
        return bool(self._out)

    def flush_nowait(self) -> bool:
        """Write as much as the socket takes; ``True`` once the queue is empty.

        Raises ``OSError`` (EPIPE, ECONNRESET) when the process is gone; the queue is dropped.
        """
        with self._lock:
            sock = self.sock
            while self._out:
                if sock is None:
                    raise BrokenPipeError("the channel is closed")
                item = self._out[0]
                data: memoryview = item[0]  # type: ignore[assignment]  # queue items are [view, fds]
                fds: list[int] = item[1]  # type: ignore[assignment]
                try:
                    if fds:
                        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _pack_fds(fds))]
                        sent = sock.sendmsg([data], anc)
                    else:
                        sent = sock.send(data)
                except (BlockingIOError, InterruptedError):
                    return False
                except OSError:
                    self._drop_queue()
                    raise
                if fds:
                    # The kernel holds its own references now; ours can go.
                    for fd in fds:
                        os.close(fd)
                    item[1] = []
                if sent < len(data):
                    item[0] = data[sent:]
                else:
                    self._out.popleft()
            return True

    def _drop_queue(self) -> None:
        for item in self._out:
            for fd in item[1]:  # type: ignore[attr-defined]  # queue items are [view, fds]
                os.close(fd)
        self._out.clear()

    # -- reading ---------------------------------------------------------------------------

    def read_nowait(self) -> tuple[int, bytes, list[int]] | None:
        """Return the next complete report, or ``None`` (see ``decoder.eof`` for the reason).

        Reads never cross a frame boundary, so nothing after RUNNING is ever consumed.
        """
        with self._lock:
            dec = self.decoder
            while True:
                frame = dec.next_frame()
                if frame is not None or dec.eof or dec.stopped or self.sock is None:
                    return frame
                try:
                    data = self.sock.recv(dec.want())
                except (BlockingIOError, InterruptedError):
                    return None
                except OSError:
                    data = b""  # ECONNRESET: the child died with our bytes unread
                dec.receive(data)

    # -- lifetime --------------------------------------------------------------------------

    def detach(self) -> socket.socket:
        """Hand the socket over (to ``run``'s caller); the channel is closed afterwards."""
        with self._lock:
            sock = self.sock
            if sock is None:
                raise BrokenPipeError("the channel is closed")
            self.sock = None
            self._drop_queue()
            self._wake_all()
            return sock

    def close(self) -> None:
        with self._lock:
            sock, self.sock = self.sock, None
            self._drop_queue()
            self._wake_all()
        if sock is not None:
            sock.close()

    @property
    def closed(self) -> bool:
        return self.sock is None

    # -- asyncio waiting -------------------------------------------------------------------

    def wait_async(self, loop: asyncio.AbstractEventLoop, kind: int) -> asyncio.Future[bool]:
        with self._lock:
            if self._loop is not loop:
                self._wake_all()
                self._loop = loop
            fut: asyncio.Future[bool] = loop.create_future()
            if self.sock is None:
                fut.set_result(True)
                return fut
            waiters = self._waiters[kind]
            if not waiters:
                add = loop.add_reader if kind == READ else loop.add_writer
                add(self.fd, self._wake, kind)
            waiters.append(fut)
            return fut

    def discard_async(self, kind: int, fut: asyncio.Future[bool]) -> None:
        with self._lock:
            waiters = self._waiters[kind]
            if fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    self._unwatch(kind)

    def _wake(self, kind: int) -> None:
        with self._lock:
            waiters = self._waiters[kind]
            self._unwatch(kind)
            for fut in waiters:
                if not fut.done():
                    fut.set_result(True)
            waiters.clear()

    def _wake_all(self) -> None:
        for kind in (READ, WRITE):
            if self._waiters[kind]:
                self._wake(kind)

    def _unwatch(self, kind: int) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if kind == READ:
            loop.remove_reader(self.fd)
        else:
            loop.remove_writer(self.fd)


def _pack_fds(fds: list[int]) -> bytes:
    return struct.pack(f"{len(fds)}i", *fds)


def drive_blocking(op: Op[T], timeout: float | None) -> T:
    """Run a protocol generator to completion, blocking in ``poll``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        wait = next(op)
        while True:
            until = _earliest(deadline, wait.until)
            ready = True
            if wait.chan is None:
                time.sleep(max(0.0, (until or 0.0) - time.monotonic()))
                ready = False
            elif wait.chan.sock is not None:
                poller = select.poll()
                poller.register(
                    wait.chan.fd, select.POLLIN if wait.kind == READ else select.POLLOUT
                )
                remaining = None if until is None else max(0.0, until - time.monotonic())
                ready = bool(poller.poll(None if remaining is None else remaining * 1000))
            if not ready and deadline is not None and time.monotonic() >= deadline:
                op.close()
                raise TimeoutError(f"no answer within {timeout} s")
            wait = op.send(ready)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]  # the generator's declared return type


async def drive_async(op: Op[T], timeout: float | None) -> T:
    """Run a protocol generator to completion on the running event loop."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        wait = next(op)
        while True:
            until = _earliest(deadline, wait.until)
            chan = wait.chan
            fut: asyncio.Future[bool] = (
                loop.create_future() if chan is None else chan.wait_async(loop, wait.kind)
            )
            timer = None
            if until is not None:
                timer = loop.call_later(max(0.0, until - time.monotonic()), _expire, fut)
            try:
                ready = await fut
            except BaseException:
                if chan is not None:
                    chan.discard_async(wait.kind, fut)
                op.close()
                raise
            finally:
                if timer is not None:
                    timer.cancel()
            if not ready:
                if chan is not None:
                    chan.discard_async(wait.kind, fut)
                if deadline is not None and time.monotonic() >= deadline:
                    op.close()
                    raise TimeoutError(f"no answer within {timeout} s")
            wait = op.send(ready)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]  # the generator's declared return type


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
