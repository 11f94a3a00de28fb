"""The one error record: how a child tells its creator about an exception, in both protocols.

The command server sends one when a command fails (``_wire.ERROR``), the RPC server when start-up
fails (``FAILED``) and when a call raises (``ERROR``).  The parent turns a record back into an
exception in one place, ``anyfork._errors.rebuild``.  Its layout: docs/design.md.

Stdlib only, and cheap: ``pickle`` and ``traceback`` are imported on the error path only.
Rule: every decoding error is ``RecordError``; the parent turns it into ``ProtocolError``.
"""

from __future__ import annotations

import _struct as struct

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover - type checkers only; the child never imports typing
    from collections.abc import Sequence

    Buffer = bytes | bytearray | memoryview

_U32 = struct.Struct(">I")
FIELDS = 5


class RecordError(ValueError):
    """Bytes that are not an error record."""


def pack_fields(fields: Sequence[bytes]) -> bytes:
    """Length-prefixed byte strings."""
    return b"".join(_U32.pack(len(item)) + bytes(item) for item in fields)


def unpack_fields(data: Buffer) -> list[bytes]:
    view = memoryview(data)
    out: list[bytes] = []
    pos, end = 0, len(view)
    while pos < end:
        if end - pos < _U32.size:
            raise RecordError("truncated field header")
        (size,) = _U32.unpack_from(view, pos)
        pos += _U32.size
        if end - pos < size:
            raise RecordError("truncated field")
        out.append(bytes(view[pos : pos + size]))
        pos += size
    return out


def pack(pickled: bytes, module: str, qualname: str, message: str, tb: str) -> bytes:
    texts = [s.encode("utf-8", "replace") for s in (module, qualname, message, tb)]
    return pack_fields([pickled, *texts])


def unpack(data: Buffer) -> tuple[bytes, str, str, str, str]:
    """``(pickled, module, qualname, message, traceback)``; ``RecordError`` for anything else."""
    fields = unpack_fields(data)
    if len(fields) != FIELDS:
        raise RecordError(f"an error record has {FIELDS} fields, not {len(fields)}")
    module, qualname, message, tb = (field.decode("utf-8", "replace") for field in fields[1:])
    return fields[0], module, qualname, message, tb


def error_record(exc: BaseException) -> bytes:
    """Encode ``exc``: pickled when it survives a round trip here, and always its type, message
    and formatted traceback (so the parent can say what it was even when it cannot rebuild it)."""
    import pickle
    import traceback

    cls = type(exc)
    text = "".join(traceback.format_exception(cls, exc, exc.__traceback__))
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {cls.__name__}>"
    try:
        pickled = pickle.dumps(exc, protocol=5)
        pickle.loads(pickled)
    except Exception:
        pickled = b""
    return pack(pickled, cls.__module__, cls.__qualname__, message, text)


def anyfork_error(qualname: str, message: str, cause: BaseException | None = None) -> bytes:
    """A record for one of anyfork's own error types (``EncodeError``...), made without importing
    the parent side: the parent rebuilds it by name (see ``anyfork._errors.rebuild``)."""
    tb = ""
    if cause is not None:
        import traceback

        tb = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
    return pack(b"", "anyfork", qualname, message, tb)
