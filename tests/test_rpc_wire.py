"""Sans-IO tests of the RPC framing and the serialisers: no processes, no sockets."""

from __future__ import annotations

import pickle
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anyfork._child import _rpc_wire as W
from anyfork._child import _serializers

_FRAMES = [
    (W.OK, 1, b"hello"),
    (W.EVENT, 0, b""),
    (W.ERROR, 0xFFFFFFFF, b"x" * 70_000),  # bigger than the decoder's buffer
    (W.CANCELLED, 7, b"y" * 300),
    (W.BATCH_OK, 3, b"results"),
    (W.EVENT, 4, b"of call 4"),
    (W.BATCH_ERROR, 4, W.batch_error_head(1, 2) + b"rsrecord"),
    (W.OK, 2, b""),
]

#: A frame header that claims the largest payload a frame can carry.
_HUGE = W.header(W.OK, 1, W.MAX_PAYLOAD)


def _decode_all(dec: W.Decoder) -> list[tuple[int, int, bytes]]:
    out: list[tuple[int, int, bytes]] = []
    while True:
        frame = dec.next_frame()
        if frame is None:
            return out
        kind, cid, payload = frame
        out.append((kind, cid, bytes(payload)))


def _encoded(frames: list[tuple[int, int, bytes]] = _FRAMES) -> bytes:
    return b"".join(W.frame(*f) for f in frames)


def _ends(frames: list[tuple[int, int, bytes]]) -> list[int]:
    """The offset of each frame's last byte in the encoded stream."""
    ends, pos = [], 0
    for _, _, payload in frames:
        pos += W.HEADER_SIZE + len(payload)
        ends.append(pos - 1)
    return ends


def test_whole_stream() -> None:
    dec = W.Decoder(W.TO_PARENT)
    dec.receive(_encoded())
    assert _decode_all(dec) == _FRAMES
    assert dec.at_boundary()


@pytest.mark.parametrize("size", [16, 64, 1 << 16])
def test_byte_at_a_time_each_frame_appears_at_its_last_byte(size: int) -> None:
    dec = W.Decoder(W.TO_PARENT, size=size)
    data = _encoded()
    ends = dict(zip(_ends(_FRAMES), _FRAMES, strict=True))
    for i, byte in enumerate(data):
        dec.receive(bytes([byte]))
        got = _decode_all(dec)
        assert got == ([ends[i]] if i in ends else []), f"after byte {i}"
        assert dec.at_boundary() is (i in ends)
    dec.receive(b"")
    assert dec.next_frame() is None


@pytest.mark.parametrize("size", [16, 1 << 16])
def test_trailing_bytes_are_kept_for_the_next_frame(size: int) -> None:
    data = _encoded()
    ends = _ends(_FRAMES)
    for cut in ends[:-1]:
        # Everything up to a frame's end, plus the first bytes of the next one.
        for extra in (1, W.HEADER_SIZE - 1, W.HEADER_SIZE + 1):
            dec = W.Decoder(W.TO_PARENT, size=size)
            split = min(cut + 1 + extra, len(data))
            dec.receive(data[:split])
            first = _decode_all(dec)
            assert first == _FRAMES[: len([e for e in ends if e < split])]
            assert dec.at_boundary() is (split - 1 in ends)
            dec.receive(data[split:])
            assert first + _decode_all(dec) == _FRAMES
            assert dec.at_boundary()


def test_get_buffer_protocol_with_big_frame_lands_in_place() -> None:
    payload = bytes(range(256)) * 1000
    data = W.frame(W.OK, 3, payload) + W.frame(W.EVENT, 0, b"after")
    dec = W.Decoder(W.TO_PARENT, size=128)
    pos = 0
    frames = []
    while pos < len(data):
        buf = dec.get_buffer()
        n = min(len(buf), 1000, len(data) - pos)
        buf[:n] = data[pos : pos + n]
        buf.release()
        dec.buffer_updated(n)
        pos += n
        while (frame := dec.next_frame()) is not None:
            frames.append(frame)
    assert [f[:2] for f in frames] == [(W.OK, 3), (W.EVENT, 0)]
    assert type(frames[0][2]) is bytearray  # its own buffer, filled by the reads themselves
    assert frames[0][2] == payload
    assert frames[1][2] == b"after"


@pytest.mark.parametrize("eof", ["receive", "buffer_updated"])
@pytest.mark.parametrize("cut", [1, W.HEADER_SIZE, W.HEADER_SIZE + 2, 70_000])
def test_truncated_at_eof_is_an_error(eof: str, cut: int) -> None:
    dec = W.Decoder(W.TO_PARENT, size=64)
    dec.receive(W.frame(W.OK, 1, b"a") + W.frame(W.OK, 2, b"x" * 100_000)[:cut])
    assert dec.next_frame() == (W.OK, 1, b"a")
    assert dec.next_frame() is None
    if eof == "receive":
        dec.receive(b"")
    else:
        dec.buffer_updated(0)  # what recv_into says at EOF
    assert dec.eof
    with pytest.raises(W.TruncatedError, match="EOF in the middle of a frame"):
        dec.next_frame()


def test_clean_eof() -> None:
    dec = W.Decoder(W.TO_PARENT)
    dec.receive(W.frame(W.OK, 1, b"abc"))
    dec.receive(b"")
    assert dec.next_frame() == (W.OK, 1, b"abc")
    assert dec.next_frame() is None
    assert dec.next_frame() is None


def test_errors_surface_from_next_frame_only_after_the_good_frames() -> None:
    dec = W.Decoder(W.TO_CHILD)
    dec.receive(W.frame(W.CALL, 1, b"ok") + W.frame(W.OK, 1, b"") + W.frame(W.CALL, 2, b""))
    dec.receive(_HUGE)  # after a bad header, bytes are dropped, not buffered
    assert dec.next_frame() == (W.CALL, 1, b"ok")
    for _ in range(2):  # and it stays broken
        with pytest.raises(W.RpcWireError, match="unexpected frame kind 0x4f"):
            dec.next_frame()
    assert type(dec.get_buffer()) is memoryview  # still a place to read into


def test_oversize_and_data_after_eof_are_errors() -> None:
    dec = W.Decoder(W.TO_PARENT, max_payload=10)
    dec.receive(W.frame(W.OK, 1, b"x" * 10) + W.frame(W.OK, 2, b"x" * 11))
    assert dec.next_frame() == (W.OK, 1, b"x" * 10)
    with pytest.raises(W.RpcWireError, match="11 bytes exceeds the limit of 10"):
        dec.next_frame()
    dec = W.Decoder(W.TO_PARENT)
    dec.receive(W.frame(W.OK, 1, b""))
    dec.receive(b"")
    dec.receive(b"more")
    assert dec.next_frame() == (W.OK, 1, b"")
    with pytest.raises(W.RpcWireError, match="data after EOF"):
        dec.next_frame()


def _peak_allocation(work: Callable[[], object]) -> int:
    """The most memory Python allocated (tracemalloc) while ``work`` ran."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        work()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("claim", [256 << 20, W.MAX_PAYLOAD])
@pytest.mark.parametrize("size", [64, 1 << 16])
def test_allocation_grows_with_the_bytes_that_arrive(claim: int, size: int) -> None:
    """A header claiming up to 4 GiB costs what has arrived (twice it at most, or one buffer),
    never what it claims: a garbage header cannot make the receiver zero-fill gigabytes."""
    dec = W.Decoder(W.TO_PARENT, size=size)
    header = W.header(W.OK, 1, claim)
    assert _peak_allocation(lambda: dec.receive(header + b"x" * 7)) <= 2 * (1 << 16)
    arrived = 7
    chunk = b"y" * 50_000
    for _ in range(40):  # 2 MB more, in reads of whatever size get_buffer offers
        assert _peak_allocation(lambda: dec.receive(chunk)) <= 3 * (arrived + len(chunk)) + size
        arrived += len(chunk)
    assert dec.next_frame() is None
    dec.receive(b"")
    with pytest.raises(W.TruncatedError):
        dec.next_frame()


def test_a_grown_frame_arrives_whole() -> None:
    payload = bytes(range(256)) * 12_345  # ~3 MiB, grown from 64 bytes by doubling
    dec = W.Decoder(W.TO_PARENT, size=64)
    data = W.frame(W.OK, 9, payload) + W.frame(W.OK, 10, b"next")
    for i in range(0, len(data), 4099):
        dec.receive(data[i : i + 4099])
    assert _decode_all(dec) == [(W.OK, 9, payload), (W.OK, 10, b"next")]


@settings(deadline=None)  # no time limit per example: the machine may be loaded
@given(
    st.lists(
        st.tuples(
            st.sampled_from(sorted(W.TO_PARENT)),
            st.integers(0, W.MAX_ID),
            st.binary(max_size=300),
        ),
        max_size=20,
    ),
    st.integers(1, 97),
    st.sampled_from([32, 64, 1 << 16]),
)
def test_roundtrip_any_chunking(frames: list[tuple[int, int, bytes]], step: int, size: int) -> None:
    data = b"".join(W.frame(*f) for f in frames)
    dec = W.Decoder(W.TO_PARENT, size=size)
    got = []
    for i in range(0, len(data), step):
        dec.receive(data[i : i + step])
        got.extend(_decode_all(dec))
    dec.receive(b"")
    got.extend(_decode_all(dec))
    assert got == frames


@settings(deadline=None)  # no time limit per example: the machine may be loaded
@given(st.binary(max_size=200), st.sampled_from([W.TO_PARENT, W.TO_CHILD]), st.booleans())
def test_garbage_raises_only_wire_errors(data: bytes, allowed: frozenset[int], eof: bool) -> None:
    # The default limit (4 GiB): a garbage length must not be allocated either.
    dec = W.Decoder(allowed, size=64)
    try:
        for i in range(0, len(data), 7):
            dec.receive(data[i : i + 7])
            _decode_all(dec)
        if eof:
            dec.receive(b"")
        _decode_all(dec)
    except W.RpcWireError:
        pass


@settings(deadline=None)  # no time limit per example: the machine may be loaded
@given(st.binary(min_size=1, max_size=40))
def test_a_valid_header_then_garbage_is_taken_as_payload(tail: bytes) -> None:
    dec = W.Decoder(W.TO_PARENT, size=16)
    dec.receive(W.header(W.EVENT, 0, len(tail)) + tail)
    assert dec.next_frame() == (W.EVENT, 0, tail)


def test_config_roundtrip_and_version() -> None:
    text = W.pack_config("m:f", "sync", "pickle", "", 8)
    assert W.parse_config(text) == (W.VERSION, "m:f", "sync", "pickle", "", "", 8)
    text = W.pack_config("m:f", "async", "json", "m:init", 3, done="m:done")
    assert W.parse_config(text) == (W.VERSION, "m:f", "async", "json", "m:init", "m:done", 3)
    skewed = W.pack_config("m:f", "sync", "pickle", "", 8, version=W.VERSION + 1)
    assert W.parse_config(skewed)[0] == W.VERSION + 1
    for bad in (b"bytes", "not a config", "anyfork.rpc\x00x"):
        with pytest.raises(W.RpcWireError):
            W.parse_config(bad)
    with pytest.raises(ValueError, match="NUL"):
        W.pack_config("m:\x00f", "sync", "pickle", "", 8)


def test_ready_payload() -> None:
    assert W.parse_ready(W.ready_payload(1234)) == (W.VERSION, 1234)
    with pytest.raises(W.RpcWireError):
        W.parse_ready(b"abc")


def test_version_mismatch_names_both_versions() -> None:
    text = W.version_mismatch(2, 99)
    assert "version 2 in the parent" in text
    assert "99 in the worker" in text


# -- serialisers --------------------------------------------------------------------------------


def _join(chunks: list[bytes | bytearray | memoryview]) -> bytes:
    return b"".join(bytes(c) for c in chunks)


@pytest.mark.parametrize("name", ["pickle", "json"])
def test_codec_call_roundtrip(name: str) -> None:
    codec = _serializers.get(name)
    args, kwargs = codec.load_call(_join(codec.dump_call((1, "two", [3]), {"k": None})))
    assert args == (1, "two", [3])
    assert kwargs == {"k": None}
    assert codec.load_event(_join(codec.dump_event(("a", 1)))) == ("a", 1)
    assert codec.load_value(_join(codec.dump_value({"x": [1.5]}))) == {"x": [1.5]}


def test_pickle_big_buffers_travel_out_of_band() -> None:
    codec = _serializers.get("pickle")
    big = bytearray(b"z" * (1 << 20))
    chunks = codec.dump_value({"data": big, "small": bytearray(b"s")})
    assert any(isinstance(c, memoryview) and c.nbytes == len(big) for c in chunks)
    assert sum(len(bytes(c)) for c in chunks) < len(big) + 1000  # not copied into the stream
    assert codec.load_value(_join(chunks)) == {"data": big, "small": bytearray(b"s")}


@settings(deadline=None)  # no time limit per example: the machine may be loaded
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text() | st.binary(), st.lists))
def test_pickle_value_roundtrip(value: object) -> None:
    codec = _serializers.get("pickle")
    assert codec.load_value(_join(codec.dump_value(value))) == value


@pytest.mark.parametrize(("name", "value"), [("bytes", b"\x00\xff"), ("str", "h\u00e9")])
def test_raw_codecs(name: str, value: object) -> None:
    codec = _serializers.get(name)
    assert codec.load_call(_join(codec.dump_call((value,), {}))) == ((value,), {})
    assert codec.load_value(_join(codec.dump_value(value))) == value
    with pytest.raises(TypeError, match="exactly one"):
        codec.dump_call((value, value), {})
    with pytest.raises(TypeError, match="exactly one"):
        codec.dump_value(1)


def test_user_serializer_by_name() -> None:
    codec = _serializers.get("test_rpc_wire:Marshal")
    assert codec.load_call(_join(codec.dump_call((1, 2), {"a": 3}))) == ((1, 2), {"a": 3})


class Marshal:
    """A user serialiser: any object with dumps/loads."""

    @staticmethod
    def dumps(obj: object) -> bytes:
        return pickle.dumps(obj)

    @staticmethod
    def loads(data: bytes) -> object:
        return pickle.loads(data)


def test_bad_serializer_names() -> None:
    with pytest.raises(ValueError, match="unknown serialiser"):
        _serializers.get("yaml")
    with pytest.raises(ValueError, match="dumps"):
        _serializers.get("os:path")
    for name in ("msgpack", "cloudpickle"):
        try:
            __import__(name)
        except ImportError:
            with pytest.raises(ImportError, match=f"pip install {name}"):
                _serializers.get(name)


def test_pickle_big_bytes_out_of_band_types_kept() -> None:
    codec = _serializers.get("pickle")
    value = ([b"a" * 100_000], {"k": bytearray(b"b" * 100_000)}, b"small")
    chunks = codec.dump_value(value)
    assert sum(1 for c in chunks if isinstance(c, memoryview)) == 2
    got = codec.load_value(_join(chunks))
    assert got == value
    assert type(got[0][0]) is bytes
    assert type(got[1]["k"]) is bytearray


# -- batches --------------------------------------------------------------------------------------


def test_batch_error_payload() -> None:
    payload = W.batch_error_head(2, 5) + b"12345" + b"the record"
    index, results, record = W.parse_batch_error(payload)
    assert (index, bytes(results), bytes(record)) == (2, b"12345", b"the record")
    for bad in (b"", b"\x00" * 7, W.batch_error_head(0, 6) + b"12345"):
        with pytest.raises(W.RpcWireError, match="BATCH_ERROR"):
            W.parse_batch_error(bad)


@pytest.mark.parametrize("name", ["pickle", "json", "test_rpc_wire:Marshal"])
def test_codec_batch_roundtrip(name: str) -> None:
    codec = _serializers.get(name)
    assert codec.batches
    columns: list[list[Any]] = [[1, 2, 3], ["a", "b", "c"]]
    got, n = codec.load_batch(_join(codec.dump_batch(columns)))
    assert (got, n) == (columns, 3)
    assert codec.load_results(_join(codec.dump_results([1, None, "x"]))) == [1, None, "x"]


@pytest.mark.parametrize(
    "payload", [[], [[1], [1, 2]], [1, 2], {"a": [1]}, "ab"], ids=lambda p: repr(p)
)
def test_codec_refuses_what_is_not_a_batch(payload: Any) -> None:
    codec = _serializers.get("pickle")
    with pytest.raises(ValueError, match="a batch payload is a list of argument lists"):
        codec.load_batch(_join(codec.dump_value(payload)))
    with pytest.raises(ValueError, match="results are a list"):
        codec.load_results(_join(codec.dump_value({"not": "a list"})))


def test_tuples_are_taken_for_lists() -> None:
    codec = _serializers.get("pickle")
    assert codec.load_batch(_join(codec.dump_value(([1, 2], (3, 4))))) == ([[1, 2], [3, 4]], 2)
    assert codec.load_results(_join(codec.dump_value((1, 2)))) == [1, 2]


@pytest.mark.parametrize("name", ["bytes", "str"])
def test_raw_codecs_cannot_batch(name: str) -> None:
    codec = _serializers.get(name)
    assert not codec.batches
    for attempt in (
        lambda: codec.dump_batch([[b"x"]]),
        lambda: codec.load_batch(b"x"),
        lambda: codec.dump_results([b"x"]),
        lambda: codec.load_results(b"x"),
    ):
        with pytest.raises(TypeError, match="cannot carry a batch of calls"):
            attempt()


def test_a_batch_of_pickles_keeps_bytes_in_band_and_buffers_out_of_band() -> None:
    codec = _serializers.get("pickle")
    big = b"z" * (1 << 17)
    chunks = codec.dump_batch([[big, bytearray(b"s")]])
    assert not any(isinstance(c, memoryview) for c in chunks)  # no look for big bytes
    assert codec.load_batch(_join(chunks)) == ([[big, bytearray(b"s")]], 2)
    buffer = pickle.PickleBuffer(bytearray(big))
    chunks = codec.dump_results([buffer])
    assert any(isinstance(c, memoryview) and c.nbytes == len(big) for c in chunks)


def _answer(name: str, results: list[object], failure: Exception | None) -> tuple[int, Any]:
    """What ``batch_answer`` sends, decoded: ``(BATCH_OK, results)`` or
    ``(BATCH_ERROR, (index, results, error type name, message))``."""
    from anyfork._child import _records
    from anyfork._child._rpc_server import batch_answer

    codec = _serializers.get(name)
    kind, chunks = batch_answer(codec, list(results), failure)
    payload = _join(chunks)
    if kind == W.BATCH_OK:
        return kind, codec.load_results(payload)
    index, data, record = W.parse_batch_error(payload)
    _, module, qualname, message, _ = _records.unpack(record)
    return kind, (index, codec.load_results(data), f"{module}.{qualname}", message)


def test_batch_answer_all_results() -> None:
    assert _answer("pickle", [1, "a"], None) == (W.BATCH_OK, [1, "a"])


def test_batch_answer_an_item_that_raised() -> None:
    kind, (index, results, type_name, message) = _answer("pickle", [1, 2], KeyError("k"))
    assert (kind, index, results, type_name) == (W.BATCH_ERROR, 2, [1, 2], "builtins.KeyError")
    assert "k" in message


@pytest.mark.parametrize("failure", [None, KeyError("later")])
def test_batch_answer_a_result_that_cannot_be_encoded(failure: Exception | None) -> None:
    """It fails its item, even when a later item raised: the results before it are sent."""
    kind, (index, results, type_name, message) = _answer("json", [1, 2, {3}, 4], failure)
    assert (kind, index, results) == (W.BATCH_ERROR, 2, [1, 2])
    assert type_name == "anyfork.EncodeError"
    assert "cannot encode the result (set)" in message


def _served_batch(name: str, payload: bytes, func: Callable[..., object] = abs) -> Any:
    """What a sync-backend worker answers to one ``CALL_BATCH`` frame, in this process:
    ``(kind, decoded)`` where ``decoded`` is the results, or ``(type name, message)``."""
    import socket

    from anyfork._child import _records
    from anyfork._child._rpc_server import SyncServer

    codec = _serializers.get(name)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        SyncServer(theirs, codec, func).batch(7, payload)
        theirs.close()
        dec = W.Decoder(W.TO_PARENT)
        while not dec.eof:
            dec.receive(ours.recv(65536))
        frames = _decode_all(dec)
    [(kind, cid, answer)] = frames
    assert cid == 7
    if kind == W.BATCH_OK:
        return kind, codec.load_results(answer)
    if kind == W.BATCH_ERROR:
        index, data, record = W.parse_batch_error(answer)
        _, module, qualname, message, _ = _records.unpack(record)
        return kind, (index, codec.load_results(data), f"{module}.{qualname}")
    assert kind == W.ERROR
    _, module, qualname, message, _ = _records.unpack(answer)
    return kind, (f"{module}.{qualname}", message)


def test_a_worker_answers_a_batch_in_one_frame() -> None:
    codec = _serializers.get("pickle")
    payload = _join(codec.dump_batch([[1, -2, 3]]))
    assert _served_batch("pickle", payload) == (W.BATCH_OK, [1, 2, 3])
    payload = _join(codec.dump_batch([[1, "x", 3]]))
    assert _served_batch("pickle", payload) == (W.BATCH_ERROR, (1, [1], "builtins.TypeError"))


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x00\x00\x00\x00garbage", b"\x00\x00\x00\x00" + pickle.dumps([[1], [1, 2]])],
    ids=["empty", "not a pickle", "columns not all as long"],
)
def test_a_worker_answers_a_broken_batch_with_a_decode_error(payload: bytes) -> None:
    kind, (type_name, message) = _served_batch("pickle", payload)
    assert (kind, type_name) == (W.ERROR, "anyfork.DecodeError")
    assert message.startswith("cannot decode the batch's arguments: ")


@settings(deadline=None)  # no time limit per example: the machine may be loaded
@given(st.binary(max_size=64))
def test_a_worker_answers_any_batch_payload_with_one_frame(payload: bytes) -> None:
    """JSON, so that random bytes cannot name a function for the loader to call."""
    kind, _ = _served_batch("json", payload, func=repr)
    assert kind in (W.BATCH_OK, W.BATCH_ERROR, W.ERROR)


@settings(deadline=None)  # no time limit per example: the machine may be loaded
@given(
    st.sampled_from([W.BATCH_OK, W.BATCH_ERROR]),
    st.binary(max_size=64),
    st.integers(1, 5),
)
def test_a_broken_batch_answer_is_a_wire_or_decode_error(kind: int, payload: bytes, n: int) -> None:
    from anyfork._errors import DecodeError
    from anyfork._rpc._answers import batch_result

    codec = _serializers.get("json")
    try:
        result = batch_result(codec, kind, payload, n, 1)
    except (W.RpcWireError, DecodeError):
        return
    assert len(result.results) == (n if kind == W.BATCH_OK else result.failed_at)
