"""RPC, parent side: the frames for the worker, encoded, queued and written with few syscalls:
small ones joined into one ``bytearray``, a big buffer kept as a view (never copied by us).
"""

from __future__ import annotations

from typing import Any

from .._child import _rpc_wire as W
from .._child._serializers import Codec
from .._errors import EncodeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

#: Chunks up to this size are copied into the shared outgoing bytearray: cheaper than an iovec
#: of their own, and it lets thousands of pipelined calls leave in one syscall.
JOIN_LIMIT = 16 << 10

_HEADER = W.HEADER


def chunk_size(chunk: Any) -> int:
    return chunk.nbytes if type(chunk) is memoryview else len(chunk)


_LOCAL_WAYS_OUT = (
    " (a lambda or a local function cannot be found by name in another process).  Ways out: "
    "define it at module level (in the main script too); or send it by value with "
    'serializer="cloudpickle"'
)


def encode(
    codec: Codec,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    columns: list[list[Any]] | None = None,
) -> tuple[list[Any], int]:
    """A call's (or batch's) payload as chunks, and its size; else ``EncodeError``."""
    what = "call's" if columns is None else "batch's"
    try:
        chunks = codec.dump_call(args, kwargs) if columns is None else codec.dump_batch(columns)
        if len(chunks) == 1 and type(chunks[0]) is bytes:
            size = len(chunks[0])  # the common case: one small pickle
        else:
            size = 0
            for chunk in chunks:
                size += chunk_size(chunk)
    except Exception as exc:
        message = (
            f"cannot encode the {what} arguments with {codec.name!r}: {type(exc).__name__}: {exc}"
        )
        if "local object" in str(exc) or "<lambda>" in str(exc):  # (PoolExecutor.submit(lambda))
            message += _LOCAL_WAYS_OUT
        raise EncodeError(message, "parent") from exc
    if size > W.MAX_PAYLOAD:
        raise EncodeError(f"the {what} arguments take {size} bytes; a frame holds 4 GiB")
    return chunks, size


class Outbox:
    """``bufs`` ready for ``sendmsg``, then ``small``: the small frames queued since, joined."""

    __slots__ = ("bufs", "flags", "small")

    def __init__(self) -> None:
        self.bufs: list[Any] = []
        self.small = bytearray()
        self.flags = 0  # MSG_DONTWAIT where the socket is left in blocking mode

    def has_output(self) -> bool:
        return bool(self.bufs or self.small)

    def queue(self, kind: int, cid: int, chunks: list[Any], size: int) -> None:
        small = self.small
        small += _HEADER.pack(kind, cid, size)
        if size <= JOIN_LIMIT:
            for chunk in chunks:
                small += chunk
            return
        for chunk in chunks:
            if chunk_size(chunk) <= JOIN_LIMIT:
                small += chunk
            else:
                self.bufs.append(small)
                self.bufs.append(memoryview(chunk).cast("B"))
                self.small = small = bytearray()

    def send_some(self, sock: socket.socket) -> bool:
        """``True`` while output remains; a write error drops it all (the reader sees EOF)."""
        flags = self.flags
        small = self.small
        try:
            if small:
                if not self.bufs:
                    # Reuse the bytearray when it all went out (nothing else refers to it).
                    sent = sock.send(small, flags)
                    if sent == len(small):
                        del small[:]
                        return False
                    self.bufs.append(memoryview(small)[sent:])
                else:
                    self.bufs.append(small)
                self.small = bytearray()
            while self.bufs:
                if len(self.bufs) == 1:
                    sent = sock.send(self.bufs[0], flags)
                else:
                    sent = sock.sendmsg(self.bufs[: W.MAX_IOV], (), flags)
                self.bufs = W.advance(self.bufs, sent)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.drop()
        return self.has_output()

    def drop(self) -> None:
        self.bufs = []
        self.small = bytearray()
