"""RPC, parent side: what a worker's answers say, decoded (pure: no I/O, no state).

A broken answer raises ``RpcWireError`` (the caller, ``_connection``, fails the connection with
it at its one receive boundary); an answer that is sound but cannot be decoded here (a result whose
class this process cannot load) is a ``DecodeError`` for that call only.
"""

from __future__ import annotations

from .._child import _rpc_wire as W
from .._child._serializers import Codec
from .._errors import DecodeError, ProtocolError, rebuild
from ._batching import BatchResult


def rebuild_record(record: bytes | bytearray, context: str, *, ours: bool) -> BaseException:
    """``_errors.rebuild``, with bytes that are not an error record a decoding error like any
    other (``RpcWireError``)."""
    try:
        return rebuild(record, context, ours=ours)
    except ProtocolError as exc:
        raise W.RpcWireError("a broken error record") from exc


def batch_result(
    codec: Codec, kind: int, payload: bytes | bytearray, n: int, pid: int | None
) -> BatchResult:
    """The outcome of a batch of ``n`` calls from its ``BATCH_OK`` or ``BATCH_ERROR`` answer.

    Raises:
        RpcWireError: a broken answer (a bad ``BATCH_ERROR``, a failed item past the end, or
            as many results as no item count of it says).
        DecodeError: results that cannot be decoded here.
    """
    error = None
    data: bytes | bytearray | memoryview = payload
    count = n
    if kind == W.BATCH_ERROR:
        count, data, record = W.parse_batch_error(payload)
        if count >= n:
            raise W.RpcWireError(f"item {count} of a batch of {n} failed")
        context = f"(raised in anyfork RPC worker pid {pid})"
        error = rebuild_record(bytes(record), context, ours=False)
    try:
        results = codec.load_results(data)
    except Exception as exc:
        err = DecodeError(f"cannot decode the batch's results: {type(exc).__name__}: {exc}")
        err.__cause__ = exc
        raise err from exc
    if len(results) != count:
        raise W.RpcWireError(f"a batch answer with {len(results)} results for {count}")
    return BatchResult(results, error)
