"""RPC, parent side: ``rpc(proc, func)`` makes a prepared process an RPC server; returns a client.

::

    client = await anyfork.rpc(anyfork.new().require("mymod"), "mymod:work")
    result = await client(1, 2, key="value")
    await client.aclose()

Data flow (one socket, frames from ``_rpc_wire``)::

    parent                                   child (_rpc_server)
    ------                                   -------------------
    send_arg(config), run(serve)  ------->   init(*args), resolve func
                                  <-------   READY (version, pid)  | FAILED (error record)
    CALL id, (args, kwargs)       ------->   func(*args, **kwargs)
                                  <-------   EVENT ...  (worker.event, any number, in order)
                                  <-------   OK id, result  | ERROR id, error record
    CANCEL id (async backend)     ------->   task.cancel()  ->  CANCELLED id
    shutdown(SHUT_WR)             ------->   finish every call, reply, exit
                                  <-------   EOF

The asyncio client reads with ``loop.add_reader`` straight into the decoder's buffer and writes
with ``sendmsg`` from the caller (buffering behind ``add_writer`` only when the socket is full):
a call costs one future and no task.  Events are delivered with ``loop.call_soon``, the way a
result wakes its caller, so ``on_event`` calls and returning calls interleave in exactly the
order the child produced them.  ``BlockingClient`` shares every line of frame handling and does
its I/O with ``poll``.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, Literal, Protocol

from . import _reaper
from . import _rpc_wire as W
from ._errors import (
    ClosedError,
    DecodeError,
    EncodeError,
    ProtocolError,
    RemoteError,
    RemoteTraceback,
    SpawnError,
    WorkerDiedError,
    add_note,
    describe_returncode,
)
from ._process import Func, Process, func_ref
from ._serializers import Codec
from ._serializers import get as get_codec

__all__ = ["BlockingClient", "Client", "Serializer", "rpc", "rpc_blocking"]

Backend = Literal["sync", "async"]

#: How long the error path waits for a dead worker's exit status (its template reports it).
EXIT_STATUS_WAIT = 5.0

_SERVE = "anyfork._rpc_server:serve"
_MAX_IOV = 64


class Serializer(Protocol):
    """A user serialiser, named to ``rpc`` as ``"module:attr"`` (see ``anyfork._serializers``)."""

    def dumps(self, obj: Any, /) -> bytes:  # Any: user values cross the serialiser boundary
        """Encode ``obj`` (lists, str-keyed dicts and the values they hold); raise on failure."""
        ...

    def loads(self, data: bytes, /) -> Any:
        """Decode what ``dumps`` made; raise on failure."""
        ...


class _Box:
    """The blocking client's stand-in for a future."""

    __slots__ = ("_done", "exc", "value")

    def __init__(self) -> None:
        self._done = False
        self.value: Any = None
        self.exc: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def set_result(self, value: Any) -> None:
        self.value, self._done = value, True

    def set_exception(self, exc: BaseException) -> None:
        self.exc, self._done = exc, True


Waiter = Any  # asyncio.Future[Any] | _Box


def _advance(views: list[memoryview], sent: int) -> list[memoryview]:
    i = 0
    while sent and i < len(views):
        n = views[i].nbytes
        if sent >= n:
            sent -= n
            i += 1
        else:
            views[i] = views[i][sent:]
            sent = 0
    while i < len(views) and not views[i].nbytes:
        i += 1
    return views[i:]


def _rebuild(payload: bytes | bytearray, pid: int | None) -> BaseException:
    """The exception a child's error record stands for, with its traceback as ``__cause__``."""
    pickled, module, qualname, message, tb = W.unpack_error(payload)
    exc: BaseException | None = None
    if pickled:
        try:
            loaded = pickle.loads(pickled)
        except Exception:
            loaded = None
        if isinstance(loaded, BaseException):
            exc = loaded
    if exc is None:
        name = qualname if module == "builtins" else f"{module}.{qualname}"
        exc = RemoteError(f"{name}: {message}", name, tb)
    exc.__cause__ = RemoteTraceback(tb)
    add_note(exc, f"(raised in anyfork RPC worker pid {pid})")
    return exc


class _Base:
    """Frame handling and bookkeeping shared by both clients (no waiting here)."""

    def __init__(
        self,
        proc: Process,
        sock: socket.socket,
        codec: Codec,
        backend: Backend,
        on_event: Callable[..., object] | None,
        on_error: Callable[[BaseException], object] | None,
        on_close: Callable[[], object] | None,
    ):
        self._proc = proc
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._codec = codec
        self._backend = backend
        self._on_event = on_event
        self._on_error = on_error
        self._on_close = on_close
        self._dec = W.Decoder(W.TO_PARENT)
        self._wbuf: list[memoryview] = []
        self._pending: dict[int, Waiter] = {}
        self._abandoned: set[int] = set()
        self._next_id = 0
        self._ready = False
        self._startup_error: BaseException | None = None
        self._failure: BaseException | None = None
        self._kill_reason: str | None = None
        self._closing = False
        self._eof = False
        self._close_fired = False
        self.pid: int | None = proc._pid
        self.returncode: int | None = None

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else "closing" if self._closing else "open"
        return f"<anyfork.{type(self).__name__} pid={self.pid} {self._backend} {state}>"

    # -- calls --------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._failure is not None:
            exc = self._failure
            if isinstance(exc, WorkerDiedError):
                raise WorkerDiedError(str(exc), exc.pid, exc.returncode) from exc
            raise ClosedError(f"the RPC connection failed: {exc}") from exc
        if self._closing or self._sock is None:
            raise ClosedError("the RPC client has been closed")

    def _new_id(self) -> int:
        cid = self._next_id
        while True:
            cid = cid + 1 if cid < W.MAX_ID else 1
            if cid not in self._pending and cid not in self._abandoned:
                self._next_id = cid
                return cid

    def _encode(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[memoryview]:
        try:
            chunks = self._codec.dump_call(args, kwargs)
        except Exception as exc:
            raise EncodeError(
                f"cannot encode the call's arguments with {self._codec.name!r}: "
                f"{type(exc).__name__}: {exc}",
                "parent",
            ) from exc
        views = [memoryview(c).cast("B") for c in chunks]
        size = sum(v.nbytes for v in views)
        if size > W.MAX_PAYLOAD:
            raise EncodeError(f"the call's arguments take {size} bytes; a frame holds 4 GiB")
        return views

    def _queue(self, kind: int, cid: int, views: list[memoryview]) -> None:
        size = sum(v.nbytes for v in views)
        self._wbuf.append(memoryview(W.header(kind, cid, size)))
        self._wbuf.extend(views)

    def _send_some(self) -> None:
        """Write what the socket takes now (raises ``OSError`` if the child has gone)."""
        sock = self._sock
        while self._wbuf and sock is not None:
            try:
                sent = sock.sendmsg(self._wbuf[:_MAX_IOV])
            except (BlockingIOError, InterruptedError):
                return
            self._wbuf = _advance(self._wbuf, sent)

    def _abandon(self, cid: int, why: str) -> None:
        """The caller stopped waiting for call ``cid`` (cancelled or timed out)."""
        if self._pending.pop(cid, None) is None:
            return
        if self._backend == "async":
            self._abandoned.add(cid)
            if self._sock is not None and not self._eof:
                self._queue(W.CANCEL, cid, [])
                self._flush_later()
            return
        # Sync backend: a running Python function cannot be interrupted safely.
        if self._kill_reason is None and self.pid is not None and not self._eof:
            self._kill_reason = f"it was killed because call {cid} {why}"
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _flush_later(self) -> None:
        raise NotImplementedError

    # -- frames ---------------------------------------------------------------------------------

    def _handle(self, kind: int, cid: int, payload: bytes | bytearray) -> None:
        if kind == W.EVENT:
            try:
                args = self._codec.load_event(payload)
            except Exception as exc:
                err = DecodeError(f"cannot decode an event: {type(exc).__name__}: {exc}", "parent")
                self._report(err)
                return
            self._event(args)
            return
        if kind in (W.OK, W.ERROR, W.CANCELLED):
            waiter = self._pending.pop(cid, None)
            if waiter is None:
                if cid in self._abandoned:
                    self._abandoned.discard(cid)
                    return
                raise ProtocolError(f"the worker answered call {cid}, which is not outstanding")
            if waiter.done():
                return
            if kind == W.OK:
                try:
                    value = self._codec.load_value(payload)
                except Exception as exc:
                    err = DecodeError(
                        f"cannot decode the result: {type(exc).__name__}: {exc}", "parent"
                    )
                    err.__cause__ = exc
                    waiter.set_exception(err)
                    return
                waiter.set_result(value)
            elif kind == W.ERROR:
                waiter.set_exception(_rebuild(payload, self.pid))
            else:
                waiter.set_exception(RemoteError("the call was cancelled in the worker"))
            return
        if kind == W.READY and not self._ready:
            version, pid = W.parse_ready(bytes(payload))
            if version != W.VERSION:
                raise ProtocolError(
                    f"RPC protocol version {version} in the worker, {W.VERSION} here: the "
                    f"parent and the worker import different anyfork versions"
                )
            self._ready = True
            self.pid = pid
            return
        if kind == W.FAILED and not self._ready:
            failure = _rebuild(payload, self.pid)
            add_note(failure, "(the RPC worker failed to start)")
            self._startup_error = failure
            return
        raise ProtocolError(f"unexpected frame {kind:#x} from the RPC worker")

    def _event(self, args: tuple[Any, ...]) -> None:
        raise NotImplementedError

    def _deliver(self, args: tuple[Any, ...]) -> None:
        if self._on_event is None:
            self._report(ProtocolError("event received, but no on_event handler"))
            return
        self._on_event(*args)

    def _report(self, exc: BaseException) -> None:
        if self._on_error is not None:
            self._on_error(exc)

    def _recv_some(self) -> bool:
        """One read into the decoder and handle every complete frame; ``True`` at EOF.  Raises
        ``ProtocolError`` for a broken stream and ``OSError`` for a broken socket."""
        sock = self._sock
        assert sock is not None
        buf = self._dec.get_buffer()
        try:
            n = sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return False
        except ConnectionResetError:
            n = 0
        finally:
            buf.release()
        if n:
            self._dec.buffer_updated(n)
        else:
            self._dec.feed_eof()
        try:
            while True:
                frame = self._dec.next_frame()
                if frame is None:
                    break
                self._handle(*frame)
        except W.RpcWireError as exc:
            raise ProtocolError(f"the RPC worker sent a broken stream: {exc}") from None
        return not n

    # -- the end ------------------------------------------------------------------------------

    def _poll_exit(self) -> int | None:
        """The dead worker's return code, if known yet (never blocks)."""
        pid = self.pid
        if pid is None:
            return None
        proc = self._proc
        if proc._direct:
            return _reaper.returncode(pid)
        tmpl = proc._template
        if tmpl is None:
            return None
        tmpl._poll_reports()
        return tmpl._exits.pop(pid, None)

    def _exit_known(self) -> bool:
        """``True`` once the exit status is known or cannot become known."""
        if self.returncode is not None:
            return True
        self.returncode = self._poll_exit()
        if self.returncode is not None:
            return True
        proc = self._proc
        if self.pid is None or proc._direct:
            return self.pid is None
        tmpl = proc._template
        return tmpl is None or tmpl._chan.sock is None or tmpl._chan.decoder.eof

    def _died(self) -> WorkerDiedError:
        how = describe_returncode(self.returncode)
        reason = f": {self._kill_reason}" if self._kill_reason else ""
        return WorkerDiedError(
            f"the RPC worker (pid {self.pid}) died with calls outstanding ({how}){reason}",
            self.pid,
            self.returncode,
        )

    def _fail_all(self, exc: BaseException) -> None:
        self._failure = exc
        pending, self._pending = self._pending, {}
        self._abandoned.clear()
        for waiter in pending.values():
            if not waiter.done():
                if isinstance(exc, WorkerDiedError):
                    waiter.set_exception(WorkerDiedError(str(exc), exc.pid, exc.returncode))
                else:
                    waiter.set_exception(exc)

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        self._wbuf = []

    def _closed_cleanly(self) -> None:
        if not self._close_fired:
            self._close_fired = True
            if self._on_close is not None:
                self._on_close()


class Client(_Base):
    """The asyncio client of an RPC worker; made by :func:`rpc`.

    ``await client(*args, **kwargs)`` calls the function with those arguments and returns its
    result (every keyword goes to the function); ``await client.call(*args, timeout=...,
    **kwargs)`` does the same with a deadline.  Calls may be issued concurrently; with the sync
    backend the worker runs them one at a time in order, with the async backend up to its
    ``concurrency`` at once.

    Errors: the function's exception, as its own type when it unpickles (else ``RemoteError``),
    with the child's traceback as ``__cause__``; ``EncodeError`` (side ``"parent"``) for
    arguments that cannot be serialised, before anything is sent; ``EncodeError`` (side
    ``"child"``) for a result that cannot; ``WorkerDiedError`` (``.pid``, ``.returncode``,
    ``.signal``) for every outstanding call when the worker dies; ``ClosedError`` after
    ``aclose``.  Only the dead-worker error ends the connection.

    Cancellation (and ``timeout``, which raises ``TimeoutError``): with the async backend the
    worker cancels the call's task and keeps serving.  With the sync backend the worker is
    killed (SIGKILL; a running Python function cannot be interrupted safely), so every other
    outstanding call fails with ``WorkerDiedError`` and the client is unusable afterwards.
    """

    def __init__(self, *a: Any, loop: asyncio.AbstractEventLoop, **kw: Any):
        super().__init__(*a, **kw)
        self._loop = loop
        self._writing = False
        self._reading = False
        self._ready_fut: asyncio.Future[None] = loop.create_future()
        self._closed_fut: asyncio.Future[None] = loop.create_future()
        self._sock_or_fail().setblocking(False)
        loop.add_reader(self._fd, self._on_readable)
        self._reading = True

    def _sock_or_fail(self) -> socket.socket:
        if self._sock is None:
            raise ClosedError("the RPC client has been closed")
        return self._sock

    # -- calls ------------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """``await client(*args, **kwargs)``: call the function and return its result."""
        return self._call(args, kwargs, None)

    def call(
        self, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> Coroutine[Any, Any, Any]:
        """Like ``client(...)``, with a ``timeout`` in seconds (``TimeoutError``; see the class
        docs for what happens to the worker).  Pass a keyword argument named ``timeout`` to
        the function with ``client(...)``."""
        return self._call(args, kwargs, timeout)

    async def _call(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None
    ) -> Any:  # Any: whatever the worker's function returns
        self._check_usable()
        views = self._encode(args, kwargs)
        cid = self._new_id()
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._pending[cid] = fut
        self._queue(W.CALL, cid, views)
        if not self._writing:
            self._write_now()
        if timeout is None:
            try:
                return await fut
            except asyncio.CancelledError:
                self._abandon(cid, "was cancelled")
                raise
        handle = self._loop.call_later(timeout, self._expire, cid, fut, timeout)
        try:
            return await fut
        except asyncio.CancelledError:
            self._abandon(cid, "was cancelled")
            raise
        finally:
            handle.cancel()

    def _expire(self, cid: int, fut: asyncio.Future[Any], timeout: float) -> None:
        if not fut.done() and cid in self._pending:
            self._abandon(cid, f"timed out after {timeout} s")
            fut.set_exception(TimeoutError(f"the RPC call timed out after {timeout} s"))

    # -- I/O --------------------------------------------------------------------------------

    def _write_now(self) -> None:
        try:
            self._send_some()
        except OSError:
            # The child has gone; the reader will see EOF and fail what is outstanding.
            self._wbuf = []
        if self._wbuf:
            if not self._writing and self._sock is not None:
                self._loop.add_writer(self._fd, self._write_now)
                self._writing = True
        else:
            if self._writing:
                self._loop.remove_writer(self._fd)
                self._writing = False
            if self._closing and self._sock is not None and not self._eof:
                try:
                    self._sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

    def _flush_later(self) -> None:
        if not self._writing:
            self._write_now()

    def _on_readable(self) -> None:
        try:
            eof = self._recv_some()
        except (ProtocolError, OSError) as exc:
            err = exc if isinstance(exc, ProtocolError) else ProtocolError(f"read failed: {exc}")
            self._stop_io()
            if not self._ready:
                self._startup_error = err
                self._set(self._ready_fut)
            self._fail_all(err)
            self._close_socket()
            self._report(err)
            self._set(self._closed_fut)
            return
        if self._startup_error is not None or self._ready:
            self._set(self._ready_fut)
        if eof:
            self._eof = True
            self._stop_io()
            self._set(self._ready_fut)
            if self._pending:
                self._loop.create_task(self._report_death())
            else:
                self._close_socket()
                if self._ready and self._startup_error is None:
                    self._closed_cleanly()
                self._set(self._closed_fut)

    async def _await_exit(self) -> None:
        """Wait (bounded) until the dead worker's exit status is known: an OS fact, polled."""
        deadline = self._loop.time() + EXIT_STATUS_WAIT
        delay = 0.001
        for _ in range(100_000):
            if self._exit_known() or self._loop.time() >= deadline:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def _report_death(self) -> None:
        await self._await_exit()
        err = self._died()
        self._fail_all(err)
        self._close_socket()
        self._report(err)
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

    def _event(self, args: tuple[Any, ...]) -> None:
        self._loop.call_soon(self._deliver_safely, args)

    def _deliver_safely(self, args: tuple[Any, ...]) -> None:
        try:
            self._deliver(args)
        except Exception as exc:
            self._loop.call_exception_handler(
                {"message": "anyfork RPC on_event callback failed", "exception": exc}
            )

    # -- lifetime ---------------------------------------------------------------------------

    async def _wait_ready(self, timeout: float | None) -> None:
        try:
            if timeout is None:
                await asyncio.shield(self._ready_fut)
            else:
                await asyncio.wait_for(asyncio.shield(self._ready_fut), timeout)
        except BaseException:
            self.abort()
            raise
        if self._startup_error is not None or not self._ready:
            err = self._startup_error
            if err is None:
                await self._await_exit()
                how = describe_returncode(self.returncode)
                err = SpawnError(f"the RPC worker (pid {self.pid}) exited during start-up ({how})")
            self.abort()
            raise err

    async def aclose(self, *, timeout: float | None = None) -> None:
        """Let the worker finish every call sent so far, then wait until it has exited.

        The client accepts no new calls.  Outstanding calls still get their results; after
        the worker has closed its end, ``on_close`` fires (once).  Raises ``TimeoutError``
        after ``timeout`` seconds, having killed the worker.

        Cancellation (or timeout): the worker is killed and outstanding calls fail with
        ``WorkerDiedError``; the socket is closed either way.
        """
        if not self._closing:
            self._closing = True
            if self._sock is not None and not self._writing:
                self._write_now()
        try:
            if timeout is None:
                await asyncio.shield(self._closed_fut)
            else:
                await asyncio.wait_for(asyncio.shield(self._closed_fut), timeout)
        except BaseException:
            self._kill()
            self.abort()
            raise
        await self._await_exit()

    def abort(self) -> None:
        """Close the connection now, without waiting: outstanding calls fail with
        ``ClosedError``; the worker sees EOF and exits after the call it is running (its reply
        is lost)."""
        self._closing = True
        self._stop_io()
        if self._pending:
            self._fail_all(ClosedError("the RPC client was aborted"))
        self._close_socket()
        self._set(self._ready_fut)
        self._set(self._closed_fut)

    def _kill(self) -> None:
        if self.pid is not None and not self._eof:
            self._kill_reason = self._kill_reason or "it was killed by aclose()"
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _prepare(
    proc: Process,
    func: Func,
    backend: str,
    serializer: str,
    init: Func | None,
    concurrency: int,
) -> Codec:
    if backend not in ("sync", "async"):
        raise ValueError(f"backend is 'sync' or 'async', not {backend!r}")
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency is a positive int, not {concurrency!r}")
    codec = get_codec(serializer)
    config = W.pack_config(
        func_ref(func), backend, serializer, func_ref(init) if init is not None else "", concurrency
    )
    proc.send_arg(config)
    return codec


async def rpc(
    proc: Process,
    func: Func,
    *,
    backend: Backend = "sync",
    serializer: str = "pickle",
    init: Func | None = None,
    on_event: Callable[..., object] | None = None,
    on_error: Callable[[BaseException], object] | None = None,
    on_close: Callable[[], object] | None = None,
    concurrency: int = 64,
    timeout: float | None = None,
) -> Client:
    """Turn ``proc`` (prepared, not yet run) into an RPC server for ``func``; return its client.

    Args:
        proc: the process; everything sent to it so far is done first, and the args and fds
            sent with ``send_arg``/``send_fh`` go to ``init`` (the only way the function can
            see them).
        func: the function to serve, as an object or ``"module:qualname"`` (importable in the
            child, or defined there with ``eval``).  With ``backend="async"`` it may be a
            coroutine function.
        backend: ``"sync"`` (a blocking loop, one call at a time, no event loop in the child)
            or ``"async"`` (calls run concurrently on an asyncio loop in the child).
        serializer: ``"pickle"`` (default, protocol 5), ``"cloudpickle"``, ``"json"``,
            ``"msgpack"``, ``"bytes"``, ``"str"``, or ``"module:attr"`` naming an object with
            ``dumps``/``loads`` (see ``anyfork._serializers``).
        init: called in the child first, with the args and fds sent before.
        on_event: called as ``on_event(*args)`` for each ``anyfork.worker.event(*args)``, in
            the order the child produced events and results.
        on_error: called with the exception when the connection fails (the worker died with
            calls outstanding, a broken stream, an event nobody handles).
        on_close: called once when the worker has closed the connection with nothing
            outstanding (normally after ``aclose``).
        concurrency: the async backend's limit on calls running at once.
        timeout: seconds for the start-up (``TimeoutError``).

    Raises:
        The start-up error: a wrong function name (``AttributeError``, ``ModuleNotFoundError``),
        an exception in ``init`` (its own type), a protocol-version mismatch
        (``RuntimeError``), a worker that died first (``SpawnError``); ``ImportError`` for a
        serialiser whose package is missing here.

    Cancellation: the connection is closed; the worker sees EOF and exits.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    codec = _prepare(proc, func, backend, serializer, init, concurrency)
    sock = await proc.run(_SERVE, timeout=timeout)
    try:
        client = Client(proc, sock, codec, backend, on_event, on_error, on_close, loop=loop)
    except BaseException:
        sock.close()
        raise
    remaining = None if timeout is None else max(0.0, timeout - (loop.time() - started))
    await client._wait_ready(remaining)
    return client


class BlockingClient(_Base):
    """The blocking twin of :class:`Client`, for programs without an event loop; made by
    :func:`rpc_blocking`.  One call at a time (thread-safe: calls from several threads take
    turns); ``on_event`` runs inside the call that reads the event.

    ``timeout``: ``TimeoutError``; with the sync backend the worker is killed, with the async
    backend its task is cancelled and the client stays usable.
    """

    def __init__(self, *a: Any, **kw: Any):
        super().__init__(*a, **kw)
        self._lock = threading.RLock()
        self._poller = select.poll()
        assert self._sock is not None
        self._sock.setblocking(False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function with ``args`` and ``kwargs``; return its result."""
        return self._call(args, kwargs, None)

    def call(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Like ``client(...)``, with a ``timeout`` in seconds."""
        return self._call(args, kwargs, timeout)

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._check_usable()
            views = self._encode(args, kwargs)
            cid = self._new_id()
            box = _Box()
            self._pending[cid] = box
            self._queue(W.CALL, cid, views)
            try:
                self._io_until(box.done, deadline)
            except TimeoutError:
                self._abandon(cid, f"timed out after {timeout} s")
                raise TimeoutError(f"the RPC call timed out after {timeout} s") from None
            except BaseException:
                self._abandon(cid, "was interrupted")
                raise
            if box.exc is not None:
                raise box.exc
            return box.value

    def _flush_later(self) -> None:
        pass  # the next _io_until writes it

    def _event(self, args: tuple[Any, ...]) -> None:
        self._deliver(args)

    def _io_until(self, done: Callable[[], bool], deadline: float | None) -> None:
        """Write and read until ``done()``; handles EOF (death or clean close) on the way."""
        while not done():
            sock = self._sock
            if sock is None:
                return
            if self._wbuf:
                try:
                    self._send_some()
                except OSError:
                    self._wbuf = []
            if self._closing and not self._wbuf and not self._eof:
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            mask = select.POLLIN | (select.POLLOUT if self._wbuf else 0)
            self._poller.register(self._fd, mask)
            if deadline is None:
                wait = None
            else:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    raise TimeoutError
            ready = self._poller.poll(None if wait is None else max(1, int(wait * 1000 + 0.5)))
            if not ready:
                continue
            if ready[0][1] & (select.POLLIN | select.POLLHUP | select.POLLERR):
                try:
                    eof = self._recv_some()
                except (ProtocolError, OSError) as exc:
                    err = exc if isinstance(exc, ProtocolError) else ProtocolError(f"read: {exc}")
                    self._fail_all(err)
                    self._close_socket()
                    self._report(err)
                    return
                if eof:
                    self._eof = True
                    self._end()
                    return

    def _wait_exit(self) -> None:
        """Wait (bounded) until the dead worker's exit status is known: an OS fact, polled."""
        deadline = time.monotonic() + EXIT_STATUS_WAIT
        delay = 0.001
        while not self._exit_known() and time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _end(self) -> None:
        if self._pending:
            self._wait_exit()
            err = self._died()
            self._fail_all(err)
            self._close_socket()
            self._report(err)
        else:
            self._close_socket()
            if self._ready and self._startup_error is None:
                self._closed_cleanly()

    def _wait_ready(self, deadline: float | None) -> None:
        try:
            self._io_until(lambda: self._ready or self._startup_error is not None, deadline)
        except BaseException:
            self.abort()
            raise
        if self._startup_error is not None or not self._ready:
            err = self._startup_error
            if err is None:
                self._wait_exit()
                how = describe_returncode(self.returncode)
                err = SpawnError(f"the RPC worker (pid {self.pid}) exited during start-up ({how})")
            self.abort()
            raise err

    def close(self, *, timeout: float | None = None) -> None:
        """Let the worker finish, then wait until it has exited (see :meth:`Client.aclose`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._closing = True
            try:
                self._io_until(lambda: self._sock is None, deadline)
            except BaseException:
                if self.pid is not None and not self._eof:
                    self._kill_reason = self._kill_reason or "it was killed by close()"
                    try:
                        os.kill(self.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.abort()
                raise
            self._wait_exit()

    def abort(self) -> None:
        """Close the connection now (see :meth:`Client.abort`)."""
        self._closing = True
        if self._pending:
            self._fail_all(ClosedError("the RPC client was aborted"))
        self._close_socket()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def rpc_blocking(
    proc: Process,
    func: Func,
    *,
    backend: Backend = "sync",
    serializer: str = "pickle",
    init: Func | None = None,
    on_event: Callable[..., object] | None = None,
    on_error: Callable[[BaseException], object] | None = None,
    on_close: Callable[[], object] | None = None,
    concurrency: int = 64,
    timeout: float | None = None,
) -> BlockingClient:
    """The blocking twin of :func:`rpc` (same arguments); returns a :class:`BlockingClient`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    codec = _prepare(proc, func, backend, serializer, init, concurrency)
    sock = proc.run_blocking(_SERVE, timeout=timeout)
    try:
        client = BlockingClient(proc, sock, codec, backend, on_event, on_error, on_close)
    except BaseException:
        sock.close()
        raise
    client._wait_ready(deadline)
    return client


def _publish() -> None:
    """Show the public names as ``anyfork.X`` in reprs and tracebacks from the start."""
    namespace = globals()
    for name in __all__:
        obj = namespace[name]
        if getattr(obj, "__module__", None) == __name__:
            obj.__module__ = "anyfork"


_publish()
