"""Making processes without forking the caller (exec) and by forking the main program (early/main
templates).  How: docs/design.md, "Exec'd processes"."""

from __future__ import annotations

import marshal
import os
import socket
import sys

from .._child import _wire
from .._errors import SpawnError

#: The fd the exec'd child finds its socket on.
CHILD_FD = 3

#: argv after ``-c``: version, fd, owner pid, then ``sys.path``.
BOOT = "import sys;sys.path[:]=sys.argv[4:];from anyfork._child._serve import main;main()"

#: argv after ``-c``: version, fd, owner pid, size of the code on fd 3, then ``sys.path``.  The
#: modules are set up as the import system would (spec, ``__file__``, ``__path__``, parent
#: attribute), from code objects instead of files.
SHIPPED_BOOT = """\
import sys, marshal
from os import read
from _frozen_importlib import module_from_spec
from _frozen_importlib_external import spec_from_file_location
size, data = int(sys.argv.pop(4)), b""
sys.path[:] = sys.argv[4:]
while len(data) < size:
    chunk = read(3, size - len(data))
    if not chunk:
        raise SystemExit(3)
    data += chunk
for name, path, code in marshal.loads(data):
    module = sys.modules[name] = module_from_spec(spec_from_file_location(name, path))
    package, _, leaf = name.rpartition(".")
    if package:
        setattr(sys.modules[package], leaf, module)
    exec(code, module.__dict__)
sys.modules["anyfork._child._serve"].main()
"""

#: The child side, in import order (each imports only those before it, and the stdlib).
CHILD_MODULES = (
    "anyfork",
    "anyfork._child",
    "anyfork._child._wire",
    "anyfork._child._sock",
    "anyfork._child._forking",
    "anyfork._child._target",
    "anyfork._child._serve",
)

_shipped: bytes | None = None


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


def child_code() -> bytes | None:
    """The child side's code objects, marshalled for ``SHIPPED_BOOT`` (built once); ``None``
    where anyfork was not loaded from source files (the child then imports it)."""
    global _shipped
    if _shipped is None:
        import importlib

        modules = []
        try:
            for name in CHILD_MODULES:
                spec = importlib.import_module(name).__spec__
                path = spec.origin if spec is not None else None
                get_code = getattr(spec.loader, "get_code", None) if spec is not None else None
                if not path or not path.endswith(".py") or get_code is None:
                    return None
                modules.append((name, path, get_code(name)))
        except (ImportError, OSError, SyntaxError):
            return None
        _shipped = marshal.dumps(modules)
    return _shipped


def _same_interpreter(exe: str) -> bool:
    """Marshalled code only travels to the interpreter binary that made it."""
    try:
        return os.path.samefile(exe, sys.executable)
    except OSError:
        return False


def exec_server(python: str | None = None) -> tuple[socket.socket, int, bytes]:
    """Start a fresh interpreter serving commands: the parent's socket end, the pid, and what
    the child must receive before any frame (the shipped code, or nothing)."""
    from .._child._forking import closing_leaked  # (the remote agent's too)

    exe = interpreter(python)
    code = child_code() if _same_interpreter(exe) else None
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        fd = child.fileno()
        extra = -1
        if fd == CHILD_FD:
            # dup2(3, 3) would keep close-on-exec set; move it out of the way first.
            fd = extra = os.dup(fd)
        paths = [p for p in sys.path if isinstance(p, str)]
        argv = [exe, "-S", "-c", BOOT, str(_wire.VERSION), str(CHILD_FD), str(os.getpid())]
        if code is not None:
            argv[3] = SHIPPED_BOOT
            argv.append(str(len(code)))
        try:
            pid = os.posix_spawn(
                exe,
                argv + paths,
                os.environ,
                file_actions=[(os.POSIX_SPAWN_DUP2, fd, CHILD_FD), *closing_leaked(CHILD_FD)],
                # A new interpreter starts with no signal blocked, whatever the calling thread
                # blocks (a pool's threads block SIGINT, SIGTERM, SIGCHLD...; a template that
                # inherited that mask would never reap its children).
                setsigmask=(),
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
    return parent, pid, code or b""


def fork_main() -> tuple[socket.socket, int]:
    """Fork the calling program into a template that serves commands; return (socket, pid).
    Refuses with other threads alive or an event loop running."""
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
            from .._child._serve import serve_forked

            serve_forked(child.detach(), os.getppid())
        finally:
            os._exit(1)
    child.close()
    return parent, pid
