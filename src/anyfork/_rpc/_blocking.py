"""RPC, parent side: the blocking client, driving the connection with ``poll``/``recv``."""

from __future__ import annotations

import contextlib
import functools
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn, final

from .._core._process import Process
from .._util import NoPublicConstructor, publish
from ._answers import Box
from ._batching import BatchResult
from ._connection import NEED_EXIT_STATUS, READY, STARTING, RpcConnection
from ._drivers import EXIT_STATUS_WAIT, EXIT_UNKNOWN, WOULD_BLOCK, Facts, recv_some

__all__ = ["BlockingClient"]


def emit(args: tuple[Any, ...], handler: Callable[..., object]) -> None:
    handler(*args)


_POLLIN = select.POLLIN
_DONTWAIT = int(socket.MSG_DONTWAIT)
_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR


@final
class BlockingClient(Facts, metaclass=NoPublicConstructor):
    """The blocking twin of :class:`Client`, for programs without an event loop; made by
    :func:`rpc_blocking`.  One call (or one ``map``) at a time: thread-safe, calls from several
    threads take turns; an event handler (the call's ``on_event=``, or the client's) runs
    inside the call that reads the event.

    ``timeout``: ``TimeoutError``; with the sync backend the worker is killed (the client is no
    longer ``usable``, and a new call fails at once with ``WorkerDiedError``, as with
    :class:`Client`), with the async backend its task is cancelled and the client stays usable.
    An exception raised by ``on_event`` (or a ``KeyboardInterrupt``) abandons the call in
    progress in the same way.  A client dropped without ``close()`` closes its socket when it
    is garbage-collected (the worker then exits).
    """

    def __init__(self, proc: Process, sock: socket.socket, conn: RpcConnection):
        self._proc = proc
        self._conn = conn
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._lock = threading.RLock()
        self._poller = select.poll()
        self._poll_mask = 0
        sock.setblocking(True)  # see _io_until
        self._conn.out.flags = _DONTWAIT
        self._finalizer = weakref.finalize(self, sock.close)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function with ``args`` and ``kwargs``; return its result."""
        return self._call(args, kwargs, None)

    def call(
        self,
        *args: Any,
        timeout: float | None = None,
        on_event: Callable[..., object] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Like ``client(...)``, with a ``timeout`` in seconds and an event handler of its own
        (see :meth:`Client.call`)."""
        return self._call(args, kwargs, timeout, on_event)

    def map(
        self,
        *iterables: Iterable[Any],
        chunksize: int | None = None,
        timeout: float | None = None,
    ) -> list[Any]:
        """Call the function once per item, in batches, and return the results in order (see
        :meth:`Client.map`; ``timeout`` is for the whole map)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            conn = self._conn
            run = conn.start_map(iterables, chunksize, time.monotonic)
            try:
                while True:
                    conn.map_send(run)
                    if run.finished:
                        break
                    self._io_until(functools.partial(run.answered_since, run.answers), deadline)
            except TimeoutError:
                self._act(conn.abandon_map(run, f"timed out after {timeout} s"))
                raise TimeoutError(f"the RPC calls timed out after {timeout} s") from None
            except BaseException:
                self._act(conn.abandon_map(run, "was interrupted"))
                raise
            return run.outcome()

    def _call(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        on_event: Callable[..., object] | None = None,
        columns: Sequence[Sequence[Any]] | None = None,
    ) -> Any:
        """A call's, or given ``columns`` a batch's (``RpcConnection.call``), outcome."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            box = Box()
            cid = self._conn.call(box, args, kwargs, on_event, columns)
            try:
                self._io_until(box.done, deadline)
            except BaseException as exc:
                self._gave_up(cid, exc, timeout)
            if box.exc is not None:
                raise box.exc
            return box.value

    def _call_batch(
        self,
        columns: Sequence[Sequence[Any]],
        timeout: float | None,
        on_event: Callable[..., object] | None = None,
    ) -> BatchResult:
        result: BatchResult = self._call((), {}, timeout, on_event, columns)
        return result

    def _gave_up(self, cid: int, exc: BaseException, timeout: float | None) -> NoReturn:
        """Waiting for call ``cid`` raised ``exc``: abandon the call, raise."""
        if isinstance(exc, TimeoutError):
            self._act(self._conn.abandon(cid, f"timed out after {timeout} s"))
            raise TimeoutError(f"the RPC call timed out after {timeout} s") from None
        self._act(self._conn.abandon(cid, "was interrupted"))
        raise exc

    def _io_until(self, done: Callable[[], bool], deadline: float | None) -> None:
        """Write and read until ``done()`` (or EOF).  The socket stays blocking (writes pass
        ``MSG_DONTWAIT``): with nothing to write and no deadline, the wait is one ``recv``."""
        conn = self._conn
        out = conn.out
        while True:
            sock = self._sock
            if sock is None:
                return
            writing = out.has_output() and out.send_some(sock)
            if done():
                return
            if conn.wants_shutdown:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
            flags = _DONTWAIT
            if deadline is not None or writing:
                # Wait for the reply and for room to write at once: a worker busy writing
                # events to us while we block writing to it would deadlock otherwise.
                mask = _POLLIN | (select.POLLOUT if writing else 0)
                if mask != self._poll_mask:
                    self._poller.register(self._fd, mask)
                    self._poll_mask = mask
                if deadline is None:
                    ready = self._poller.poll()
                else:
                    wait = deadline - time.monotonic()
                    if wait <= 0:
                        raise TimeoutError
                    ready = self._poller.poll(max(1, int(wait * 1000 + 0.5)))
                if not ready or not ready[0][1] & _READABLE:
                    continue
            else:
                flags = 0  # block in recv until the worker says something
            outcome = recv_some(conn, sock, flags)
            if outcome is None or outcome is WOULD_BLOCK:
                continue
            if outcome == NEED_EXIT_STATUS and conn.pending:
                conn.died(self._exit_status())
            self._close_socket()
            return

    def _exit_status(self) -> int | None:
        try:
            return self._proc.wait_blocking(timeout=EXIT_STATUS_WAIT)
        except EXIT_UNKNOWN:
            return self._proc.returncode

    def _wait_ready(self, deadline: float | None) -> None:
        conn = self._conn
        try:
            self._io_until(lambda: conn.state != STARTING, deadline)
        except BaseException:
            self.abort()
            raise
        if conn.state != READY:
            returncode = None if conn.failure is not None else self._exit_status()
            err = conn.start_failure(returncode)
            self.abort()
            raise err

    def close(self, *, timeout: float | None = None) -> None:
        """Let the worker finish, then wait until it has exited (see :meth:`Client.aclose`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            conn = self._conn
            conn.close()
            try:
                self._io_until(lambda: self._sock is None, deadline)
            except BaseException as exc:
                timed_out = isinstance(exc, TimeoutError)
                self._act(
                    conn.condemn("close() timed out" if timed_out else "close() was interrupted")
                )
                self.abort()
                raise
            if conn.returncode is None:
                conn.returncode = self._exit_status()

    def abort(self) -> None:
        """Close the connection now (see :meth:`Client.abort`)."""
        self._conn.abort()
        self._close_socket()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


publish(globals())
