"""The sans-IO RPC connection (``_rpc._connection.RpcConnection``), without processes: frames
in, settled waiters, events, states and what the driver must do out; byte at a time and under
hypothesis.  (That the core does no I/O is ``test_layers``' rule: ``SANS_IO``.)"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import anyfork
from anyfork._child import _rpc_wire as W
from anyfork._child._records import error_record
from anyfork._child._serializers import get
from anyfork._rpc import _connection as C
from anyfork._rpc._answers import Box

PID = 4242


class Peer:
    """A connection and everything it tells its driver and its user."""

    def __init__(self, backend: C.Backend = "sync", *, retire: bool = True) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.conn = C.RpcConnection(
            get("pickle"),
            backend,
            None,
            self.emit,
            on_event=self.handler("event"),
            on_error=self.handler("error"),
            on_close=self.handler("close"),
            on_retire=self.handler("retire") if retire else None,
        )

    def emit(self, args: tuple[Any, ...], handler: Any) -> None:
        handler(*args)

    def handler(self, name: str) -> Any:
        return lambda *args: self.log.append((name, *args))

    def feed(self, data: bytes) -> list[str | None]:
        """Feed ``data`` one byte at a time; what each byte asked of the driver."""
        return [self.conn.receive_data(data[i : i + 1]) for i in range(len(data))]

    def sent(self) -> list[tuple[int, int, bytes]]:
        """The frames queued for the worker, decoded."""
        dec = W.Decoder(W.TO_CHILD)
        dec.receive(bytes(self.conn.out.small))
        frames = []
        while (frame := dec.next_frame()) is not None:
            frames.append((frame[0], frame[1], bytes(frame[2])))
        return frames

    def ready(self) -> Peer:
        assert self.conn.receive_data(W.frame(W.READY, 0, W.ready_payload(PID))) is None
        assert self.conn.state == C.READY
        assert self.conn.pid == PID
        return self


def value_frame(kind: int, cid: int, value: Any) -> bytes:
    return W.frame(kind, cid, b"".join(bytes(c) for c in get("pickle").dump_value(value)))


def event_frame(cid: int, *args: Any) -> bytes:
    return W.frame(W.EVENT, cid, b"".join(bytes(c) for c in get("pickle").dump_event(args)))


def stream_of_a_session() -> tuple[Peer, list[Box], bytes]:
    """A ready connection with three calls out, and the worker's answers to them."""
    peer = Peer().ready()
    boxes = [Box(), Box(), Box()]
    cids = [peer.conn.call(box, (i,), {}, None) for i, box in enumerate(boxes)]
    stream = b"".join(
        [
            event_frame(cids[0], "progress", 1),
            value_frame(W.OK, cids[0], "first"),
            W.frame(W.RETIRE, 0),
            W.frame(W.ERROR, cids[1], error_record(ValueError("bad"))),
            value_frame(W.OK, cids[2], [1, 2]),
        ]
    )
    return peer, boxes, stream


def test_frames_settle_their_calls_at_their_last_byte_in_order() -> None:
    peer, boxes, stream = stream_of_a_session()
    assert peer.feed(stream) == [None] * len(stream)
    assert boxes[0].value == "first"
    assert boxes[0].done()
    assert boxes[1].done()
    assert boxes[1].exc is not None
    with pytest.raises(ValueError, match=r"^bad\n\(raised in anyfork RPC worker pid 4242\)$"):
        raise boxes[1].exc
    assert boxes[2].value == [1, 2]
    assert peer.log == [("event", "progress", 1), ("retire",)]
    assert peer.conn.pending == {}


def test_each_answer_appears_exactly_at_its_last_byte() -> None:
    peer = Peer().ready()
    box = Box()
    cid = peer.conn.call(box, (), {}, None)
    frame = value_frame(W.OK, cid, "x")
    for byte in range(len(frame) - 1):
        peer.conn.receive_data(frame[byte : byte + 1])
        assert not box.done()
    peer.conn.receive_data(frame[-1:])
    assert box.value == "x"


@settings(max_examples=50, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_any_chunking_gives_the_same_outcome(cuts: list[int]) -> None:
    peer, boxes, stream = stream_of_a_session()
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for a, b in itertools.pairwise(points):
        if b > a:
            assert peer.conn.receive_data(stream[a:b]) is None
    assert [b.done() for b in boxes] == [True, True, True]
    assert (boxes[0].value, boxes[2].value) == ("first", [1, 2])
    assert peer.log == [("event", "progress", 1), ("retire",)]


@settings(max_examples=100, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=64))
def test_garbage_breaks_the_connection_cleanly(garbage: bytes) -> None:
    """Whatever the worker sends, the connection raises nothing: it handles it, or it is
    BROKEN with every call failed with ``ProtocolError`` and ``on_error`` told once."""
    peer = Peer().ready()
    box = Box()
    peer.conn.call(box, (), {}, None)
    asked = peer.conn.receive_data(garbage)
    assert asked in (None, C.BROKEN)
    if asked == C.BROKEN:
        assert isinstance(box.exc, anyfork.ProtocolError)
        assert f"pid {PID}" in str(box.exc)
        assert peer.log == []  # told once the driver has closed its socket
        peer.conn.io_closed()
        assert [entry[0] for entry in peer.log] == ["error"]
        assert not peer.conn.usable
        with pytest.raises(anyfork.ClosedError):
            peer.conn.call(Box(), (), {}, None)


def test_retire_without_a_pool_is_dropped() -> None:
    peer = Peer(retire=False).ready()
    assert peer.conn.receive_data(W.frame(W.RETIRE, 0) + event_frame(0, "after")) is None
    assert peer.log == [("event", "after")]


def test_a_clean_close() -> None:
    peer = Peer().ready()
    box = Box()
    peer.conn.call(box, (), {}, None)
    peer.conn.close()
    assert peer.conn.state == C.CLOSING
    assert not peer.conn.usable
    conn = peer.conn
    assert not conn.wants_shutdown  # the call is still queued
    conn.out.drop()  # (the driver wrote it)
    assert peer.conn.wants_shutdown
    with pytest.raises(anyfork.ClosedError, match="has been closed"):
        peer.conn.call(Box(), (), {}, None)
    frame = value_frame(W.OK, 1, "done")
    assert peer.conn.receive_data(frame) is None
    assert peer.conn.receive_data(b"") == C.CLOSED
    assert box.value == "done"
    assert peer.log == [("close",)]


def test_death_with_calls_outstanding_asks_for_the_exit_status() -> None:
    peer = Peer().ready()
    box = Box()
    peer.conn.call(box, (), {}, None)
    assert peer.conn.receive_data(W.HEADER.pack(W.OK, 1, 10)[:5]) is None
    assert peer.conn.receive_data(b"") == C.NEED_EXIT_STATUS
    assert not box.done()
    assert not peer.conn.usable
    err = peer.conn.died(-9)
    assert isinstance(box.exc, anyfork.WorkerDiedError)
    assert (box.exc.pid, box.exc.returncode) == (PID, -9)
    assert "killed by SIGKILL, in the middle of a frame" in str(err)
    peer.conn.io_closed()
    assert [entry[0] for entry in peer.log] == ["error"]
    with pytest.raises(anyfork.WorkerDiedError):
        peer.conn.call(Box(), (), {}, None)


def test_an_idle_worker_that_exits_makes_later_calls_worker_died() -> None:
    """One behaviour on both drivers: a call after the worker ended the connection by itself is
    a ``WorkerDiedError`` (not sent), as a call the death cut short is."""
    peer = Peer().ready()
    assert peer.conn.receive_data(b"") == C.CLOSED
    with pytest.raises(anyfork.WorkerDiedError, match="has exited"):
        peer.conn.call(Box(), (), {}, None)


def test_abandoning_a_sync_call_condemns_the_worker() -> None:
    peer = Peer("sync").ready()
    box = Box()
    cid = peer.conn.call(box, (), {}, None)
    assert peer.conn.abandon(cid, "timed out after 1 s") == C.KILL
    assert peer.conn.abandon(cid, "again") is None
    assert not peer.conn.usable
    with pytest.raises(anyfork.WorkerDiedError, match="because call 1 timed out after 1 s"):
        peer.conn.call(Box(), (), {}, None)
    # Its answer, already on its way, is dropped, not taken for a broken stream.
    assert peer.conn.receive_data(value_frame(W.OK, cid, 1)) is None
    assert not box.done()


def test_abandoning_an_async_call_cancels_it() -> None:
    peer = Peer("async").ready()
    cid = peer.conn.call(Box(), (), {}, None)
    peer.conn.out.drop()
    assert peer.conn.abandon(cid, "was cancelled") == C.FLUSH
    assert peer.sent() == [(W.CANCEL, cid, b"")]
    assert peer.conn.usable
    assert peer.conn.receive_data(W.frame(W.CANCELLED, cid)) is None


@pytest.mark.parametrize(
    ("first", "error"),
    [
        (W.frame(W.READY, 0, W.READY_PAYLOAD.pack(99, PID)), anyfork.ProtocolError),
        (W.frame(W.FAILED, 0, error_record(KeyError("nope"))), KeyError),
    ],
)
def test_a_failed_start(first: bytes, error: type[BaseException]) -> None:
    peer = Peer()
    assert peer.conn.receive_data(first) is None
    assert peer.conn.state == C.BROKEN
    assert isinstance(peer.conn.start_failure(None), error)


def test_death_during_start_up_is_a_spawn_error() -> None:
    peer = Peer()
    assert peer.conn.receive_data(b"") == C.NEED_EXIT_STATUS
    err = peer.conn.start_failure(3)
    assert isinstance(err, anyfork.SpawnError)
    assert "exited during start-up (exit status 3)" in str(err)
