"""The child-side API: what code running inside an anyfork process may call.

Cheap to import (it runs in every worker): stdlib only, nothing of the parent side.
"""

from __future__ import annotations

from . import _serve

__all__ = ["take_args"]


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
