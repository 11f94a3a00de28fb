"""``Process``: a prepared process, its preparation commands, ``fork`` and ``run``.

A ``Process`` is the parent's handle on a child that serves commands (``_serve``).  Preparation
methods queue frames and return the process so calls chain; they never block (each makes one
non-blocking attempt to write).  ``run`` and ``to_fh`` are the only waits: they flush this
process's queue *and every queue it depends on* (the template that must fork it, that template's
own template...), then read the child's reports up to RUNNING and hand the socket over.

Errors a child reports (a failed import, an exception in eval code, a missing function) end that
child; the parent raises them at the next wait, as their own type and an ``AnyforkError`` at once
(``_errors.rebuild``), with the child's traceback as cause.  Bytes that break the protocol are a
``ProtocolError`` naming the process: ``_receive`` is the one place reports are read and parsed.
A dead template fails the next ``fork`` at once and every process queued behind it at its ``run``.

While it waits for a forked child, a process also drains its template's reports (the exits of
the template's other children), so that a burst of children never leaves them piling up.
Dropping or closing a process before ``run`` still delivers what was queued for it
(``_drive.release``).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .._child import _wire
from .._errors import ClosedError, SpawnError
from .._util import publish
from . import _reaper
from ._channel import Channel
from ._drive import drive_async, drive_blocking
from ._protocol import _CLOSED, _HANDED, _OPEN, ProcessProtocol

if TYPE_CHECKING:
    from .._rpc._start import BlockingClient, Client

__all__ = ["Process"]


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


FdLike = int | _HasFileno
Func = str | Callable[..., Any]
P = TypeVar("P", bound="Process")


class Process(ProcessProtocol):
    """A process that serves commands until ``run`` hands it a function and a socket.

    Create one with :func:`anyfork.new`, :func:`anyfork.new_exec`, :meth:`fork`,
    :func:`anyfork.new_from_fh` or a main-program template; the constructor is private.

    Any process is a template: :meth:`fork` makes a child of it that inherits everything sent
    to it so far (modules, ``eval`` state, args and fds), and it keeps serving.  Closing a
    process (``close()``, ``with``, or dropping the last reference) closes the parent's end of
    its socket once everything queued for it has been written: a process that has not run
    carries out every command it was sent, then sees EOF and exits ("configure and forget").
    """

    def __repr__(self) -> str:
        return f"<anyfork.Process pid={self._pid} {self._state}>"

    # -- facts -----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The process id: known at once for exec'd processes and main-program templates, and
        for forked ones as soon as the child has reported it (always after ``run``, or after
        ``wait_started``).  ``None`` until then."""
        if self._pid is None and self._state == _OPEN:
            self._poll_reports()
        return self._pid

    @property
    def returncode(self) -> int | None:
        """Exit status (``-N`` for signal N) once a *direct* child (``new_exec``, early and main
        templates) has exited and been reaped; always ``None`` for forked processes, which are
        their template's children."""
        if not self._direct or self._pid is None:
            return None
        return _reaper.returncode(self._pid)

    # -- preparation (queue, never block) --------------------------------------------------

    def require(self: P, *modules: str) -> P:
        """Import ``modules`` in the process, in order.

        Raises:
            TypeError: a name that is not a non-empty ``str`` (at once; nothing is queued).
            ClosedError: the process has run, been handed over or closed.
            SpawnError: the process is known to be dead.

        A failed import surfaces at the next wait (:meth:`run`...) as the child's own error,
        e.g. ``ModuleNotFoundError``, which is also an ``AnyforkError``.
        """
        for name in modules:
            if not isinstance(name, str) or not name:
                raise TypeError(f"module names are non-empty str, not {name!r}")
        return self._send(_wire.IMPORT, _wire.pack_values(modules))

    def eval(self: P, code: str, *args: str | bytes) -> P:
        """Run ``code`` in the process's ``__main__``; functions it defines can be named in
        :meth:`run` by their bare name.

        Args:
            code: Python source.
            args: ``str`` or ``bytes`` values, bound to the name ``args`` (a tuple) while the
                code runs.

        Raises:
            SyntaxError: ``code`` does not compile (at once; nothing is queued).
            TypeError: ``code`` is not a ``str``, or a value is neither ``str`` nor ``bytes``.
            ValueError: the command exceeds ``anyfork._child._wire.MAX_COMMAND`` bytes.
            ClosedError: the process has run, been handed over or closed.
            SpawnError: the process is known to be dead.

        An exception in the code surfaces at the next wait as its own type (rebuilt where the
        parent can, else ``RemoteError``), which is also an ``AnyforkError``.
        """
        if not isinstance(code, str):
            raise TypeError(f"eval code is str, not {type(code).__name__}")
        compile(code, "<anyfork eval>", "exec")  # a syntax error is the caller's bug: say so here
        return self._send(_wire.EVAL, _wire.pack_values((code, *args)))

    def send_arg(self: P, *values: str | bytes) -> P:
        """Append ``values`` to the arguments ``run``'s function receives.

        Args:
            values: ``str`` or ``bytes``; each arrives as what it was.

        Raises:
            TypeError: a value is neither ``str`` nor ``bytes`` (nothing is queued).
            ValueError: the command exceeds ``anyfork._child._wire.MAX_COMMAND`` bytes.
            ClosedError: the process has run, been handed over or closed.
            SpawnError: the process is known to be dead.
        """
        return self._send(_wire.ARGS, _wire.pack_values(values))

    def send_fh(self: P, *handles: FdLike) -> P:
        """Pass file descriptors to the process; they join the arguments in order.

        Each descriptor is duplicated at once, so the caller may close its own copy right after
        this call.  In the child a socket arrives as ``socket.socket``, a file or pipe as an
        unbuffered binary file object of the right mode, a directory as an int.

        Args:
            handles: ints, sockets, files: anything with ``fileno()``.

        Raises:
            ValueError: a handle has no open file descriptor (nothing is queued).
            OSError: a descriptor could not be duplicated, with its errno (``EMFILE`` when this
                process is out of file descriptors); nothing is queued.
            ClosedError: the process has run, been handed over or closed.
            SpawnError: the process is known to be dead.
        """
        dups: list[int] = []
        try:
            for handle in handles:
                fd = handle if isinstance(handle, int) else handle.fileno()
                if not isinstance(fd, int) or fd < 0:
                    raise ValueError(f"send_fh: {handle!r} has no open file descriptor")
                try:
                    dups.append(os.dup(fd))
                except OSError as exc:
                    if exc.errno == errno.EBADF:
                        raise ValueError(
                            f"send_fh: {handle!r} is not an open file descriptor"
                        ) from exc
                    # EMFILE, ENFILE: the fd is fine, making a copy of it to send is not.
                    raise OSError(
                        exc.errno, f"{exc.strerror} (send_fh could not duplicate fd {fd})"
                    ) from exc
        except BaseException:
            for fd in dups:
                os.close(fd)
            raise
        for start in range(0, len(dups), _wire.MAX_FDS):
            chunk = dups[start : start + _wire.MAX_FDS]
            self._send(_wire.FDS, _wire.U32.pack(len(chunk)), chunk)
        return self

    def fork(self) -> Process:
        """Return a new process forked from this one, which keeps serving.

        The child inherits everything sent to this process before the fork; what is sent to
        the child afterwards is its own.

        Raises:
            SpawnError: this process is known to be dead, or failed (at once).
            ClosedError: this process has run, been handed over or closed.
        """
        self._check_open()
        self._poll_reports()
        self._raise_if_failed()
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fd = child_end.detach()
        child = Process(Channel(parent_end), template=self)
        try:
            child._fork_frame = self._command(_wire.FORK, b"", [fd])
        except BaseException:
            child.close()
            raise
        self._forked += 1
        return child

    def _send(self: P, op: int, payload: bytes, fds: list[int] | None = None) -> P:
        self._command(op, payload, fds)
        return self

    def _command(self, op: int, payload: bytes, fds: list[int] | None = None) -> int:
        """Queue a command, write what the socket takes; return the frame's number."""
        try:
            self._check_open()
            if len(payload) > _wire.MAX_COMMAND:
                raise ValueError(
                    f"a command of {len(payload)} bytes exceeds the maximum of "
                    f"{_wire.MAX_COMMAND} bytes (anyfork._child._wire.MAX_COMMAND)"
                )
        except BaseException:
            for fd in fds or ():
                os.close(fd)
            raise
        try:
            number = self._chan.queue(_wire.frame(op, payload), fds)
            self._chan.flush_nowait()
        except OSError as exc:
            # Gone.  Read what it reported before it went (why it died), then let go of the
            # socket now: the error raised here may be kept, with its traceback and so this
            # object, long after (a pool keeps its last start error), and the fd with it.
            self._poll_reports()
            self._chan.close()
            self._raise_if_failed()
            raise SpawnError(f"{self._name()} is gone ({exc})") from exc
        return number

    # -- waiting ---------------------------------------------------------------------------

    async def run(self, func: Func, *, timeout: float | None = None) -> socket.socket:
        """Call ``func(sock, *args)`` in the child; return the parent's end of ``sock``.

        The child receives every ``send_arg`` and ``send_fh`` value in the order sent.  Returns
        once everything queued is written and the child has found ``func``.  After ``run`` the
        process object is spent.

        Args:
            func: a function object (sent as ``module:qualname``) or such a string; a bare
                name resolves in the child's ``__main__``.
            timeout: seconds for the whole wait; ``None`` waits as long as it takes.

        Returns:
            A non-blocking ``socket.socket`` whose first byte is the function's first byte.

        Raises:
            Exception: the error of a command the child could not carry out (``require``,
                ``eval``, finding ``func``) as its own type and an ``AnyforkError``.
            SpawnError: the process or its template died first.
            ProtocolError: the child sent bytes that are not reports (or speaks another
                protocol version); the message names the process.
            TimeoutError: after ``timeout`` seconds.

        Cancellation (or timeout): the parent's end is closed, so a child that has not started
        the function exits, and one that has sees EOF.
        """
        ref = self._start_run(func)
        sock: socket.socket = await drive_async(self._run_op(ref), timeout)
        return sock

    def run_blocking(self, func: Func, *, timeout: float | None = None) -> socket.socket:
        """The blocking twin of :meth:`run` (same arguments and errors); returns a blocking
        socket."""
        ref = self._start_run(func)
        sock = drive_blocking(self._run_op(ref), timeout)
        sock.setblocking(True)
        return sock

    async def to_fh(self, *, timeout: float | None = None) -> socket.socket:
        """Flush everything queued and hand over the raw command socket, without running
        anything: pass it to another process, which continues with
        :func:`anyfork.new_from_fh`.  The process object is spent afterwards.

        Args:
            timeout: seconds for the whole wait; ``None`` waits as long as it takes.

        Returns:
            The socket, between two reports (the new owner reads whole reports from its start).

        Raises:
            Exception: a reported command error, as for :meth:`run`.
            SpawnError: the process or its template died first.
            ProtocolError: the child sent bytes that are not reports.
            TimeoutError: after ``timeout`` seconds.

        Cancellation: as for :meth:`run`."""
        self._start_handover()
        sock: socket.socket = await drive_async(self._handover_op(), timeout)
        return sock

    def to_fh_blocking(self, *, timeout: float | None = None) -> socket.socket:
        """The blocking twin of :meth:`to_fh` (same arguments and errors)."""
        self._start_handover()
        sock = drive_blocking(self._handover_op(), timeout)
        sock.setblocking(True)
        return sock

    async def wait_started(self, *, timeout: float | None = None) -> int:
        """Wait until the process exists and has reported its pid; return it.

        Args:
            timeout: seconds for the whole wait; ``None`` waits as long as it takes.

        Raises:
            Exception: the error of a failed command reported by then, as for :meth:`run`
                (commands still being carried out may fail later).
            SpawnError: the process died first.
            ProtocolError: the child sent bytes that are not reports (or speaks another
                protocol version).
            ClosedError: the process was closed before it reported its pid.
            TimeoutError: after ``timeout`` seconds.

        Cancellation: the process is left as it was."""
        pid: int = await drive_async(self._started_op(), timeout)
        return pid

    def wait_started_blocking(self, *, timeout: float | None = None) -> int:
        """The blocking twin of :meth:`wait_started` (same arguments and errors)."""
        return drive_blocking(self._started_op(), timeout)

    # -- RPC -------------------------------------------------------------------------------

    async def rpc(self, func: Func, **options: Any) -> Client:
        """Turn this process into an RPC server for ``func`` and return its client:
        ``client = await anyfork.new().require("mod").rpc("mod:work")``, then
        ``await client(*args)``.  Options as for :func:`anyfork.rpc` (backend, serializer,
        init, on_event, on_error, on_close, concurrency, timeout).

        Cancellation: the connection is closed; the worker sees EOF and exits."""
        from .._rpc._start import rpc  # the RPC layer (and asyncio) only when it is used

        return await rpc(self, func, **options)

    def rpc_blocking(self, func: Func, **options: Any) -> BlockingClient:
        """The blocking twin of :meth:`rpc`: returns a :class:`anyfork.BlockingClient`."""
        from .._rpc._start import rpc_blocking

        return rpc_blocking(self, func, **options)

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Let go of the process: the parent's end is closed once everything queued for it
        (and its FORK frame, still queued on its template) has been written.  A process that
        has not run then carries out every command it was sent and exits; a template stops
        serving (children already forked live on).  Dropping the last reference does the same.

        Usually the kernel takes everything at once and this returns at once.  Otherwise, in a
        thread with a running event loop a task on that loop writes the rest (and finishes it
        when the loop shuts down); in any other thread this blocks until the process (or its
        template) has read enough of it.  A ``run`` or ``to_fh`` in progress is abandoned."""
        if self._state == _OPEN:
            self._state = _CLOSED
            self._finalizer()
        else:
            self._chan.close()
        _reaper.poll()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process (its pid must be known)."""
        pid = self.pid
        if pid is None:
            raise ProcessLookupError("the process has not reported its pid yet")
        os.kill(pid, sig)

    def __enter__(self: P) -> P:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self: P) -> P:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _where(self) -> str:
        """Hook for ``anyfork.remote``: what errors about this process add after its pid (the
        host it runs on, and whether the connection to it is lost); nothing for a local one."""
        return ""

    def _check_open(self) -> None:
        if self._state == _HANDED:
            raise ClosedError("this process has already run (or been handed over with to_fh)")
        if self._state == _CLOSED:
            raise ClosedError("this process has been closed")

    def _start_run(self, func: Func) -> str:
        ref = func_ref(func)
        self._check_open()
        # Queue only: a write error (the child is dead) is diagnosed by the run operation,
        # which can wait briefly to learn how the child died.
        try:
            self._chan.queue(_wire.frame(_wire.RUN, _wire.pack_values([ref])))
        except OSError:
            pass
        self._state = _HANDED
        return ref

    def _start_handover(self) -> None:
        self._check_open()
        self._state = _HANDED


def func_ref(func: Func) -> str:
    """``"module:qualname"`` for a function object; strings pass through (checked)."""
    if isinstance(func, str):
        if not func or func.startswith(":") or func.endswith(":"):
            raise ValueError(f"bad function reference {func!r}: use 'module:qualname' or a name")
        return func
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not callable(func) or not module or not qualname:
        raise TypeError(f"run() takes a function or a 'module:qualname' string, not {func!r}")
    if "<" in qualname:
        raise TypeError(
            f"{qualname} cannot be found by name in another process (a lambda or a local "
            f"function); define it at module level"
        )
    return f"{module}:{qualname}"


publish(globals())
