"""The command-stream wire format, sans-IO, shared by parent and child.

This module is imported into every template and every worker, so it imports nothing but the C
half of ``struct`` (``_struct``: the Python half is one more file for a fresh interpreter to find
and load) and no ``typing`` (annotations are strings, see ``from __future__``).

Frames, sizes and the version rule: docs/design.md, "The command protocol".  Nothing here
touches a socket, a clock or the filesystem; every decoding error is ``WireError``, and the
caller decides what it means (the parent: ``ProtocolError``, at ``ProcessProtocol._receive``).
"""

from __future__ import annotations

import _struct as struct

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover - type checkers only; the child never imports typing
    from collections.abc import Iterable, Sequence

    Value = str | bytes

#: Bumped whenever the frame layout or an opcode's payload changes.  An exec'd child refuses
#: to serve a parent that speaks another version (it is passed on the command line).
VERSION = 3

HEADER = struct.Struct(">BI")
HEADER_SIZE = HEADER.size
U32 = struct.Struct(">I")
#: The size of a ``Decoder``'s final frame (``stop_after``: RUNNING, a u32 payload).
FINAL_SIZE = HEADER_SIZE + U32.size

#: Most fds one frame may carry; the kernel's SCM_MAX_FD is 253.
MAX_FDS = 253

#: The largest command payload (an ``eval``'s code and arguments, a ``send_arg``'s values).
MAX_COMMAND = 1 << 30
#: The largest report payload (an error record with its traceback is the biggest there is).
MAX_REPORT = 16 << 20
#: The most bytes ``Decoder.want()`` asks a reader to read at once.
MAX_READ = 1 << 16
#: What ``Decoder.bulk_want()`` asks for at a frame boundary: a few frames' worth.
BULK_READ = 4096

# Parent -> child commands.
IMPORT = ord("i")  # payload: list of module names
EVAL = ord("e")  # payload: list [code, *args]
ARGS = ord("a")  # payload: list of str/bytes values appended to the argument list
FDS = ord("h")  # payload: list of one str per fd (how to hand it over: FD_RAW...); fds ride along
FORK = ord("f")  # payload: empty; exactly one fd (the new child's socket) rides on the frame
RUN = ord("r")  # payload: list [function reference]
PID = ord("q")  # payload: empty; asks the child to answer with a PID frame
MAIN = ord("m")  # payload: list [how, where, now, *argv]: the parent's main script (_main)
AHEAD = ord("g")  # as FORK for each socket riding on it, when idle; payload b"now": at once

# Child -> parent reports.
STARTED = ord("P")  # payload: u32 pid; the first frame every process sends
ERROR = ord("E")  # payload: list [stage, error record (bytes, see _records)]
FORK_FAILED = ord("X")  # payload: list [message] (a FORK or AHEAD failed); the template serves on
RUNNING = ord("R")  # payload: u32 pid; nothing of ours follows, the socket is the user's
EXITED = ord("Z")  # payload: EXIT (pid, wait status) of a child this process forked and reaped
FORKED = ord("F")  # payload: u32 pid of the child the next FORK or AHEAD frame made (in order)

COMMANDS = frozenset((IMPORT, EVAL, ARGS, FDS, FORK, RUN, PID, MAIN, AHEAD))
REPORTS = frozenset((STARTED, ERROR, FORK_FAILED, RUNNING, EXITED, FORKED))

# How an fd of an FDS frame (payload: ``pack_values`` of one str per fd) is handed over: as the
# child sees fit (a socket, an unbuffered binary file, a directory's int), as a buffered binary
# file, or as a text file ("t", then encoding, errors and line_buffering "0"/"1", NUL-separated).
FD_RAW = ""
FD_BUFFERED = "b"
FD_TEXT = "t"

EXIT = struct.Struct(">Ii")

_TAG_STR = 0x73  # "s"
_TAG_BYTES = 0x62  # "b"
_ITEM = struct.Struct(">BI")


class WireError(Exception):
    """Bytes that are not a valid frame or payload (a bug, or a corrupted stream)."""


def frame(op: int, payload: bytes = b"") -> bytes:
    """Encode one frame."""
    return HEADER.pack(op, len(payload)) + payload


def pack_values(values: Iterable[Value]) -> bytes:
    """Encode a list of ``str``/``bytes`` values so that each keeps its type."""
    parts = []
    for value in values:
        if isinstance(value, str):
            data = value.encode("utf-8", "surrogatepass")
            parts.append(_ITEM.pack(_TAG_STR, len(data)))
        elif isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
            parts.append(_ITEM.pack(_TAG_BYTES, len(data)))
        else:
            raise TypeError(f"only str and bytes travel as arguments, not {type(value).__name__}")
        parts.append(data)
    return b"".join(parts)


def unpack_values(payload: bytes) -> list[Value]:
    """Decode what ``pack_values`` encoded; raise ``WireError`` on anything else."""
    values: list[Value] = []
    view = memoryview(payload)
    pos, end = 0, len(payload)
    while pos < end:
        if end - pos < _ITEM.size:
            raise WireError("truncated value header")
        tag, size = _ITEM.unpack_from(view, pos)
        pos += _ITEM.size
        if end - pos < size:
            raise WireError("truncated value")
        data = bytes(view[pos : pos + size])
        pos += size
        if tag == _TAG_STR:
            try:
                values.append(data.decode("utf-8", "surrogatepass"))
            except UnicodeDecodeError as exc:
                raise WireError(f"bad string value: {exc}") from None
        elif tag == _TAG_BYTES:
            values.append(data)
        else:
            raise WireError(f"unknown value tag {tag:#x}")
    return values


def unpack_strings(payload: bytes) -> list[str]:
    """Decode a value list that must hold only strings."""
    values = unpack_values(payload)
    for value in values:
        if not isinstance(value, str):
            raise WireError("expected a list of strings")
    return values  # type: ignore[return-value]  # every item was checked to be str above


def unpack_ints(data: bytes) -> tuple[int, ...]:
    """Native C ints, as SCM_RIGHTS carries them."""
    if len(data) % 4:
        raise WireError(f"{len(data)} bytes are not a whole number of ints")
    return struct.unpack(f"{len(data) // 4}i", data)


def pack_ints(fds: Sequence[int]) -> bytes:
    """Native C ints, for SCM_RIGHTS."""
    return struct.pack(f"{len(fds)}i", *fds)


def unpack_u32(payload: bytes) -> int:
    if len(payload) != U32.size:
        raise WireError(f"expected a 4-byte integer, got {len(payload)} bytes")
    return int(U32.unpack(payload)[0])


# -- report payloads (decoded by the parent, at its receive boundary) --------------------------


def unpack_error(payload: bytes) -> tuple[str, bytes]:
    """An ERROR report: ``(stage, error record)``."""
    values = unpack_values(payload)
    if len(values) != 2 or not isinstance(values[0], str) or not isinstance(values[1], bytes):
        raise WireError("an ERROR report is [stage (str), record (bytes)]")
    return values[0], values[1]


def unpack_fd_specs(payload: bytes, count: int) -> list[str]:
    """The specs of an FDS frame that carried ``count`` fds."""
    specs = unpack_strings(payload)
    if len(specs) != count:
        raise WireError(f"expected {len(specs)} file descriptors, received {count}")
    for spec in specs:
        if spec not in (FD_RAW, FD_BUFFERED) and not spec.startswith(FD_TEXT + "\0"):
            raise WireError(f"unknown file descriptor spec {spec!r}")
    return specs


def text_spec(encoding: str, errors: str, line_buffering: bool) -> str:
    return "\0".join((FD_TEXT, encoding, errors, "1" if line_buffering else "0"))


def unpack_text_spec(spec: str) -> tuple[str, str, bool]:
    """``(encoding, errors, line_buffering)`` of a text spec."""
    parts = spec.split("\0")
    if len(parts) != 4 or parts[0] != FD_TEXT or parts[3] not in ("0", "1"):
        raise WireError(f"bad text file spec {spec!r}")
    return parts[1], parts[2], parts[3] == "1"


def unpack_main(payload: bytes) -> tuple[str, str, bool, list[str]]:
    """A MAIN command: ``(how, where, now, argv)``."""
    values = unpack_strings(payload)
    if len(values) < 3 or values[0] not in ("path", "module", "none"):
        raise WireError("a MAIN command is [how (path, module, none), where, now, *argv]")
    return values[0], values[1], values[2] == "1", values[3:]


def unpack_message(payload: bytes) -> str:
    """A FORK_FAILED report: one string."""
    values = unpack_strings(payload)
    if len(values) != 1:
        raise WireError(f"expected one message, got {len(values)} values")
    return values[0]


def unpack_exit(payload: bytes) -> tuple[int, int]:
    """An EXITED report: ``(pid, return code)``, the code ``-N`` for death by signal N."""
    if len(payload) != EXIT.size:
        raise WireError(f"an EXITED report is {EXIT.size} bytes, not {len(payload)}")
    pid, status = EXIT.unpack(payload)
    # os.waitstatus_to_exitcode, without importing os here: the low 7 bits are 0 for an exit
    # (its code in the next byte), the killing signal otherwise; 0x7f is a stopped process.
    signum = status & 0x7F
    if signum == 0:
        return pid, (status >> 8) & 0xFF
    if signum != 0x7F:
        return pid, -signum
    raise WireError(f"{status:#x} is not the wait status of a process that ended")


def version_error(record: bytes) -> bytes:
    """The one thing a child says to a parent that speaks another protocol version (it never
    changes: docs/design.md)."""
    return frame(ERROR, pack_values(["version", record]))


class Decoder:
    """Turns a byte stream (plus the fds that rode on it) into ``(op, payload, fds)`` frames.

    ``receive(data, fds)`` buffers; ``next_frame()`` returns one complete frame or ``None``;
    ``want()`` is the largest read that cannot cross a frame boundary (and at most
    ``MAX_READ``).  ``receive(b"")`` means EOF: a partial frame at EOF is a ``WireError``.  A
    header whose opcode is not ``allowed`` or whose length exceeds ``max_payload`` is a
    ``WireError`` as soon as the header is complete.  After ``stop_after`` is seen (the parent
    uses ``RUNNING``), the decoder accepts no more bytes: they belong to someone else.
    """

    def __init__(
        self, allowed: frozenset[int], max_payload: int = MAX_COMMAND, stop_after: int = -1
    ):
        self._allowed = allowed
        self._max_payload = max_payload
        self._stop_after = stop_after
        self._buf = bytearray()
        #: Frames returned so far, and the fds that arrived for frames by their number.
        self._index = 0
        self._fds: dict[int, list[int]] = {}
        self._need = HEADER_SIZE
        self._op = -1
        self.eof = False
        self.stopped = False

    def want(self) -> int:
        """How many bytes the caller may read next without reading past the current frame
        (never more than ``MAX_READ``: a reader's buffer grows with what arrives)."""
        if self.stopped or self.eof:
            return 0
        need = self._need - len(self._buf)
        return need if need < MAX_READ else MAX_READ

    def safe_want(self) -> int:
        """``want()`` for a reader that must not read past the final frame (``stop_after``,
        a u32 payload), in one read with no look first: from a frame boundary, the size of a
        final frame (no shorter frame can end within it and leave room for a whole final
        one); else the rest of the current frame."""
        if self._op < 0 and not self.stopped and not self.eof:
            return FINAL_SIZE - len(self._buf)
        return self.want()

    def bulk_want(self) -> int:
        """``want()`` for a reader that takes several frames in one read: from a frame boundary
        ``BULK_READ``, else the rest of the current frame.  Only where fds arrive as on Linux
        (see ``receive``), and only if no frame's bytes may belong to another reader."""
        if self.at_boundary() and not self.stopped and not self.eof:
            return BULK_READ
        return self.want()

    def receive(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Buffer ``data``; ``fds`` arrived with it.  They belong to the last frame that starts
        in ``data`` (the current one if none does): a sender writes each frame with its fds in
        a send of its own, and a Linux read takes the fds with the first byte of that send and
        stops after it, so no later frame can start in the same read."""
        if self.stopped:
            raise WireError("data after the final frame")
        if self.eof:
            raise WireError("data after EOF")
        old = len(self._buf)
        self._buf += data
        if not data:
            self.eof = True
        if fds:
            self._fds.setdefault(self._index + self._last_start(old), []).extend(fds)

    def _last_start(self, old: int) -> int:
        """Which frame (0: the current one, 1: the next...) starts last at or after buffer
        offset ``old``; 0 if none does."""
        pos, number = (self._need, 1) if self._op >= 0 else (0, 0)
        last = 0
        while pos < len(self._buf):
            if pos >= old:
                last = number
            if pos + HEADER_SIZE > len(self._buf):
                break
            pos += HEADER_SIZE + HEADER.unpack_from(self._buf, pos)[1]
            number += 1
        return last

    def next_frame(self) -> tuple[int, bytes, list[int]] | None:
        """Return the next complete frame, or ``None`` if more bytes are needed."""
        while True:
            if self.stopped:
                return None
            if len(self._buf) < self._need:
                if self.eof and (self._buf or self._op >= 0):
                    raise WireError("EOF in the middle of a frame")
                return None
            if self._op < 0:
                op, size = HEADER.unpack_from(self._buf, 0)
                if op not in self._allowed:
                    raise WireError(f"unexpected opcode {op:#x}")
                if op == self._stop_after and size != U32.size:
                    raise WireError(f"a final frame of {size} bytes, not {U32.size}")
                if size > self._max_payload:
                    raise WireError(
                        f"a frame of {size} bytes exceeds the limit of {self._max_payload} bytes"
                    )
                del self._buf[:HEADER_SIZE]
                self._op, self._need = op, size
                continue
            payload = bytes(self._buf[: self._need])
            del self._buf[: self._need]
            op, fds = self._op, self._fds.pop(self._index, [])
            self._op, self._need = -1, HEADER_SIZE
            self._index += 1
            if op == self._stop_after:
                self.stopped = True
            return op, payload, fds

    def at_boundary(self) -> bool:
        """No partial frame is buffered: the stream could be handed to another reader here."""
        return self._op < 0 and not self._buf

    def take_fds(self) -> list[int]:
        """Hand over fds that arrived but belong to no complete frame (for closing them)."""
        fds = [fd for frame_fds in self._fds.values() for fd in frame_fds]
        self._fds = {}
        return fds
