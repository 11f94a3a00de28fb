"""The parent's end of a process socket: ``Channel``, and ``Wait``, what a protocol step waits
for.  How it never blocks and never waits: docs/design.md, "The parent's channels"."""

from __future__ import annotations

import _socket
import contextlib
import heapq
import os
import select
import socket
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, TypeVar

from .._child import _wire

if TYPE_CHECKING:
    # For annotations only: the channel uses the loops it is given.  An early or main template
    # forked from a program that has not imported asyncio must not carry it.
    import asyncio

T = TypeVar("T")

READ = 0
WRITE = 1

# Plain ints: OR-ing the ``socket`` module's flag enums runs the enum machinery in Python, which
# after a pause (cold caches) costs tens of microseconds per read on the way to ``run``.
_DONTWAIT = int(socket.MSG_DONTWAIT)
#: The most bytes one read of reports takes (a batch of reports is a few dozen bytes).
_REPORTS_READ = 4096


def channel_pair() -> tuple[Channel, int]:
    """A new child's channel, and the fd of the child's end (``socket.socketpair`` would wrap
    that end too: one more getsockname, on the way to a start)."""
    ours, theirs = _socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return Channel(
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, ours.detach())
    ), theirs.detach()


def arrived(fd: int, timeout_ms: float | None = 0) -> bool:
    """Something (or EOF) is there to read on ``fd``, now or within ``timeout_ms`` (``None``:
    however long it takes)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout_ms))


class Wait:
    """A request from a protocol generator: wake me when ``chan`` is readable or writable.

    ``until`` (a ``time.monotonic()`` deadline) bounds this one wait: the generator is resumed
    with ``False`` when it passes.  With ``chan`` ``None``: a sleep until ``until``, or, given
    ``fd``, a wait for that fd to be readable (a pidfd).  ``upto`` (WRITE): the frame whose
    writing to wait for (default: all queued).  ``drain``: meanwhile, whenever ``drain[0]`` is
    readable, call ``drain[1]`` without waking the generator.
    """

    __slots__ = ("chan", "drain", "fd", "kind", "until", "upto")

    def __init__(
        self,
        kind: int,
        chan: Channel | None,
        until: float | None = None,
        *,
        upto: int | None = None,
        drain: Drain | None = None,
        fd: int | None = None,
    ):
        self.kind = kind
        self.chan = chan
        self.until = until
        self.upto = upto
        self.drain = drain
        self.fd = fd


Op = Generator[Wait, bool, T]
Drain = tuple["Channel", Callable[[], None]]


class _Watch:
    """What one event loop waits for on one channel: ``readers`` (all resolved when readable),
    ``writers`` (each resolved once the frames up to its number are written; ``heap`` orders
    them), ``drain`` (``keep_drained``), ``watching[kind]``: the loop's fd watcher is on."""

    __slots__ = ("drain", "heap", "readers", "watching", "writers")

    def __init__(self) -> None:
        self.readers: dict[asyncio.Future[bool], None] = {}
        self.writers: dict[asyncio.Future[bool], int] = {}
        self.heap: list[tuple[int, int, asyncio.Future[bool]]] = []
        self.drain: weakref.WeakMethod[Callable[[], None]] | None = None
        self.watching = [False, False]


class Channel:
    """The parent's end of one process's socket.

    Frames are numbered as they are queued (``queue`` returns the number); ``written`` is the
    number of the last frame the kernel has taken (or that was dropped with a failed queue).
    """

    def __init__(self, sock: socket.socket):
        self.sock: socket.socket | None = sock
        self.fd = sock.fileno()
        self.decoder = _wire.Decoder(_wire.REPORTS, _wire.MAX_REPORT, stop_after=_wire.RUNNING)
        self._out: deque[list[object]] = deque()
        self.queued = 0
        self.written = 0
        #: ``shutdown_write`` was called: nothing more can be queued, reports can still be read.
        self.write_shut = False
        #: A RUN is queued: the child may end its reports (RUNNING), so reads stop there.
        self.run_queued = False
        self._lock = threading.RLock()
        self._watches: dict[asyncio.AbstractEventLoop, _Watch] = {}

    # -- writing ---------------------------------------------------------------------------

    def queue(self, data: bytes, fds: list[int] | None = None) -> int:
        """Append one frame and return its number; the channel owns (and will close) ``fds``."""
        with self._lock:
            if self.sock is None or self.write_shut:
                for fd in fds or ():
                    os.close(fd)
                raise BrokenPipeError("the channel is closed")
            self._out.append([memoryview(data), fds or []])
            self.queued += 1
            return self.queued

    def flush_nowait(self, upto: int | None = None) -> bool:
        """Write as much as the socket takes; ``True`` once the frames up to number ``upto``
        (default: all) are written.

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
                        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _wire.pack_ints(fds))]
                        sent = sock.sendmsg([data], anc, _DONTWAIT)
                    else:
                        sent = sock.send(data, _DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    break
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
                    self.written += 1
            return self.written >= (self.queued if upto is None else upto)

    def _drop_queue(self) -> None:
        for item in self._out:
            for fd in item[1]:  # type: ignore[attr-defined]  # queue items are [view, fds]
                os.close(fd)
        self._out.clear()
        self.written = self.queued

    # -- reading ---------------------------------------------------------------------------

    def read_nowait(self, handle: Callable[[int, bytes], None]) -> None:
        """Call ``handle(op, payload)`` for each complete frame that has arrived, in order.

        Never reads a byte after RUNNING (once a RUN is queued, reads that cannot pass it:
        ``Decoder.safe_want``; those bytes are the function's).  Raises ``_wire.WireError``
        for bytes that are not reports, after handling the frames before them.
        """
        with self._lock:
            dec = self.decoder
            short = False
            while True:
                frame = dec.next_frame()
                if frame is not None:
                    handle(frame[0], frame[1])
                    continue
                if dec.stopped and not self.run_queued:
                    # (read in one go with what followed it: no reader could ever go on)
                    raise _wire.WireError("RUNNING came before the process was sent run")
                if dec.eof or dec.stopped or self.sock is None:
                    return
                if short and not arrived(self.fd):
                    # A look rather than a read that finds nothing: that read raises, and a
                    # raise costs ~50 us on the way to run after a pause (cold caches).
                    return
                # Once a RUN is queued, reads that cannot pass RUNNING; before, only reports
                # can come: one read takes them all.
                want = dec.safe_want() if self.run_queued else _REPORTS_READ
                try:
                    data = self.sock.recv(want, _DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    data = b""  # ECONNRESET: the child died with our bytes unread
                short = len(data) < want
                dec.receive(data)

    def readable(self) -> bool:
        """Worth waiting for reports on: open, not at EOF, not past RUNNING."""
        dec = self.decoder
        return self.sock is not None and not dec.eof and not dec.stopped

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
        """Close now, dropping whatever is still queued (see ``release`` for letting go)."""
        with self._lock:
            sock, self.sock = self.sock, None
            self._drop_queue()
            self._wake_all()
        if sock is not None:
            sock.close()

    def shutdown_write(self) -> None:
        """Stop writing (the child sees EOF) but go on reading its reports: what the parent
        does with a template it closes, whose children's exits it still wants to hear of."""
        with self._lock:
            sock = self.sock
            if sock is None or self.write_shut:
                return
            self.write_shut = True
            self._drop_queue()
            with contextlib.suppress(OSError):  # gone already: reading says so
                sock.shutdown(socket.SHUT_WR)
            self._wake_all()

    def forget(self) -> None:
        """In a forked copy of the program: close without a word to any event loop."""
        sock, self.sock = self.sock, None
        self._watches = {}
        if sock is not None:
            sock.close()

    # -- asyncio waiting -------------------------------------------------------------------

    def add_waiter(
        self,
        loop: asyncio.AbstractEventLoop,
        kind: int,
        fut: asyncio.Future[bool],
        upto: int | None = None,
    ) -> None:
        """Resolve ``fut`` (with ``True``) once the socket is readable (``kind`` READ), or once
        the frames up to number ``upto`` (default: all queued now) are written (WRITE), or the
        channel is closed.  One future may wait on several channels."""
        with self._lock:
            if self.sock is None:
                _resolve([fut])
                return
            watch = self._watches.get(loop) or self._watches.setdefault(loop, _Watch())
            if kind == READ:
                watch.readers[fut] = None
            else:
                upto = self.queued if upto is None else upto
                watch.writers[fut] = upto
                heapq.heappush(watch.heap, (upto, id(fut), fut))
            self._update(loop, watch, kind)

    def discard_waiter(
        self, loop: asyncio.AbstractEventLoop, kind: int, fut: asyncio.Future[bool]
    ) -> None:
        with self._lock:
            watch = self._watches.get(loop)
            if watch is not None:
                # (a writer's heap entry stays until it comes up: _wake skips it then)
                (watch.readers if kind == READ else watch.writers).pop(fut, None)
                self._update(loop, watch, kind)

    def keep_drained(self, loop: asyncio.AbstractEventLoop, drain: Callable[[], None]) -> None:
        """From now on, call ``drain`` (a bound method, on ``loop``) whenever the socket is
        readable, while the channel, the loop and ``drain``'s object live (not a watcher per
        wait: the hot path would pay for it)."""
        watch = self._watches.get(loop)
        if watch is not None and watch.drain is not None:
            return
        with self._lock:
            if not self.readable():
                return
            for closed in [each for each in self._watches if each.is_closed()]:
                del self._watches[closed]  # (nothing to unwatch on a closed loop)
            watch = self._watches.get(loop) or self._watches.setdefault(loop, _Watch())
            watch.drain = weakref.WeakMethod(drain)
            self._update(loop, watch, READ)

    def _update(self, loop: asyncio.AbstractEventLoop, watch: _Watch, kind: int) -> None:
        """Turn ``loop``'s fd watcher for ``kind`` on or off, as its waiters need."""
        if kind == READ:
            wanted = bool(watch.readers or watch.drain)
        else:
            wanted = bool(watch.writers)
            if not wanted:
                watch.heap.clear()
        if wanted != watch.watching[kind]:
            watch.watching[kind] = wanted
            if wanted:
                add = loop.add_reader if kind == READ else loop.add_writer
                add(self.fd, self._wake, loop, kind)
            else:
                self._unwatch(loop, kind)
        if not watch.watching[READ] and not watch.watching[WRITE]:
            self._watches.pop(loop, None)

    def _wake(self, loop: asyncio.AbstractEventLoop, kind: int) -> None:
        """The fd watcher's callback, on ``loop``'s thread."""
        if kind == WRITE:
            # OSError: the queue is dropped, every writer is done (and will see why).
            with contextlib.suppress(OSError):
                self.flush_nowait()
        with self._lock:
            watch = self._watches.get(loop)
            if watch is None:
                return
            futures: list[asyncio.Future[bool]] = []
            drain = None
            if kind == READ:
                futures = list(watch.readers)
                watch.readers.clear()
                drain = watch.drain() if watch.drain is not None else None
            else:
                heap, writers = watch.heap, watch.writers
                while heap and heap[0][0] <= self.written:
                    fut = heapq.heappop(heap)[2]
                    if writers.pop(fut, None) is not None:
                        futures.append(fut)
        if drain is not None:
            drain()  # (outside our lock: it takes its process's lock, then ours)
        with self._lock:
            watch = self._watches.get(loop)
            if watch is not None:
                if kind == READ and (drain is None or not self.readable()):
                    watch.drain = None  # gone, readable for ever, or not ours to read: stop
                self._update(loop, watch, kind)
        _resolve(futures)

    def _wake_all(self) -> None:
        """The socket is going: every waiter, on every loop, must look again."""
        watches, self._watches = self._watches, {}
        if not watches:
            return
        asyncio = sys.modules.get("asyncio")
        current = asyncio._get_running_loop() if asyncio is not None else None
        for loop, watch in watches.items():
            for kind in (READ, WRITE):
                if watch.watching[kind]:
                    self._unwatch(loop, kind)
            futures = [*watch.readers, *watch.writers]
            if not futures or loop.is_closed():
                continue
            if loop is current:
                _resolve(futures)
            else:
                loop.call_soon_threadsafe(_resolve, futures)

    def _unwatch(self, loop: asyncio.AbstractEventLoop, kind: int) -> None:
        if not loop.is_closed():
            (loop.remove_reader if kind == READ else loop.remove_writer)(self.fd)


def _resolve(futures: list[asyncio.Future[bool]]) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_result(True)
