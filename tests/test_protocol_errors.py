"""Bad bytes on the command channel (issue 8, point 6).

Whatever a child sends, a ``Process`` raises only anyfork's errors: bytes that are not reports
are a ``ProtocolError`` naming the process, at once, from every wait (``run``, ``to_fh``,
``wait_started``, asyncio and blocking).  A fake child (a socketpair whose far end the test
writes, adopted with ``anyfork.new_from_fh``) sends them.  A real child that receives a bad frame
reports it and exits; a parent and child of different protocol versions meet with one
``ProtocolError`` naming both versions.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anyfork
from anyfork._child import _records, _wire
from anyfork._child._wire import HEADER, U32, frame, pack_values
from anyfork._core import _spawn
from helpers import FACES, alive, eventually, wait_on

#: Every wait of a process, on both faces.
WAITS = [(what, face) for what in ("run", "to_fh", "wait_started") for face in FACES]


def wait(proc: anyfork.Process, what: str, face: str, timeout: float = 10.0) -> object:
    args = ("childfuncs:echo_args",) if what == "run" else ()
    return wait_on(face, proc, what, *args, timeout=timeout)


@pytest.fixture
def fake() -> Iterator[tuple[anyfork.Process, socket.socket]]:
    """A process whose child is the test: write its reports into the second item."""
    ours, theirs = socket.socketpair()
    with theirs:
        yield anyfork.new_from_fh(ours), theirs


def _record(exc: BaseException) -> bytes:
    return _records.error_record(exc)


#: Streams that break the protocol; ``eof``: the fake child then closes its end (else it stays
#: open: the error must come from what has arrived, at once).
BROKEN = {
    "unknown opcode": (b"\xff\0\0\0\0", False),
    "a command, not a report": (frame(_wire.EVAL, b""), False),
    "a truncated report": (frame(_wire.STARTED, U32.pack(7))[:7], True),
    "a header claiming 4 GiB": (HEADER.pack(_wire.STARTED, 0xFFFFFFFF), False),
    "more than MAX_REPORT": (HEADER.pack(_wire.ERROR, _wire.MAX_REPORT + 1), False),
    "a pid of 3 bytes": (frame(_wire.STARTED, b"\0\0\7"), False),
    "a short EXITED": (frame(_wire.EXITED, b"\0\0"), False),
    "an EXITED of a stopped process": (frame(_wire.EXITED, _wire.EXIT.pack(5, 0x137F)), False),
    "an ERROR that is no value list": (frame(_wire.ERROR, b"junk"), False),
    "an ERROR of three values": (frame(_wire.ERROR, pack_values(["a", "b", "c"])), False),
    "an ERROR with a broken record": (
        frame(_wire.ERROR, pack_values(["eval", b"\0\0\0\5ab"])),
        False,
    ),
    "a FORK_FAILED without a message": (frame(_wire.FORK_FAILED, b""), False),
    "a FORKED of 5 bytes": (frame(_wire.FORKED, b"\0\0\0\0\7"), False),
    "garbage after a good report": (frame(_wire.STARTED, U32.pack(4242)) + b"\xfe" * 5, False),
}


@pytest.mark.parametrize(("what", "face"), WAITS)
@pytest.mark.parametrize("name", sorted(BROKEN))
def test_bad_bytes_are_a_protocol_error_from_every_wait(
    fake: tuple[anyfork.Process, socket.socket], what: str, face: str, name: str
) -> None:
    proc, child = fake
    data, eof = BROKEN[name]
    child.sendall(data)
    if eof:
        child.shutdown(socket.SHUT_WR)
    with pytest.raises(anyfork.ProtocolError) as info:
        wait(proc, what, face)
    assert isinstance(info.value, anyfork.AnyforkError)
    text = str(info.value) + "".join(getattr(info.value, "__notes__", ()))
    assert "process" in text
    if name == "garbage after a good report":
        assert "process pid 4242" in text
    # The channel is broken for good: the error again, at once (or the process is spent).
    with pytest.raises((anyfork.ProtocolError, anyfork.ClosedError)):
        wait(proc, what, face)
    assert proc.pid in (None, 4242)  # the property never raises


@pytest.mark.parametrize("eof", [True, False])
@pytest.mark.parametrize(("what", "face"), [w for w in WAITS if w[0] != "run"])
def test_running_before_run_is_a_protocol_error(
    fake: tuple[anyfork.Process, socket.socket], what: str, face: str, eof: bool
) -> None:
    """RUNNING, and bytes after it, from a process never sent ``run``: read in one go (before
    a RUN, reports are read without a look first), so no wait could ever go on (``to_fh`` spun
    on a socket at EOF for ever)."""
    proc, child = fake
    child.sendall(frame(_wire.RUNNING, U32.pack(7)) + b"x")
    if eof:
        child.shutdown(socket.SHUT_WR)
    with pytest.raises(anyfork.ProtocolError, match="RUNNING came before"):
        wait(proc, what, face)


@pytest.mark.parametrize("face", FACES)
def test_the_parent_reads_what_arrives_not_what_a_header_claims(face: str) -> None:
    """A header claiming a big (allowed) report: each read asks for at most MAX_READ bytes."""
    sizes: list[int] = []

    class Spy(socket.socket):
        def recv(self, n: int, *flags: int) -> bytes:
            sizes.append(n)
            return super().recv(n, *flags)

    ours, child = socket.socketpair()
    with child:
        proc = anyfork.new_from_fh(Spy(fileno=ours.detach()))
        child.sendall(HEADER.pack(_wire.ERROR, _wire.MAX_REPORT) + b"x" * 100)
        child.shutdown(socket.SHUT_WR)
        with pytest.raises(anyfork.ProtocolError, match="EOF in the middle of a frame"):
            wait_on(face, proc, "wait_started")
    assert sizes
    assert max(sizes) <= _wire.MAX_READ


def test_reports_byte_at_a_time_through_the_receive_boundary(
    fake: tuple[anyfork.Process, socket.socket],
) -> None:
    """Each report takes effect exactly at its last byte; a bad header fails at its last."""
    proc, child = fake
    # Two children: their FORK frames go to the fake child, which answers for them below.
    first = proc.fork()
    second = proc.fork()
    stream: list[tuple[bytes, Callable[[], bool]]] = [
        (frame(_wire.STARTED, U32.pack(4242)), lambda: proc._pid == 4242),
        (frame(_wire.EXITED, _wire.EXIT.pack(11, 3 << 8)), lambda: proc._exits == {11: 3}),
        # The first child is pid 11: the status above was an earlier child's, and is dropped.
        (frame(_wire.FORKED, U32.pack(11)), lambda: first.pid == 11 and not proc._exits),
        (frame(_wire.FORK_FAILED, pack_values(["no"])), lambda: second._fork_failure == "no"),
        (frame(_wire.EXITED, _wire.EXIT.pack(11, 9)), lambda: first.returncode == -9),
        (b"\xff\0\0\0\0", lambda: isinstance(proc._failure, anyfork.ProtocolError)),
    ]
    for data, done in stream:
        for i in range(len(data)):
            assert not done()
            child.send(data[i : i + 1])
            proc._poll_reports()
        assert done()
    assert proc._chan.sock is None  # broken: closed


def test_to_fh_hands_over_between_two_reports(
    fake: tuple[anyfork.Process, socket.socket],
) -> None:
    """A report half read when ``to_fh`` is called is read to its end first: the new owner's
    first byte starts a report."""
    proc, child = fake
    second = frame(_wire.FORK_FAILED, pack_values(["second"]))

    async def main() -> socket.socket:
        loop = asyncio.get_running_loop()
        child.sendall(frame(_wire.STARTED, U32.pack(4242)) + second[:7])
        handing = asyncio.ensure_future(proc.to_fh(timeout=10))
        stepped = loop.create_future()
        loop.call_soon(stepped.set_result, None)  # after the hand-over's first step
        await stepped
        child.sendall(second[7:])
        return await handing

    handed = asyncio.run(main())
    child.sendall(frame(_wire.STARTED, U32.pack(4242)))  # for the new owner
    adopted = anyfork.new_from_fh(handed)
    assert adopted.wait_started_blocking(timeout=10) == 4242
    adopted.close()


# -- garbage in, only anyfork errors out ---------------------------------------------------------


def _decodes(data: bytes) -> bool:
    """Do ``data`` (then EOF) decode as a report stream, as far as a process reads (RUNNING),
    or up to an error the child reports (which is how the process failed, first)?"""
    dec = _wire.Decoder(_wire.REPORTS, _wire.MAX_REPORT, stop_after=_wire.RUNNING)
    try:
        for chunk in (data, b""):
            if not dec.stopped and not dec.eof:
                dec.receive(chunk)
        while (got := dec.next_frame()) is not None:
            op, payload, _ = got
            if op in (_wire.STARTED, _wire.RUNNING):
                _wire.unpack_u32(payload)
            elif op == _wire.ERROR:
                _records.unpack(_wire.unpack_error(payload)[1])
                return True
            elif op == _wire.FORK_FAILED:
                _wire.unpack_message(payload)
            elif op == _wire.EXITED:
                _wire.unpack_exit(payload)
    except (_wire.WireError, _records.RecordError):
        return False
    return True


_reports = st.one_of(
    st.builds(lambda pid: frame(_wire.STARTED, U32.pack(pid)), st.integers(0, 2**32 - 1)),
    st.builds(lambda pid: frame(_wire.RUNNING, U32.pack(pid)), st.integers(0, 2**32 - 1)),
    st.builds(
        lambda pid, st_: frame(_wire.EXITED, _wire.EXIT.pack(pid, st_)),
        st.integers(0, 2**32 - 1),
        st.integers(-(2**31), 2**31 - 1),
    ),
    st.builds(lambda m: frame(_wire.FORK_FAILED, pack_values([m])), st.text(max_size=10)),
    st.builds(
        lambda stage, rec: frame(_wire.ERROR, pack_values([stage, rec])),
        st.text(max_size=8),
        st.sampled_from([_record(ValueError("v")), _record(KeyError("k")), b"\0\0\0\1"]),
    ),
)
#: Report streams, damaged: one byte changed or cut short, or noise.
_streams = st.one_of(
    st.binary(max_size=120),
    st.lists(_reports, max_size=4).map(b"".join),
)


@settings(
    max_examples=120,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(_streams, st.integers(0, 300), st.integers(0, 255), st.sampled_from(WAITS))
def test_garbage_in_only_anyfork_errors_out(
    stream: bytes, where: int, byte: int, wait_: tuple[str, str]
) -> None:
    data = bytearray(stream)
    if data and where < 2 * len(data):  # damage it, some of the time
        if where % 2:
            del data[where // 2 :]
        else:
            data[where // 2] = byte
    ours, child = socket.socketpair()
    proc = anyfork.new_from_fh(ours)
    child.sendall(bytes(data))
    child.close()
    try:
        result = wait(proc, *wait_)
    except anyfork.ProtocolError:
        pass
    except anyfork.AnyforkError:  # a death, or an error a child reported (rebuilt)
        assert _decodes(bytes(data))
    else:
        assert _decodes(bytes(data))
        if isinstance(result, socket.socket):
            result.close()
    finally:
        proc.close()


# -- a real child that receives a bad frame ------------------------------------------------------


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("claimed", [_wire.MAX_COMMAND + 1, 0xFFFFFFFF])
def test_a_child_sent_an_impossible_frame_says_so_and_exits(face: str, claimed: int) -> None:
    first = anyfork.new()
    pid = first.wait_started_blocking(timeout=10)
    raw = first.to_fh_blocking(timeout=10)
    raw.sendall(HEADER.pack(_wire.EVAL, claimed))  # (never followed by its payload)
    proc = anyfork.new_from_fh(raw)
    with pytest.raises(anyfork.ProtocolError, match=f"a frame of {claimed} bytes exceeds") as info:
        wait_on(face, proc, "wait_started")
    assert any("in protocol of process" in note for note in info.value.__notes__)
    eventually(lambda: not alive(pid), what="the child to exit")


# -- protocol versions ---------------------------------------------------------------------------


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("what", ["wait_started", "run"])
@pytest.mark.parametrize("shipped", [True, False], ids=["shipped-code", "imported"])
def test_a_protocol_version_mismatch_is_one_protocol_error_naming_both(
    monkeypatch: pytest.MonkeyPatch, face: str, what: str, shipped: bool
) -> None:
    """The parent speaks another version (here: claims to): the exec'd child says so, and the
    parent raises ``ProtocolError`` at its first wait, whether the child got its code from the
    parent or imported anyfork itself."""
    ours = _wire.VERSION
    monkeypatch.setattr(_wire, "VERSION", 99)
    if not shipped:
        monkeypatch.setattr(_spawn, "_same_interpreter", lambda exe: False)
    proc = anyfork.new_exec(python=sys.executable)
    with pytest.raises(anyfork.ProtocolError, match=rf"version 99.* speaks version {ours}\b"):
        wait(proc, what, face)
    assert proc.wait_blocking(timeout=10) == 2
    assert proc.returncode == 2
