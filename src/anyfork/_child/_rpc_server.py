"""The RPC server: the child side of ``anyfork.rpc``, run as ``anyfork._child._rpc_server:serve``.

Start-up, in order: parse the configuration (the last argument), check the protocol version,
build the serialiser, call ``init(*the other arguments)``, resolve the function, then send
``READY``.  Any failure up to there is sent as ``FAILED`` (the parent raises it from ``rpc()``;
a bad configuration or another protocol version as anyfork's ``ProtocolError``) and the process
exits.

Backends:

* ``sync``: a blocking loop, one call at a time; replies and events are written synchronously,
  in the order they happen.  Imports nothing beyond what a worker already has (plus ``pickle``).
* ``async``: ``asyncio`` (imported here, only in this backend); each call runs as a task, at most
  ``concurrency`` at once (later calls wait in a queue, and reading stops while the queue is
  long, so a flood of calls cannot swamp the worker).  Writes are buffered behind the loop;
  ``anyfork.worker.flush()`` drains them synchronously.

An exception in the function fails that call only (``ERROR`` frame); a result that cannot be
serialised fails that call with an ``EncodeError`` (side ``"child"``).  ``BaseException``s that
are not ``Exception`` (``SystemExit``, ``KeyboardInterrupt``) end the worker, as they would end
any program.  On EOF the worker finishes every call it has received, writes the replies and
exits.  If the parent has gone (write error), it exits at once.  A broken stream from the parent
(a bad header, EOF inside a frame) is reported as ``FAILED`` (a ``ProtocolError`` record; the
parent fails its outstanding calls with it), and the worker exits with status 1 at once: it
runs nothing more and answers nothing more.
"""

from __future__ import annotations

import os

from .. import worker
from . import _rpc_wire as W
from . import _serializers
from ._records import anyfork_error, error_record
from ._serve import resolve

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import asyncio
    import socket
    from collections import deque
    from collections.abc import Callable
    from typing import Any

    Chunks = list[bytes | bytearray | memoryview]

#: Most buffers handed to one sendmsg (IOV_MAX is 1024 on Linux).
_MAX_IOV = 64


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
            version, func_ref, backend, ser_name, init_ref, concurrency = W.parse_config(args[-1])
        except W.RpcWireError as exc:
            raise _Refused(str(exc)) from None
        if version != W.VERSION:
            raise _Refused(W.version_mismatch(version, W.VERSION))
        if backend not in ("sync", "async"):
            raise ValueError(f"unknown RPC backend {backend!r} (use 'sync' or 'async')")
        codec = _serializers.get(ser_name)
        if init_ref:
            resolve(init_ref)(*args[:-1])
        func = resolve(func_ref)
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
        broken = SyncServer(sock, codec, func).run()
    else:
        import asyncio

        server = AsyncServer(sock, codec, func, max(1, concurrency))
        asyncio.run(server.main())
        broken = server.failed
    if broken:
        raise SystemExit(1)


def _broken_stream(exc: W.RpcWireError) -> bytes:
    """The ``FAILED`` record a worker sends when the parent's stream breaks the protocol."""
    return anyfork_error("ProtocolError", f"it received a broken stream ({exc})")


def _serialization_error(kind: str, message: str, cause: BaseException) -> bytes:
    """The record of an ``EncodeError``/``DecodeError`` (side ``"child"``), made by name: the
    worker never imports the parent side."""
    qualname = "EncodeError" if kind == "encode" else "DecodeError"
    return anyfork_error(qualname, f"{message}: {type(cause).__name__}: {cause}", cause)


def _frame_chunks(kind: int, call_id: int, chunks: Chunks) -> Chunks:
    size = 0
    for chunk in chunks:
        size += memoryview(chunk).nbytes
    return [W.header(kind, call_id, size), *chunks]


def _send_chunks(sock: socket.socket, kind: int, call_id: int, chunks: Chunks) -> None:
    """Write one frame on a blocking socket; ``ParentGone`` if the parent has gone."""
    out = _frame_chunks(kind, call_id, chunks)
    try:
        if len(out) == 2 and len(out[1]) < 65536:
            sock.sendall(bytes(out[0]) + bytes(out[1]))
            return
        views = [memoryview(c).cast("B") for c in out]
        while views:
            sent = sock.sendmsg(views[:_MAX_IOV])
            views = advance(views, sent)
    except OSError as exc:
        raise ParentGone(str(exc)) from None


def advance(views: list[memoryview], sent: int) -> list[memoryview]:
    """Drop ``sent`` bytes from the front of ``views``."""
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


class SyncServer:
    """One call at a time, blocking, unbuffered."""

    def __init__(self, sock: socket.socket, codec: _serializers.Codec, func: Callable[..., Any]):
        self.sock = sock
        self.codec = codec
        self.func = func

    def event(self, args: tuple[Any, ...]) -> None:
        _send_chunks(self.sock, W.EVENT, 0, self.codec.dump_event(args))

    def flush(self) -> bool:
        return True

    def run(self) -> bool:
        """Serve until EOF; ``True`` if the stream broke the protocol (reported as ``FAILED``)."""
        dec = W.Decoder(W.TO_CHILD)
        worker._sink = self
        try:
            while True:
                try:
                    frame = dec.next_frame()
                except W.RpcWireError as exc:
                    _send_chunks(self.sock, W.FAILED, 0, [_broken_stream(exc)])
                    return True
                if frame is None:
                    if dec.eof:
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
        except ParentGone:
            return False
        finally:
            worker._sink = None

    def call(self, call_id: int, payload: bytes | bytearray) -> None:
        codec = self.codec
        try:
            args, kwargs = codec.load_call(payload)
        except Exception as exc:
            err = _serialization_error("decode", "cannot decode the call's arguments", exc)
            _send_chunks(self.sock, W.ERROR, call_id, [err])
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
            what = f"cannot encode the result ({type(result).__name__})"
            err = _serialization_error("encode", what, exc)
            _send_chunks(self.sock, W.ERROR, call_id, [err])
            return
        _send_chunks(self.sock, W.OK, call_id, chunks)


class AsyncServer:
    """Calls run as asyncio tasks, at most ``limit`` at once; writes are buffered."""

    def __init__(
        self, sock: socket.socket, codec: _serializers.Codec, func: Callable[..., Any], limit: int
    ):
        from collections import deque

        self.sock = sock
        self.codec = codec
        self.func = func
        self.limit = limit
        self.dec = W.Decoder(W.TO_CHILD)
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.queue: deque[tuple[int, bytes | bytearray]] = deque()
        self.wbuf: list[memoryview] = []
        self.eof = False
        self.broken = False
        self.failed = False  # the parent's stream broke the protocol
        self.reading = False
        self.writing = False

    async def main(self) -> None:
        import asyncio

        self.loop = loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = loop.create_future()
        self.sock.setblocking(False)
        self._resume_reading()
        worker._sink = self
        try:
            await self.done
        finally:
            worker._sink = None
            self._pause_reading()
            if self.writing:
                loop.remove_writer(self.sock.fileno())
                self.writing = False
        self.flush()

    # -- writing ------------------------------------------------------------------------------

    def write(self, kind: int, call_id: int, chunks: Chunks) -> None:
        if self.broken:
            return
        views = [memoryview(c).cast("B") for c in _frame_chunks(kind, call_id, chunks)]
        if self.wbuf:
            self.wbuf.extend(views)
            return
        try:
            sent = self.sock.sendmsg(views[:_MAX_IOV])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._gone()
            return
        self.wbuf = advance(views, sent)
        if self.wbuf and not self.writing:
            self.loop.add_writer(self.sock.fileno(), self._writable)
            self.writing = True

    def _writable(self) -> None:
        try:
            sent = self.sock.sendmsg(self.wbuf[:_MAX_IOV])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._gone()
            return
        self.wbuf = advance(self.wbuf, sent)
        if not self.wbuf:
            self.loop.remove_writer(self.sock.fileno())
            self.writing = False
            self._check_done()

    def flush(self) -> bool:
        """Write everything buffered, blocking; ``False`` if the parent cannot take it."""
        import select

        while self.wbuf and not self.broken:
            try:
                sent = self.sock.sendmsg(self.wbuf[:_MAX_IOV])
            except (BlockingIOError, InterruptedError):
                select.select([], [self.sock], [])
                continue
            except OSError:
                self.broken = True
                self.wbuf = []
                return False
            self.wbuf = advance(self.wbuf, sent)
        return not self.broken

    def event(self, args: tuple[Any, ...]) -> None:
        self.write(W.EVENT, 0, self.codec.dump_event(args))

    def _gone(self) -> None:
        self.broken = True
        self.wbuf = []
        self.queue.clear()  # nothing more starts: main() returns and asyncio.run cancels the rest
        if not self.done.done():
            self.done.set_result(None)

    def _fail(self, exc: W.RpcWireError) -> None:
        """The parent's stream broke the protocol: say so, then stop at once."""
        self.failed = True
        self._pause_reading()
        self.write(W.FAILED, 0, [_broken_stream(exc)])
        self.flush()
        self._gone()

    # -- reading ------------------------------------------------------------------------------

    def _resume_reading(self) -> None:
        if not self.reading and not self.eof and not self.broken:
            self.loop.add_reader(self.sock.fileno(), self._readable)
            self.reading = True

    def _pause_reading(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.sock.fileno())
            self.reading = False

    def _readable(self) -> None:
        buf = self.dec.get_buffer()
        try:
            n = self.sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._gone()
            return
        finally:
            buf.release()
        dec = self.dec
        dec.buffer_updated(n)
        try:
            while True:
                frame = dec.next_frame()
                if frame is None:
                    break
                kind, call_id, payload = frame
                if kind == W.CALL:
                    if len(self.tasks) < self.limit:
                        self._start(call_id, payload)
                    else:
                        self.queue.append((call_id, payload))
                else:
                    self._cancel(call_id)
        except W.RpcWireError as exc:
            self._fail(exc)
            return
        if dec.eof:
            self.eof = True
            self._pause_reading()
            self._check_done()
        elif len(self.queue) > 4 * self.limit:
            self._pause_reading()

    # -- calls --------------------------------------------------------------------------------

    def _start(self, call_id: int, payload: bytes | bytearray) -> None:
        task = self.loop.create_task(self._run(call_id, payload))
        self.tasks[call_id] = task
        # A callback, not a ``finally``: a task cancelled before its first step never runs its
        # coroutine's body at all.
        task.add_done_callback(lambda t: self._finished(call_id, t))

    def _finished(self, call_id: int, task: asyncio.Task[None]) -> None:
        del self.tasks[call_id]
        if self.broken:
            return
        if task.cancelled():
            self.write(W.CANCELLED, call_id, [])
        while self.queue and len(self.tasks) < self.limit:
            self._start(*self.queue.popleft())
        if len(self.queue) <= 2 * self.limit:
            self._resume_reading()
        self._check_done()

    def _cancel(self, call_id: int) -> None:
        task = self.tasks.get(call_id)
        if task is not None:
            task.cancel()
            return
        for i, (queued, _) in enumerate(self.queue):
            if queued == call_id:
                del self.queue[i]
                self.write(W.CANCELLED, call_id, [])
                return

    async def _run(self, call_id: int, payload: bytes | bytearray) -> None:
        import inspect

        try:
            args, kwargs = self.codec.load_call(payload)
        except Exception as exc:
            err = _serialization_error("decode", "cannot decode the call's arguments", exc)
            self.write(W.ERROR, call_id, [err])
            return
        del payload
        try:
            result = self.func(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            self.write(W.ERROR, call_id, [error_record(exc)])
            return
        del args, kwargs
        try:
            chunks = self.codec.dump_value(result)
        except Exception as exc:
            what = f"cannot encode the result ({type(result).__name__})"
            err = _serialization_error("encode", what, exc)
            self.write(W.ERROR, call_id, [err])
            return
        self.write(W.OK, call_id, chunks)

    def _check_done(self) -> None:
        idle = not self.tasks and not self.queue and not self.wbuf
        if self.eof and idle and not self.done.done():
            self.done.set_result(None)
