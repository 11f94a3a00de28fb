"""The RPC wire format, sans-IO, shared by the parent (``_rpc``) and the child (``_rpc_server``).

Imported into every RPC worker, so it imports nothing but ``struct`` (annotations are strings).

Frame::

    +----------+------------------+---------------------+-------------------+
    | kind: u8 | call id: u32 (BE)| length: u32 (BE)    | payload (length)  |
    +----------+------------------+---------------------+-------------------+

Data flow (one socket; the child is ``_rpc_server``, the parent ``_rpc._connection``)::

    parent                                   child
    ------                                   -----
    send_arg(config), run(serve)  ------->   init(*args), resolve func
                                  <-------   READY (version, pid)  | FAILED (error record)
    CALL id, (args, kwargs)       ------->   func(*args, **kwargs)
                                  <-------   EVENT id, ... (worker.event, any number, in order)
                                  <-------   RETIRE (worker.retire: for the pools' _on_retire)
                                  <-------   OK id, result  | ERROR id, error record
    CALL_BATCH id, [args, ...]    ------->   func(*args) for each, in order
                                  <-------   BATCH_OK id, [result, ...]
                                           | BATCH_ERROR id, i, [result, ...i], error record
    CANCEL id (async backend)     ------->   task.cancel()  ->  CANCELLED id
    (a broken stream)             ------->   (nothing more is run)
                                  <-------   FAILED (a ProtocolError record), exit 1
    shutdown(SHUT_WR)             ------->   finish every call, reply, exit
                                  <-------   EOF

Payloads: ``CALL_BATCH``, the serialised list of the calls' arguments by column
(``[first_args, second_args, ...]``); ``CANCEL``, empty (the sync backend ignores it);
``READY`` (id 0), u32 version + u32 pid, once the functions are resolved and ``init`` has run;
``FAILED`` (id 0), an error record (before ``READY``: start-up failed; after it: the worker
received a broken stream and stops; nothing follows either); ``ERROR`` for a batch: it failed
before any item ran (its arguments could not be decoded); ``CANCELLED``, empty: cancelled before
it produced a result; ``EVENT``, the id of the call that raised it (0 outside any call);
``BATCH_ERROR``, ``batch_error_head(i, n)``, the serialised results of items ``0..i-1`` in ``n``
bytes, item ``i``'s error record (the items after ``i`` were not run); ``RETIRE`` (id 0),
empty: the worker asks the pool it belongs to for a replacement (a plain client ignores it).
Frames are written in the order the child produced them; that is the only ordering guarantee,
and the parent delivers events and results in exactly that order.

Maximum frame size: a payload holds at most ``MAX_PAYLOAD`` bytes (4 GiB - 1, what its length
field can say); a sender refuses more, a receiver treats a longer header as broken.  A receiver
allocates for a frame as its bytes arrive (``Decoder``), never what a header claims.

The configuration travels before the server starts, as the last ``send_arg`` string
(``pack_config``); it carries ``VERSION``, and the child refuses another version at start-up.
The configuration's first two items, the header and the ``READY``/``FAILED`` frames keep their
meaning across versions, so that a mismatch is reported in words (``version_mismatch``), as the
same ``ProtocolError`` whichever side finds it.

Rule 1: nothing here touches a socket, a clock or the filesystem.
Rule 2: every decoding error is ``RpcWireError``; the caller decides what it means.
"""

from __future__ import annotations

import struct

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover - type checkers only; the child never imports typing
    from typing import Any

#: Bumped whenever a frame or the configuration changes meaning (3: batches, the call id of an
#: event, ``done`` in the configuration; 4: ``RETIRE``).
VERSION = 4

HEADER = struct.Struct(">BII")
HEADER_SIZE = HEADER.size
READY_PAYLOAD = struct.Struct(">II")
BATCH_ERROR_HEAD = struct.Struct(">II")

CALL = ord("C")
CALL_BATCH = ord("B")
CANCEL = ord("X")
READY = ord("Y")
FAILED = ord("F")
OK = ord("O")
ERROR = ord("E")
CANCELLED = ord("N")
EVENT = ord("V")
BATCH_OK = ord("L")
BATCH_ERROR = ord("Q")
RETIRE = ord("R")

TO_CHILD = frozenset((CALL, CALL_BATCH, CANCEL))
TO_PARENT = frozenset((READY, FAILED, OK, ERROR, CANCELLED, EVENT, BATCH_OK, BATCH_ERROR, RETIRE))

MAX_PAYLOAD = 0xFFFFFFFF
MAX_ID = 0xFFFFFFFF
#: Most buffers either side hands to one sendmsg (IOV_MAX is 1024 on Linux).
MAX_IOV = 512

_CONFIG_MAGIC = "anyfork.rpc"
_SEP = "\x00"


class RpcWireError(Exception):
    """Bytes that are not a valid RPC frame or record (a bug, or a corrupted stream)."""


class TruncatedError(RpcWireError):
    """The stream ended in the middle of a frame (for the parent: the worker died writing)."""


def header(kind: int, call_id: int, length: int) -> bytes:
    if length > MAX_PAYLOAD:
        raise ValueError(f"a payload of {length} bytes exceeds the 4 GiB frame limit")
    return HEADER.pack(kind, call_id, length)


def frame(kind: int, call_id: int = 0, payload: bytes = b"") -> bytes:
    return header(kind, call_id, len(payload)) + payload


def advance(bufs: list[Any], sent: int) -> list[Any]:
    """What is left of ``bufs`` (byte-format buffers) once ``sendmsg`` wrote ``sent`` bytes."""
    i = 0
    while sent and i < len(bufs):
        n = len(bufs[i])
        if sent >= n:
            sent -= n
            i += 1
        else:
            bufs[i] = memoryview(bufs[i])[sent:]
            sent = 0
    while i < len(bufs) and not len(bufs[i]):
        i += 1
    return bufs[i:]


def version_mismatch(parent: int, worker: int) -> str:
    return (
        f"RPC protocol version {parent} in the parent, {worker} in the worker: the parent and "
        f"the worker import different anyfork versions"
    )


def ready_payload(pid: int) -> bytes:
    return READY_PAYLOAD.pack(VERSION, pid)


def parse_ready(payload: bytes) -> tuple[int, int]:
    if len(payload) != READY_PAYLOAD.size:
        raise RpcWireError(f"READY payload of {len(payload)} bytes")
    version, pid = READY_PAYLOAD.unpack(payload)
    return int(version), int(pid)


def batch_error_head(index: int, results_size: int) -> bytes:
    return BATCH_ERROR_HEAD.pack(index, results_size)


def parse_batch_error(payload: bytes | bytearray) -> tuple[int, memoryview, memoryview]:
    view = memoryview(payload)
    if len(view) < BATCH_ERROR_HEAD.size:
        raise RpcWireError(f"BATCH_ERROR payload of {len(view)} bytes")
    index, size = BATCH_ERROR_HEAD.unpack_from(view)
    end = BATCH_ERROR_HEAD.size + size
    if end > len(view):
        raise RpcWireError(f"BATCH_ERROR results of {size} bytes in {len(view)}")
    return int(index), view[BATCH_ERROR_HEAD.size : end], view[end:]


def pack_config(
    func: str,
    backend: str,
    serializer: str,
    init: str,
    concurrency: int,
    done: str = "",
    version: int = VERSION,
) -> str:
    items = [_CONFIG_MAGIC, str(version), func, backend, serializer, init, done, str(concurrency)]
    for item in items:
        if _SEP in item:
            raise ValueError(f"configuration values cannot contain NUL: {item!r}")
    return _SEP.join(items)


def parse_config(text: object) -> tuple[int, str, str, str, str, str, int]:
    """``(version, func, backend, serializer, init, done, concurrency)``; another version is
    returned, not refused, so that the caller can report the mismatch in words."""
    items = text.split(_SEP) if isinstance(text, str) else []
    if len(items) < 2 or items[0] != _CONFIG_MAGIC:
        raise RpcWireError("the last argument is not an RPC configuration (use anyfork.rpc)")
    try:
        version = int(items[1])
    except ValueError:
        raise RpcWireError(f"bad RPC protocol version {items[1]!r}") from None
    if version != VERSION:
        return version, "", "", "", "", "", 0
    if len(items) != 8:
        raise RpcWireError(f"an RPC configuration has 8 items, not {len(items)}")
    _, _, func, backend, serializer, init, done, concurrency = items
    try:
        limit = int(concurrency)
    except ValueError:
        raise RpcWireError(f"bad concurrency {concurrency!r}") from None
    return version, func, backend, serializer, init, done, limit


class Decoder:
    """Turns a byte stream into ``(kind, call_id, payload)`` frames, fed as an
    ``asyncio.BufferedProtocol`` (``buffer_updated(0)``: EOF) or by ``receive(data)``.  Only
    ``next_frame()`` raises (``None``: more bytes needed), after every complete frame before
    the fault.

    Small frames come out of one reusable buffer (one read carries many), as ``bytes``.  A
    bigger one gets a ``bytearray`` of its own that reads fill directly (copied once, by the
    kernel), grown with the bytes that arrive, never to what the header claims.
    """

    def __init__(
        self, allowed: frozenset[int], max_payload: int = MAX_PAYLOAD, size: int = 1 << 16
    ):
        self._allowed = allowed
        self._max_payload = max_payload
        self._buf = bytearray(size)
        self._start = 0
        self._end = 0
        # The frame too big for _buf: its buffer (filled up to _big_fill), and its full length.
        self._big: bytearray | None = None
        self._big_fill = 0
        self._big_size = 0
        self._big_kind = 0
        self._big_id = 0
        self._frames: list[tuple[int, int, bytes | bytearray]] = []
        self._next = 0
        self._error = ""
        self.eof = False

    def get_buffer(self) -> memoryview:
        big = self._big
        if big is not None:
            if self._big_fill == len(big):
                self._grow(big)
            return memoryview(big)[self._big_fill :]
        if self._end == len(self._buf):
            self._compact()
        return memoryview(self._buf)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        if nbytes <= 0:
            self.eof = True
            return
        if self.eof or self._error:
            # Nothing after EOF or a bad header is a frame; the bytes are dropped.
            self._error = self._error or "data after EOF"
            self._start = self._end = 0
            self._big = None
            return
        big = self._big
        if big is not None:
            self._big_fill += nbytes
            if self._big_fill == self._big_size:
                self._frames.append((self._big_kind, self._big_id, big))
                self._big = None
            return
        self._end += nbytes
        self._parse()

    def receive(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        if not view.nbytes:
            self.buffer_updated(0)
            return
        pos = 0
        while pos < len(view):
            buf = self.get_buffer()
            n = min(len(buf), len(view) - pos)
            buf[:n] = view[pos : pos + n]
            buf.release()
            self.buffer_updated(n)
            pos += n

    def next_frame(self) -> tuple[int, int, bytes | bytearray] | None:
        frames = self._frames
        if frames:  # then _next < len(frames): the list is cleared when its last one is taken
            i = self._next
            item = frames[i]
            i += 1
            if i == len(frames):
                frames.clear()
                self._next = 0
            else:
                self._next = i
            return item
        if self._error:
            raise RpcWireError(self._error)
        if self.eof and not self.at_boundary():
            raise TruncatedError("EOF in the middle of a frame")
        return None

    def at_boundary(self) -> bool:
        return self._big is None and self._end == self._start

    def _grow(self, big: bytearray) -> None:
        """Double the big frame's buffer, up to the frame's size, with bytes of the idle ``_buf``
        (reads overwrite them): a ``bytes(n)`` per growth made receiving 10 MiB ~8x slower."""
        more = min(len(big), self._big_size - len(big))
        filler = memoryview(self._buf)
        while more > 0:
            piece = min(more, len(filler))
            big += filler[:piece]
            more -= piece
        filler.release()

    def _compact(self) -> None:
        if self._start:
            size = self._end - self._start
            self._buf[:size] = self._buf[self._start : self._end]
            self._start, self._end = 0, size

    def _parse(self) -> None:
        buf = self._buf
        while self._end - self._start >= HEADER_SIZE:
            kind, call_id, length = HEADER.unpack_from(buf, self._start)
            if kind not in self._allowed:
                self._error = f"unexpected frame kind {kind:#x}"
            elif length > self._max_payload:
                self._error = f"a frame of {length} bytes exceeds the limit of {self._max_payload}"
            if self._error:
                self._start = self._end = 0
                return
            body = self._start + HEADER_SIZE
            have = self._end - body
            if have >= length:
                self._frames.append((kind, call_id, bytes(buf[body : body + length])))
                self._start = body + length
                continue
            if HEADER_SIZE + length > len(buf):
                # Sized by what has arrived, not by what the header claims (see the class docs).
                big = bytearray(min(length, max(len(buf), 2 * have)))
                big[:have] = buf[body : self._end]
                self._big, self._big_fill, self._big_size = big, have, length
                self._big_kind, self._big_id = kind, call_id
                self._start = self._end = 0
                return
            if body + length > len(buf):
                self._compact()
            return
        if self._start == self._end:
            self._start = self._end = 0
