"""RPC, parent side: the asyncio client.  A call costs one future, no task: reads go straight
into the decoder's buffer, writes leave from the caller (``add_writer`` only when the socket is
full).  Events go through ``loop.call_soon``, as results wake their callers: all in the child's
order.  The loop holds the client weakly (``_reader``): one dropped unclosed is finalised; a
pending call's future holds its client.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, final

from .._core._process import Process
from .._util import NoPublicConstructor, publish, wait_for
from ._connection import NEED_EXIT_STATUS, READY, STARTING, RpcConnection
from ._drivers import EXIT_STATUS_WAIT, EXIT_UNKNOWN, WOULD_BLOCK, Facts, recv_some

__all__ = ["Client"]


class _Call(asyncio.Future[Any]):
    """A call's future: cancelling it abandons the call, with no done-callback per call."""

    __slots__ = ("_cid", "_client")

    _cid: int
    _client: Client | None

    def cancel(self, msg: Any = None) -> bool:
        client = self._client
        if not super().cancel(msg):
            return False
        if client is not None:
            self._client = None
            client._abandon(self._cid, "was cancelled")
        return True

    def set_result(self, result: Any, /) -> None:
        self._client = None
        super().set_result(result)

    def set_exception(self, exception: type | BaseException, /) -> None:
        self._client = None
        super().set_exception(exception)


def _dropped(loop: asyncio.AbstractEventLoop, fd: int, sock: socket.socket) -> None:
    """Close the socket of a client collected unclosed: the worker sees EOF and exits."""
    with contextlib.suppress(Exception):  # a loop half torn down at exit: close the socket anyway
        if not loop.is_closed():
            loop.remove_reader(fd)
            loop.remove_writer(fd)
    sock.close()


def emit(
    loop: asyncio.AbstractEventLoop, args: tuple[Any, ...], handler: Callable[..., object]
) -> None:
    loop.call_soon(_deliver, loop, args, handler)


def _deliver(
    loop: asyncio.AbstractEventLoop, args: tuple[Any, ...], handler: Callable[..., object]
) -> None:
    try:
        handler(*args)
    except Exception as exc:
        loop.call_exception_handler(
            {"message": "anyfork RPC on_event callback failed", "exception": exc}
        )


def _reader(ref: weakref.ReferenceType[Client]) -> Any:
    def on_readable() -> None:
        client = ref()
        if client is not None:
            client._on_readable()

    return on_readable


@final
class Client(Facts, metaclass=NoPublicConstructor):
    """The asyncio client of an RPC worker; made by :func:`rpc`.

    ``await client(*args, **kwargs)`` calls the function with those arguments and returns its
    result (every keyword goes to the function).  The call is sent at once: ``client(...)``
    returns a future, so many calls can be in flight (``asyncio.gather(*(client(x) for x in
    xs))``).  ``await client.call(*args, timeout=..., on_event=..., **kwargs)`` does the same
    with a deadline and an event handler of its own; ``await client.map(xs)`` runs the function
    once per item, in batches, and returns the results in order.  With the sync backend the
    worker runs calls one at a time in order, with the async backend up to its
    ``concurrency`` at once (a batch counts as one).

    Errors: the function's exception, as its own type when it unpickles (else ``RemoteError``),
    with the child's traceback as ``__cause__``; ``EncodeError`` (side ``"parent"``) for
    arguments that cannot be serialised, before anything is sent; ``EncodeError`` (side
    ``"child"``) for a result that cannot; ``WorkerDiedError`` (``.pid``, ``.returncode``,
    ``.signal``) for every outstanding call when the worker dies; ``ProtocolError`` (naming the
    worker's pid) for every outstanding call when the stream breaks the protocol in either
    direction; for a call made after that, ``WorkerDiedError`` if the worker has died (also
    while idle: it exited, or was killed) and ``ClosedError`` after a broken stream or
    ``aclose``.  Only those failures end the connection (``usable`` is then ``False``).

    Cancellation (and ``timeout``, which raises ``TimeoutError``): with the async backend the
    worker cancels the call's task and keeps serving.  With the sync backend the worker is
    killed (SIGKILL; a running Python function cannot be interrupted safely): from that moment
    ``usable`` is ``False`` and a new call fails at once, unsent, with ``WorkerDiedError``
    saying which call got the worker killed; every other outstanding call fails with
    ``WorkerDiedError`` naming that call too.

    A client dropped without ``aclose()`` closes its connection when it is garbage-collected
    (the worker sees EOF and exits); ``aclose()`` is still the way to wait for that.
    """

    def __init__(
        self,
        proc: Process,
        sock: socket.socket,
        conn: RpcConnection,
        *,
        loop: asyncio.AbstractEventLoop,
    ):
        self._proc = proc
        self._loop = loop
        self._conn = conn
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._writing = False
        self._corked = False
        self._ready_fut: asyncio.Future[None] = loop.create_future()
        self._closed_fut: asyncio.Future[None] = loop.create_future()
        sock.setblocking(False)
        loop.add_reader(self._fd, _reader(weakref.ref(self)))
        self._reading = True
        self._finalizer = weakref.finalize(self, _dropped, loop, self._fd, sock)

    def __call__(self, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """``await client(*args, **kwargs)``: the function's result, the call sent at once (see
        the class docs for its errors and its cancellation)."""
        return self._submit(args, kwargs)

    def call(
        self,
        *args: Any,
        timeout: float | None = None,
        on_event: Callable[..., object] | None = None,
        **kwargs: Any,
    ) -> Awaitable[Any]:
        """Like ``client(...)``, with a deadline and an event handler of its own.

        Args:
            *args: the function's positional arguments.
            timeout: seconds; then ``TimeoutError`` (see the class docs for what happens to
                the worker).
            on_event: called as ``on_event(*args)`` for each event this call raises (the
                client's ``on_event`` gets the others), in the order the worker produced them,
                each before the call's result is returned.  Once the call is abandoned
                (cancelled, timed out) what it still raises is dropped.
            **kwargs: the function's keyword arguments (to pass one named ``timeout`` or
                ``on_event`` to it, use ``client(...)``).
        """
        fut = self._submit(args, kwargs, on_event)
        if timeout is None or fut.done():
            return fut
        return self._with_timeout(fut, timeout)

    async def map(
        self,
        *iterables: Iterable[Any],
        chunksize: int | None = None,
        timeout: float | None = None,
    ) -> list[Any]:
        """Call the function once per item (``func(*items)`` for ``items`` in
        ``zip(*iterables)``) and return the results in order.

        The items travel in batches, each one frame each way and run by the worker as one
        call, in order (``Client.batchable``: every serialiser but ``"bytes"`` and ``"str"``,
        which send one call per item).

        Args:
            *iterables: the arguments, one iterable per positional parameter (read at once,
                as ``zip`` reads them).
            chunksize: items per batch, as in ``concurrent.futures`` (``1``: one call per
                item, pipelined); enough batches are in flight to keep the worker busy.
                ``None`` (the default) sizes them from the measured time per item: small ones
                first, then batches of about 0.1 s, a few in flight at a time (for calls that
                cost little, many times faster than one call per item).
            timeout: seconds for the whole map; then ``TimeoutError``.

        Raises:
            The exception of the first item (in order) that failed: its own, or
            ``EncodeError`` for arguments that cannot be encoded (their batch is not sent), or
            what ends the connection (``WorkerDiedError``...).  It is raised once the batches
            in flight have answered; no batch is sent after a failure, and the items after
            the failed one in its batch are not run.  ``ValueError`` for a bad ``chunksize``.

        Cancellation (and timeout): every batch not answered yet is abandoned, as a single
        call (the async backend cancels them, the sync backend kills the worker).
        """
        conn = self._conn
        loop = self._loop
        run = conn.start_map(iterables, chunksize, loop.time)
        fut: asyncio.Future[None] | None = None

        def wake() -> None:
            if fut is not None and not fut.done():
                fut.set_result(None)

        def expire() -> None:
            self._act(conn.abandon_map(run, f"timed out after {timeout} s"))
            if fut is not None and not fut.done():
                fut.set_exception(TimeoutError(f"the RPC calls timed out after {timeout} s"))

        run.wake = wake
        handle = None if timeout is None else loop.call_later(timeout, expire)
        try:
            while True:
                conn.map_send(run)
                self._kick()
                if run.finished:
                    break
                fut = loop.create_future()
                await fut
        except asyncio.CancelledError:
            self._act(conn.abandon_map(run, "was cancelled"))
            raise
        finally:
            if handle is not None:
                handle.cancel()
        return run.outcome()

    def _submit(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        on_event: Callable[..., object] | None = None,
        columns: Sequence[Sequence[Any]] | None = None,
    ) -> _Call:
        """A call's, or given ``columns`` a batch's (``RpcConnection.call``), future."""
        fut = _Call(loop=self._loop)
        fut._client = None
        try:
            fut._cid = self._conn.call(fut, args, kwargs, on_event, columns)
        except Exception as exc:  # raised when the future is awaited, as from a coroutine
            fut.set_exception(exc)
            return fut
        fut._client = self
        self._kick()
        return fut

    def _submit_batch(
        self, columns: Sequence[Sequence[Any]], on_event: Callable[..., object] | None = None
    ) -> _Call:
        """A batch's future: its ``BatchResult``, or what failed the batch as a whole."""
        return self._submit((), {}, on_event, columns)

    async def _with_timeout(self, fut: _Call, timeout: float) -> Any:
        handle = self._loop.call_later(timeout, self._expire, fut, timeout)
        try:
            return await fut
        finally:
            handle.cancel()

    def _expire(self, fut: _Call, timeout: float) -> None:
        if not fut.done() and fut._cid in self._conn.pending:
            self._abandon(fut._cid, f"timed out after {timeout} s")
            fut.set_exception(TimeoutError(f"the RPC call timed out after {timeout} s"))

    def _abandon(self, cid: int, why: str) -> None:
        self._act(self._conn.abandon(cid, why))

    def _kick(self) -> None:
        """A lone call leaves at once; with others outstanding, an iteration's leave at its end."""
        if self._writing or self._corked:
            return
        if len(self._conn.pending) > 1:
            self._corked = True
            self._loop.call_soon(self._uncork)
            return
        self._write_now()

    def _uncork(self) -> None:
        self._corked = False
        if not self._writing and self._conn.out.has_output():
            self._write_now()

    def _write_now(self) -> None:
        sock = self._sock
        if sock is None:
            return
        if self._conn.out.send_some(sock):
            if not self._writing:
                self._loop.add_writer(self._fd, self._write_now)
                self._writing = True
            return
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        if self._conn.wants_shutdown:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        conn = self._conn
        outcome = recv_some(conn, sock, 0)
        if outcome is None:
            if conn.state != STARTING and not self._ready_fut.done():
                self._ready_fut.set_result(None)
            return
        if outcome is WOULD_BLOCK:
            return
        self._stop_io()
        self._set(self._ready_fut)
        if outcome == NEED_EXIT_STATUS and conn.pending:
            self._loop.create_task(self._report_death())
            return
        self._close_socket()
        self._set(self._closed_fut)

    async def _exit_status(self) -> int | None:
        try:
            return await self._proc.wait(timeout=EXIT_STATUS_WAIT)
        except EXIT_UNKNOWN:
            return self._proc.returncode

    async def _report_death(self) -> None:
        self._conn.died(await self._exit_status())
        self._close_socket()
        self._set(self._closed_fut)

    def _stop_io(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False

    @staticmethod
    def _set(fut: asyncio.Future[None]) -> None:
        if not fut.done():
            fut.set_result(None)

    async def _wait_ready(self, timeout: float | None) -> None:
        try:
            await wait_for(asyncio.shield(self._ready_fut), timeout)
        except BaseException:
            self.abort()
            raise
        conn = self._conn
        if conn.state != READY:
            returncode = None if conn.failure is not None else await self._exit_status()
            err = conn.start_failure(returncode)
            self.abort()
            raise err

    async def aclose(self, *, timeout: float | None = None) -> None:
        """Let the worker finish every call sent so far, then wait until it has exited.

        The client accepts no new calls.  Outstanding calls still get their results; then the
        worker runs ``done`` (``rpc(done=...)``; an exception in it makes the worker exit with
        status 1, ``returncode``, and is no error here); after the worker has closed its end,
        ``on_close`` fires (once).  Raises ``TimeoutError`` after ``timeout`` seconds, having
        killed the worker.

        Cancellation (or timeout): the worker is killed and outstanding calls fail with
        ``WorkerDiedError``; the socket is closed either way.
        """
        conn = self._conn
        if not conn.closing:
            conn.close()
            if not self._writing:
                self._write_now()
        try:
            await wait_for(asyncio.shield(self._closed_fut), timeout)
        except BaseException as exc:
            timed_out = isinstance(exc, TimeoutError)
            self._act(conn.condemn("aclose() timed out" if timed_out else "aclose() was cancelled"))
            self.abort()
            raise
        if conn.returncode is None:
            conn.returncode = await self._exit_status()

    def abort(self) -> None:
        """Close the connection now, without waiting: outstanding calls fail with
        ``ClosedError``; the worker sees EOF and exits after the call it is running (its reply
        is lost)."""
        self._stop_io()
        self._conn.abort()
        self._close_socket()
        self._set(self._ready_fut)
        self._set(self._closed_fut)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


publish(globals())
