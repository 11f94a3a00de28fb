"""The child-side API: what code running inside an anyfork process may call.

Cheap to import (it runs in every worker): stdlib only, nothing of the parent side.
"""

from __future__ import annotations

from ._child import _serve, _target

__all__ = ["event", "flush", "retire", "take_args"]

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
    from ._child._rpc_server import running  # (loaded already where it serves)

    running("event").event(args)


def flush() -> bool:
    """Write every buffered reply and event now, blocking; ``False`` if the parent cannot take
    them (it has gone).  The sync backend never buffers: it returns ``True`` at once."""
    from ._child._rpc_server import running

    result: bool = running("flush").flush()
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

    Calling it again is harmless; so is calling it outside a pool (a plain RPC worker): the
    request (a frame of its own, never an event) is ignored there.  Raises ``RuntimeError``
    outside an RPC worker.
    """
    global _retired
    from ._child._rpc_server import running

    server = running("retire", "a pool worker")
    if not _retired:
        _retired = True
        server.retire()
