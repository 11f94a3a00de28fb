"""Sans-IO tests of the RPC framing and the serialisers: no processes, no sockets."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anyfork._child import _rpc_wire as W
from anyfork._child import _serializers

_FRAMES = [
    (W.OK, 1, b"hello"),
    (W.EVENT, 0, b""),
    (W.ERROR, 0xFFFFFFFF, b"x" * 70_000),  # bigger than the decoder's buffer
    (W.CANCELLED, 7, b"y" * 300),
]


def _decode_all(dec: W.Decoder) -> list[tuple[int, int, bytes]]:
    out: list[tuple[int, int, bytes]] = []
    while True:
        frame = dec.next_frame()
        if frame is None:
            return out
        kind, cid, payload = frame
        out.append((kind, cid, bytes(payload)))


def _encoded() -> bytes:
    return b"".join(W.frame(*f) for f in _FRAMES)


def test_whole_stream() -> None:
    dec = W.Decoder(W.TO_PARENT)
    dec.feed(_encoded())
    assert _decode_all(dec) == _FRAMES
    assert dec.at_boundary()


def test_byte_at_a_time() -> None:
    dec = W.Decoder(W.TO_PARENT, size=64)
    got = []
    for byte in _encoded():
        dec.feed(bytes([byte]))
        got.extend(_decode_all(dec))
    assert got == _FRAMES


def test_get_buffer_protocol_with_big_frame_lands_in_place() -> None:
    payload = bytes(range(256)) * 1000
    data = W.frame(W.OK, 3, payload)
    dec = W.Decoder(W.TO_PARENT, size=128)
    pos = 0
    while pos < len(data):
        buf = dec.get_buffer()
        n = min(len(buf), 1000, len(data) - pos)
        buf[:n] = data[pos : pos + n]
        buf.release()
        dec.buffer_updated(n)
        pos += n
    frame = dec.next_frame()
    assert frame is not None
    assert frame[:2] == (W.OK, 3)
    assert type(frame[2]) is bytearray  # its own buffer, filled by the reads themselves
    assert frame[2] == payload


def test_truncated_at_eof_is_an_error() -> None:
    dec = W.Decoder(W.TO_PARENT)
    dec.feed(W.frame(W.OK, 1, b"abc")[:-1])
    assert dec.next_frame() is None
    dec.feed_eof()
    with pytest.raises(W.RpcWireError, match="EOF"):
        dec.next_frame()


def test_clean_eof() -> None:
    dec = W.Decoder(W.TO_PARENT)
    dec.feed(W.frame(W.OK, 1, b"abc"))
    dec.feed_eof()
    assert dec.next_frame() == (W.OK, 1, b"abc")
    assert dec.next_frame() is None


def test_unknown_kind_and_oversize_are_errors() -> None:
    dec = W.Decoder(W.TO_CHILD)
    with pytest.raises(W.RpcWireError, match="kind"):
        dec.feed(W.frame(W.OK, 1, b""))
    dec = W.Decoder(W.TO_PARENT, max_payload=10)
    with pytest.raises(W.RpcWireError, match="limit"):
        dec.feed(W.frame(W.OK, 1, b"x" * 11))


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
        dec.feed(data[i : i + step])
        got.extend(_decode_all(dec))
    dec.feed_eof()
    got.extend(_decode_all(dec))
    assert got == frames


@given(st.binary(max_size=200))
def test_garbage_raises_only_wire_errors(data: bytes) -> None:
    dec = W.Decoder(W.TO_PARENT, max_payload=1 << 20)
    try:
        dec.feed(data)
        dec.feed_eof()
        _decode_all(dec)
    except W.RpcWireError:
        pass


def test_config_roundtrip_and_version() -> None:
    text = W.pack_config("m:f", "sync", "pickle", "", 8)
    assert W.parse_config(text) == (W.VERSION, "m:f", "sync", "pickle", "", 8)
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
