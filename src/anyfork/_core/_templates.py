"""The constructors and the templates they keep per parent process (docs/design.md,
"Constructors").
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading

from .._child import _wire
from .._util import publish
from . import _main, _reaper, _spawn
from ._channel import Channel
from ._process import Process
from ._transport import Transport

__all__ = ["main_template", "new", "new_exec", "new_from_fh", "start_early"]

_lock = threading.Lock()
_default: Process | None = None
_early: Process | None = None
#: The ``sys.path`` the default template has (what it started with, or was sent last).
_default_path: list[str] = []

#: Sent to the default template when ``sys.path`` has changed (``args``: the new path).
_SET_PATH = "import sys\nsys.path[:] = args\n"


def new() -> Process:
    """A new process forked from the default template.

    The default template is a small interpreter exec'd on the first call (in each process that
    uses anyfork) and kept; if it has died, the next call makes a new one.  With an early
    template (:func:`start_early`), that is the default template.  It keeps its next child
    forked ahead, so the process returned is usually up already.  Never waits: the first call
    starts the default template in the background (the process returned starts once it is up;
    ``run`` and ``wait_started`` wait for that), so it does not block an event loop either.

    The default template has the ``sys.path`` of the program: when that changed since the
    template last saw it, it is sent the new one before it forks (which discards the child it
    had forked ahead).  Other changes (modules loaded, environment, working directory) do not
    reach it: use a template of your own (``new().require(...)``), or :func:`new_exec`.

    Raises:
        SpawnError: no interpreter to exec for the default template, or it could not start.
        OSError: no file descriptors left for the new process's socket.
        anyfork._child._main.StopMainImport: called while this (child) process imports its
            parent's main script, which must not start processes (see :meth:`Process.run`).
    """
    global _default, _default_path
    _main.refuse("anyfork.new()")
    _reaper.poll_unhandled()
    with _lock:
        template = _default
        # With a child forked ahead there is nothing to check here (fork() hands it out,
        # whatever has become of the template since; the next _fork_ahead looks at it).
        if template is None or (not template._ready and not template._usable()):
            if template is not None:
                template.close()
            template = _default = new_exec()
            _default_path = sys.path[:]
        else:
            _follow_path(template)
    return template.fork()


def _follow_path(template: Process) -> None:
    """Send the default template a changed ``sys.path`` (under ``_lock``)."""
    global _default_path
    if sys.path != _default_path:
        template.eval(_SET_PATH, *[p for p in sys.path if isinstance(p, str)])
        _default_path = sys.path[:]


def new_exec(*, python: str | None = None) -> Process:
    """A new process in a freshly exec'd interpreter (``python -S``, ``sys.path`` handed over).

    The caller is never forked (``posix_spawn``), so this is safe in a program with threads
    or a running event loop.  With an early template and no ``python`` given, the process is
    forked from the early template instead, and nothing is exec'd at all.

    Args:
        python: the interpreter to exec (default: ``$ANYFORK_PYTHON``, else this one).

    Raises:
        SpawnError: the interpreter cannot be exec'd.  A child that imports another anyfork
            version fails its first wait with ``ProtocolError`` naming both versions.
        anyfork._child._main.StopMainImport: called while this (child) process imports its
            parent's main script.
    """
    _main.refuse("anyfork.new_exec()")
    _reaper.poll_unhandled()
    global _early
    if _early is not None and python is None:
        if _early._usable():
            with _lock:
                if _early is _default:
                    _follow_path(_early)
            return _early.fork()
        # The early template died: forget it and exec, as if there had never been one.
        _early.close()
        _early = None
    sock, pid, boot = _spawn.exec_server(python)
    _reaper.watch(pid)
    chan = Channel(sock)
    if boot:
        chan.queue(boot)
        with contextlib.suppress(OSError):  # dead already: the first wait says how
            chan.flush_nowait()  # it fits the socket buffer: the child starts at once
    return Process._create(chan, pid=pid, direct=True)


def new_from_fh(sock: socket.socket | int) -> Process:
    """Continue preparing a process whose socket another process handed over with ``to_fh``.

    The process takes ``sock`` over (an int is wrapped; either is made blocking, as every
    process socket is): close the process, not the socket.
    It asks the child for its pid (known after the next wait), and everything queued is
    delivered even if the process is dropped before ``run``, as for any process.  Nothing is
    raised for a child that has gone: the first wait says what happened.

    Args:
        sock: the socket ``to_fh`` returned (in this or another process), or its fd.
    """
    _main.refuse("anyfork.new_from_fh()")
    if isinstance(sock, int):
        sock = socket.socket(fileno=sock)
    # Blocking, as every channel's socket is (``run_blocking`` relies on it): blocking-ness
    # belongs to the open file, which an async ``to_fh`` in the sender made non-blocking.
    sock.setblocking(True)
    chan = Channel(sock)
    chan.queue(_wire.frame(_wire.PID))
    with contextlib.suppress(OSError):  # gone already: the first wait says how
        chan.flush_nowait()
    return Process._create(chan)


def new_on(
    chan: Channel, transport: Transport, *, pid: int | None = None, template: Process | None = None
) -> Process:
    """A process on a channel ``transport`` made (``anyfork.remote``), counted among
    ``template``'s children."""
    if template is not None:
        template._forked += 1
    return Process._create(chan, pid=pid, template=template, transport=transport)


def start_early() -> Process:
    """Fork the main program into the early template, now; ``new`` and ``new_exec`` then fork
    from it and nothing is ever exec'd.

    Call it first thing in the main program (or ``import anyfork.early``), before anything starts
    threads, opens fds, or creates an event loop: the template is a copy of the program at this
    moment, and every worker will inherit what it holds.

    Raises:
        RuntimeError: other threads or a running event loop make forking unsafe.
        SpawnError: the fork failed.
    """
    global _early, _default, _default_path
    _main.refuse("anyfork.start_early()")
    with _lock:
        if _early is not None and _early._usable():
            return _early
        proc = main_template()
        _early = _default = proc
        _default_path = sys.path[:]
    return proc


def main_template() -> Process:
    """Fork the main program, as it is now, into a template and return it.

    Use it after importing and defining what workers need (functions in ``__main__`` can be
    run by bare name), before threads or an event loop exist.  The program's atexit handlers
    do not run in the template or its children, and inherited fds stay open in them.

    Raises:
        RuntimeError: other threads or a running event loop make forking unsafe.
        SpawnError: the fork failed.
    """
    _main.refuse("anyfork.main_template()")
    sock, pid = _spawn.fork_main()
    _reaper.watch(pid)
    proc = Process._create(Channel(sock), pid=pid, direct=True)
    proc._main_forked = True
    return proc


def _reset_in_child() -> None:
    """A forked copy of this program has no templates of its own, and a fresh lock."""
    global _default, _early, _lock, _default_path
    _lock = threading.Lock()
    _default = _early = None
    _default_path = []


os.register_at_fork(after_in_child=_reset_in_child)


publish(globals())
