"""RPC, parent side: the connection to one worker, sans-IO (no socket, clock, signal or loop).

The protocol: ``_child._rpc_wire``.  :class:`RpcConnection` holds all but the I/O and the
waiting: the calls and their answers (its base, ``_answers.Calls``), the abandonment policy
(``CANCEL`` frame, or the worker condemned), and the state::

    STARTING --READY--> READY --close()--> CLOSING --EOF, nothing pending--> CLOSED
        |                 |  \\--abort()--------------------------------------> CLOSED
        |                 \\--EOF, nothing pending (the worker exited) -------> CLOSED
        \\-- FAILED, EOF, broken stream --> BROKEN <-- broken stream, death ---/

Its drivers (``_client``, ``_blocking``) write ``out``, feed it what they read, deliver what
it hands to ``emit(args, handler)`` in order, and act on what its methods return.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from .._child import _rpc_wire as W
from .._child._serializers import Codec
from .._errors import (
    AnyforkError,
    ClosedError,
    ProtocolError,
    SpawnError,
    WorkerDiedError,
    describe_returncode,
)
from ._answers import Calls, Emit, Waiter, rebuild_record
from ._batching import BatchResult, check_columns, columns_of
from ._map import MapRun, Unit
from ._outbox import Outbox, encode

Backend = Literal["sync", "async"]

STARTING, READY, CLOSING, CLOSED, BROKEN = "starting", "ready", "closing", "closed", "broken"

NEED_EXIT_STATUS = "need exit status"
KILL = "kill"
FLUSH = "flush"


class RpcConnection(Calls):
    """The sans-IO state of one RPC connection (see the module docs)."""

    def __init__(
        self,
        codec: Codec,
        backend: Backend,
        pid: int | None,
        emit: Emit,
        *,
        concurrency: int = 1,
        on_event: Callable[..., object] | None = None,
        on_error: Callable[[BaseException], object] | None = None,
        on_close: Callable[[], object] | None = None,
        on_retire: Callable[[], object] | None = None,
        where: Callable[[], str] | None = None,
    ):
        super().__init__(codec, pid, emit, on_event, on_error, on_retire, where)
        self.backend = backend
        self.state = STARTING
        self.slots = concurrency if backend == "async" else 1
        self._on_close = on_close
        self.dec = W.Decoder(W.TO_PARENT)
        self.out = Outbox()
        #: Why the worker was condemned (killed): it takes no call from then on.
        self.kill_reason: str | None = None
        self.eof = False
        #: ``close()`` or ``abort()`` was called: a new call is a ``ClosedError``.
        self.closing = False
        #: The worker ended the connection unasked, with nothing outstanding (it exited).
        self.exited = False
        self.returncode: int | None = None
        self._unreported: BaseException | None = None

    @property
    def usable(self) -> bool:
        return self.state == READY and self.kill_reason is None and not self.eof

    @property
    def io_done(self) -> bool:
        """Nothing more is read or written: the driver closes the socket."""
        return self.state in (CLOSED, BROKEN)

    def check_usable(self) -> None:
        """Raise why a new call cannot be sent."""
        if self.state == READY and self.kill_reason is None:
            return
        exc = self.failure
        if self.state == BROKEN and exc is not None:
            if isinstance(exc, WorkerDiedError):
                raise WorkerDiedError(str(exc), exc.pid, exc.returncode) from exc
            raise ClosedError(f"the RPC connection failed: {exc}") from exc
        if self.closing or (self.kill_reason is None and not self.exited):
            raise ClosedError("the RPC client has been closed")
        if self.kill_reason is not None:  # its SIGKILL is on its way, or done
            why = f"has been killed because {self.kill_reason}"
        else:  # it ended the connection by itself while idle
            why = f"has exited ({describe_returncode(self.returncode)})"
        raise WorkerDiedError(
            f"the RPC worker ({self._who()}) {why}; the call was not sent",
            self.pid,
            self.returncode,
        )

    def call(
        self,
        waiter: Waiter,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        on_event: Callable[..., object] | None,
        columns: Sequence[Sequence[Any]] | None = None,
    ) -> int:
        """Queue a call, or given ``columns`` a batch (an empty one is answered at once, id 0),
        for ``waiter``; its id.  Nothing is queued if it raises."""
        batch = None if columns is None else check_columns(columns)
        if batch is not None and not batch[0]:
            waiter.set_result(BatchResult([]))
            return 0
        if self.state != READY or self.kill_reason is not None:
            self.check_usable()
        chunks, size = encode(self.codec, args, kwargs, batch)
        cid = self._register(waiter, on_event)
        if batch is None:
            self.out.queue(W.CALL, cid, chunks, size)
        else:
            self._batches[cid] = len(batch[0])
            self.out.queue(W.CALL_BATCH, cid, chunks, size)
        return cid

    def start_map(
        self, iterables: Sequence[Iterable[Any]], chunksize: int | None, clock: Callable[[], float]
    ) -> MapRun:
        self.check_usable()
        return MapRun(columns_of(iterables), chunksize, self.codec.batches, clock, self.slots)

    def map_send(self, run: MapRun) -> None:
        """Queue the frames ``run`` wants sent now; one that cannot be sent fails its first item."""
        while (unit := run.next_unit()) is not None:
            try:
                if unit.n == 1:
                    self.call(unit, run.args(unit), {}, None)
                else:
                    self.call(unit, (), {}, None, run.batch(unit))
            except AnyforkError as exc:
                run.unsent(unit, exc)
                return

    def abandon_map(self, run: MapRun, why: str) -> str | None:
        action = None
        for cid, waiter in list(self.pending.items()):
            if type(waiter) is Unit and waiter.run is run:
                action = self.abandon(cid, why) or action
        return action

    def abandon(self, cid: int, why: str) -> str | None:
        """The caller stopped waiting for call ``cid``: ``FLUSH`` a ``CANCEL`` (async backend) or
        ``KILL`` (sync: a running Python function cannot be interrupted safely)."""
        if self.pending.pop(cid, None) is None:
            return None
        if self._batches:
            self._batches.pop(cid, None)
        if cid in self._handlers:
            # Not for the client's on_event, which never asked for this call's events.
            self._handlers[cid] = _ignore
        if self.io_done or self.eof:
            return None
        # Its answer may be on its way already (even read, in a frame not handled yet): when it
        # comes, it is dropped, not taken for a broken stream.
        self._abandoned.add(cid)
        if self.backend == "async":
            self.out.queue(W.CANCEL, cid, [], 0)
            return FLUSH
        return self.condemn(f"call {cid} {why}")

    def condemn(self, reason: str) -> str | None:
        """Condemn the worker, once (``KILL``): it takes no call, and the calls it owes fail with
        ``WorkerDiedError`` naming ``reason`` once its death is seen."""
        if self.kill_reason is not None or self.pid is None or self.eof or self.io_done:
            return None
        self.kill_reason = reason
        return KILL

    def close(self) -> None:
        """No new calls; the driver shuts down the write side once ``out`` is empty."""
        self.closing = True
        if self.state in (STARTING, READY):
            self.state = CLOSING

    @property
    def wants_shutdown(self) -> bool:
        return self.state == CLOSING and not self.eof and not self.out.has_output()

    def abort(self) -> None:
        self.closing = True
        if self.pending:
            self._fail_all(ClosedError("the RPC client was aborted"))
        if self.state != BROKEN:
            self.state = CLOSED
        self.out.drop()

    def receive_data(self, data: bytes) -> str | None:
        if data:
            self.dec.receive(data)
        return self.received(len(data), fed=True)

    def received(self, n: int, *, fed: bool = False) -> str | None:
        """``n`` bytes were read into ``dec.get_buffer()`` (``0``: EOF; ``fed``: decoded
        already).  The one receive boundary: a decoding error is a ``ProtocolError``, a frame
        cut by EOF a death; a handler's exception (a blocking ``on_event``) loses no frame."""
        if not fed or not n:
            self.dec.buffer_updated(n)
        eof = not n
        next_frame = self.dec.next_frame
        handle = self._handle
        try:
            while (frame := next_frame()) is not None:
                handle(*frame)
        except W.TruncatedError:
            eof = True
        except _Stopped as stopped:
            return self._broken(stopped.err)
        except W.RpcWireError as exc:
            err = ProtocolError(f"the RPC worker ({self._who()}) sent a broken stream: {exc}")
            err.__cause__ = exc.__cause__
            return self._broken(err)
        if not eof or self.io_done:
            return None
        self.eof = True
        if self.pending or self.state == STARTING:
            return NEED_EXIT_STATUS
        if self.state == READY:
            self.exited = True
        self.state = CLOSED
        if self._on_close is not None:
            self._on_close()
        return CLOSED

    def read_failed(self, exc: OSError) -> str:
        err = ProtocolError(f"reading from the RPC worker ({self._who()}) failed: {exc}")
        err.__cause__ = exc
        return self._broken(err)

    def _control(self, kind: int, payload: bytes | bytearray) -> None:
        """``READY`` or ``FAILED`` (start-up; after it: our stream broke the protocol)."""
        if self.state == STARTING and kind == W.READY:
            version, pid = W.parse_ready(bytes(payload))
            if version == W.VERSION:
                self.state = READY
                self.pid = pid
                return
            mismatch = W.version_mismatch(W.VERSION, version)
            self.failure = ProtocolError(f"{mismatch} (pid {pid})")
        elif self.state == STARTING and kind == W.FAILED:
            context = f"(anyfork RPC worker pid {self.pid} failed to start)"
            self.failure = rebuild_record(payload, context, ours=True)
        elif kind == W.FAILED:
            context = f"(from anyfork RPC worker pid {self.pid})"
            stopped = rebuild_record(payload, context, ours=True)
            halt = ProtocolError(f"the RPC worker ({self._who()}) stopped: {stopped}")
            halt.__cause__ = stopped
            raise _Stopped(halt)
        elif kind == W.READY and self.failure is None:
            raise W.RpcWireError("a second READY")
        else:
            raise W.RpcWireError(f"unexpected frame {kind:#x}")
        self.state = BROKEN

    def _broken(self, err: BaseException) -> str:
        """Fail every call; ``on_error`` is told once the socket is closed (``io_closed``)."""
        if self.state == STARTING:
            self.failure = err
        elif self.state != BROKEN:
            self._fail_all(err)
            self._unreported = err
        self.state = BROKEN
        self.out.drop()
        return BROKEN

    def died(self, returncode: int | None) -> WorkerDiedError:
        """How the worker that died with calls outstanding ended (``None``: unknown)."""
        self.returncode = returncode
        how = describe_returncode(returncode)
        if not self.dec.at_boundary():
            how += ", in the middle of a frame"
        reason = f": it was killed because {self.kill_reason}" if self.kill_reason else ""
        err = WorkerDiedError(
            f"the RPC worker ({self._who()}) died with calls outstanding ({how}){reason}",
            self.pid,
            returncode,
        )
        self._broken(err)
        return err

    def io_closed(self) -> None:
        self.out.drop()
        err, self._unreported = self._unreported, None
        if err is not None:
            self.report(err)

    def start_failure(self, returncode: int | None) -> BaseException:
        """Why start-up failed: the worker's own error, else its death."""
        self.returncode = returncode
        if self.failure is None:
            how = describe_returncode(returncode)
            self.failure = SpawnError(
                f"the RPC worker ({self._who()}) exited during start-up ({how})"
            )
        self.state = BROKEN
        return self.failure


class _Stopped(Exception):
    def __init__(self, err: ProtocolError):
        self.err = err


def _ignore(*args: object) -> None:
    """The handler of an abandoned call that had one of its own."""
