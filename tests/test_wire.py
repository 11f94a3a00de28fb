"""The sans-IO wire codec (``anyfork._child._wire``), after h11's tests: synchronous, no I/O.

Every stream is fed whole, one byte at a time, ``want()`` bytes at a time (the way both ends
read a socket) and with trailing bytes.  Hypothesis checks round trips and that arbitrary bytes
only ever raise ``WireError``.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Callable, Iterable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyfork._child import _wire
from anyfork._child._wire import Decoder, WireError, frame, pack_values, unpack_values

ALL_OPS = _wire.COMMANDS | _wire.REPORTS
EVERY_BYTE = frozenset(range(256))

Frame = tuple[int, bytes]

# Modest example counts: this file should run in a few seconds.  No example database, so
# running the tests leaves no .hypothesis directory behind.
FAST = settings(
    max_examples=150,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def encode(frames: Iterable[Frame]) -> bytes:
    return b"".join(frame(op, payload) for op, payload in frames)


def frame_ends(frames: Sequence[Frame]) -> list[int]:
    """Stream offsets just past each frame."""
    ends, pos = [], 0
    for _, payload in frames:
        pos += _wire.HEADER_SIZE + len(payload)
        ends.append(pos)
    return ends


def split(stream: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``stream`` cut at the given offsets (out-of-range and repeated cuts are ignored)."""
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(stream)}), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def drain(dec: Decoder) -> list[tuple[int, bytes, list[int]]]:
    out = []
    while (f := dec.next_frame()) is not None:
        out.append(f)
    return out


def feed_chunks(dec: Decoder, chunks: Iterable[bytes]) -> list[Frame]:
    got: list[Frame] = []
    for chunk in chunks:
        dec.receive(chunk)
        got.extend((op, payload) for op, payload, _ in drain(dec))
    return got


def feed_by_want(
    dec: Decoder, stream: bytes, frames: Sequence[Frame], sizes: Iterable[int] | None = None
) -> int:
    """Read ``stream`` the way the serve loop and the channel read a socket: never more than
    ``want()`` bytes (fewer when ``sizes`` says so, as a short ``recv`` would).

    Checks that no read crosses a frame boundary and that each frame comes out exactly when
    its last byte has arrived.  Returns how many bytes of ``stream`` were consumed.
    """
    ends = frame_ends(frames)
    sizes_iter = iter(sizes) if sizes is not None else None
    pos, index = 0, 0
    while True:
        f = dec.next_frame()
        if f is not None:
            op, payload, fds = f
            assert (op, payload) == frames[index]
            assert fds == []
            assert pos == ends[index], "a frame came out before (or after) its last byte"
            assert dec.at_boundary()
            index += 1
            continue
        if dec.stopped or pos == len(stream):
            return pos
        n = dec.want()
        assert n > 0, "want() is 0 while the decoder needs bytes: recv(0) would read as EOF"
        assert pos + n <= ends[index], "want() reaches past the end of the current frame"
        if sizes_iter is not None:
            n = max(1, min(n, next(sizes_iter, n)))
        dec.receive(stream[pos : pos + n])
        pos += n


# -- fixtures of the example-based tests -----------------------------------------------------

SAMPLES: dict[str, list[Frame]] = {
    "empty-payload": [(_wire.PID, b"")],
    "several-empty": [(_wire.PID, b""), (_wire.FORK, b""), (_wire.PID, b"")],
    "reports": [
        (_wire.STARTED, _wire.U32.pack(1234)),
        (_wire.EXITED, _wire.EXIT.pack(99, -1)),
        (_wire.RUNNING, _wire.U32.pack(1234)),
    ],
    "commands": [
        (_wire.IMPORT, pack_values(["os", "json.decoder"])),
        (_wire.EVAL, pack_values(["x = args", "é", b"\x00\xff"])),
        (_wire.ARGS, pack_values(["", b""])),
        (_wire.FDS, _wire.U32.pack(2)),
        (_wire.RUN, pack_values(["mod:func"])),
    ],
    "error-report": [
        (_wire.ERROR, pack_values(["eval", "builtins", "ValueError", "bad", "Traceback..."])),
        (_wire.FORK_FAILED, pack_values(["fork failed: [Errno 11]"])),
    ],
    "large": [(_wire.EVAL, pack_values(["x" * 70_000])), (_wire.PID, b"")],
}
SMALL_SAMPLES = {k: v for k, v in SAMPLES.items() if k != "large"}


# -- frame and value encoding ----------------------------------------------------------------


def test_frame_layout() -> None:
    assert frame(_wire.IMPORT, b"ab") == b"i\x00\x00\x00\x02ab"
    assert frame(_wire.PID) == b"q\x00\x00\x00\x00"
    assert _wire.HEADER_SIZE == 5
    big = frame(_wire.EVAL, b"z" * 0x10203)
    assert big[:5] == b"e\x00\x01\x02\x03"
    assert len(big) == 5 + 0x10203


def test_opcodes() -> None:
    commands = [
        *(_wire.IMPORT, _wire.EVAL, _wire.ARGS, _wire.FDS, _wire.FORK, _wire.RUN, _wire.PID),
        *(_wire.MAIN, _wire.AHEAD),
    ]
    reports = [
        *(_wire.STARTED, _wire.ERROR, _wire.FORK_FAILED, _wire.RUNNING, _wire.EXITED),
        _wire.FORKED,
    ]
    assert len(set(commands)) == len(commands)
    assert len(set(reports)) == len(reports)
    assert set(commands) == _wire.COMMANDS
    assert set(reports) == _wire.REPORTS
    assert not _wire.COMMANDS & _wire.REPORTS
    assert all(0 <= op <= 255 for op in ALL_OPS)


def test_pack_values_layout() -> None:
    assert pack_values([]) == b""
    assert pack_values(["a", b"bc"]) == b"s\x00\x00\x00\x01ab\x00\x00\x00\x02bc"
    assert pack_values(["é"]) == b"s\x00\x00\x00\x02\xc3\xa9"


@pytest.mark.parametrize(
    "values",
    [
        [],
        [""],
        [b""],
        ["", b"", ""],
        ["a", b"a"],
        ["héllo", "日本語", "😀", "\x00"],
        ["\ud800", "a\udfffb", "\udcff"],  # lone surrogates travel (surrogatepass)
        [b"\x00\xff" * 1000, bytes(range(256))],
        ["x" * (1 << 20), b"y" * (1 << 20)],
    ],
    ids=lambda v: f"{len(v)}-values",
)
def test_values_round_trip(values: list[str | bytes]) -> None:
    decoded = unpack_values(pack_values(values))
    assert decoded == values
    assert [type(v) for v in decoded] == [type(v) for v in values]


def test_pack_values_accepts_bytes_likes() -> None:
    # Typed as str | bytes, but bytes-likes are accepted (and arrive as bytes).
    decoded = unpack_values(pack_values([bytearray(b"ab"), memoryview(b"cd")]))  # type: ignore[list-item]
    assert decoded == [b"ab", b"cd"]
    assert all(type(v) is bytes for v in decoded)


@pytest.mark.parametrize("bad", [1, None, 1.5, ["a"], ("a",), object()])
def test_pack_values_rejects_other_types(bad: object) -> None:
    with pytest.raises(TypeError, match=type(bad).__name__):
        pack_values(["ok", bad])  # type: ignore[list-item]


def test_unpack_strings() -> None:
    assert _wire.unpack_strings(pack_values(["a", "", "é"])) == ["a", "", "é"]
    assert _wire.unpack_strings(b"") == []
    with pytest.raises(WireError, match="strings"):
        _wire.unpack_strings(pack_values(["a", b"b"]))


def test_unpack_u32() -> None:
    assert _wire.unpack_u32(_wire.U32.pack(0)) == 0
    assert _wire.unpack_u32(_wire.U32.pack(0xFFFFFFFF)) == 0xFFFFFFFF
    assert _wire.unpack_u32(b"\x00\x00\x01\x00") == 256
    for bad in (b"", b"\x00" * 3, b"\x00" * 5):
        with pytest.raises(WireError, match=f"got {len(bad)} bytes"):
            _wire.unpack_u32(bad)


def test_unpack_ints() -> None:
    fds = [0, 3, 1023, -1, 2**31 - 1]
    assert _wire.unpack_ints(struct.pack(f"{len(fds)}i", *fds)) == tuple(fds)
    assert _wire.unpack_ints(b"") == ()


def test_report_payloads() -> None:
    assert _wire.unpack_error(pack_values(["eval", b"record"])) == ("eval", b"record")
    assert _wire.unpack_message(pack_values(["fork failed"])) == "fork failed"
    assert _wire.unpack_exit(_wire.EXIT.pack(12, 3 << 8)) == (12, 3)  # exit status 3
    assert _wire.unpack_exit(_wire.EXIT.pack(12, 9)) == (12, -9)  # killed by signal 9
    assert _wire.version_error(b"rec") == frame(_wire.ERROR, pack_values(["version", b"rec"]))


@FAST
@given(st.integers(-(2**31), 2**31 - 1))
def test_exit_codes_are_what_os_makes_of_a_wait_status(status: int) -> None:
    payload = _wire.EXIT.pack(7, status)
    try:
        expected = os.waitstatus_to_exitcode(status)
    except ValueError:
        with pytest.raises(WireError, match="is not the wait status of a process that ended"):
            _wire.unpack_exit(payload)
    else:
        assert _wire.unpack_exit(payload) == (7, expected)


@pytest.mark.parametrize(
    ("unpack", "payload", "message"),
    [
        (_wire.unpack_error, pack_values(["eval"]), "an ERROR report is"),
        (_wire.unpack_error, pack_values([b"eval", b"record"]), "an ERROR report is"),
        (_wire.unpack_error, pack_values(["eval", "record"]), "an ERROR report is"),
        (_wire.unpack_error, b"junk", "truncated value header"),
        (_wire.unpack_message, b"", "expected one message, got 0"),
        (_wire.unpack_message, pack_values(["a", "b"]), "expected one message, got 2"),
        (_wire.unpack_message, pack_values([b"a"]), "expected a list of strings"),
        (_wire.unpack_exit, b"\0" * 7, "an EXITED report is 8 bytes, not 7"),
        (_wire.unpack_exit, _wire.EXIT.pack(1, 0x137F), "0x137f is not the wait status"),
    ],
)
def test_report_payload_errors(
    unpack: Callable[[bytes], object], payload: bytes, message: str
) -> None:
    with pytest.raises(WireError, match=message):
        unpack(payload)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"s", "truncated value header"),
        (b"s\x00\x00\x00", "truncated value header"),
        (pack_values(["ok"]) + b"b\x00", "truncated value header"),
        (b"s\x00\x00\x00\x05ab", "truncated value"),
        (b"b\x00\x00\x00\x01", "truncated value"),
        (b"b\xff\xff\xff\xff", "truncated value"),
        (b"x\x00\x00\x00\x00", "unknown value tag 0x78"),
        (pack_values(["ok"]) + b"\x00\x00\x00\x00\x00", "unknown value tag 0x0"),
        (b"s\x00\x00\x00\x01\xff", "bad string value"),
        (b"s\x00\x00\x00\x02\xc3", "truncated value"),
        (b"s\x00\x00\x00\x01\xc3", "bad string value"),
        (b"s\x00\x00\x00\x02\xc0\x80", "bad string value"),  # overlong NUL
    ],
)
def test_unpack_values_errors(payload: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        unpack_values(payload)


# -- the decoder: whole, byte by byte, want() at a time, trailing bytes ------------------------


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_decode_whole(name: str) -> None:
    frames = SAMPLES[name]
    dec = Decoder(ALL_OPS)
    assert dec.at_boundary()
    assert dec.want() == _wire.HEADER_SIZE
    dec.receive(encode(frames))
    assert [(op, payload) for op, payload, _ in drain(dec)] == frames
    assert dec.at_boundary()
    assert dec.want() == _wire.HEADER_SIZE
    dec.receive(b"")
    assert dec.eof
    assert dec.next_frame() is None
    assert dec.want() == 0


@pytest.mark.parametrize("name", sorted(SMALL_SAMPLES))
def test_decode_byte_by_byte(name: str) -> None:
    frames = SAMPLES[name]
    stream = encode(frames)
    ends = frame_ends(frames)
    dec = Decoder(ALL_OPS)
    got = []
    index = 0
    for pos in range(len(stream)):
        want = dec.want()
        assert 1 <= want <= ends[index] - pos
        dec.receive(stream[pos : pos + 1])
        f = dec.next_frame()
        if pos + 1 == ends[index]:
            assert f is not None, f"no frame after its last byte (offset {pos})"
            got.append(f[:2])
            assert dec.at_boundary()
            index += 1
        else:
            assert f is None, f"a frame came out early (offset {pos})"
            assert not dec.at_boundary()
    assert got == frames
    dec.receive(b"")
    assert dec.next_frame() is None


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_decode_want_at_a_time(name: str) -> None:
    frames = SAMPLES[name]
    stream = encode(frames)
    dec = Decoder(ALL_OPS)
    assert feed_by_want(dec, stream, frames) == len(stream)


@pytest.mark.parametrize("name", sorted(SMALL_SAMPLES))
@pytest.mark.parametrize("extra", [1, 4, 5, 6])
def test_decode_with_trailing_bytes(name: str, extra: int) -> None:
    """Bytes of the next frame that arrive early stay buffered for it."""
    frames = SAMPLES[name]
    follow = (_wire.ARGS, pack_values(["next"]))
    tail = frame(*follow)
    dec = Decoder(ALL_OPS)
    dec.receive(encode(frames) + tail[:extra])
    assert [f[:2] for f in drain(dec)] == frames
    assert not dec.at_boundary()
    assert dec.next_frame() is None
    # The rest of the header, or once the header is complete, the rest of the payload.
    rest = _wire.HEADER_SIZE - extra if extra < _wire.HEADER_SIZE else len(tail) - extra
    assert dec.want() == rest
    dec.receive(tail[extra:])
    assert [f[:2] for f in drain(dec)] == [follow]
    assert dec.at_boundary()


def test_decode_with_trailing_garbage() -> None:
    """Good frames come out first; the garbage after them is an error when its turn comes."""
    frames = SAMPLES["reports"]
    dec = Decoder(_wire.REPORTS)
    dec.receive(encode(frames) + b"\x01garbage")
    for expected in frames:
        f = dec.next_frame()
        assert f is not None
        assert f[:2] == expected
    with pytest.raises(WireError, match="unexpected opcode 0x1"):
        dec.next_frame()


def test_chunks_spanning_frames() -> None:
    frames = SAMPLES["commands"]
    stream = encode(frames)
    for size in (2, 3, 7, 11, 64):
        dec = Decoder(ALL_OPS)
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        assert feed_chunks(dec, [*chunks, b""]) == frames


# -- stop_after: the parent hands the socket over after RUNNING --------------------------------


def test_stop_after_leaves_the_users_bytes_unread() -> None:
    frames = [(_wire.STARTED, _wire.U32.pack(7)), (_wire.RUNNING, _wire.U32.pack(7))]
    user = b"the user's bytes, and a fake frame: " + frame(_wire.STARTED, b"\0\0\0\0")
    stream = encode(frames) + user
    dec = Decoder(_wire.REPORTS, stop_after=_wire.RUNNING)
    consumed = feed_by_want(dec, stream, frames)
    assert consumed == len(stream) - len(user)
    assert dec.stopped
    assert dec.at_boundary()
    assert dec.want() == 0
    assert dec.next_frame() is None
    with pytest.raises(WireError, match="after the final frame"):
        dec.receive(user[:1])
    with pytest.raises(WireError, match="after the final frame"):
        dec.receive(b"")


def test_stop_after_byte_by_byte() -> None:
    frames = [(_wire.EXITED, _wire.EXIT.pack(5, 0)), (_wire.RUNNING, _wire.U32.pack(9))]
    stream = encode(frames)
    dec = Decoder(_wire.REPORTS, stop_after=_wire.RUNNING)
    got = feed_chunks(dec, [stream[i : i + 1] for i in range(len(stream))])
    assert got == frames
    assert dec.stopped
    assert dec.want() == 0


def test_stop_after_whole_buffer_stops_decoding() -> None:
    """Whatever was buffered past the stop frame is never decoded as ours."""
    dec = Decoder(_wire.REPORTS, stop_after=_wire.RUNNING)
    dec.receive(frame(_wire.RUNNING, b"\0\0\0\1") + frame(_wire.STARTED, b"\0\0\0\2"))
    f = dec.next_frame()
    assert f is not None
    assert f[0] == _wire.RUNNING
    assert dec.stopped
    assert dec.next_frame() is None
    assert dec.want() == 0


def test_no_stop_by_default() -> None:
    frames = [(_wire.RUNNING, b""), (_wire.RUNNING, b"")]
    dec = Decoder(_wire.REPORTS)
    assert feed_chunks(dec, [encode(frames)]) == frames
    assert not dec.stopped


# -- file descriptors ride on frames -------------------------------------------------------------


def test_fds_go_to_the_last_frame_that_starts_in_a_read() -> None:
    """A read takes the fds of a send with its first byte and stops after that send: of the
    frames that start in the read, the fds rode on the last."""
    first = frame(_wire.PID)
    second = frame(_wire.FDS, _wire.U32.pack(2))
    dec = Decoder(_wire.COMMANDS)
    dec.receive(first + second[:7], fds=[7, 8])
    assert dec.next_frame() == (_wire.PID, b"", [])
    assert dec.next_frame() is None
    dec.receive(second[7:])
    assert dec.next_frame() == (_wire.FDS, _wire.U32.pack(2), [7, 8])
    assert dec.take_fds() == []


def test_fds_arriving_mid_frame_belong_to_it() -> None:
    data = frame(_wire.FDS, _wire.U32.pack(1))
    dec = Decoder(_wire.COMMANDS)
    dec.receive(data[:6])
    dec.receive(data[6:], fds=[5])
    assert dec.next_frame() == (_wire.FDS, _wire.U32.pack(1), [5])


FdFrame = tuple[int, bytes, list[int]]


class _UnixStream:
    """What a Linux AF_UNIX stream socket gives a reader (``unix_stream_read_generic``): the
    sends in order, each send's fds with its first byte; a read stops after taking a send's
    fds, and within a send when the buffer is full."""

    def __init__(self, sends: list[tuple[bytes, list[int]]]) -> None:
        self.data = [bytearray(data) for data, _ in sends]
        self.fds = [fds for _, fds in sends]

    def recvmsg(self, size: int) -> tuple[bytes, list[int]]:
        out = bytearray()
        fds: list[int] = []
        while self.data and len(out) < size:
            data, send_fds = self.data[0], self.fds[0]
            take = min(size - len(out), len(data))
            out += data[:take]
            del data[:take]
            fds, self.fds[0] = fds + send_fds, []
            if data:
                break
            del self.data[0], self.fds[0]
            if send_fds:
                break
        return bytes(out), fds


@st.composite
def _sends_with_fds(
    draw: st.DrawFn,
) -> tuple[list[tuple[int, bytes, list[int]]], list[tuple[bytes, list[int]]]]:
    """Frames (some with fds) and the sends that carry them: one send per frame, its fds on
    the first (a frame may also go out in several sends: a short write's rest has no fds)."""
    frames: list[FdFrame] = []
    sends: list[tuple[bytes, list[int]]] = []
    next_fd = 100
    for _ in range(draw(st.integers(1, 8))):
        payload = draw(st.binary(max_size=300))
        count = draw(st.integers(0, 3))
        fds = list(range(next_fd, next_fd + count))
        next_fd += count
        op = _wire.FDS if fds else _wire.EVAL
        data = frame(op, payload)
        frames.append((op, payload, fds))
        cut = draw(st.integers(1, len(data)))
        sends.append((data[:cut], fds))
        if cut < len(data):
            sends.append((data[cut:], []))
    return frames, sends


@given(_sends_with_fds(), st.booleans())
def test_fds_reach_their_frames_however_many_frames_a_read_takes(
    case: tuple[list[FdFrame], list[tuple[bytes, list[int]]]], bulk: bool
) -> None:
    frames, sends = case
    sock = _UnixStream(sends)
    dec = Decoder(_wire.COMMANDS)
    got: list[FdFrame] = []
    while len(got) < len(frames):
        f = dec.next_frame()
        if f is not None:
            got.append(f)
            continue
        data, fds = sock.recvmsg(dec.bulk_want() if bulk else dec.want())
        assert data, "the stream ended before every frame was decoded"
        dec.receive(data, fds)
    assert got == frames
    assert dec.take_fds() == []


def test_the_kernel_reads_fds_as_the_decoder_expects() -> None:
    """On a real socketpair (the rule ``receive`` relies on, checked against this kernel):
    frames sent one send each, the middle one with fds, read with ``bulk_want``."""
    import socket

    ours, theirs = socket.socketpair()
    r, w = os.pipe()
    try:
        frames = [(_wire.EVAL, b"a" * 10), (_wire.FDS, b"b" * 20), (_wire.EVAL, b"c" * 30)]
        for op, payload in frames:
            fds = [r, w] if op == _wire.FDS else []
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("2i", *fds))] if fds else []
            ours.sendmsg([frame(op, payload)], anc)
        dec = Decoder(_wire.COMMANDS)
        got: list[tuple[int, bytes, int]] = []
        while len(got) < len(frames):
            f = dec.next_frame()
            if f is not None:
                got.append((f[0], f[1], len(f[2])))
                for fd in f[2]:
                    os.close(fd)
                continue
            data, anc, _, _ = theirs.recvmsg(dec.bulk_want(), socket.CMSG_SPACE(8))
            dec.receive(data, [fd for _, _, d in anc for fd in struct.unpack(f"{len(d) // 4}i", d)])
        assert got == [(op, payload, 2 if op == _wire.FDS else 0) for op, payload in frames]
    finally:
        for each in (ours, theirs):
            each.close()
        os.close(r)
        os.close(w)


def test_bulk_want_takes_several_frames_from_a_boundary_only() -> None:
    dec = Decoder(_wire.COMMANDS)
    assert dec.bulk_want() == _wire.BULK_READ
    dec.receive(frame(_wire.EVAL, b"x" * 10)[:3])
    assert dec.bulk_want() == dec.want() == _wire.HEADER_SIZE - 3


def test_fds_on_the_first_byte_of_a_later_frame() -> None:
    """Read want() at a time, as the serve loop does: fds go with the frame they rode on."""
    frames = [(_wire.PID, b""), (_wire.FORK, b""), (_wire.FDS, _wire.U32.pack(2))]
    stream = encode(frames)
    starts = {0: [], 5: [10], 10: [11, 12]}
    dec = Decoder(_wire.COMMANDS)
    got = []
    pos = 0
    while pos < len(stream):
        f = dec.next_frame()
        if f is not None:
            got.append(f)
            continue
        n = dec.want()
        dec.receive(stream[pos : pos + n], fds=starts.get(pos, []))
        pos += n
    got.extend(drain(dec))
    assert got == [
        (_wire.PID, b"", []),
        (_wire.FORK, b"", [10]),
        (_wire.FDS, b"\0\0\0\2", [11, 12]),
    ]


def test_fds_accumulate_over_one_frame() -> None:
    data = frame(_wire.FDS, _wire.U32.pack(3))
    dec = Decoder(_wire.COMMANDS)
    dec.receive(data[:1], fds=[3])
    dec.receive(data[1:6], fds=[4, 5])
    assert dec.next_frame() is None
    dec.receive(data[6:], fds=[6])
    assert dec.next_frame() == (_wire.FDS, _wire.U32.pack(3), [3, 4, 5, 6])


def test_take_fds_of_an_incomplete_frame() -> None:
    data = frame(_wire.FDS, _wire.U32.pack(1))
    dec = Decoder(_wire.COMMANDS)
    dec.receive(data[:3], fds=[9])
    assert dec.take_fds() == [9]
    assert dec.take_fds() == []
    dec.receive(data[3:])
    assert dec.next_frame() == (_wire.FDS, _wire.U32.pack(1), [])


def test_fds_arriving_with_eof_can_be_taken() -> None:
    dec = Decoder(_wire.COMMANDS)
    dec.receive(b"", fds=[4])
    assert dec.eof
    assert dec.next_frame() is None
    assert dec.take_fds() == [4]


# -- errors ---------------------------------------------------------------------------------


def test_unknown_opcode() -> None:
    dec = Decoder(_wire.COMMANDS)
    dec.receive(frame(_wire.STARTED, b"\0\0\0\1"))  # a report is not a command
    with pytest.raises(WireError, match="unexpected opcode 0x50"):
        dec.next_frame()


def test_unknown_opcode_detected_from_the_header_alone() -> None:
    dec = Decoder(_wire.REPORTS)
    dec.receive(_wire.HEADER.pack(0xFF, 1000))
    with pytest.raises(WireError, match="unexpected opcode 0xff"):
        dec.next_frame()


@pytest.mark.parametrize("limit", [0, 10, 65536])
def test_oversize_payload(limit: int) -> None:
    dec = Decoder(ALL_OPS, max_payload=limit)
    dec.receive(frame(_wire.EVAL, b"x" * limit))
    assert dec.next_frame() == (_wire.EVAL, b"x" * limit, [])
    # Refused from the header alone: the decoder does not wait for (or buffer) the payload.
    dec.receive(_wire.HEADER.pack(_wire.EVAL, limit + 1))
    with pytest.raises(WireError, match="exceeds the limit"):
        dec.next_frame()


def test_default_limit_is_the_documented_maximum_command() -> None:
    dec = Decoder(ALL_OPS)
    dec.receive(_wire.HEADER.pack(_wire.EVAL, _wire.MAX_COMMAND))
    assert dec.next_frame() is None  # accepted: waiting for the payload
    for claimed in (_wire.MAX_COMMAND + 1, 0xFFFFFFFF):
        dec = Decoder(ALL_OPS)
        dec.receive(_wire.HEADER.pack(_wire.EVAL, claimed))
        with pytest.raises(WireError, match=f"a frame of {claimed} bytes exceeds the limit"):
            dec.next_frame()


@pytest.mark.parametrize("claimed", [_wire.MAX_READ + 1, 1 << 20, _wire.MAX_COMMAND])
def test_want_grows_with_what_arrives_not_with_what_a_header_claims(claimed: int) -> None:
    """A reader allocates what ``want()`` asks for: never more than MAX_READ at once, however
    big a frame its header claims, and the buffer holds only what has arrived."""
    dec = Decoder(ALL_OPS)
    dec.receive(_wire.HEADER.pack(_wire.EVAL, claimed))
    assert dec.next_frame() is None
    assert dec.want() == _wire.MAX_READ
    dec.receive(b"x" * 10)
    assert dec.next_frame() is None
    assert dec.want() == min(_wire.MAX_READ, claimed - 10)
    assert len(dec._buf) == 10
    dec.receive(b"")
    with pytest.raises(WireError, match="EOF in the middle"):
        dec.next_frame()


def test_a_frame_larger_than_one_read_comes_out_whole() -> None:
    payload = bytes(range(256)) * (3 * _wire.MAX_READ // 256 + 7)
    stream = frame(_wire.EVAL, payload) + frame(_wire.PID)
    dec = Decoder(ALL_OPS)
    assert feed_by_want(dec, stream, [(_wire.EVAL, payload), (_wire.PID, b"")]) == len(stream)


@pytest.mark.parametrize("name", sorted(SMALL_SAMPLES))
def test_eof_in_the_middle_of_a_frame(name: str) -> None:
    """Cut the stream at every offset that is not a frame boundary: EOF there is an error."""
    frames = SAMPLES[name]
    stream = encode(frames)
    boundaries = {0, *frame_ends(frames)}
    for cut in range(len(stream) + 1):
        dec = Decoder(ALL_OPS)
        if cut:
            dec.receive(stream[:cut])
        drain(dec)
        dec.receive(b"")
        if cut in boundaries:
            assert dec.next_frame() is None
            assert dec.eof
        else:
            with pytest.raises(WireError, match="EOF in the middle of a frame"):
                dec.next_frame()


def test_eof_right_after_a_header() -> None:
    """The header has been consumed, so the buffer is empty, yet the frame is incomplete."""
    dec = Decoder(ALL_OPS)
    dec.receive(_wire.HEADER.pack(_wire.EVAL, 3))
    assert dec.next_frame() is None
    dec.receive(b"")
    with pytest.raises(WireError, match="EOF in the middle"):
        dec.next_frame()


def test_data_after_eof() -> None:
    dec = Decoder(ALL_OPS)
    dec.receive(b"")
    with pytest.raises(WireError, match="after EOF"):
        dec.receive(frame(_wire.PID))


# -- hypothesis: round trips ----------------------------------------------------------------------

texts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(exclude_categories=()), max_size=10),  # surrogates too
    st.sampled_from(["\ud800", "\udfff", "a\udc80b"]),
)
values_lists = st.lists(st.one_of(texts, st.binary(max_size=60)), max_size=8)
frames_lists = st.lists(
    st.tuples(
        st.sampled_from(sorted(ALL_OPS)),
        st.one_of(st.binary(max_size=80), values_lists.map(pack_values)),
    ),
    max_size=8,
)


@FAST
@given(values_lists)
def test_values_round_trip_property(values: list[str | bytes]) -> None:
    decoded = unpack_values(pack_values(values))
    assert decoded == values
    assert [type(v) for v in decoded] == [type(v) for v in values]


@FAST
@given(frames_lists, st.data())
def test_frames_round_trip_random_chunks(frames: list[Frame], data: st.DataObject) -> None:
    stream = encode(frames)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10), label="cuts")
    chunks = split(stream, cuts)
    dec = Decoder(ALL_OPS)
    assert feed_chunks(dec, [*chunks, b""]) == frames
    assert dec.at_boundary()


@FAST
@given(frames_lists, st.lists(st.integers(1, 50), max_size=60))
def test_frames_round_trip_short_reads(frames: list[Frame], sizes: list[int]) -> None:
    """Reads of at most want() bytes, some shorter (as recv may return): frames come out
    exactly at their last byte and no read ever crosses a boundary."""
    stream = encode(frames)
    dec = Decoder(ALL_OPS)
    assert feed_by_want(dec, stream, frames, sizes) == len(stream)
    dec.receive(b"")
    assert dec.next_frame() is None


@FAST
@given(frames_lists, st.binary(max_size=40))
def test_stop_after_property(frames: list[Frame], user: bytes) -> None:
    """Whatever precedes RUNNING, nothing after it is read when reading by want()."""
    reports = [f for f in frames if f[0] != _wire.RUNNING]
    reports.append((_wire.RUNNING, _wire.U32.pack(1)))
    stream = encode(reports) + user
    dec = Decoder(ALL_OPS, stop_after=_wire.RUNNING)
    assert feed_by_want(dec, stream, reports) == len(stream) - len(user)
    assert dec.stopped
    assert dec.want() == 0


def feed_by_safe_want(dec: Decoder, stream: bytes, sizes: Iterable[int]) -> tuple[int, list[Frame]]:
    """Read as the parent does once a RUN is queued: ``safe_want()`` bytes at a time, each
    read getting at most ``size`` of them (a socket may return fewer bytes than asked).
    Returns the bytes taken and the frames decoded."""
    pos = 0
    got: list[Frame] = []
    cycle = itertools.cycle(list(sizes) or [len(stream) + 1])
    while pos < len(stream) and not dec.stopped:
        want = dec.safe_want()
        assert want > 0
        chunk = stream[pos : pos + min(want, next(cycle))]
        dec.receive(chunk)
        pos += len(chunk)
        got.extend((op, payload) for op, payload, _ in drain(dec))
    return pos, got


def test_safe_want_reads_up_to_the_final_frame_and_no_further() -> None:
    reports = [
        (_wire.FORKED, _wire.U32.pack(7)),
        (_wire.EXITED, _wire.EXIT.pack(5, 0)),
        (_wire.STARTED, _wire.U32.pack(7)),
        (_wire.RUNNING, _wire.U32.pack(9)),
    ]
    user = b"the function's own bytes, even a fake frame: " + frame(_wire.STARTED, b"1234")
    stream = encode(reports) + user
    dec = Decoder(_wire.REPORTS, stop_after=_wire.RUNNING)
    assert dec.safe_want() == _wire.FINAL_SIZE  # RUNNING alone: one read takes it all
    assert feed_by_safe_want(dec, stream, []) == (len(stream) - len(user), reports)
    assert dec.safe_want() == 0  # stopped: nothing more is ours


def test_safe_want_byte_at_a_time_and_from_a_partial_frame() -> None:
    """Reads that leave a partial header or payload still stop exactly at the end of
    RUNNING, whatever the frames before it (shorter than RUNNING, or longer)."""
    for first in (frame(_wire.ERROR, b""), frame(_wire.EXITED, _wire.EXIT.pack(5, 0))):
        stream = first + frame(_wire.RUNNING, _wire.U32.pack(9)) + b"USER"
        for size in (1, 2, 3, 6, 7, 13):
            dec = Decoder(_wire.REPORTS, stop_after=_wire.RUNNING)
            assert feed_by_safe_want(dec, stream, [size])[0] == len(stream) - 4
            assert dec.stopped


def test_a_final_frame_of_another_size_is_a_wire_error() -> None:
    dec = Decoder(_wire.REPORTS, stop_after=_wire.RUNNING)
    dec.receive(frame(_wire.RUNNING, b""))
    with pytest.raises(WireError, match="final frame of 0 bytes"):
        dec.next_frame()


@FAST
@given(frames_lists, st.binary(max_size=40), st.lists(st.integers(1, 60), max_size=20))
def test_safe_want_property(frames: list[Frame], user: bytes, sizes: list[int]) -> None:
    """Whatever precedes RUNNING and however short the reads, the reader takes exactly the
    frames up to RUNNING, whole, and not one byte of what follows."""
    reports = [f for f in frames if f[0] != _wire.RUNNING]
    reports.append((_wire.RUNNING, _wire.U32.pack(1)))
    stream = encode(reports) + user
    dec = Decoder(ALL_OPS, stop_after=_wire.RUNNING)
    assert feed_by_safe_want(dec, stream, sizes) == (len(stream) - len(user), reports)


# -- hypothesis: garbage in, only WireError out ----------------------------------------------------


#: Every payload decoder: garbage in, only WireError out.
UNPACKERS = (
    unpack_values,
    _wire.unpack_strings,
    _wire.unpack_u32,
    _wire.unpack_error,
    _wire.unpack_message,
    _wire.unpack_exit,
)


def _decode_garbage(dec: Decoder, chunks: Iterable[bytes], limit: int) -> None:
    """Decode everything, unpacking each payload every way; only WireError may escape."""
    steps = 0
    for chunk in chunks:
        dec.receive(chunk)
        while (f := dec.next_frame()) is not None:
            steps += 1
            assert steps <= limit, "the decoder produced more frames than the input can hold"
            _, payload, fds = f
            assert fds == []
            for unpack in UNPACKERS:
                try:
                    unpack(payload)
                except WireError:
                    pass


#: Payload-shaped garbage: items of a tag, a plausible length and data that is often not
#: utf-8, then possibly cut short.  Reaches the deeper error paths far more often than noise.
_bad_utf8 = st.sampled_from(
    [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\x80", b"\xf8", b"a"]
)
_garbage_item = st.tuples(
    st.sampled_from([b"s", b"b"]) | st.binary(min_size=1, max_size=1),
    st.integers(0, 8) | st.integers(0, 0xFFFFFFFF),
    st.lists(_bad_utf8 | st.binary(max_size=4), max_size=4).map(b"".join),
).map(lambda t: t[0] + _wire.U32.pack(t[1]) + t[2])
value_garbage = st.tuples(st.lists(_garbage_item, max_size=5), st.integers(0, 200)).map(
    lambda t: b"".join(t[0])[: t[1]]
)


#: Stream-shaped garbage: headers with any opcode and often a fitting length, around payloads
#: that are (damaged) value lists or noise, then cut anywhere.
_garbage_frame = st.tuples(
    st.integers(0, 255),
    st.none() | st.integers(0, 0xFFFFFFFF),
    value_garbage | st.binary(max_size=20),
).map(lambda t: _wire.HEADER.pack(t[0], len(t[2]) if t[1] is None else t[1]) + t[2])
stream_garbage = st.tuples(st.lists(_garbage_frame, max_size=6), st.integers(0, 400)).map(
    lambda t: b"".join(t[0])[: t[1]]
)


@settings(FAST, max_examples=300)
@given(
    st.binary(max_size=300) | stream_garbage,
    st.lists(st.integers(0, 300), max_size=8),
    st.data(),
)
def test_garbage_in_only_wire_error_out(
    garbage: bytes, cuts: list[int], data: st.DataObject
) -> None:
    max_payload = data.draw(st.sampled_from([0, 3, 64, 1 << 20, 1 << 32]), label="max_payload")
    stop = data.draw(st.sampled_from([-1, *sorted(ALL_OPS)]), label="stop_after")
    dec = Decoder(EVERY_BYTE, max_payload=max_payload, stop_after=stop)
    chunks = split(garbage, cuts)
    limit = len(garbage) // _wire.HEADER_SIZE  # each frame takes at least a header
    try:
        _decode_garbage(dec, chunks, limit)
        if not dec.stopped:
            _decode_garbage(dec, [b""], limit)
    except WireError:
        pass


@settings(FAST, max_examples=600)  # cheap enough: about 0.7 s
@given(st.one_of(st.binary(max_size=200), value_garbage))
def test_garbage_values_only_wire_error(payload: bytes) -> None:
    for unpack in UNPACKERS:
        try:
            unpack(payload)
        except WireError:
            pass


@FAST
@given(values_lists.filter(bool), st.data())
def test_damaged_values_only_wire_error(values: list[str | bytes], data: st.DataObject) -> None:
    """Valid encodings, truncated or with one byte changed: reach the deeper error paths."""
    payload = bytearray(pack_values(values))
    index = data.draw(st.integers(0, len(payload) - 1), label="index")
    if data.draw(st.booleans(), label="truncate"):
        del payload[index:]
    else:
        payload[index] = data.draw(st.integers(0, 255), label="byte")
    for unpack in (unpack_values, _wire.unpack_strings):
        try:
            result = unpack(bytes(payload))
        except WireError:
            continue
        assert all(isinstance(v, (str, bytes)) for v in result)
