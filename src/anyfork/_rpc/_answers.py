"""RPC, parent side: the calls outstanding on a connection, and the answers that settle them
(no I/O: ``_connection`` hands it the frames it reads).

Each call (or batch) waits for its answer as a *waiter*: ``Client`` gives it an
``asyncio.Future``, the blocking client a :class:`Box`, a ``map`` one ``_map.Unit`` per frame;
all three have ``done()``, ``set_result()`` and ``set_exception()``.

A broken answer raises ``RpcWireError`` (``_connection`` fails the connection with it at its
one receive boundary); an answer that is sound but cannot be decoded here (a result whose class
this process cannot load) is a ``DecodeError`` for that call only.
"""

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
    """The calls outstanding: their ids and waiters, the handlers of those given one of their
    own (``on_event=``), the item counts of the batches, and the ids of abandoned calls whose
    answers may still come; ``_handle`` settles them from the frames that answer them and
    delivers events (``emit(args, handler)``: the driver runs the handler, in order)."""

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
        # What errors add after the worker's pid, asked when they are made: a remote worker's
        # host, and whether the connection to it was lost (``Process._where``).
        self._where = where
        self._emit = emit
        self._on_event = on_event
        self._on_error = on_error
        self._on_retire = on_retire
        self.pending: dict[int, Waiter] = {}
        # The calls given a handler of their own (on_event=), until they are answered.
        self._handlers: dict[int, Callable[..., object]] = {}
        # The outstanding batches: how many items each carries.
        self._batches: dict[int, int] = {}
        self._abandoned: set[int] = set()
        self._next_id = 0
        #: Why start-up failed, or why the connection broke.
        self.failure: BaseException | None = None

    def _who(self) -> str:
        """The worker as errors name it: its pid (and, remote, its host)."""
        return f"pid {self.pid}{self._where() if self._where is not None else ''}"

    def report(self, exc: BaseException) -> None:
        if self._on_error is not None:
            self._on_error(exc)

    def _register(self, waiter: Waiter, on_event: Callable[..., object] | None) -> int:
        """A new call id, its waiter and its handler (if it has one of its own)."""
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

    def _control(self, kind: int, payload: bytes | bytearray) -> None:
        """A frame that answers no call (``READY``, ``FAILED``): the connection's."""
        raise NotImplementedError

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
        """Call ``cid`` is answered (``batch``: by a batch's answer, a single call's, either):
        forget its handler; return its item count if it is an outstanding batch.  An answer of
        the wrong kind for an outstanding call breaks the stream."""
        if self._handlers:
            self._handlers.pop(cid, None)
        n = self._batches.pop(cid, None) if self._batches else None
        if batch is not None and (n is not None) is not batch and cid in self.pending:
            what = "a batch" if batch else "a single call"
            raise W.RpcWireError(f"an answer as {what} to call {cid}, which is not one")
        return n

    def _batch_answer(self, kind: int, cid: int, payload: bytes | bytearray) -> None:
        """``BATCH_OK`` or ``BATCH_ERROR``: the waiter gets a :class:`BatchResult`.  The call
        leaves ``pending`` only once its answer is known good: a broken one fails the
        connection, and with it this call too."""
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
        """A reply for a call nobody waits for: abandoned (fine) or unknown (broken stream)."""
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
    """``_errors.rebuild``, with bytes that are not an error record a decoding error like any
    other (``RpcWireError``)."""
    try:
        return rebuild(record, context, ours=ours)
    except ProtocolError as exc:
        raise W.RpcWireError("a broken error record") from exc


def batch_result(
    codec: Codec, kind: int, payload: bytes | bytearray, n: int, pid: int | None
) -> BatchResult:
    """The outcome of a batch of ``n`` calls from its ``BATCH_OK`` or ``BATCH_ERROR`` answer.

    Raises:
        RpcWireError: a broken answer (a bad ``BATCH_ERROR``, a failed item past the end, or
            as many results as no item count of it says).
        DecodeError: results that cannot be decoded here.
    """
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
        err.__cause__ = exc
        raise err from exc
    if len(results) != count:
        raise W.RpcWireError(f"a batch answer with {len(results)} results for {count}")
    return BatchResult(results, error)
