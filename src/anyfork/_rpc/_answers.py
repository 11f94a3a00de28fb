"""RPC, parent side: the calls outstanding and the answers that settle them (no I/O).  A broken
answer raises ``RpcWireError``; one that cannot be decoded here fails that call only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._child import _rpc_wire as W
from .._child._serializers import Codec
from .._errors import DecodeError, ProtocolError, RemoteError, WorkerDiedError, rebuild
from ._batching import BatchResult

Waiter = Any  # asyncio.Future[Any] | Box | Unit: anything with done/set_result/set_exception
Emit = Callable[[tuple[Any, ...], Callable[..., object]], None]

_OK = W.OK


class Box:
    """The blocking client's stand-in for a future."""

    __slots__ = ("_done", "exc", "value")

    def __init__(self) -> None:
        self._done = False
        self.value: Any = None  # Any: whatever the worker's function returns
        self.exc: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def set_result(self, value: Any) -> None:
        self.value, self._done = value, True

    def set_exception(self, exc: BaseException) -> None:
        self.exc, self._done = exc, True


class Calls:
    """The calls outstanding; ``_handle`` settles them and hands events to ``emit``."""

    #: A frame that answers no call (``READY``, ``FAILED``): the connection's.
    _control: Callable[[int, bytes | bytearray], None]

    def __init__(
        self,
        codec: Codec,
        pid: int | None,
        emit: Emit,
        on_event: Callable[..., object] | None,
        on_error: Callable[[BaseException], object] | None,
        on_retire: Callable[[], object] | None,
        where: Callable[[], str] | None,
    ):
        self.codec = codec
        self.pid = pid
        # What errors add after the pid (a remote worker's host...), asked when they are made.
        self._where = where
        self._emit = emit
        self._on_event = on_event
        self._on_error = on_error
        self._on_retire = on_retire
        self.pending: dict[int, Waiter] = {}
        self._handlers: dict[int, Callable[..., object]] = {}  # calls given an on_event=
        self._batches: dict[int, int] = {}  # outstanding batches: their item counts
        self._abandoned: set[int] = set()  # their answers may still come
        self._next_id = 0
        #: Why start-up failed, or why the connection broke.
        self.failure: BaseException | None = None

    def _who(self) -> str:
        return f"pid {self.pid}{self._where() if self._where is not None else ''}"

    def report(self, exc: BaseException) -> None:
        if self._on_error is not None:
            self._on_error(exc)

    def _register(self, waiter: Waiter, on_event: Callable[..., object] | None) -> int:
        cid = self._next_id
        pending = self.pending
        while True:
            cid = cid + 1 if cid < W.MAX_ID else 1
            if cid not in pending and cid not in self._abandoned:
                break
        self._next_id = cid
        pending[cid] = waiter
        if on_event is not None:
            self._handlers[cid] = on_event
        return cid

    def _handle(self, kind: int, cid: int, payload: bytes | bytearray) -> None:
        if kind == _OK:  # the hot path first
            if self._handlers or self._batches:
                self._answered(cid, False)
            waiter = self.pending.pop(cid, None)
            if waiter is None or waiter.done():
                self._unexpected(cid, waiter)
                return
            try:
                value = self.codec.load_value(payload)
            except Exception as exc:
                err = DecodeError(f"cannot decode the result: {type(exc).__name__}: {exc}")
                err.__cause__ = exc
                waiter.set_exception(err)
                return
            waiter.set_result(value)
            return
        if kind == W.EVENT:
            try:
                args = self.codec.load_event(payload)
            except Exception as exc:
                err = DecodeError(f"cannot decode an event: {type(exc).__name__}: {exc}", "parent")
                self.report(err)
                return
            handlers = self._handlers
            handler = handlers.get(cid) if handlers else None
            target = self._on_event if handler is None else handler
            if target is None:
                self.report(ProtocolError("event received, but no on_event handler"))
                return
            self._emit(args, target)
            return
        if kind in (W.BATCH_OK, W.BATCH_ERROR):
            self._batch_answer(kind, cid, payload)
            return
        if kind in (W.ERROR, W.CANCELLED):
            self._answered(cid, None)
            waiter = self.pending.get(cid)
            if waiter is None or waiter.done():
                self._unexpected(cid, self.pending.pop(cid, None))
                return
            if kind == W.ERROR:
                # Rebuilt before the call leaves pending: a broken record fails the connection,
                # and with it this call too.
                context = f"(raised in anyfork RPC worker pid {self.pid})"
                failure = rebuild_record(payload, context, ours=False)
            else:
                failure = RemoteError("the call was cancelled in the worker")
            del self.pending[cid]
            waiter.set_exception(failure)
            return
        if kind == W.RETIRE:
            if self._on_retire is not None:  # else a plain client: nobody asked for it
                self._emit((), self._on_retire)
            return
        self._control(kind, payload)

    def _answered(self, cid: int, batch: bool | None) -> int | None:
        """Forget the handler of ``cid``, answered (``batch``: as a batch, a single call,
        ``None`` either); its item count if it is a batch.  The wrong kind breaks the stream."""
        if self._handlers:
            self._handlers.pop(cid, None)
        n = self._batches.pop(cid, None) if self._batches else None
        if batch is not None and (n is not None) is not batch and cid in self.pending:
            what = "a batch" if batch else "a single call"
            raise W.RpcWireError(f"an answer as {what} to call {cid}, which is not one")
        return n

    def _batch_answer(self, kind: int, cid: int, payload: bytes | bytearray) -> None:
        """The call leaves ``pending`` only once its answer is known good: a broken one fails
        the connection, and with it this call too."""
        n = self._answered(cid, True)
        waiter = self.pending.get(cid)
        if waiter is None or waiter.done() or n is None:
            self._unexpected(cid, self.pending.pop(cid, None))
            return
        try:
            result = batch_result(self.codec, kind, payload, n, self.pid)
        except DecodeError as err:
            del self.pending[cid]
            waiter.set_exception(err)
            return
        del self.pending[cid]
        waiter.set_result(result)

    def _unexpected(self, cid: int, waiter: Waiter) -> None:
        if waiter is not None:
            return  # its caller gave up (a timeout) just before the reply arrived
        if cid in self._abandoned:
            self._abandoned.discard(cid)
            return
        raise W.RpcWireError(f"an answer to call {cid}, which is not outstanding")

    def _fail_all(self, exc: BaseException) -> None:
        self.failure = exc
        pending, self.pending = self.pending, {}
        self._abandoned.clear()
        self._handlers.clear()
        self._batches.clear()
        for waiter in pending.values():
            if not waiter.done():
                if isinstance(exc, WorkerDiedError):
                    waiter.set_exception(WorkerDiedError(str(exc), exc.pid, exc.returncode))
                else:
                    waiter.set_exception(exc)


def rebuild_record(record: bytes | bytearray, context: str, *, ours: bool) -> BaseException:
    """``_errors.rebuild``; bytes that are not a record raise ``RpcWireError``."""
    try:
        return rebuild(record, context, ours=ours)
    except ProtocolError as exc:
        raise W.RpcWireError("a broken error record") from exc


def batch_result(
    codec: Codec, kind: int, payload: bytes | bytearray, n: int, pid: int | None
) -> BatchResult:
    """The outcome of a batch of ``n`` calls; ``RpcWireError`` for a broken answer,
    ``DecodeError`` for results that cannot be decoded here."""
    error = None
    data: bytes | bytearray | memoryview = payload
    count = n
    if kind == W.BATCH_ERROR:
        count, data, record = W.parse_batch_error(payload)
        if count >= n:
            raise W.RpcWireError(f"item {count} of a batch of {n} failed")
        context = f"(raised in anyfork RPC worker pid {pid})"
        error = rebuild_record(bytes(record), context, ours=False)
    try:
        results = codec.load_results(data)
    except Exception as exc:
        err = DecodeError(f"cannot decode the batch's results: {type(exc).__name__}: {exc}")
        raise err from exc
    if len(results) != count:
        raise W.RpcWireError(f"a batch answer with {len(results)} results for {count}")
    return BatchResult(results, error)
