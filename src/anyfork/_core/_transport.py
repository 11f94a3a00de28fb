"""``Transport``: what differs between a process on this machine (this class) and one
elsewhere (``anyfork.remote``'s); its static helpers are what a transport may do to a process.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from ._channel import Channel, channel_pair

if TYPE_CHECKING:
    from .._errors import SpawnError
    from ..remote import Host
    from ._channel import Op
    from ._lineage import Lineage
    from ._protocol import ProcessProtocol


class Transport:
    """How the parent reaches a process, learns its fate and signals it (see the module)."""

    #: A template keeps its next children forked ahead of need (``Lineage._fork_ahead``).
    forks_ahead = True
    #: A template's waiters always drain its reports (not only past a backlog): a child it
    #: could not fork learns it only there.
    always_drain = False
    #: File descriptors can be passed to the process (``send_fh``) and its socket handed over
    #: (``to_fh``).
    passes_fds = True
    #: This program's main script can be imported in the process (``Lineage._prepare_func``).
    main_script = True
    #: The processes a template makes on connections of their own say their pid there, and
    #: it reports their exits by pid (``ProcessProtocol._status``).
    children_by_pid = False
    #: The remote host the process runs on (``Process.host``).
    host: Host | None = None

    def name(self, proc: ProcessProtocol, pid: int | None) -> str:
        """What errors call the process."""
        return f"process pid {pid}" if pid is not None else "process"

    def where(self, proc: ProcessProtocol) -> str:
        """What errors about the process add after its pid (``Process._where``)."""
        return ""

    def check(self, proc: ProcessProtocol) -> None:
        """Raise what makes the process unreachable before ``fork`` asks anything of it."""

    def child(self, tmpl: ProcessProtocol) -> tuple[Channel, bytes, list[int]]:
        """The channel of a new child of ``tmpl``, and its FORK frame's payload and fds."""
        chan, fd = channel_pair()
        return chan, b"", [fd]

    def death(self, proc: ProcessProtocol, pid: int | None) -> SpawnError | None:
        """The error for a dead process, when the transport knows better (a lost host)."""
        return None

    def settle(self, proc: ProcessProtocol, pid: int | None) -> Op[None]:
        """Wait briefly for what explains a death (``_exit_code_op``); nothing here."""
        yield from ()

    def kill(self, proc: ProcessProtocol, pid: int | None, sig: int, exited: bool) -> None:
        """``Process.kill``: send ``sig`` to ``pid`` (see it for the errors)."""
        if exited:
            return  # (its pid may belong to another process by now)
        if pid is None:
            raise ProcessLookupError("the process has not reported its pid yet")
        with contextlib.suppress(ProcessLookupError):  # exited: its exit is on its way to us
            os.kill(pid, sig)

    # -- what a transport may do to a process ------------------------------------------------

    @staticmethod
    def _poll(proc: ProcessProtocol) -> BaseException | None:
        """Read what the process reported; its failure, if it has failed."""
        proc._poll_reports()
        return proc._failure

    @staticmethod
    def _command(proc: Lineage, op: int, payload: bytes) -> int:
        """Queue a command (``Lineage._command``); the frame's number."""
        return proc._command(op, payload)

    @staticmethod
    def _receive(proc: ProcessProtocol) -> None:
        """Read and apply what the process reported, without waiting."""
        proc._receive()

    @staticmethod
    def _failure(proc: ProcessProtocol) -> BaseException | None:
        """How the process failed, as far as known (reads nothing)."""
        return proc._failure


#: The transport of every process on this machine.
LOCAL = Transport()
