"""``Process``: a prepared process, its preparation commands, ``fork`` and ``run``.

A ``Process`` is the parent's handle on a child that serves commands (``_serve``).  Preparation
methods queue frames and return the process so calls chain; they never block (each makes one
non-blocking attempt to write).  ``run`` and ``to_fh`` are the only waits: they flush this
process's queue *and every queue it depends on* (the template that must fork it, that template's
own template...), then read the child's reports up to RUNNING and hand the socket over.

Errors a child reports (a failed import, an exception in eval code, a missing function) end that
child; the parent raises them at the next wait, as the original exception type where it is a
builtin (``ModuleNotFoundError``, ``AttributeError``...) with the child's traceback as cause.
A dead template fails the next ``fork`` at once and every process queued behind it at its ``run``.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .._child import _wire
from .._errors import ClosedError, SpawnError, describe_returncode, rebuild
from .._util import publish
from . import _reaper
from ._channel import READ, WRITE, Channel, Op, Wait, drive_async, drive_blocking

if TYPE_CHECKING:
    from .._rpc._start import BlockingClient, Client

__all__ = ["Process"]


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


FdLike = int | _HasFileno
Func = str | Callable[..., Any]
P = TypeVar("P", bound="Process")

#: How long the error path waits for a template to report how a child died.
_EXIT_REPORT_WAIT = 1.0

_OPEN, _HANDED, _CLOSED = "open", "handed", "closed"


class Process:
    """A process that serves commands until ``run`` hands it a function and a socket.

    Create one with :func:`anyfork.new`, :func:`anyfork.new_exec`, :meth:`fork`,
    :func:`anyfork.new_from_fh` or a main-program template; the constructor is private.

    Any process is a template: :meth:`fork` makes a child of it that inherits everything sent
    to it so far (modules, ``eval`` state, args and fds), and it keeps serving.  Closing a
    process (``close()``, ``with``, or dropping the last reference) closes the parent's end of
    its socket, and a process that has not run yet exits when it sees that.
    """

    def __init__(
        self,
        chan: Channel,
        *,
        pid: int | None = None,
        template: Process | None = None,
        direct: bool = False,
    ):
        self._chan = chan
        self._pid = pid
        self._started = False  # the child has reported in (STARTED or RUNNING)
        self._template = template
        self._direct = direct
        self._state = _OPEN
        self._failure: BaseException | None = None
        self._fork_failures: deque[str] = deque(maxlen=64)
        self._exits: dict[int, int] = {}
        self._lock = threading.RLock()
        self._finalizer = weakref.finalize(self, chan.close)
        _channels.add(chan)

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
        """Import ``modules`` in the process (in order).  A failure surfaces at ``run``."""
        for name in modules:
            if not isinstance(name, str) or not name:
                raise TypeError(f"module names are non-empty str, not {name!r}")
        return self._send(_wire.IMPORT, _wire.pack_values(modules))

    def eval(self: P, code: str, *args: str | bytes) -> P:
        """Run ``code`` in the process's ``__main__``, with ``args`` bound to a tuple of ``args``
        while it runs.  Functions it defines can be named in ``run`` by their bare name.  An
        exception surfaces at ``run`` as its own type (builtins) or ``RemoteError``."""
        if not isinstance(code, str):
            raise TypeError(f"eval code is str, not {type(code).__name__}")
        compile(code, "<anyfork eval>", "exec")  # a syntax error is the caller's bug: say so here
        return self._send(_wire.EVAL, _wire.pack_values((code, *args)))

    def send_arg(self: P, *values: str | bytes) -> P:
        """Append ``values`` (``str`` or ``bytes``; each arrives as what it was) to the arguments
        ``run``'s function receives."""
        return self._send(_wire.ARGS, _wire.pack_values(values))

    def send_fh(self: P, *handles: FdLike) -> P:
        """Pass file descriptors (ints, sockets, files, anything with ``fileno()``) to the
        process; they join the arguments in order.  The descriptor is duplicated at once, so
        the caller may close its own copy right after this call.  In the child a socket arrives
        as ``socket.socket``, a file or pipe as an unbuffered binary file object of the right
        mode, a directory as an int."""
        dups: list[int] = []
        try:
            for handle in handles:
                fd = handle if isinstance(handle, int) else handle.fileno()
                if not isinstance(fd, int) or fd < 0:
                    raise ValueError(f"send_fh: {handle!r} has no open file descriptor")
                try:
                    dups.append(os.dup(fd))
                except OSError as exc:
                    raise ValueError(f"send_fh: {handle!r} is not an open file descriptor") from exc
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
        the child afterwards is its own.  Raises ``SpawnError`` at once if this process is
        known to be dead."""
        self._check_open()
        self._poll_reports()
        self._raise_if_failed()
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fd = child_end.detach()
        child = Process(Channel(parent_end), template=self)
        try:
            self._send(_wire.FORK, b"", [fd])
        except BaseException:
            child.close()
            raise
        return child

    def _send(self: P, op: int, payload: bytes, fds: list[int] | None = None) -> P:
        try:
            self._check_open()
        except BaseException:
            for fd in fds or ():
                os.close(fd)
            raise
        try:
            self._chan.queue(_wire.frame(op, payload), fds)
            self._chan.flush_nowait()
        except OSError as exc:
            # Gone.  Read what it reported before it went (why it died), then let go of the
            # socket now: the error raised here may be kept, with its traceback and so this
            # object, long after (a pool keeps its last start error), and the fd with it.
            self._poll_reports()
            self._chan.close()
            self._raise_if_failed()
            raise SpawnError(f"{self._name()} is gone ({exc})") from exc
        return self

    # -- waiting ---------------------------------------------------------------------------

    async def run(self, func: Func, *, timeout: float | None = None) -> socket.socket:
        """Call ``func(sock, *args)`` in the child; return the parent's end of ``sock``.

        ``func`` is a function object (sent as ``module:qualname``) or such a string; a bare
        name resolves in the child's ``__main__``.  The child receives every ``send_arg`` and
        ``send_fh`` value in the order sent.  Returns once everything queued is written and the
        child has found ``func``: a non-blocking ``socket.socket`` on which the function's first
        byte is the first byte you read.  After ``run`` the process object is spent.

        Raises the child's error (see the class docs), ``SpawnError`` if the process or its
        template died first, ``TimeoutError`` after ``timeout`` seconds.

        Cancellation (or timeout): the parent's end is closed, so a child that has not started
        the function exits, and one that has sees EOF.
        """
        ref = self._start_run(func)
        sock: socket.socket = await drive_async(self._run_op(ref), timeout)
        return sock

    def run_blocking(self, func: Func, *, timeout: float | None = None) -> socket.socket:
        """The blocking twin of :meth:`run`; returns a blocking socket."""
        ref = self._start_run(func)
        sock = drive_blocking(self._run_op(ref), timeout)
        sock.setblocking(True)
        return sock

    async def to_fh(self, *, timeout: float | None = None) -> socket.socket:
        """Flush everything queued and hand over the raw command socket, without running
        anything: pass it to another process, which continues with
        :func:`anyfork.new_from_fh`.  The process object is spent afterwards.

        Cancellation: as for :meth:`run`."""
        self._start_handover()
        sock: socket.socket = await drive_async(self._handover_op(), timeout)
        return sock

    def to_fh_blocking(self, *, timeout: float | None = None) -> socket.socket:
        """The blocking twin of :meth:`to_fh`."""
        self._start_handover()
        sock = drive_blocking(self._handover_op(), timeout)
        sock.setblocking(True)
        return sock

    async def wait_started(self, *, timeout: float | None = None) -> int:
        """Wait until the process exists and has reported its pid; return it.

        Raises the error of a failed command, or ``SpawnError`` if it died.  Cancellation leaves
        the process as it was."""
        pid: int = await drive_async(self._started_op(), timeout)
        return pid

    def wait_started_blocking(self, *, timeout: float | None = None) -> int:
        """The blocking twin of :meth:`wait_started`."""
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
        """Close the parent's end: a process that has not run exits, a template stops serving
        (children already forked live on)."""
        if self._state == _OPEN:
            self._state = _CLOSED
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

    def _name(self) -> str:
        return f"process pid {self._pid}" if self._pid is not None else "process"

    def _check_open(self) -> None:
        if self._state == _HANDED:
            raise ClosedError("this process has already run (or been handed over with to_fh)")
        if self._state == _CLOSED:
            raise ClosedError("this process has been closed")

    def _usable(self) -> bool:
        """Open and not known to be dead (checks the reports that have arrived)."""
        if self._state != _OPEN or self._chan.sock is None:
            return False
        self._poll_reports()
        return self._failure is None

    def _check_exit(self) -> None:
        """Note a death the OS has already told us about.

        The socket alone can lag: a child the template forked a moment before it died still
        holds the template's socket until it gets to run and closes it, so for that moment the
        dead template's socket shows no EOF."""
        if self._failure is None and self._pid is not None:
            code = _reaper.known(self._pid) if self._direct else self._known_exit_code()
            if code is not None:
                self._failure = self._death(code)

    def _raise_if_failed(self) -> None:
        failure = self._failure
        if isinstance(failure, SpawnError):
            raise SpawnError(str(failure)) from failure.__cause__
        if failure is not None:
            raise SpawnError(f"{self._name()} failed earlier: {failure}") from failure

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

    def _poll_reports(self) -> None:
        """Handle every report that has arrived, without waiting."""
        with self._lock:
            while self._chan.sock is not None:
                frame = self._chan.read_nowait()
                if frame is None:
                    if self._chan.decoder.eof and self._failure is None:
                        self._failure = self._death(None)
                    self._check_exit()
                    return
                self._handle(frame)

    def _handle(self, frame: tuple[int, bytes, list[int]]) -> None:
        op, payload, _ = frame
        if op in (_wire.STARTED, _wire.RUNNING):
            self._pid = _wire.unpack_u32(payload)
            self._started = True
        elif op == _wire.ERROR:
            stage, record = _wire.unpack_values(payload)
            if not isinstance(stage, str) or not isinstance(record, bytes):
                raise _wire.WireError("an ERROR report is [stage, record]")
            self._failure = rebuild(record, f"(in {stage} of {self._name()})", ours=True)
        elif op == _wire.FORK_FAILED:
            self._fork_failures.append(_wire.unpack_strings(payload)[0])
        elif op == _wire.EXITED:
            pid, status = _wire.EXIT.unpack(payload)
            if len(self._exits) > 4096:
                self._exits.pop(next(iter(self._exits)))
            self._exits[pid] = os.waitstatus_to_exitcode(status)

    def _death(self, returncode: int | None) -> SpawnError:
        """The error for a process whose socket reached EOF before ``run``."""
        if self._pid is None:
            tmpl = self._template
            if tmpl is not None:
                tmpl._poll_reports()
                if tmpl._fork_failures:
                    return SpawnError(f"its template could not fork it: {tmpl._fork_failures[0]}")
                if tmpl._failure is not None:
                    err = SpawnError(f"its template failed before forking it: {tmpl._failure}")
                    err.__cause__ = tmpl._failure
                    return err
            return SpawnError("the process exited before it started")
        if returncode is None:
            returncode = self._known_exit_code()
        how = describe_returncode(returncode)
        return SpawnError(f"{self._name()} exited before run ({how})")

    def _known_exit_code(self) -> int | None:
        """The exit code if it is already known (reaped here, or reported by the template)."""
        if self._pid is None:
            return None
        if self._direct:
            return _reaper.returncode(self._pid)
        tmpl = self._template
        if tmpl is None:
            return None
        tmpl._poll_reports()
        return tmpl._exits.get(self._pid)

    def _exit_code_op(self) -> Op[int | None]:
        """How did this (dead) process end?  Direct children: the reaper; forked ones: their
        template's EXITED report, waited for briefly."""
        pid = self._pid
        if pid is None:
            return None
        if self._direct:
            # Its socket is closed, so it is exiting: bounded polling for the OS to say how
            # (timer waits: the asyncio driver sleeps them without blocking the loop).
            until = time.monotonic() + 0.1
            while (code := _reaper.returncode(pid)) is None and time.monotonic() < until:
                yield Wait(READ, None, min(until, time.monotonic() + 0.002))
            return code
        tmpl = self._template
        if tmpl is None:
            return None
        until = time.monotonic() + _EXIT_REPORT_WAIT
        while pid not in tmpl._exits and tmpl._chan.sock is not None:
            tmpl._poll_reports()
            if pid in tmpl._exits or tmpl._chan.decoder.eof:
                break
            if not (yield Wait(READ, tmpl._chan, until)):
                break
        return tmpl._exits.pop(pid, None)

    def _flush_op(self) -> Op[None]:
        """Flush the queues this process depends on, oldest template first."""
        chain: list[Process] = []
        proc: Process | None = self
        while proc is not None:
            chain.append(proc)
            proc = proc._template
        for proc in reversed(chain):
            while True:
                try:
                    if proc._chan.flush_nowait():
                        break
                except OSError as exc:
                    proc._poll_reports()
                    if proc is not self:
                        raise SpawnError(
                            f"the template ({proc._name()}) died before forking this process"
                        ) from (proc._failure or exc)
                    failure = proc._failure
                    if failure is None:
                        failure = self._death((yield from self._exit_code_op()))
                    raise failure from None
                yield Wait(WRITE, proc._chan)

    def _reports_until(self, done: Callable[[], bool]) -> Op[None]:
        """Read reports until ``done()``; raise the child's error, or its death."""
        while not done():
            frame = self._chan.read_nowait()
            if frame is not None:
                self._handle(frame)
                if self._failure is not None:
                    raise self._failure
                continue
            if self._chan.decoder.eof or self._chan.sock is None:
                if self._failure is None:
                    self._failure = self._death((yield from self._exit_code_op()))
                raise self._failure
            yield Wait(READ, self._chan)

    def _run_op(self, ref: str) -> Op[socket.socket]:
        try:
            yield from self._flush_op()
            yield from self._reports_until(lambda: self._chan.decoder.stopped)
            return self._chan.detach()
        finally:
            if self._chan.sock is not None and not self._chan.decoder.stopped:
                self._chan.close()  # failed, cancelled or timed out: let the child go

    def _handover_op(self) -> Op[socket.socket]:
        try:
            yield from self._flush_op()
            while not self._chan.decoder.at_boundary():
                yield from self._reports_until(lambda: self._chan.decoder.at_boundary())
            self._poll_reports()
            if self._failure is not None:
                raise self._failure
            return self._chan.detach()
        finally:
            if self._chan.sock is not None:
                self._chan.close()

    def _started_op(self) -> Op[int]:
        if self._state == _OPEN:
            yield from self._flush_op()
            # Not merely "pid known": an exec'd child's pid is known at once, but it has not
            # necessarily started (imported anyfork, opened its socket) yet.
            yield from self._reports_until(lambda: self._started)
        self._raise_if_failed()
        if self._pid is None:
            raise ClosedError("the process was closed before it reported its pid")
        return self._pid


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


# -- every live channel, for the at-fork reset -----------------------------------------------

_channels: weakref.WeakSet[Channel] = weakref.WeakSet()


def _close_in_child() -> None:
    """A forked copy of this program (ours or the user's) must not hold our processes' sockets:
    they would keep templates alive after we are gone, and two processes would share them."""
    for chan in list(_channels):
        sock, chan.sock = chan.sock, None
        if sock is not None:
            sock.close()
    _channels.clear()


os.register_at_fork(after_in_child=_close_in_child)


publish(globals())
