"""``Process``: the public face of a prepared process (the machinery is ``_lineage``'s and
``_protocol``'s): preparation queues and never blocks; waits are ``_protocol``'s generators.
"""

from __future__ import annotations

import signal
import socket
import time
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar, final

from .._child import _wire
from .._util import NoPublicConstructor, publish
from . import _reaper
from ._drive import drive_async, drive_blocking
from ._lineage import FdLike, Lineage
from ._lineage import Func as Func
from ._lineage import func_ref as func_ref
from ._protocol import _OPEN

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._rpc._connection import Backend
    from .._rpc._start import BlockingClient, Client, Serializer
    from ..remote import Host

__all__ = ["Process"]


P = TypeVar("P", bound="Process")


@final
class Process(Lineage, metaclass=NoPublicConstructor):
    """A process that serves commands until ``run`` hands it a function and a socket.

    Create one with :func:`anyfork.new`, :func:`anyfork.new_exec`, :meth:`fork`,
    :func:`anyfork.new_from_fh` or a main-program template: ``anyfork.Process(...)`` raises
    ``TypeError``, and the class cannot be subclassed (type checkers say so).

    Any process is a template: :meth:`fork` makes a child of it that inherits everything sent
    to it so far (modules, ``eval`` state, args and fds), and it keeps serving.  Closing a
    process (``close()``, ``with``, or dropping the last reference) closes the parent's end of
    its socket once everything queued for it has been written: a process that has not run
    carries out every command it was sent, then sees EOF and exits ("configure and forget").
    """

    def __repr__(self) -> str:
        return f"<anyfork.Process pid={self._pid} {self._state}{self._where()}>"

    # -- facts -----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The process id, as far as it is known (this property does no I/O): at once for
        exec'd processes and main-program templates; for forked ones once the parent has read
        their template's or their own report of it (always after ``run``, ``wait_started`` or
        ``wait``, and usually after ``fork()``: a child forked ahead has reported already).
        ``None`` until then."""
        return self._pid

    @property
    def returncode(self) -> int | None:
        """The exit status once it is known (this property does no I/O), else ``None``: the
        code the process exited with, or ``-N`` if signal N killed it (as in ``subprocess``).

        Known after :meth:`wait` or :meth:`poll` returned it, or whenever anyfork has read it
        meanwhile (direct children are reaped on SIGCHLD; a forked process's exit is reported
        by its template, whose reports are read whenever the template is used; a remote
        process's by its host)."""
        if self._returncode is None and self._direct and self._pid is not None:
            self._returncode = _reaper.known(self._pid)
        return self._status()

    @property
    def host(self) -> Host | None:
        """The :class:`anyfork.remote.Host` the process runs on; ``None`` for one on this
        machine."""
        return self._transport.host

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
        this call.  In the child a socket arrives as ``socket.socket``, a directory as an int,
        and a file or pipe as a file object of the right mode (read, write, both) and of the
        kind sent: a buffered file object (``open(path, "rb")``) as a buffered one, a text file
        as a text file of the same encoding, anything else (an int fd, an unbuffered
        ``FileIO``) as an unbuffered binary ``FileIO``.  Wrap that one once to read it by lines
        at speed: ``pipe = io.BufferedReader(pipe)`` (reading a ``FileIO`` by lines makes a
        system call per byte).  A buffered writer is flushed when the child's function returns
        and before a template forks (so nothing is lost or written twice); flush it yourself
        before ``os._exit``.

        Args:
            handles: ints, sockets, files: anything with ``fileno()``.

        Raises:
            ValueError: a handle has no open file descriptor (nothing is queued).
            OSError: a descriptor could not be duplicated, with its errno (``EMFILE`` when this
                process is out of file descriptors); nothing is queued.
            ClosedError: the process has run, been handed over or closed.
            SpawnError: the process is known to be dead.
            NotImplementedError: the process is on a remote host (at once).
        """
        if not self._transport.passes_fds:
            raise NotImplementedError(
                f"send_fh cannot pass file descriptors to {self._name()}: they do not cross "
                f"hosts (send data with send_arg, or have the process open what it needs)"
            )
        return self._send_fds(handles)

    def fork(self) -> Process:
        """Return a new process forked from this one, which keeps serving.

        The child inherits everything sent to this process before the fork; what is sent to
        the child afterwards is its own.  A process that has forked keeps its next children
        forked ahead of need: the one returned is usually up already, waiting for its commands
        (unless a command changed this process since the last ``fork``).

        Raises:
            SpawnError: this process is known to be dead, or failed (at once).
            ClosedError: this process has run, been handed over or closed.
            OSError: no file descriptors left for the new process's socket.
            RemoteHostError: the connection to a remote process's host is lost.
        """
        self._transport.check(self)
        return self._fork()

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
        sock.setblocking(False)
        return sock

    def run_blocking(self, func: Func, *, timeout: float | None = None) -> socket.socket:
        """The blocking twin of :meth:`run` (same arguments and errors); returns a blocking
        socket."""
        ref = self._start_run(func)
        deadline = None if timeout is None else time.monotonic() + timeout
        sock = self._run_started(deadline)
        if sock is None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            sock = drive_blocking(self._run_op(ref), left)
        if not sock.getblocking():  # (ours are: a syscall less on the way to the function)
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
            NotImplementedError: the process is on a remote host.

        Cancellation: as for :meth:`run`."""
        self._start_handover()
        sock: socket.socket = await drive_async(self._handover_op(), timeout)
        sock.setblocking(False)
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

    async def wait(self, *, timeout: float | None = None) -> int:
        """Wait until the process has exited; return its exit status.

        Works for every kind of process (``new``, ``new_exec``, forked from any template, early
        and main templates), before or after ``run``, ``to_fh`` or ``close``: ``run`` spends the
        process for commands, not for waiting.  A process that has not run serves commands
        until it is closed (or killed), so close it first.  A closed template exits once the
        children it forked have.

        Args:
            timeout: seconds to wait; ``None`` waits as long as it takes.

        Returns:
            The exit status, as ``subprocess`` has it: the code the process exited with, or
            ``-N`` if signal N killed it.  :attr:`returncode` holds it afterwards.

        Raises:
            TimeoutError: after ``timeout`` seconds.
            SpawnError: the process never existed (its template could not fork it, or ended
                first).
            ChildProcessError: the exit status cannot be known: the process was adopted with
                ``new_from_fh``, or its template ended (or ran a function, or was handed over)
                before reporting it, or something else reaped a direct child.

        Cancellation (or timeout): the process is left as it was.
        """
        code: int = await drive_async(self._exit_op(), timeout)
        return code

    def wait_blocking(self, *, timeout: float | None = None) -> int:
        """The blocking twin of :meth:`wait` (same arguments and errors)."""
        return drive_blocking(self._exit_op(), timeout)

    def poll(self) -> int | None:
        """The exit status if the process has exited, else ``None``, without waiting (it reads
        what has arrived: the reaper's news, the template's reports)."""
        return self._known_exit_code()

    # -- RPC -------------------------------------------------------------------------------

    async def rpc(
        self,
        func: Func,
        *,
        backend: Backend = "sync",
        serializer: str | Serializer = "pickle",
        init: Func | None = None,
        on_event: Callable[..., object] | None = None,
        on_error: Callable[[BaseException], object] | None = None,
        on_close: Callable[[], object] | None = None,
        concurrency: int = 64,
        timeout: float | None = None,
        done: Func | None = None,
        _on_retire: Callable[[], object] | None = None,
    ) -> Client:
        """Turn this process into an RPC server for ``func`` and return its client:
        ``client = await anyfork.new().require("mod").rpc("mod:work")``, then
        ``await client(*args)``.  The keywords are :func:`anyfork.rpc`'s.

        A function of the main script works too (the worker imports the script, see
        :meth:`run`), and so do functions of it that calls carry pickled.

        Cancellation: the connection is closed; the worker sees EOF and exits."""
        from .._rpc._start import rpc  # the RPC layer (and asyncio) only when it is used

        return await rpc(
            self, func, backend=backend, serializer=serializer, init=init, on_event=on_event,
            on_error=on_error, on_close=on_close, concurrency=concurrency, timeout=timeout,
            done=done, _on_retire=_on_retire,
        )  # fmt: skip

    def rpc_blocking(
        self,
        func: Func,
        *,
        backend: Backend = "sync",
        serializer: str | Serializer = "pickle",
        init: Func | None = None,
        on_event: Callable[..., object] | None = None,
        on_error: Callable[[BaseException], object] | None = None,
        on_close: Callable[[], object] | None = None,
        concurrency: int = 64,
        timeout: float | None = None,
        done: Func | None = None,
        _on_retire: Callable[[], object] | None = None,
    ) -> BlockingClient:
        """The blocking twin of :meth:`rpc`: returns a :class:`anyfork.BlockingClient`."""
        from .._rpc._start import rpc_blocking

        return rpc_blocking(
            self, func, backend=backend, serializer=serializer, init=init, on_event=on_event,
            on_error=on_error, on_close=on_close, concurrency=concurrency, timeout=timeout,
            done=done, _on_retire=_on_retire,
        )  # fmt: skip

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Let go of the process: the parent's end is closed once everything queued for it
        (and its FORK frame, still queued on its template) has been written.  A process that
        has not run then carries out every command it was sent and exits.  A template stops
        serving; the children it has forked live on, and it waits for them, reaping them and
        reporting their exits (:meth:`wait`), then exits.  Dropping the last reference closes
        the process as well (a template then exits at once; its children live on).  Closing
        again does nothing.

        Usually the kernel takes everything at once and this returns at once.  Otherwise, in a
        thread with a running event loop a task on that loop writes the rest (and finishes it
        when the loop shuts down); in any other thread this blocks until the process (or its
        template) has read enough of it.  A ``run`` or ``to_fh`` in progress is abandoned.

        A prefork server shuts down in three steps: ``template.close()`` (no more workers), a
        :meth:`terminate` for each worker, then ``await worker.wait()`` for each (and for the
        template, which exits after its last worker)."""
        self._let_go()
        _reaper.poll()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (default ``SIGKILL``) to the process.

        Does nothing once the process is known to have exited (its pid may belong to another
        process by then): the parent looks at what its template (or the reaper) has reported
        first.  A remote process's host sends the signal: this returns before it arrives.

        Raises:
            ProcessLookupError: the pid is not known yet (:meth:`wait_started` first); for a
                remote process also: it has exited, or the connection to its host is lost
                (its processes are killed then).
        """
        # A template's child forked ahead was forked before the signal: it is not handed out
        # after (a killed template must fail the next fork, not return a process it made).
        self._discard_ready()
        exited = self._known_exit_code() is not None
        if not exited and self._pid is None and self._state == _OPEN:
            self._poll_reports()
        self._transport.kill(self, self._pid, sig, exited)

    def terminate(self) -> None:
        """Send ``SIGTERM`` to the process: :meth:`kill` with that signal."""
        self.kill(signal.SIGTERM)

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


publish(globals())
