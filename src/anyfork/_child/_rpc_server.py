"""The RPC server: the child side of ``anyfork.rpc``, run as ``anyfork._child._rpc_server:serve``.

Start-up, in order: parse the configuration (the last argument), check the protocol version,
build the serialiser, call ``init(*the other arguments)``, resolve the function and ``done``,
then send ``READY``.  Any failure up to there is sent as ``FAILED`` (the parent raises it from
``rpc()``; a bad configuration or another protocol version as anyfork's ``ProtocolError``) and
the process exits.

Backends:

* ``sync``: a blocking loop, one call at a time; replies and events are written synchronously,
  in the order they happen.  Imports nothing beyond what a worker already has (plus ``pickle``).
* ``async`` (``_rpc_async``, imported with ``asyncio`` only for this backend): each call runs
  as a task, at most ``concurrency`` at once (later calls wait in a queue, and reading stops
  while the queue is long, so a flood of calls cannot swamp the worker).  Writes are buffered
  behind the loop; ``anyfork.worker.flush()`` drains them synchronously.

An exception in the function fails that call only (``ERROR`` frame); a result that cannot be
serialised fails that call with an ``EncodeError`` (side ``"child"``).  ``BaseException``s that
are not ``Exception`` (``SystemExit``, ``KeyboardInterrupt``) end the worker, as they would end
any program.

A batch (``CALL_BATCH``) runs ``func(*args)`` for each item in order (``map(func, *columns)``),
as one call (one task in the async backend, where awaitable results are awaited); the first
item that raises (or whose result cannot be serialised) ends it, and one frame answers for the
whole batch (``batch_answer``).  An event carries the id of the call that raised it: the
running call (sync), the call whose task (or a task it started) raised it (async, a context
variable); 0 outside any call.

On EOF the worker finishes every call it has received, writes the replies and exits, after
``done()`` if there is one (awaited if it returns an awaitable, async backend; an exception in
it is printed to stderr and the worker exits with status 1).  If the parent has gone (write
error), it exits at once, without ``done``.  A broken stream from the parent (a bad header, EOF
inside a frame) is reported as ``FAILED`` (a ``ProtocolError`` record; the parent fails its
outstanding calls with it), and the worker exits with status 1 at once: it runs nothing more
and answers nothing more.
"""

from __future__ import annotations

import os
from itertools import repeat as _repeat
from operator import is_ as _is

from . import _rpc_wire as W
from . import _serializers, _target
from ._records import anyfork_error, error_record
from ._serve import resolve

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import socket
    from collections.abc import Callable
    from typing import Any

    Chunks = list[bytes | bytearray | memoryview]


#: The server serving calls in this process, while it does (``install``): ``anyfork.worker``
#: reaches it through ``running``.
_serving: Any = None


def install(server: object) -> None:
    """``server`` serves calls from now on (``None``: no more, e.g. before ``done`` runs)."""
    global _serving
    _serving = server


def running(what: str, where: str = "an RPC worker") -> Any:
    """The server serving calls, for ``anyfork.worker.<what>()``; ``RuntimeError`` outside it."""
    if _serving is None:
        raise RuntimeError(f"anyfork.worker.{what}() works only in {where}, while it serves")
    return _serving


class ParentGone(BaseException):
    """A write failed: the parent has gone away.  A BaseException so user code does not catch
    it by accident on its way out of ``worker.event``."""


class _Refused(Exception):
    """A start-up failure that is anyfork's ``ProtocolError`` in the parent."""


def serve(sock: socket.socket, *args: object) -> None:
    """Entry point: ``proc.send_arg(config).run("anyfork._child._rpc_server:serve")``."""
    sock.setblocking(True)
    try:
        if not args:
            raise _Refused("no RPC configuration (start RPC workers with anyfork.rpc)")
        try:
            config = W.parse_config(args[-1])
        except W.RpcWireError as exc:
            raise _Refused(str(exc)) from None
        version, func_ref, backend, ser_name, init_ref, done_ref, concurrency = config
        if version != W.VERSION:
            raise _Refused(W.version_mismatch(version, W.VERSION))
        if backend not in ("sync", "async"):
            raise ValueError(f"unknown RPC backend {backend!r} (use 'sync' or 'async')")
        codec = _serializers.get(ser_name)
        if init_ref:
            resolve(init_ref)(*args[:-1])
        func = resolve(func_ref)
        done = resolve(done_ref) if done_ref else None
    except BaseException as exc:
        record = anyfork_error("ProtocolError", str(exc)) if type(exc) is _Refused else None
        try:
            _send_chunks(sock, W.FAILED, 0, [record or error_record(exc)])
        except (OSError, ParentGone):
            pass
        return
    try:
        _send_chunks(sock, W.READY, 0, [W.ready_payload(os.getpid())])
    except ParentGone:
        return
    if backend == "sync":
        server = SyncServer(sock, codec, func)
        if server.run():
            raise SystemExit(1)
        if done is not None and server.eof:
            _done_sync(done)
        return
    import asyncio

    from ._rpc_async import AsyncServer

    aserver = AsyncServer(sock, codec, func, max(1, concurrency), done)
    asyncio.run(aserver.main())
    if aserver.failed:
        raise SystemExit(1)


def _done_sync(done: Callable[[], object]) -> None:
    """Run ``done`` in a sync-backend worker (an exception leaves ``serve``: printed, status 1)."""
    result = done()
    if hasattr(result, "__await__"):
        close = getattr(result, "close", None)
        if close is not None:
            close()  # no "never awaited" warning on top of the error
        raise TypeError("done() returned an awaitable: awaiting it needs backend='async'")


def broken_stream(exc: W.RpcWireError) -> bytes:
    """The ``FAILED`` record a worker sends when the parent's stream breaks the protocol."""
    return anyfork_error("ProtocolError", f"it received a broken stream ({exc})")


def serialization_error(kind: str, message: str, cause: BaseException) -> bytes:
    """The record of an ``EncodeError``/``DecodeError`` (side ``"child"``), made by name: the
    worker never imports the parent side."""
    qualname = "EncodeError" if kind == "encode" else "DecodeError"
    return anyfork_error(qualname, f"{message}: {type(cause).__name__}: {cause}", cause)


def undecodable(what: str, cause: Exception) -> Chunks:
    """The ``ERROR`` answer to a call (``what``: "call's") or batch ("batch's") whose
    arguments cannot be decoded."""
    return [serialization_error("decode", f"cannot decode the {what} arguments", cause)]


def unencodable(result: object, cause: Exception) -> bytes:
    """The record of an ``EncodeError`` for a result that cannot be serialised."""
    return serialization_error(
        "encode", f"cannot encode the result ({type(result).__name__})", cause
    )


def _size(chunks: Chunks) -> int:
    size = 0
    for chunk in chunks:
        size += memoryview(chunk).nbytes
    return size


def frame_chunks(kind: int, call_id: int, chunks: Chunks) -> Chunks:
    return [W.header(kind, call_id, _size(chunks)), *chunks]


def batch_calls(
    func: Callable[..., Any], columns: list[Any]
) -> tuple[Callable[..., Any], list[Any]]:
    """What a batch runs: ``map(f, *cols)`` for ``(f, cols)``.  A ``PoolExecutor`` without a
    fixed function serves ``_target.apply(fn, *args)``, so its map's first column is ``fn``
    over and over: then ``fn`` runs on the other columns directly, the same calls without an
    ``apply`` frame per item (half a trivial item's time in the worker).  Checked by identity,
    in C: no ``__eq__`` of the user's runs."""
    if func is _target.apply and len(columns) > 1 and columns[0]:
        fns = columns[0]
        fn = fns[0]
        if all(map(_is, fns, _repeat(fn))):
            return fn, columns[1:]
    return func, columns


def batch_answer(
    codec: _serializers.Codec, results: list[Any], failure: Exception | None
) -> tuple[int, Chunks]:
    """The one frame that answers a batch: ``BATCH_OK`` with every result, or ``BATCH_ERROR``
    with the results before the item that failed (``failure`` raised by the item after the
    last result, or the first result that cannot be serialised), then its error record."""
    record = None if failure is None else error_record(failure)
    try:
        chunks = codec.dump_results(results)
    except Exception:
        count, chunks, record = _encodable_prefix(codec, results)
        del results[count:]
    if record is None:
        return W.BATCH_OK, chunks
    head = W.batch_error_head(len(results), _size(chunks))
    return W.BATCH_ERROR, [head, *chunks, record]


def _encodable_prefix(codec: _serializers.Codec, results: list[Any]) -> tuple[int, Chunks, bytes]:
    """The list of results cannot be serialised: the first result that cannot fails its item
    (an ``EncodeError``, side ``"child"``); the results before it are answered."""
    failed, record = 0, None
    for i, result in enumerate(results):
        try:
            codec.dump_value(result)
        except Exception as exc:
            failed, record = i, unencodable(result, exc)
            break
    else:  # each one can, their list cannot: nothing is answered
        cause: Exception = ValueError("the serialiser failed, then did not")
        try:
            codec.dump_results(results)
        except Exception as exc:
            cause = exc
        record = serialization_error("encode", "cannot encode the batch's results", cause)
    try:
        chunks = codec.dump_results(results[:failed])
    except Exception:
        failed, chunks = 0, codec.dump_results([])
    return failed, chunks, record


def _send_chunks(sock: socket.socket, kind: int, call_id: int, chunks: Chunks) -> None:
    """Write one frame on a blocking socket; ``ParentGone`` if the parent has gone."""
    out = frame_chunks(kind, call_id, chunks)
    try:
        if len(out) == 2 and len(out[1]) < 65536:
            sock.sendall(bytes(out[0]) + bytes(out[1]))
            return
        views = [memoryview(c).cast("B") for c in out]
        while views:
            sent = sock.sendmsg(views[: W.MAX_IOV])
            views = W.advance(views, sent)
    except OSError as exc:
        raise ParentGone(str(exc)) from None


class SyncServer:
    """One call at a time, blocking, unbuffered."""

    def __init__(self, sock: socket.socket, codec: _serializers.Codec, func: Callable[..., Any]):
        self.sock = sock
        self.codec = codec
        self.func = func
        self.current = 0  # the id of the running call: its events carry it
        self.eof = False  # the parent closed the connection (not: it has gone)

    def event(self, args: tuple[Any, ...]) -> None:
        _send_chunks(self.sock, W.EVENT, self.current, self.codec.dump_event(args))

    def flush(self) -> bool:
        return True

    def retire(self) -> None:
        _send_chunks(self.sock, W.RETIRE, 0, [])

    def run(self) -> bool:
        """Serve until EOF; ``True`` if the stream broke the protocol (reported as ``FAILED``)."""
        dec = W.Decoder(W.TO_CHILD)
        install(self)
        try:
            while True:
                try:
                    frame = dec.next_frame()
                except W.RpcWireError as exc:
                    _send_chunks(self.sock, W.FAILED, 0, [broken_stream(exc)])
                    return True
                if frame is None:
                    if dec.eof:
                        self.eof = True
                        return False
                    buf = dec.get_buffer()
                    try:
                        n = self.sock.recv_into(buf)
                    except OSError:
                        return False
                    finally:
                        buf.release()
                    dec.buffer_updated(n)
                    continue
                kind, call_id, payload = frame
                if kind == W.CALL:
                    self.call(call_id, payload)
                elif kind == W.CALL_BATCH:
                    self.batch(call_id, payload)
        except ParentGone:
            return False
        finally:
            install(None)

    def call(self, call_id: int, payload: bytes | bytearray) -> None:
        self.current = call_id
        codec = self.codec
        try:
            args, kwargs = codec.load_call(payload)
        except Exception as exc:
            _send_chunks(self.sock, W.ERROR, call_id, undecodable("call's", exc))
            return
        del payload
        try:
            result = self.func(*args, **kwargs)
        except Exception as exc:
            _send_chunks(self.sock, W.ERROR, call_id, [error_record(exc)])
            return
        del args, kwargs
        try:
            chunks = codec.dump_value(result)
        except Exception as exc:
            _send_chunks(self.sock, W.ERROR, call_id, [unencodable(result, exc)])
            return
        _send_chunks(self.sock, W.OK, call_id, chunks)

    def batch(self, call_id: int, payload: bytes | bytearray) -> None:
        self.current = call_id
        codec = self.codec
        try:
            columns, n = codec.load_batch(payload)
        except Exception as exc:
            _send_chunks(self.sock, W.ERROR, call_id, undecodable("batch's", exc))
            return
        del payload
        func, args = batch_calls(self.func, columns)
        results: list[Any] = []
        failure: Exception | None = None
        try:
            # The loop runs in C (map): twice the calls per second of a Python loop.  On an
            # exception list.extend keeps what it has appended: the results before it.
            results.extend(map(func, *args))
        except Exception as exc:
            failure = exc
        else:
            if len(results) < n:
                # map ends at a StopIteration: the function's own, taken as PEP 479 does.
                failure = RuntimeError("the function raised StopIteration")
        del columns, args
        kind, chunks = batch_answer(codec, results, failure)
        _send_chunks(self.sock, kind, call_id, chunks)
