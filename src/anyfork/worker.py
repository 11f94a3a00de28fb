"""The child-side API: what code running inside an anyfork process may call.

Cheap to import (it runs in every worker): stdlib only, nothing of the parent side.
"""

from __future__ import annotations

from . import _serve

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

__all__ = ["event", "flush", "take_args"]

#: The running RPC server (``_rpc_server``), while it serves calls.
_sink: Any = None


def take_args() -> list[object]:
    """Return the arguments ``run`` would pass to its function, and clear them.

    Meant for ``eval`` code that must pick up fds or strings sent before it (a template that
    keeps the listening socket it was sent, say).  Only valid while the process serves
    commands, i.e. before ``run``.  Received fds come back as sockets or file objects, exactly
    as ``run``'s function would get them.
    """
    server = _serve.current
    if server is None:
        raise RuntimeError("take_args() works only in an anyfork process, before run")
    args, server.args = server.args, []
    return [_serve.wrap(a) if type(a) is _serve.Fd else a for a in args]


def event(*args: object) -> None:
    """Send an event to the parent's ``on_event(*args)`` (only inside an RPC worker).

    Events and results reach the parent in exactly the order this worker produced them, so a
    call can stream partial results before its final one::

        def work(items):
            for i, item in enumerate(items):
                process(item)
                anyfork.worker.event("progress", i + 1, len(items))
            return "done"

    The parent's ``on_event`` sees every ``("progress", ...)`` of a call before that call's
    result is returned to it.  The arguments go through the RPC serialiser (with ``"bytes"`` or
    ``"str"``: exactly one such value).  The sync backend writes at once; the async backend
    buffers behind its event loop (``flush()`` before ``os._exit``).  Not available in ``init``
    (the parent is not listening yet): raises ``RuntimeError``.
    """
    sink = _sink
    if sink is None:
        raise RuntimeError("anyfork.worker.event() works only in an RPC worker, while it serves")
    sink.event(args)


def flush() -> bool:
    """Write every buffered reply and event now, blocking; ``False`` if the parent cannot take
    them (it has gone).  The sync backend never buffers: it returns ``True`` at once."""
    sink = _sink
    if sink is None:
        raise RuntimeError("anyfork.worker.flush() works only in an RPC worker, while it serves")
    result: bool = sink.flush()
    return result
