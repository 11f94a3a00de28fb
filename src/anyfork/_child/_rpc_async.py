"""The async backend of the RPC server (``_rpc_server``), imported only for it (asyncio)."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections import deque

from . import _rpc_wire as W
from ._records import error_record
from ._rpc_server import (
    batch_answer,
    batch_calls,
    broken_stream,
    frame_chunks,
    install,
    undecodable,
    unencodable,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    import socket
    from collections.abc import Callable
    from typing import Any

    from . import _serializers
    from ._rpc_server import Chunks


class AsyncServer:
    """Calls run as tasks, at most ``limit`` at once; reading pauses while the rest queue long."""

    def __init__(
        self,
        sock: socket.socket,
        codec: _serializers.Codec,
        func: Callable[..., Any],
        limit: int,
        done: Callable[[], Any] | None = None,
    ):
        self.sock = sock
        self.codec = codec
        self.func = func
        self.limit = limit
        self.done_func = done
        # The id of the call a task runs for (tasks it starts inherit it): its events carry it.
        self.current: contextvars.ContextVar[int] = contextvars.ContextVar("call", default=0)
        self.dec = W.Decoder(W.TO_CHILD)
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.queue: deque[tuple[int, int, bytes | bytearray]] = deque()
        self.wbuf: list[memoryview] = []
        self.eof = False
        self.broken = False
        self.failed = False  # the parent's stream broke the protocol
        self.reading = False
        self.writing = False

    async def main(self) -> None:
        self.loop = loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = loop.create_future()
        self.sock.setblocking(False)
        self._resume_reading()
        install(self)
        try:
            await self.done
        finally:
            install(None)
            self._pause_reading()
            if self.writing:
                loop.remove_writer(self.sock.fileno())
                self.writing = False
        self.flush()
        if self.done_func is not None and self.eof and not self.broken:
            result = self.done_func()
            if inspect.isawaitable(result):
                await result

    def write(self, kind: int, call_id: int, chunks: Chunks) -> None:
        if self.broken:
            return
        views = [memoryview(c).cast("B") for c in frame_chunks(kind, call_id, chunks)]
        if self.wbuf:
            self.wbuf.extend(views)
            return
        try:
            sent = self.sock.sendmsg(views[: W.MAX_IOV])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._gone()
            return
        self.wbuf = W.advance(views, sent)
        if self.wbuf and not self.writing:
            self.loop.add_writer(self.sock.fileno(), self._writable)
            self.writing = True

    def _send_some(self) -> bool:
        """``False`` if the socket took nothing."""
        try:
            sent = self.sock.sendmsg(self.wbuf[: W.MAX_IOV])
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self._gone()
            return False
        self.wbuf = W.advance(self.wbuf, sent)
        return True

    def _writable(self) -> None:
        if self._send_some() and not self.wbuf:
            self.loop.remove_writer(self.sock.fileno())
            self.writing = False
            self._check_done()

    def flush(self) -> bool:
        import select

        while self.wbuf and not self.broken:
            if not self._send_some() and not self.broken:
                select.select([], [self.sock], [])
        return not self.broken

    def event(self, args: tuple[Any, ...]) -> None:
        self.write(W.EVENT, self.current.get(), self.codec.dump_event(args))

    def retire(self) -> None:
        self.write(W.RETIRE, 0, [])

    def _gone(self) -> None:
        self.broken = True
        self.wbuf = []
        self.queue.clear()  # nothing more starts: main() returns and asyncio.run cancels the rest
        if not self.done.done():
            self.done.set_result(None)

    def _fail(self, exc: W.RpcWireError) -> None:
        self.failed = True
        self._pause_reading()
        self.write(W.FAILED, 0, [broken_stream(exc)])
        self.flush()
        self._gone()

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
            while (frame := dec.next_frame()) is not None:
                kind, call_id, payload = frame
                if kind == W.CANCEL:
                    self._cancel(call_id)
                elif len(self.tasks) < self.limit:
                    self._start(kind, call_id, payload)
                else:
                    self.queue.append((kind, call_id, payload))
        except W.RpcWireError as exc:
            self._fail(exc)
            return
        if dec.eof:
            self.eof = True
            self._pause_reading()
            self._check_done()
        elif len(self.queue) > 4 * self.limit:
            self._pause_reading()

    def _start(self, kind: int, call_id: int, payload: bytes | bytearray) -> None:
        run = self._run if kind == W.CALL else self._run_batch
        task = self.loop.create_task(run(call_id, payload))
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
        for i, (_, queued, _) in enumerate(self.queue):
            if queued == call_id:
                del self.queue[i]
                self.write(W.CANCELLED, call_id, [])
                return

    async def _run(self, call_id: int, payload: bytes | bytearray) -> None:
        self.current.set(call_id)
        try:
            args, kwargs = self.codec.load_call(payload)
        except Exception as exc:
            self.write(W.ERROR, call_id, undecodable("call's", exc))
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
            self.write(W.ERROR, call_id, [unencodable(result, exc)])
            return
        self.write(W.OK, call_id, chunks)

    async def _run_batch(self, call_id: int, payload: bytes | bytearray) -> None:
        self.current.set(call_id)
        codec = self.codec
        try:
            columns, _ = codec.load_batch(payload)
        except Exception as exc:
            self.write(W.ERROR, call_id, undecodable("batch's", exc))
            return
        del payload
        func, columns = batch_calls(self.func, columns)
        isawaitable = inspect.isawaitable
        results: list[Any] = []
        failure: Exception | None = None
        try:
            for args in zip(*columns):  # noqa: B905  # load_batch made them as long; strict= is 3.10+
                result = func(*args)
                if isawaitable(result):
                    result = await result
                results.append(result)
        except StopIteration as exc:  # as the sync backend's map() must take it (PEP 479)
            failure = RuntimeError("the function raised StopIteration")
            failure.__cause__ = exc
        except Exception as exc:
            failure = exc
        del columns
        kind, chunks = batch_answer(codec, results, failure)
        self.write(kind, call_id, chunks)

    def _check_done(self) -> None:
        idle = not self.tasks and not self.queue and not self.wbuf
        if self.eof and idle and not self.done.done():
            self.done.set_result(None)
