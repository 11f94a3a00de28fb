"""The command protocol of one process, parent side: ``ProcessProtocol``, the base of ``Process``.

``_receive`` is the one place reports are read and parsed; the rest: docs/design.md, "The
parent's protocol state".
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._child import _wire
from .._errors import ClosedError, ProtocolError, SpawnError, describe_returncode, rebuild
from . import _reaper
from ._channel import READ, WRITE, Channel, Drain, Op, Wait, arrived
from ._drive import deliver, release
from ._transport import LOCAL, Transport

_DONTWAIT = int(socket.MSG_DONTWAIT)
_RUNNING_HEADER = _wire.HEADER.pack(_wire.RUNNING, _wire.U32.size)
_STARTED_HEADER = _wire.HEADER.pack(_wire.STARTED, _wire.U32.size)

if TYPE_CHECKING:
    from ._process import Process

#: How long the error path waits for a template to report how a child died.
_EXIT_REPORT_WAIT = 1.0

#: A wait for a forked child drains its template's reports only past this many unreported exits
#: (a fraction of the ~270 its socket holds): a burst never leaves them piling up, and a
#: one-at-a-time ``new().run(f)`` is not woken by the previous child's exit.
_DRAIN_BACKLOG = 32
#: How often a wait for an exit report looks again: another thread waiting on the same template
#: (a pool's workers closing at once) may read it, and our poll would sleep on until more bytes.
RECHECK = 0.05

_OPEN, _HANDED, _CLOSED = "open", "handed", "closed"


class ProcessProtocol:
    """What the parent knows of one process, and the waits that learn it (see the module)."""

    def __init__(
        self,
        chan: Channel,
        *,
        pid: int | None = None,
        template: Process | None = None,
        direct: bool = False,
        transport: Transport = LOCAL,
    ):
        self._chan = chan
        self._transport = transport
        self._pid = pid
        self._started = False  # the child has reported in (STARTED or RUNNING)
        self._template = template
        self._fork_frame = 0  # the number of our FORK frame on our template's channel
        self._direct = direct
        self._state = _OPEN
        self._failure: BaseException | None = None
        self._fork_failure = ""  # why our template could not fork us (its FORK_FAILED)
        self._returncode: int | None = None
        self._ran = ""  # the function run() was given (its reference)
        self._ready: deque[Process] = deque()  # our next children, forked ahead of need
        self._handouts: deque[float] = deque()  # when fork() returned children (_RECENT)
        self._last_handout = 0.0  # ...the last one at this time.monotonic()
        self._quick = False  # the last two close together (_QUICK)
        # A copy of the main program (its __main__ is the program), or a process where this
        # program's main script is not (functions are found in its own __main__).
        self._main_forked = not transport.main_script
        self._main_sent: dict[int, int] = {}  # MAIN commands sent: level -> frame number
        # Our children, in the order of their FORK frames, until the template says which pid
        # each got (FORKED, in that same order; or FORK_FAILED); then by pid until they exit.
        self._unforked: deque[weakref.ref[ProcessProtocol]] = deque()
        self._children: dict[int, weakref.ref[ProcessProtocol]] = {}
        # Exit statuses of children nobody holds any more, or that said their pid themselves
        # (``children_by_pid``: the remote agent's).
        self._exits: dict[int, int] = {}
        self._forked = 0  # children forked from this process...
        self._exited = 0  # ...and EXITED reports received (spares make this one run ahead)
        self._lock = threading.RLock()
        # Dropping the process lets go of its channel (``release``: what is queued is still
        # delivered).  Not a method of self: the finaliser must not keep the process alive.
        self._finalizer = weakref.finalize(self, release, chan, self._template_channels())
        _channels.add(chan)

    def _name(self) -> str:
        return self._transport.name(self, self._pid)

    def _template_channels(self) -> tuple[Channel, ...]:
        """The channels of the templates this process is forked from, oldest first."""
        chain: list[Channel] = []
        tmpl = self._template
        while tmpl is not None:
            chain.append(tmpl._chan)
            tmpl = tmpl._template
        return tuple(reversed(chain))

    def _usable(self) -> bool:
        """Open and not known to be dead (checks the reports that have arrived)."""
        if self._state != _OPEN or self._chan.sock is None:
            return False
        self._poll_reports()
        return self._failure is None

    def _check_exit(self) -> None:
        """Note a death the OS has already told us about: the socket can lag (a child forked a
        moment before its template died holds the template's socket until it runs)."""
        if self._failure is None and self._pid is not None:
            code = _reaper.known(self._pid) if self._direct else self._known_exit_code()
            if code is not None:
                self._failure = self._death(code)

    def _raise_if_failed(self) -> None:
        """Raise the known failure as a ``SpawnError`` (for what cannot be created from it)."""
        failure = self._failure
        if isinstance(failure, SpawnError):
            raise SpawnError(str(failure)) from failure.__cause__
        if failure is not None:
            raise SpawnError(f"{self._name()} failed earlier: {failure}") from failure

    # -- the receive boundary ------------------------------------------------------------------

    def _receive(self) -> None:
        """Read and apply every report that has arrived, without waiting.  Never raises."""
        with self._lock:
            chan = self._chan
            try:
                chan.read_nowait(self._apply)
            except (_wire.WireError, ProtocolError) as exc:
                if self._failure is None:
                    self._failure = (
                        exc
                        if isinstance(exc, ProtocolError)  # a broken record: rebuild named us
                        else ProtocolError(f"{self._name()} sent a broken report stream: {exc}")
                    )
                chan.close()

    def _apply(self, op: int, payload: bytes) -> None:
        if op == _wire.STARTED or op == _wire.RUNNING:
            self._pid = _wire.unpack_u32(payload)
            self._started = True
        elif op == _wire.ERROR:
            stage, record = _wire.unpack_error(payload)
            failure = rebuild(record, f"(in {stage} of {self._name()})", ours=True)
            if self._failure is None:
                self._failure = failure
        elif op == _wire.FORKED:
            pid = _wire.unpack_u32(payload)
            # A status kept under this pid is an earlier child's: reports come in order, and a
            # pid is free for a new child only once the template has reaped the old one.
            self._exits.pop(pid, None)
            child = self._unforked.popleft()() if self._unforked else None
            if child is not None:
                if child._pid is None:
                    child._pid = pid
                self._children[pid] = weakref.ref(child)
        elif op == _wire.FORK_FAILED:
            message = _wire.unpack_message(payload)
            child = self._unforked.popleft()() if self._unforked else None
            if child is not None:
                child._fork_failure = message
                # Its wait sees EOF now, and the reason (``_death``): a remote child's channel
                # would stay open, parked at the host's agent (a local one's template closed it).
                if (sock := child._chan.sock) is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
        elif op == _wire.EXITED:
            pid, code = _wire.unpack_exit(payload)
            self._exited += 1
            ref = self._children.pop(pid, None)
            child = ref() if ref is not None else None
            if child is not None:
                child._returncode = code
            if len(self._exits) > 4096:
                self._exits.pop(next(iter(self._exits)))
            self._exits[pid] = code

    def _drain(self) -> Drain | None:
        """What a wait for one of this template's children drains meanwhile."""
        if self._forked - self._exited <= _DRAIN_BACKLOG and not self._transport.always_drain:
            return None
        return self._chan, self._receive

    def _poll_reports(self) -> None:
        """``_receive``, and note a death at once."""
        with self._lock:
            self._receive()
            if self._chan.decoder.eof and self._failure is None:
                self._failure = self._death(None)
            self._check_exit()
            while self._failure is not None and self._ready:
                # Never handed out now (fork() fails first): let them go at once.
                self._ready.popleft().close()

    def _death(self, returncode: int | None) -> SpawnError:
        """The error for a process whose socket reached EOF before ``run``."""
        if (lost := self._transport.death(self, self._pid)) is not None:
            return lost
        if self._pid is None:
            tmpl = self._template
            if tmpl is not None:
                tmpl._poll_reports()
                if self._fork_failure:
                    return SpawnError(f"its template could not fork it: {self._fork_failure}")
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
        if self._returncode is None and self._pid is not None:
            if self._direct:
                self._returncode = _reaper.returncode(self._pid)
            elif self._template is not None:
                self._template._receive()
        return self._status()

    # -- waiting (generators run by drive_async and drive_blocking) ------------------------------

    def _exit_code_op(self) -> Op[int | None]:
        """How did this (dead) process end?  Waited for briefly (``_EXIT_REPORT_WAIT``): its
        socket is closed, so it is exiting, and the reaper or its template says so soon."""
        until = time.monotonic() + _EXIT_REPORT_WAIT
        wait = self._exit_op()
        code = None
        try:
            step = next(wait)
            while True:
                step.until = until if step.until is None else min(step.until, until)
                if not (yield step) and time.monotonic() >= until:
                    break
                step = wait.send(True)
        except StopIteration as stop:
            code = stop.value
        except (ChildProcessError, SpawnError):
            pass
        finally:
            wait.close()
        yield from self._transport.settle(self, self._pid)
        return self._returncode if code is None else code

    def _exit_op(self) -> Op[int]:
        """Wait until the process has exited; its exit status (``-N``: killed by signal N).

        Raises ``SpawnError`` for a process that never existed (its template failed to fork
        it), ``ChildProcessError`` when the status cannot be known."""
        if (code := self._status()) is not None:
            return code
        tmpl = self._template
        if tmpl is not None and tmpl._transport.children_by_pid and self._pid is None:
            # Its template reports its exit by the pid that only the process itself says.
            if self._state == _OPEN:
                yield from self._started_op()
            if self._pid is None:
                raise ChildProcessError(
                    f"the exit status of {self._name()} cannot be known: it was closed before "
                    f"it said its pid (wait_started first)"
                )
        # It exists once its FORK frame is written (everything queued goes with it).
        yield from deliver(self._chan, self._template_channels())
        if self._direct:
            return (yield from self._reaped_op())
        if tmpl is None:
            raise ChildProcessError(
                f"the exit status of {self._name()} is not ours to know: it was adopted with "
                f"new_from_fh, and its template reports it to the process that created it"
            )
        while True:
            tmpl._receive()
            if (code := self._status()) is not None:
                return code
            if self._fork_failure:
                raise SpawnError(f"its template could not fork it: {self._fork_failure}")
            if not tmpl._chan.readable():
                if self._pid is None:
                    raise SpawnError(
                        f"the process never started: its template ({tmpl._name()}) ended first"
                    ) from tmpl._failure
                raise ChildProcessError(
                    f"the exit status of {self._name()} is lost: its template "
                    f"({tmpl._name()}) ended, or was handed over, before reporting it"
                )
            # Another thread reading the same template's reports may take ours (RECHECK).
            yield Wait(READ, tmpl._chan, until=time.monotonic() + RECHECK)

    def _status(self) -> int | None:
        tmpl = self._template
        if self._returncode is None and tmpl is not None and tmpl._transport.children_by_pid:
            # A template that made us on a connection of our own reports our exit by pid
            # (which we say on our connection first).
            if self._pid is None and self._chan.sock is not None:
                self._receive()
            if self._pid is not None:
                tmpl._poll_reports()
                self._returncode = tmpl._exits.get(self._pid)
        return self._returncode

    def _reaped_op(self) -> Op[int]:
        """``_exit_op`` for a direct child: woken by a pidfd, else by bounded polling."""
        pid = self._pid
        assert pid is not None  # a direct child's pid is known from the start
        fd = _reaper.pidfd(pid)
        delay = 0.001
        try:
            while (code := _reaper.returncode(pid)) is None:
                if not _reaper.watching(pid):
                    raise ChildProcessError(
                        f"the exit status of {self._name()} is lost: something else reaped it "
                        f"(a waitpid(-1) in this program)"
                    )
                if fd is not None:
                    yield Wait(READ, None, fd=fd)
                else:  # no pidfds on this system: timer waits, which never block a loop
                    yield Wait(READ, None, time.monotonic() + delay)
                    delay = min(delay * 2, 0.05)
        finally:
            if fd is not None:
                os.close(fd)
        self._returncode = code
        return code

    def _flush_op(self) -> Op[None]:
        """Write each template's queue (oldest first) up to the FORK frame of the next process
        in line, then everything queued here."""
        chain: list[tuple[ProcessProtocol, int]] = [(self, self._chan.queued)]
        while (tmpl := chain[-1][0]._template) is not None:
            chain.append((tmpl, chain[-1][0]._fork_frame))
        for proc, upto in reversed(chain):
            chan = proc._chan
            while True:
                try:
                    if chan.flush_nowait(upto):
                        break
                except OSError as exc:
                    if proc is not self:
                        proc._poll_reports()
                        raise SpawnError(
                            f"the template ({proc._name()}) died before forking this process"
                        ) from (proc._failure or exc)
                    self._receive()  # what it reported before it went: why it failed
                    failure = self._failure
                    if failure is None:
                        failure = self._death((yield from self._exit_code_op()))
                    raise failure from None
                drain = None if proc is self else proc._drain()
                yield Wait(WRITE, chan, upto=upto, drain=drain)

    def _reports_until(self, done: Callable[[], bool], asked: bool = False) -> Op[None]:
        """Read reports until ``done()``; raise the child's error, or its death.  ``asked``: the
        answer to a command just sent cannot be there yet: wait before reading (a read that
        finds nothing raises, ~50 us on the way to run after a pause)."""
        chan = self._chan
        tmpl = self._template
        if asked and chan.sock is not None:
            yield Wait(READ, chan, drain=None if tmpl is None else tmpl._drain())
        while True:
            self._receive()
            if self._failure is not None:
                raise self._failure
            if done():
                return
            if chan.decoder.eof:
                self._failure = self._death((yield from self._exit_code_op()))
                raise self._failure
            if chan.sock is None:
                raise ClosedError("the process was closed while waiting for it")
            yield Wait(READ, chan, drain=None if tmpl is None else tmpl._drain())

    def _run_op(self, ref: str) -> Op[socket.socket]:
        try:
            yield from self._flush_op()
            yield from self._reports_until(lambda: self._chan.decoder.stopped, asked=True)
            return self._ran_ok()
        finally:
            if self._chan.sock is not None and not self._chan.decoder.stopped:
                self._chan.close()  # failed, cancelled or timed out: let the child go

    def _ran_ok(self) -> socket.socket:
        """What ``run`` does once RUNNING is in: the socket is the caller's."""
        if self._template is not None and not self._template._ready:
            # Asked for now, not while the child finds its function: until RUNNING, this
            # process's work (and the template's, which wakes to take the request) stands
            # between the child and a CPU (measured: start to first byte -3%).
            self._template._fork_ahead()
        self._learn_template_pids()
        return self._chan.detach()

    def _run_started(self, deadline: float | None) -> socket.socket | None:
        """``run_blocking``'s usual case in few steps (each Python call costs microseconds on
        the way to the function after a pause: cold caches): a started child, its RUN written
        at once, RUNNING its whole answer.  ``None``: anything else, for ``_run_op`` to go on
        from where this stopped (with what time is left)."""
        chan = self._chan
        sock = chan.sock
        tmpl = self._template
        if sock is None or not self._started or not chan.readable():
            return None
        if tmpl is not None and tmpl._drain() is not None:
            return None  # (its reports pile up: the general wait reads them meanwhile)
        try:
            if not chan.flush_nowait():
                return None
            wait = None if deadline is None else max(0.0, deadline - time.monotonic()) * 1000
            if not arrived(chan.fd, wait) or not chan.decoder.at_boundary():
                return None
            data = sock.recv(_wire.FINAL_SIZE, _DONTWAIT)
        except OSError:
            return None  # (the child is gone: _run_op says how)
        except BaseException:
            chan.close()  # interrupted: let the child go, as _run_op does
            raise
        dec = chan.decoder
        dec.receive(data)
        if data[: _wire.HEADER_SIZE] != _RUNNING_HEADER or dec.next_frame() is None:
            return None
        return self._ran_ok()

    def _handover_op(self) -> Op[socket.socket]:
        try:
            yield from self._flush_op()
            # Hand over between two frames: the new owner's first byte starts a report.
            yield from self._reports_until(self._chan.decoder.at_boundary)
            self._learn_template_pids()
            return self._chan.detach()
        finally:
            if self._chan.sock is not None:
                self._chan.close()

    def _take_started(self) -> None:
        """``fork``'s read of a child forked ahead: its STARTED in one read of that frame's
        size, then a look for more (EOF: it died meanwhile); else the general ``_receive``."""
        chan = self._chan
        sock = chan.sock
        if sock is None or self._started or not chan.readable() or not chan.decoder.at_boundary():
            self._receive()
            return
        try:
            data = sock.recv(_wire.FINAL_SIZE, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return  # not forked yet
        except OSError:
            data = b""
        if len(data) == _wire.FINAL_SIZE and data[: _wire.HEADER_SIZE] == _STARTED_HEADER:
            self._pid = _wire.U32.unpack_from(data, _wire.HEADER_SIZE)[0]
            self._started = True
            if not arrived(chan.fd):
                return
        else:
            chan.decoder.receive(data)
        self._receive()

    def _learn_template_pids(self) -> None:
        """Read the pids our templates have reported by now (they forked us), for ``pid``."""
        tmpl = self._template
        while tmpl is not None and tmpl._pid is None:
            tmpl._receive()
            tmpl = tmpl._template

    def _started_op(self) -> Op[int]:
        try:
            if self._state == _OPEN:
                yield from self._flush_op()
                # Not merely "pid known": an exec'd child's pid is known at once, but it has not
                # necessarily started (imported anyfork, opened its socket) yet.
                yield from self._reports_until(lambda: self._started)
                self._learn_template_pids()
        finally:
            if self._failure is not None:
                # Failed for good (a failed command ends the child): let go of the socket now,
                # not when the error, its traceback and so this object are collected.
                self._chan.close()
        if self._failure is not None:
            raise self._failure
        if self._pid is None:
            raise ClosedError("the process was closed before it reported its pid")
        return self._pid


# -- every live channel, for the at-fork reset -----------------------------------------------

_channels: weakref.WeakSet[Channel] = weakref.WeakSet()


def _close_in_child() -> None:
    """A forked copy of this program must not hold (and keep alive) our processes' sockets."""
    for chan in list(_channels):
        chan.forget()
    _channels.clear()


os.register_at_fork(after_in_child=_close_in_child)
