"""The child-side API: what code running inside an anyfork process may call.

Cheap to import (it runs in every worker): stdlib only, nothing of the parent side.
"""

from __future__ import annotations

from ._child import _serve, _target

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any

__all__ = ["event", "flush", "retire", "take_args"]

#: The running RPC server (``_rpc_server``), while it serves calls.
_sink: Any = None

#: The event ``retire()`` sends: a pool recognises it and never passes it to ``on_event``.  A
#: long, unlikely string (as in AnyEvent::Fork::Pool) so no user event is ever mistaken for it.
_RETIRE = "anyfork.pool:retire:9d2f6c1e8b7a4e35"
_retired = False


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
    return [_target.wrap(a) if type(a) is _target.Fd else a for a in args]


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
    result is returned to it.  An event belongs to the call that raised it (with the async
    backend: the call whose task, or a task that task started, raised it): a call made with
    ``client.call(..., on_event=handler)`` has its events go to ``handler``, the others go to
    the client's ``on_event``.  The arguments go through the RPC serialiser (with ``"bytes"`` or
    ``"str"``: exactly one such value).  The sync backend writes at once; the async backend
    buffers behind its event loop (``flush()`` before ``os._exit``).  Not available in ``init``
    (the parent is not listening yet) nor in ``done``: raises ``RuntimeError``.
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


def retire() -> None:
    """Ask the pool this worker belongs to for a replacement (only inside a pool worker).

    The worker finishes the calls it has been sent, gets no new ones, and is then stopped; the
    pool starts another in its place if it needs one.  Use it to recycle a worker whose state
    has grown (a leak, a cache) from inside the function::

        def work(item):
            result = process(item)
            if resident_memory() > LIMIT:
                anyfork.worker.retire()
            return result

    Calling it again is harmless.  Outside a pool (a plain RPC worker) the parent's
    ``on_event`` receives the pool's private retire event (the client's, never a handler given
    to the running call); raises ``RuntimeError`` outside an
    RPC worker.
    """
    global _retired
    sink = _sink
    if sink is None:
        raise RuntimeError("anyfork.worker.retire() works only in a pool worker, while it serves")
    if _retired:
        return
    _retired = True
    # The raw "bytes" serialiser carries exactly one bytes value; every other one takes a str.
    # Sent as no call's event (id 0): it is for the pool's own handler, never for a handler the
    # caller of the running call gave.
    sink.event((_RETIRE.encode() if sink.codec.name == "bytes" else _RETIRE,), 0)


def _apply(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    """The function a ``PoolExecutor`` without a fixed function serves: ``fn`` arrives first,
    with its arguments (by reference through pickle, or by value with cloudpickle).  Flat, so
    that a ``map``'s batch is ``map(_apply, fns, *columns)``: no tuple per item."""
    return fn(*args, **kwargs)
