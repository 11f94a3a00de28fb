"""The RPC server: the child side of ``anyfork.rpc`` (the protocol: ``_rpc_wire``).  Backends:
``SyncServer`` and ``_rpc_async`` (imported, with ``asyncio``, only for it).  An exception in the
function fails that call only; any other ``BaseException`` ends the worker, as any program.
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


#: The server serving calls in this process (``install``; ``None`` e.g. while ``done`` runs).
_serving: Any = None


def install(server: object) -> None:
    global _serving
    _serving = server


def running(what: str, where: str = "an RPC worker") -> Any:
    if _serving is None:
        raise RuntimeError(f"anyfork.worker.{what}() works only in {where}, while it serves")
    return _serving


class ParentGone(BaseException):
    """A write failed (a BaseException: user code does not catch it out of ``worker.event``)."""


def serve(sock: socket.socket, *args: object) -> None:
    sock.setblocking(True)
    try:
        if not args:
            raise W.RpcWireError("no RPC configuration (start RPC workers with anyfork.rpc)")
        config = W.parse_config(args[-1])
        version, func_ref, backend, ser_name, init_ref, done_ref, concurrency = config
        if version != W.VERSION:
            raise W.RpcWireError(W.version_mismatch(version, W.VERSION))
        if backend not in ("sync", "async"):
            raise ValueError(f"unknown RPC backend {backend!r} (use 'sync' or 'async')")
        codec = _serializers.get(ser_name)
        if init_ref:
            resolve(init_ref)(*args[:-1])
        func = resolve(func_ref)
        done = resolve(done_ref) if done_ref else None
    except BaseException as exc:
        # A refused configuration or version is anyfork's ProtocolError in the parent.
        refused = isinstance(exc, W.RpcWireError)
        record = anyfork_error("ProtocolError", str(exc)) if refused else None
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
    result = done()
    if hasattr(result, "__await__"):
        close = getattr(result, "close", None)
        if close is not None:
            close()  # no "never awaited" warning on top of the error
        raise TypeError("done() returned an awaitable: awaiting it needs backend='async'")


def broken_stream(exc: W.RpcWireError) -> bytes:
    return anyfork_error("ProtocolError", f"it received a broken stream ({exc})")


def serialization_error(kind: str, message: str, cause: BaseException) -> bytes:
    """An ``EncodeError``/``DecodeError`` record (side ``"child"``), by name (not imported)."""
    qualname = "EncodeError" if kind == "encode" else "DecodeError"
    return anyfork_error(qualname, f"{message}: {type(cause).__name__}: {cause}", cause)


def undecodable(what: str, cause: Exception) -> Chunks:
    return [serialization_error("decode", f"cannot decode the {what} arguments", cause)]


def unencodable(result: object, cause: Exception) -> bytes:
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
    """``(f, cols)`` for ``map(f, *cols)``: ``_target.apply`` with one ``fn`` all down the first
    column (a ``PoolExecutor`` map) runs ``fn`` directly (an ``apply`` frame per item was half a
    trivial item's time).  Checked by identity, in C: no ``__eq__`` of the user's runs."""
    if func is _target.apply and len(columns) > 1:
        fns = columns[0]
        if type(fns) is _serializers.Same:  # (PoolExecutor.map's: the function once)
            return fns.value, columns[1:]
        if fns and all(map(_is, fns, _repeat(fns[0]))):
            return fns[0], columns[1:]
    return func, columns


def batch_answer(
    codec: _serializers.Codec, results: list[Any], failure: Exception | None
) -> tuple[int, Chunks]:
    """``BATCH_OK`` or ``BATCH_ERROR`` (``failure``: raised by the item after the last result;
    else the first result that cannot be serialised fails)."""
    record = None if failure is None else error_record(failure)
    try:
        chunks = codec.dump_results(results)
    except Exception as exc:
        count, chunks, record = _encodable_prefix(codec, results, exc)
        del results[count:]
    if record is None:
        return W.BATCH_OK, chunks
    head = W.batch_error_head(len(results), _size(chunks))
    return W.BATCH_ERROR, [head, *chunks, record]


def _encodable_prefix(
    codec: _serializers.Codec, results: list[Any], cause: Exception
) -> tuple[int, Chunks, bytes]:
    """The list cannot be serialised (``cause``): the first result that cannot fails its item."""
    failed, record = 0, None
    for i, result in enumerate(results):
        try:
            codec.dump_value(result)
        except Exception as exc:
            failed, record = i, unencodable(result, exc)
            break
    else:  # each one can, their list cannot: nothing is answered
        record = serialization_error("encode", "cannot encode the batch's results", cause)
    try:
        chunks = codec.dump_results(results[:failed])
    except Exception:
        failed, chunks = 0, codec.dump_results([])
    return failed, chunks, record


def _send_chunks(sock: socket.socket, kind: int, call_id: int, chunks: Chunks) -> None:
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
        self.current = 0  # the running call's id: its events carry it
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
