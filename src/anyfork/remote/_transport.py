"""The transports of what runs on a remote host: ``Remote`` (a process there) and ``Agent`` (the
host's agent, which makes them), and ``RemoteProcess``, the type of a process on a host.

A remote process is an :class:`anyfork.Process` whose transport is a ``Remote``: its socket is a
connection through the host's ssh master to the remote agent's socket (``_agent``), and
commands, reports, ``run`` and RPC go over it unchanged.  Its template is the agent's process
(a ``Process`` on the agent's control connection, whose transport is the ``Agent``): the process
that made it on the host, reaps it and reports its exit by pid (``children_by_pid``), so the
exit status of a remote process reaches every waiter (``run``, RPC clients) the way a forked
local one's does.  What differs is the transport's: a child's connection is parked at the agent
and fetched by its template (``child``), file descriptors cannot cross hosts, signals are sent
by the agent (``kill``), and a process's errors name its host.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from typing import TYPE_CHECKING

from .._child import _wire
from .._child._fetch import PARK
from .._core._channel import READ, Channel, Op, Wait
from .._core._process import Process
from .._core._templates import new_on
from .._core._transport import Transport
from .._errors import RemoteHostError, SpawnError
from .._util import NoPublicConstructor
from ._agent import KILL

if TYPE_CHECKING:
    from .._core._protocol import ProcessProtocol
    from ._connection import Connection
    from ._host import Host

__all__ = ["RemoteProcess"]

#: How long a process that ended before it said its pid waits to learn whether its host went
#: with it (the connection's other sockets close a moment later when ssh dies).
_SETTLE = 0.5


class Agent(Transport):
    """A host's agent: the transport of its process (the parent's end of its control
    connection: its stdin and stdout, through the ssh master), the template of every remote
    process of the host (see the module docstring).  Its commands are the agent's (``IMPORT``,
    which ``rpc`` sends to prime a template, and ``KILL``); its reports are a template's
    (``EXITED``...)."""

    forks_ahead = False  # its processes are asked for on connections of their own (Host.new)
    children_by_pid = True

    def __init__(self, conn: Connection, control: Channel, pid: int):
        self.conn = conn
        #: The control connection (commands, reports; its EOF: the agent is gone).
        self.control = control
        self.proc = new_on(control, self, pid=pid)

    def name(self, proc: ProcessProtocol, pid: int | None) -> str:
        return f"the anyfork agent (pid {pid}) on {self.conn.destination!r}"

    def where(self, proc: ProcessProtocol) -> str:
        return f" on {self.conn.destination!r}"

    def death(self, proc: ProcessProtocol, pid: int | None) -> SpawnError:
        return self.conn.loss()

    def failure(self) -> BaseException | None:
        """Why the agent failed, as far as known (reads nothing)."""
        return self._failure(self.proc)

    def read(self) -> None:
        """Read the agent's reports that have arrived."""
        self._receive(self.proc)

    def signal(self, pid: int, sig: int) -> None:
        """Have the agent send ``sig`` (by name: numbers differ between systems) to ``pid``."""
        name = signal.Signals(sig).name
        self._command(self.proc, KILL, _wire.pack_values([str(pid), name]))

    def is_lost(self) -> bool:
        """The connection to the host is gone (reads what has arrived to know).

        ssh's end of its stdin and stdout closes first when it exits (the lowest fds): a
        process's connection that ends with ssh may show EOF before this one does."""
        lost = self._poll(self.proc) is not None or self.control.sock is None
        return lost or self.conn.ssh_ended()


class Remote(Transport):
    """The transport of the processes on a host (made by :meth:`Host.new_exec`,
    :meth:`Host.new`, or forked from one of them): see :class:`RemoteProcess`."""

    forks_ahead = False  # each would hold a channel of the ssh connection; a remote fork is
    # mostly the round trip
    always_drain = True  # a child its template could not fork learns it from the template's
    # reports (FORK_FAILED), not from its own connection, which stays open, parked at the agent
    passes_fds = False
    main_script = False  # this program's main script is not on the host

    def __init__(self, host: Host, agent: Agent):
        #: The host the processes run on (they keep the connection open while they live).
        self.host: Host = host
        self.agent = agent

    def made(self, chan: Channel) -> Process:
        """The process the agent makes for a connection (``Host.new``, ``Host.new_exec``)."""
        return new_on(chan, self, template=self.agent.proc)

    def name(self, proc: ProcessProtocol, pid: int | None) -> str:
        where = f"on {self.host.destination!r}"
        return f"process pid {pid} {where}" if pid is not None else f"process {where}"

    def where(self, proc: ProcessProtocol) -> str:
        where = f" on {self.host.destination!r}"
        if self.agent.is_lost():
            where += f": {self.agent.conn.loss()}"
        return where

    def check(self, proc: ProcessProtocol) -> None:
        if self.agent.is_lost():
            raise self.agent.conn.loss()  # (what the host's loss is, not this process's end)

    def child(self, tmpl: ProcessProtocol) -> tuple[Channel, bytes, list[int]]:
        # A FORK frame without an fd names a connection the template fetches from the agent
        # (``_child._fetch``), parked there under a token.
        conn = self.agent.conn
        token = secrets.token_hex(16)
        where = os.path.join(conn.remote_dir, "agent.sock")
        return conn.open(PARK, token.encode()), _wire.pack_values([where, token]), []

    def death(self, proc: ProcessProtocol, pid: int | None) -> SpawnError | None:
        if not self.agent.is_lost():
            return None
        loss = self.agent.conn.loss()
        return RemoteHostError(f"{self.name(proc, pid)} is gone: {loss}", loss.host)

    def settle(self, proc: ProcessProtocol, pid: int | None) -> Op[None]:
        if pid is None:
            # Ended before it said its pid: if its host went with it, the agent's connection
            # (or ssh's stdio) closes too, in a moment.
            agent = self.agent
            until = time.monotonic() + _SETTLE
            while not agent.is_lost() and agent.control.readable():
                if not (yield Wait(READ, agent.control, until)):
                    break

    def kill(self, proc: ProcessProtocol, pid: int | None, sig: int, exited: bool) -> None:
        if pid is None:
            raise ProcessLookupError("the process has not reported its pid yet")
        name = self.name(proc, pid)
        if exited:
            raise ProcessLookupError(f"{name} has exited")
        try:
            self.agent.signal(pid, sig)
        except SpawnError as exc:
            raise ProcessLookupError(f"{name} is gone: {exc}") from exc


class _OnAHost(NoPublicConstructor):
    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, Process) and obj.host is not None


if TYPE_CHECKING:
    RemoteProcess = Process
else:

    class RemoteProcess(metaclass=_OnAHost):
        """The type of an :class:`anyfork.Process` on a remote host (made by
        :meth:`Host.new_exec` or :meth:`Host.new`, or forked from one): ``isinstance(proc,
        RemoteProcess)`` says whether a process is remote, and ``proc.host`` is its host.

        Everything a local process offers works the same (``require``, ``eval``, ``send_arg``,
        ``run`` and its socket, ``rpc``, ``pid``, the blocking twins), with these differences:

        * ``send_fh``, ``to_fh`` and ``to_fh_blocking`` raise ``NotImplementedError``: file
          descriptors cannot travel to another machine.
        * ``fork`` forks on the host (copy-on-write there): remote templates nest as local ones
          do; the child's connection is a new channel through the host's ssh connection.  Its
          children are not forked ahead of need.
        * A bare name or ``__main__:name`` resolves in the remote process's own ``__main__``
          (where ``eval`` code runs): this program's main script is not on the host.
        * ``kill`` has the host's agent send the signal; it returns before the signal arrives,
          and raises ``ProcessLookupError`` once the process has exited.
        * ``returncode`` is known once the host has reported the exit (for every remote process,
          not only direct children).
        * ``pid`` is the process id on the remote host.
        * Errors name the host; a lost connection is a :class:`anyfork.RemoteHostError`.
        """
