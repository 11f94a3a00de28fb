"""Making processes without forking the caller (exec) and by forking the main program (early/main
templates).

``exec_server`` starts ``python -S -c BOOT`` with ``posix_spawn`` (glibc implements it with
``clone(CLONE_VM|CLONE_VFORK)``: safe in a threaded program and independent of the caller's size).
The child's end of the socketpair is the only fd it inherits, always as fd 3; ``sys.path`` travels
on the command line so the child finds exactly the parent's modules, venv or not, and ``-S``
skips ``site`` (and the ``.pth`` hooks of the base interpreter): the path already holds what
``site`` would have added.
"""

from __future__ import annotations

import os
import socket
import sys

from . import _wire
from ._errors import SpawnError

#: The fd the exec'd child finds its socket on.
CHILD_FD = 3

BOOT = "import sys;sys.path[:]=sys.argv[4:];from anyfork._serve import main;main()"


def interpreter(python: str | None = None) -> str:
    """The interpreter to exec: ``python``, ``$ANYFORK_PYTHON``, or ``sys.executable``."""
    if python:
        exe, origin = python, "python="
    elif os.environ.get("ANYFORK_PYTHON"):
        exe, origin = os.environ["ANYFORK_PYTHON"], "$ANYFORK_PYTHON"
    else:
        exe, origin = sys.executable, "sys.executable"
    if not exe or not os.access(exe, os.X_OK):
        raise SpawnError(
            f"no Python interpreter to exec: {origin} is {exe!r}; pass python=..., set "
            f"ANYFORK_PYTHON, or create an early template with anyfork.start_early() so that "
            f"nothing needs to be exec'd"
        )
    return exe


def exec_server(python: str | None = None) -> tuple[socket.socket, int]:
    """Start a fresh interpreter serving commands; return the parent's socket end and the pid."""
    exe = interpreter(python)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        fd = child.fileno()
        extra = -1
        if fd == CHILD_FD:
            # dup2(3, 3) would keep close-on-exec set; move it out of the way first.
            fd = extra = os.dup(fd)
        paths = [p for p in sys.path if isinstance(p, str)]
        argv = [exe, "-S", "-c", BOOT, str(_wire.VERSION), str(CHILD_FD), str(os.getpid())]
        try:
            pid = os.posix_spawn(
                exe,
                argv + paths,
                os.environ,
                file_actions=[(os.POSIX_SPAWN_DUP2, fd, CHILD_FD)],
            )
        except OSError as exc:
            raise SpawnError(f"could not exec {exe}: {exc}") from exc
        finally:
            if extra >= 0:
                os.close(extra)
    except BaseException:
        parent.close()
        raise
    finally:
        child.close()
    return parent, pid


def fork_main() -> tuple[socket.socket, int]:
    """Fork the calling program into a template that serves commands; return (socket, pid).

    Refuses when forking would be unsafe: with other threads alive or an event loop running.
    """
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        names = ", ".join(t.name for t in threading.enumerate())
        raise RuntimeError(
            f"cannot fork the main program into a template: other threads are running ({names}); "
            f"do it earlier, before anything starts threads"
        )
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None and asyncio._get_running_loop() is not None:
        raise RuntimeError(
            "cannot fork the main program into a template inside a running event loop; "
            "do it before the loop starts"
        )
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()  # or the child would write our buffered output a second time
    try:
        pid = os.fork()
    except OSError as exc:
        parent.close()
        child.close()
        raise SpawnError(f"fork failed: {exc}") from exc
    if pid == 0:  # pragma: no cover - the forked template; it never returns
        try:
            parent.close()
            from ._serve import serve_forked

            serve_forked(child.detach(), os.getppid())
        finally:
            os._exit(1)
    child.close()
    return parent, pid
