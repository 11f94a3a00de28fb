"""``Lineage``: a process as a template, the base of ``Process`` (docs/design.md, "Lineage")."""

from __future__ import annotations

import errno
import io
import os
import sys
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .._child import _wire
from .._errors import ClosedError, SpawnError
from . import _main
from ._channel import Channel, channel_pair
from ._drive import release
from ._protocol import _CLOSED, _HANDED, _OPEN, ProcessProtocol

if TYPE_CHECKING:
    from ._process import Process

Func = str | Callable[..., Any]


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


FdLike = int | _HasFileno
L = TypeVar("L", bound="Lineage")

#: The most children a template keeps forked ahead (see ``Lineage._fork_ahead``): asked for
#: together, so that asking (a few tenths of a millisecond of the start that asks, measured)
#: comes once in that many starts.  It asks for as many as ``fork()`` handed out in the last
#: ``_RECENT`` seconds: a template forked from now and then keeps one.
_AHEAD = 6
_RECENT = 0.25
#: Starts closer together than this (seconds) are "in quick succession": the children ahead
#: are forked at once, not when the template is idle (it may not be idle again before they
#: are needed).
_QUICK = 0.005


class Lineage(ProcessProtocol):
    """The commands, children and inheritance of one process (see the module)."""

    # -- commands --------------------------------------------------------------------------

    def _send(self: L, op: int, payload: bytes, fds: list[int] | None = None) -> L:
        self._command(op, payload, fds)
        return self

    def _send_fds(self: L, handles: tuple[FdLike, ...]) -> L:
        """``send_fh``: duplicate each handle's fd now, then send them in FDS frames."""
        dups: list[int] = []
        specs = [_fd_spec(handle) for handle in handles]
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
            kinds = specs[start : start + _wire.MAX_FDS]
            self._send(_wire.FDS, _wire.pack_values(kinds), chunk)
        return self

    def _command(self, op: int, payload: bytes, fds: list[int] | None = None) -> int:
        """Queue a command, write what the socket takes; return the frame's number."""
        if op != _wire.FORK and op != _wire.PID and op != _wire.AHEAD and self._ready:
            self._discard_ready()
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

    def _check_open(self) -> None:
        if self._state == _HANDED:
            raise ClosedError("this process has already run (or been handed over with to_fh)")
        if self._state == _CLOSED:
            raise ClosedError("this process has been closed")

    # -- running -------------------------------------------------------------------------

    def _where(self) -> str:
        return self._transport.where(self)

    def _start_run(self, func: Func) -> str:
        self._check_open()
        ref = self._prepare_func(func)
        if self._ready:
            self._discard_ready()
        # Queue only: a write error (the child is dead) is diagnosed by the run operation,
        # which can wait briefly to learn how the child died.
        self._chan.run_queued = True
        try:
            self._chan.queue(_wire.frame(_wire.RUN, _wire.pack_values([ref])))
        except OSError:
            pass
        self._state = _HANDED
        self._ran = ref
        return ref

    def _start_handover(self) -> None:
        if not self._transport.passes_fds:
            raise NotImplementedError(
                f"to_fh cannot hand over {self._name()}: it is on another host"
            )
        self._check_open()
        self._discard_ready()
        self._state = _HANDED

    # -- children --------------------------------------------------------------------------

    def _fork(self) -> Process:
        """``fork``: the first child forked ahead that lives, else a new one."""
        with self._lock:
            self._check_open()
            while self._ready:
                child = self._ready.popleft()
                # Forked already (so whatever has become of this process since, the child is
                # whole): hand it out if it lives.  Its STARTED gives its pid at once.
                child._template = self._as_process()  # (see _fork_ahead)
                child._take_started()
                if child._failure is None and not child._chan.decoder.eof:
                    if not child._started:
                        # Not forked yet (the template waits for a quiet moment): any command
                        # makes it fork what was asked ahead at once.
                        self._command(_wire.PID, b"")
                    self._hand_out()
                    return child
                child._let_go()  # it died while it waited (killed from outside): the next
            self._poll_reports()
            self._raise_if_failed()
            self._hand_out()
            return self._new_child()

    def _hand_out(self) -> None:
        now = time.monotonic()
        self._quick = now - self._last_handout < _QUICK
        self._last_handout = now
        recent = self._handouts
        recent.append(now)
        while recent[0] < now - _RECENT or len(recent) > _AHEAD:
            recent.popleft()

    def _fork_ahead(self) -> None:
        """Once none waits, ask for the next children (as many as handed out in the last
        ``_RECENT`` seconds, up to ``_AHEAD``) in one AHEAD frame: see docs/design.md,
        "Children forked ahead"."""
        with self._lock:
            if self._ready or self._state != _OPEN or not self._transport.forks_ahead:
                return
            self._poll_reports()  # (fork() does not look at a template it takes a child from)
            if self._failure is not None:
                return
            chans: list[Channel] = []
            fds: list[int] = []
            try:
                for _ in range(max(1, len(self._handouts))):
                    chan, fd = channel_pair()
                    chans.append(chan)
                    fds.append(fd)
            except OSError:
                if not chans:
                    return  # no fds left: no child ahead this time
            children = [self._child(chan) for chan in chans]
            try:
                # Forked at once if starts come in quick succession: the template may not be
                # idle before they are needed.
                frame = self._command(_wire.AHEAD, b"now" if self._quick else b"", fds)
            except (OSError, SpawnError):
                for child in children:
                    child._let_go()
                return  # the next fork() says what is wrong
            for child in children:
                child._fork_frame = frame
                child._main_forked = self._main_forked
                self._unforked.append(weakref.ref(child))
                # Until fork() hands it out, a child ahead holds no reference to us: we hold
                # it, and a cycle would keep a dropped template (and its process) alive until
                # the garbage collector runs.
                child._template = None
            self._forked += len(children)
            self._ready.extend(children)

    def _child(self, chan: Channel) -> Process:
        """A ``Process`` (of this one's class) for a child of this one on ``chan``."""
        tmpl = self._as_process()
        return type(tmpl)._create(chan, template=tmpl, transport=self._transport)

    def _as_process(self) -> Process:
        return self  # type: ignore[return-value]  # every Lineage is a Process (its only subclass)

    def _new_child(self) -> Process:
        chan, payload, fds = self._transport.child(self._as_process())
        child = self._child(chan)
        child._main_forked = self._main_forked
        try:
            child._fork_frame = self._command(_wire.FORK, payload, fds)
        except BaseException:
            child._let_go()
            raise
        self._unforked.append(weakref.ref(child))
        self._forked += 1
        return child

    def _discard_ready(self) -> None:
        """Let the children forked ahead go: they have the old state (or would never be used)."""
        while self._ready:
            self._ready.popleft()._let_go()

    # -- letting go ------------------------------------------------------------------------

    def _children_to_report(self) -> bool:
        """Some live child of this one runs a function and may be waited for: not one that
        never ran one (it exits by itself) nor an RPC worker (its client learns of its end)."""
        if not self._forked:
            return False
        self._receive()
        if not self._chan.readable():
            return False  # nothing more will be reported
        refs = (*self._unforked, *self._children.values())
        return any(
            (kid := ref()) is not None
            and kid._returncode is None
            and kid._ran
            and not kid._ran.startswith("anyfork.")
            for ref in refs
        )

    def _let_go(self) -> None:
        """``close``: see ``Process.close``."""
        if self._state == _OPEN:
            self._state = _CLOSED
            self._discard_ready()
            if self._children_to_report():
                # A template whose children may still be waited for: it must go on reading
                # their exits to us.
                release(self._chan, self._template_channels(), keep_reading=True)
            else:
                self._finalizer()
        elif self._state == _HANDED:
            self._chan.close()

    # -- the main script -------------------------------------------------------------------

    def _prepare_func(self, func: Func | None, *, now: bool = False) -> str:
        """Get the process ready to find ``func``; return the reference to send for it.

        The one way in for ``run``, ``rpc`` and the pools.  For a function of the main program
        (or ``func=None``: functions that will arrive pickled), a MAIN command (once per process
        and its templates) tells the child where the script is (``_child._main``); ``now``:
        import it at once.  A copy of the main program needs nothing.

        Raises:
            TypeError: a lambda or local function; or a function of a main module that has
                no file (interactive, ``-c``, notebook): the message names the ways out.
            ValueError: a malformed reference string.
            ClosedError, SpawnError: as for any command.
        """
        ref = "" if func is None else func_ref(func)
        if (func is not None and not _main.names_main(ref)) or self._main_forked:
            return ref
        how, where = _main.location()
        if how == "none" and func is not None and not isinstance(func, str):
            raise TypeError(_main.unreachable(func, where))
        level = 2 if now else 1
        if self._main_level() < level:
            argv = [arg for arg in sys.argv if isinstance(arg, str)]
            payload = _wire.pack_values([how, where, "1" if now else "", *argv])
            self._main_sent.setdefault(level, self._command(_wire.MAIN, payload))
        _main.alias_in_parent()
        return ref

    def _main_level(self) -> int:
        """What this process knows of the main script: 0 nothing, 1 where it is, 2 imported
        (from MAIN commands sent to it, or to its templates before they forked it)."""
        level = max(self._main_sent, default=0)
        proc: ProcessProtocol = self
        while (tmpl := proc._template) is not None:
            before = [lvl for lvl, frame in tmpl._main_sent.items() if frame < proc._fork_frame]
            level = max(level, *before, 0)
            proc = tmpl
        return level


def prepare_rpc(proc: Lineage, func: Func) -> None:
    """``_prepare_func`` for ``func`` and for the functions calls bring pickled: the one way
    in for every RPC face.  Raises as ``_prepare_func``."""
    proc._prepare_func(func)
    proc._prepare_func(None)


def template_of(proc: Lineage) -> Process | None:
    """The process ``proc`` was forked from (``None``: exec'd, a forked main program, or taken
    over with ``new_from_fh``): the RPC layer primes it with its server before later forks."""
    return proc._template


def where_of(proc: Lineage) -> Callable[[], str]:
    """What errors about ``proc`` add after its pid (a remote one's host): for the RPC layer's
    messages."""
    return proc._where


def func_ref(func: Func) -> str:
    """``"module:qualname"`` for a function object (``__main__`` for the main script's, also as
    ``__mp_main__``); strings pass through (checked)."""
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
            f"function).  Ways out: define it at module level (in the main script too); or "
            f"define it in the process with eval() and run it by name; RPC and pools can send "
            f'it by value with serializer="cloudpickle"'
        )
    if module in _main.MAIN_NAMES:
        module = "__main__"
    return f"{module}:{qualname}"


def _fd_spec(handle: FdLike) -> str:
    """How the child hands the fd of ``handle`` over (``send_fh``): as the kind of file sent."""
    if isinstance(handle, io.TextIOWrapper):
        return _wire.text_spec(handle.encoding, handle.errors or "strict", handle.line_buffering)
    if isinstance(handle, (io.BufferedReader, io.BufferedWriter, io.BufferedRandom)):
        return _wire.FD_BUFFERED
    return _wire.FD_RAW
