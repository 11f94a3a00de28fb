"""RPC, parent side: the frame handling and bookkeeping both clients share (no waiting here).

Data flow (one socket, frames from ``_rpc_wire``)::

    parent                                   child (_rpc_server)
    ------                                   -------------------
    send_arg(config), run(serve)  ------->   init(*args), resolve func
                                  <-------   READY (version, pid)  | FAILED (error record)
    CALL id, (args, kwargs)       ------->   func(*args, **kwargs)
                                  <-------   EVENT id, ... (worker.event, any number, in order)
                                  <-------   OK id, result  | ERROR id, error record
    CALL_BATCH id, [args, ...]    ------->   func(*args) for each, in order
                                  <-------   BATCH_OK id, [result, ...]
                                           | BATCH_ERROR id, i, [result, ...i], error record
    CANCEL id (async backend)     ------->   task.cancel()  ->  CANCELLED id
    (a broken stream)             ------->   (nothing more is run)
                                  <-------   FAILED (a ProtocolError record), exit 1
    shutdown(SHUT_WR)             ------->   finish every call, reply, exit
                                  <-------   EOF

Outgoing frames are queued in an ``_outbox.Outbox`` (many calls leave in one ``sendmsg``, a
10 MiB argument is never copied by us).  Incoming bytes land in the decoder's buffer, and every
complete frame of one read is handled before the next read.  An event goes to the handler
given to its call (``on_event=`` of that call), else to the client's ``on_event``.  The I/O
itself (an event loop's callbacks, or ``poll``) lives in ``_client`` and ``_blocking``; what
stands for a call's future where there is none, in ``_waiters``; a map's bookkeeping in
``_map``; batch results and sizes in ``_batching``.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from typing import Any, Literal

from .._child import _rpc_wire as W
from .._child._serializers import Codec
from .._core import _reaper
from .._core._process import Process
from .._errors import (
    AnyforkError,
    ClosedError,
    DecodeError,
    ProtocolError,
    RemoteError,
    SpawnError,
    WorkerDiedError,
    describe_returncode,
)
from ._answers import batch_result, rebuild_record
from ._map import MapRun, Unit
from ._outbox import Outbox, encode
from ._waiters import Waiter

Backend = Literal["sync", "async"]

#: How long the error path waits for a dead worker's exit status (its template reports it).
EXIT_STATUS_WAIT = 5.0

_OK = W.OK
_EVENT = W.EVENT
_ERROR = W.ERROR
_CANCELLED = W.CANCELLED
_BATCH_OK = W.BATCH_OK
_BATCH_ERROR = W.BATCH_ERROR


class Base:
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
        concurrency: int = 1,
    ):
        self._proc = proc
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._codec = codec
        self._backend = backend
        # How many calls (or batches) the worker runs at once: a map keeps them all busy.
        self._slots = concurrency if backend == "async" else 1
        self._on_event = on_event
        self._on_error = on_error
        self._on_close = on_close
        self._dec = W.Decoder(W.TO_PARENT)
        self._out = Outbox()
        self._pending: dict[int, Waiter] = {}
        # The calls given a handler of their own (on_event=), until they are answered.
        self._handlers: dict[int, Callable[..., object]] = {}
        # The outstanding batches: how many items each carries.
        self._batches: dict[int, int] = {}
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

    @property
    def usable(self) -> bool:
        """``True`` while the client takes new calls: open, not closing, its connection not
        failed, and its worker not condemned (a sync-backend worker is killed when a call it
        runs is abandoned, and takes no call after that decision)."""
        return (
            self._sock is not None
            and not self._closing
            and not self._eof
            and self._failure is None
            and self._kill_reason is None
        )

    @property
    def batchable(self) -> bool:
        """``True`` if the serialiser can carry a batch of calls (all but ``"bytes"`` and
        ``"str"``, which carry exactly one value): ``map`` batches only then."""
        return self._codec.batches

    # -- calls --------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        """Raise why a new call cannot be sent (nothing is sent then)."""
        if self._failure is not None:
            exc = self._failure
            if isinstance(exc, WorkerDiedError):
                raise WorkerDiedError(str(exc), exc.pid, exc.returncode) from exc
            raise ClosedError(f"the RPC connection failed: {exc}") from exc
        if self._closing:
            raise ClosedError("the RPC client has been closed")
        if self._kill_reason is not None:
            # Condemned: its SIGKILL is on its way (or done), and a call sent now would die with
            # it.  Checked before the socket: the socket closes once its death is seen.
            raise WorkerDiedError(
                f"the RPC worker (pid {self.pid}) has been killed because {self._kill_reason}; "
                f"the call was not sent",
                self.pid,
                self.returncode,
            )
        if self._sock is None:
            raise ClosedError("the RPC client has been closed")

    def _new_id(self) -> int:
        cid = self._next_id
        pending = self._pending
        while True:
            cid = cid + 1 if cid < W.MAX_ID else 1
            if cid not in pending and cid not in self._abandoned:
                self._next_id = cid
                return cid

    def _send(
        self,
        kind: int,
        chunks: list[Any],
        size: int,
        waiter: Waiter,
        on_event: Callable[..., object] | None,
    ) -> int:
        """Register ``waiter`` for a new call and queue its frame; return its id."""
        cid = self._new_id()
        self._pending[cid] = waiter
        if on_event is not None:
            self._handlers[cid] = on_event
        self._out.queue(kind, cid, chunks, size)
        return cid

    def _send_batch(
        self,
        columns: list[list[Any]],
        waiter: Waiter,
        on_event: Callable[..., object] | None,
    ) -> int:
        """Encode and queue a batch, its arguments by column (``_batching.check_columns``;
        ``EncodeError`` sends nothing); ``waiter`` gets its :class:`BatchResult`."""
        chunks, size = encode(self._codec, (), {}, columns)
        cid = self._send(W.CALL_BATCH, chunks, size, waiter, on_event)
        self._batches[cid] = len(columns[0])
        return cid

    def _map_send(self, run: MapRun) -> None:
        """Encode and queue the frames ``run`` wants sent now (the caller writes them).  A frame
        that cannot be sent (an argument that cannot be encoded, a client no longer usable) is
        the map's failure at its first item."""
        while (unit := run.next_unit()) is not None:
            try:
                self._check_usable()
                if unit.n == 1:
                    self._send(W.CALL, *encode(self._codec, run.args(unit), {}), unit, None)
                else:
                    self._send_batch(run.batch(unit), unit, None)
            except AnyforkError as exc:
                run.unsent(unit, exc)
                return

    def _abandon_map(self, run: MapRun, why: str) -> None:
        for cid, waiter in list(self._pending.items()):
            if type(waiter) is Unit and waiter.run is run:
                self._abandon(cid, why)

    def _abandon(self, cid: int, why: str) -> None:
        """The caller stopped waiting for call ``cid`` (``why``: "was cancelled", "timed out
        after 2 s"...)."""
        if self._pending.pop(cid, None) is None:
            return
        if self._batches:
            self._batches.pop(cid, None)
        if cid in self._handlers:
            # Its caller gave up on it: what it still says is for nobody (not for the client's
            # on_event, which never asked for this call's events).
            self._handlers[cid] = _ignore
        if self._sock is None or self._eof:
            return
        # Its answer may be on its way already (even read, in a frame not handled yet): when it
        # comes, it is dropped, not taken for a broken stream.
        self._abandoned.add(cid)
        if self._backend == "async":
            self._out.queue(W.CANCEL, cid, [], 0)
            self._flush_later()
            return
        # Sync backend: a running Python function cannot be interrupted safely.
        self._kill(f"call {cid} {why}")

    def _kill(self, reason: str) -> None:
        """Condemn the worker: SIGKILL it, once.  From here on it takes no call (``usable`` is
        False, a new call fails at once), and the calls it owes fail with ``WorkerDiedError``
        naming ``reason`` once its death is seen."""
        if self._kill_reason is not None or self.pid is None or self._eof:
            return
        self._kill_reason = reason
        try:
            self._proc.kill(signal.SIGKILL)  # (a remote process is killed by its host)
        except ProcessLookupError:
            pass

    def _flush_later(self) -> None:
        raise NotImplementedError

    # -- frames ---------------------------------------------------------------------------------

    def _handle(self, kind: int, cid: int, payload: bytes | bytearray) -> None:
        if kind == _OK:  # the hot path first
            if self._handlers or self._batches:
                self._answered(cid, False)
            waiter = self._pending.pop(cid, None)
            if waiter is None or waiter.done():
                self._unexpected(cid, waiter)
                return
            try:
                value = self._codec.load_value(payload)
            except Exception as exc:
                err = DecodeError(f"cannot decode the result: {type(exc).__name__}: {exc}")
                err.__cause__ = exc
                waiter.set_exception(err)
                return
            waiter.set_result(value)
            return
        if kind == _EVENT:
            try:
                args = self._codec.load_event(payload)
            except Exception as exc:
                err = DecodeError(f"cannot decode an event: {type(exc).__name__}: {exc}", "parent")
                self._report(err)
                return
            handlers = self._handlers
            self._event(args, handlers.get(cid) if handlers else None)
            return
        if kind in (_BATCH_OK, _BATCH_ERROR):
            self._batch_answer(kind, cid, payload)
            return
        if kind in (_ERROR, _CANCELLED):
            self._answered(cid, None)
            waiter = self._pending.get(cid)
            if waiter is None or waiter.done():
                self._unexpected(cid, self._pending.pop(cid, None))
                return
            if kind == _ERROR:
                # Rebuilt before the call leaves _pending: a broken record fails the connection,
                # and with it this call too.
                context = f"(raised in anyfork RPC worker pid {self.pid})"
                failure = rebuild_record(payload, context, ours=False)
            else:
                failure = RemoteError("the call was cancelled in the worker")
            del self._pending[cid]
            waiter.set_exception(failure)
            return
        if self._startup_error is None and kind in (W.READY, W.FAILED):
            self._first_frame(kind, payload)
            return
        raise W.RpcWireError(f"unexpected frame {kind:#x}")

    def _answered(self, cid: int, batch: bool | None) -> int | None:
        """Call ``cid`` is answered (``batch``: by a batch's answer, a single call's, either):
        forget its handler; return its item count if it is an outstanding batch.  An answer of
        the wrong kind for an outstanding call breaks the stream."""
        if self._handlers:
            self._handlers.pop(cid, None)
        n = self._batches.pop(cid, None) if self._batches else None
        if batch is not None and (n is not None) is not batch and cid in self._pending:
            what = "a batch" if batch else "a single call"
            raise W.RpcWireError(f"an answer as {what} to call {cid}, which is not one")
        return n

    def _batch_answer(self, kind: int, cid: int, payload: bytes | bytearray) -> None:
        """``BATCH_OK`` or ``BATCH_ERROR``: the waiter gets a :class:`BatchResult`.  The call
        leaves ``_pending`` only once its answer is known good: a broken one fails the
        connection, and with it this call too."""
        n = self._answered(cid, True)
        waiter = self._pending.get(cid)
        if waiter is None or waiter.done() or n is None:
            self._unexpected(cid, self._pending.pop(cid, None))
            return
        try:
            result = batch_result(self._codec, kind, payload, n, self.pid)
        except DecodeError as err:
            del self._pending[cid]
            waiter.set_exception(err)
            return
        del self._pending[cid]
        waiter.set_result(result)

    def _first_frame(self, kind: int, payload: bytes | bytearray) -> None:
        """``READY``, or ``FAILED``: before ``READY`` the start-up error, after it the worker's
        word that our stream broke the protocol (it stops)."""
        if kind == W.READY:
            if self._ready:
                raise W.RpcWireError("a second READY")
            version, pid = W.parse_ready(bytes(payload))
            if version != W.VERSION:
                mismatch = W.version_mismatch(W.VERSION, version)
                self._startup_error = ProtocolError(f"{mismatch} (pid {pid})")
                return
            self._ready = True
            self.pid = pid
            return
        if not self._ready:
            context = f"(anyfork RPC worker pid {self.pid} failed to start)"
            self._startup_error = rebuild_record(payload, context, ours=True)
            return
        context = f"(from anyfork RPC worker pid {self.pid})"
        stopped = rebuild_record(payload, context, ours=True)
        raise ProtocolError(f"the RPC worker (pid {self.pid}) stopped: {stopped}") from stopped

    def _unexpected(self, cid: int, waiter: Waiter) -> None:
        """A reply for a call nobody waits for: abandoned (fine) or unknown (broken stream)."""
        if waiter is not None:
            return  # its caller gave up (a timeout) just before the reply arrived
        if cid in self._abandoned:
            self._abandoned.discard(cid)
            return
        raise W.RpcWireError(f"an answer to call {cid}, which is not outstanding")

    def _event(self, args: tuple[Any, ...], handler: Callable[..., object] | None) -> None:
        raise NotImplementedError

    def _deliver(self, args: tuple[Any, ...], handler: Callable[..., object] | None) -> None:
        """Call the event's handler: its call's, else the client's ``on_event``."""
        target = self._on_event if handler is None else handler
        if target is None:
            self._report(ProtocolError("event received, but no on_event handler"))
            return
        target(*args)

    def _report(self, exc: BaseException) -> None:
        if self._on_error is not None:
            self._on_error(exc)

    def _recv_some(self, flags: int = 0) -> bool:
        """One read into the decoder, then handle every complete frame; ``True`` at EOF.

        The one receive boundary of the connection: every decoding error (a bad header, a bad
        ``READY``, a broken error record, an answer to no call) and a failed read come out as
        ``ProtocolError`` naming the worker; the caller fails the connection with it
        (``_broken``).  A frame cut by EOF is not one: the worker died writing it, and the
        caller's EOF path says so (``WorkerDiedError``).  A frame is taken from the decoder
        only when it is handled, so an exception from a handler (a blocking client's
        ``on_event``) loses no frame.
        """
        sock = self._sock
        assert sock is not None
        dec = self._dec
        buf = dec.get_buffer()
        try:
            n = sock.recv_into(buf, 0, flags)
        except (BlockingIOError, InterruptedError):
            return False
        except ConnectionResetError:
            n = 0
        except OSError as exc:
            raise ProtocolError(
                f"reading from the RPC worker (pid {self.pid}) failed: {exc}"
            ) from exc
        finally:
            buf.release()
        dec.buffer_updated(n)
        next_frame = dec.next_frame
        handle = self._handle
        try:
            while (frame := next_frame()) is not None:
                handle(*frame)
        except W.TruncatedError:
            return True
        except W.RpcWireError as exc:
            raise ProtocolError(
                f"the RPC worker (pid {self.pid}) sent a broken stream: {exc}"
            ) from exc.__cause__
        return not n

    def _broken(self, err: ProtocolError) -> None:
        """The connection failed (``_recv_some`` raised): fail every call, close the socket,
        and tell ``on_error`` (before ``READY``, ``rpc()`` raises it instead)."""
        started = self._ready
        if not started and self._startup_error is None:
            self._startup_error = err
        self._fail_all(err)
        self._close_socket()
        if started:
            self._report(err)

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

    def _start_failure(self) -> BaseException:
        """Why start-up failed: the worker's own error, else its death (the caller has waited
        for the exit status)."""
        if self._startup_error is not None:
            return self._startup_error
        how = describe_returncode(self.returncode)
        return SpawnError(
            f"the RPC worker (pid {self.pid}{self._proc._where()}) exited during start-up ({how})"
        )

    def _died(self) -> WorkerDiedError:
        how = describe_returncode(self.returncode)
        if not self._dec.at_boundary():
            how += ", in the middle of a frame"
        reason = f": it was killed because {self._kill_reason}" if self._kill_reason else ""
        return WorkerDiedError(
            f"the RPC worker (pid {self.pid}{self._proc._where()}) died with calls outstanding "
            f"({how}){reason}",
            self.pid,
            self.returncode,
        )

    def _fail_all(self, exc: BaseException) -> None:
        self._failure = exc
        pending, self._pending = self._pending, {}
        self._abandoned.clear()
        self._handlers.clear()
        self._batches.clear()
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
        self._out.drop()

    def _closed_cleanly(self) -> None:
        if not self._close_fired:
            self._close_fired = True
            if self._on_close is not None:
                self._on_close()


def _ignore(*args: object) -> None:
    """The handler of an abandoned call that had one of its own."""
