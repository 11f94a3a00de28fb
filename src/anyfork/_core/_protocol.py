"""The command protocol of one process, parent side: ``ProcessProtocol``, the base of ``Process``.

It holds what the parent knows of the process (its pid, whether it has started, how it failed,
what it reported about its own children) and is the one receive boundary of its channel:
``_receive`` is the only place reports are read and parsed, and bytes that break the protocol
(a bad frame, a bad payload, a broken error record) become a ``ProtocolError`` naming the
process, which fails it and closes the channel for good.  Errors a child reports (a failed
import, an exception in eval code, a missing function) are rebuilt as their own type and an
``AnyforkError`` at once (``_errors.rebuild``).

The waits are written once, as generators run by ``_drive.drive_async`` and
``drive_blocking``: flushing what a process depends on (its templates' queues, up to the FORK
frame that makes it), and reading its reports, up to RUNNING (``run``), a frame boundary
(``to_fh``) or STARTED (``wait_started``).  The parent drains a template's reports whenever it
touches the template (``fork``...), and while it waits for one of the template's children if
more than ``_DRAIN_BACKLOG`` of them may have exits still to report: a burst never leaves them
piling up, and the one-at-a-time ``new().run(f)`` is not woken up by the previous child's exit.
"""

from __future__ import annotations

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
from ._channel import READ, WRITE, Channel, Drain, Op, Wait
from ._drive import release

if TYPE_CHECKING:
    from ._process import Process

#: How long the error path waits for a template to report how a child died.
_EXIT_REPORT_WAIT = 1.0

#: A wait for a forked child drains its template's reports meanwhile once the template has more
#: children than this whose exit it has not reported (a fraction of the ~270 reports its
#: socket holds; beyond them the template keeps the rest itself, it never blocks).
_DRAIN_BACKLOG = 32

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
    ):
        self._chan = chan
        self._pid = pid
        self._started = False  # the child has reported in (STARTED or RUNNING)
        self._template = template
        self._fork_frame = 0  # the number of our FORK frame on our template's channel
        self._direct = direct
        self._state = _OPEN
        self._failure: BaseException | None = None
        self._fork_failures: deque[str] = deque(maxlen=64)
        self._exits: dict[int, int] = {}
        self._forked = 0  # children forked from this process...
        self._exited = 0  # ...and EXITED reports received (spares make this one run ahead)
        self._lock = threading.RLock()
        # Dropping the process lets go of its channel (``release``: what is queued is still
        # delivered).  Not a method of self: the finaliser must not keep the process alive.
        self._finalizer = weakref.finalize(self, release, chan, self._template_channels())
        _channels.add(chan)

    def _name(self) -> str:
        return f"process pid {self._pid}" if self._pid is not None else "process"

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
        """Note a death the OS has already told us about.

        The socket alone can lag: a child the template forked a moment before it died still
        holds the template's socket until it gets to run and closes it, so for that moment the
        dead template's socket shows no EOF."""
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
        """Read and apply every report that has arrived, without waiting.

        The one receive boundary of this process's channel, and the only place its reports are
        parsed: bytes that break the protocol (a bad frame, a bad payload, a broken error
        record) fail the process with a ``ProtocolError`` naming it, and close the channel, for
        it can never be read again.  Never raises."""
        with self._lock:
            chan = self._chan
            try:
                while chan.sock is not None:
                    frame = chan.read_nowait()
                    if frame is None:
                        return
                    self._apply(frame[0], frame[1])
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
        elif op == _wire.FORK_FAILED:
            self._fork_failures.append(_wire.unpack_message(payload))
        elif op == _wire.EXITED:
            pid, code = _wire.unpack_exit(payload)
            self._exited += 1
            if len(self._exits) > 4096:
                self._exits.pop(next(iter(self._exits)))
            self._exits[pid] = code

    def _drain(self) -> Drain | None:
        """What a wait for one of this template's children drains meanwhile: its reports, if
        enough children may have exits to report (``_DRAIN_BACKLOG``)."""
        if self._forked - self._exited <= _DRAIN_BACKLOG:
            return None
        return self._chan, self._receive

    def _poll_reports(self) -> None:
        """``_receive``, and note a death at once (for callers that cannot wait to learn how
        the process ended)."""
        with self._lock:
            self._receive()
            if self._chan.decoder.eof and self._failure is None:
                self._failure = self._death(None)
            self._check_exit()

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

    # -- waiting (generators run by drive_async and drive_blocking) ------------------------------

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
        """Write what this process depends on: on each template, oldest first, up to the FORK
        frame of the next process in line (draining the template's reports meanwhile); then
        everything queued here."""
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

    def _reports_until(self, done: Callable[[], bool]) -> Op[None]:
        """Read reports until ``done()``; raise the child's error, or its death.  The template's
        reports are drained meanwhile."""
        chan = self._chan
        tmpl = self._template
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
            yield from self._reports_until(lambda: self._chan.decoder.stopped)
            return self._chan.detach()
        finally:
            if self._chan.sock is not None and not self._chan.decoder.stopped:
                self._chan.close()  # failed, cancelled or timed out: let the child go

    def _handover_op(self) -> Op[socket.socket]:
        try:
            yield from self._flush_op()
            # Hand over between two frames: the new owner's first byte starts a report.
            yield from self._reports_until(self._chan.decoder.at_boundary)
            return self._chan.detach()
        finally:
            if self._chan.sock is not None:
                self._chan.close()

    def _started_op(self) -> Op[int]:
        try:
            if self._state == _OPEN:
                yield from self._flush_op()
                # Not merely "pid known": an exec'd child's pid is known at once, but it has not
                # necessarily started (imported anyfork, opened its socket) yet.
                yield from self._reports_until(lambda: self._started)
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
    """A forked copy of this program (ours or the user's) must not hold our processes' sockets:
    they would keep templates alive after we are gone, and two processes would share them."""
    for chan in list(_channels):
        chan.forget()
    _channels.clear()


os.register_at_fork(after_in_child=_close_in_child)
