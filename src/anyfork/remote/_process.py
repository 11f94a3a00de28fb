"""The parent's objects for what runs on a remote host: ``RemoteProcess`` and ``AgentProcess``.

A ``RemoteProcess`` is a ``Process`` whose socket is a connection through the host's ssh master
to the remote agent's socket (``_agent``): commands, reports, ``run`` and RPC go over it
unchanged.  Its template is the agent (``AgentProcess``): the process that made it on the host,
reaps it and reports its exit, exactly as a local template reports its children's, so the exit
status of a remote process reaches every waiter (``run``, RPC clients) the way a forked local
one's does.  What differs is said here, at the call: file descriptors cannot cross hosts
(``send_fh``, ``to_fh``), signals are sent by the agent (``kill``), and a process's errors name
its host.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import time
import weakref
from typing import TYPE_CHECKING, NoReturn

from .._child import _wire
from .._child._fetch import PARK
from .._core._channel import READ, Channel, Drain, Op, Wait
from .._core._process import FdLike, Func, Process, func_ref
from .._core._protocol import _OPEN
from .._errors import RemoteHostError, SpawnError
from ._agent import KILL

if TYPE_CHECKING:
    from typing_extensions import override

    from ._connection import Connection
    from ._host import Host
else:

    def override(method: object) -> object:
        """``typing.override`` (3.12): these methods override ``ProcessProtocol``'s internals,
        and mypy says so when one of those is renamed or goes."""
        return method


__all__ = ["RemoteProcess"]

#: Exit statuses kept per host for ``returncode`` (the oldest are forgotten first).
_KEEP = 4096

#: How long a process that ended before it said its pid waits to learn whether its host went
#: with it (the connection's other sockets close a moment later when ssh dies).
_SETTLE = 0.5


class AgentProcess(Process):  # type: ignore[misc]  # (a Process elsewhere: overrides its hooks)
    """The parent's end of a host's agent: its stdin and stdout, through the ssh master.

    The template of every remote process of the host (see the module docstring).  Its commands
    are the agent's (``IMPORT``, which ``rpc`` sends to prime a template, and ``KILL``); its
    reports are a template's (``EXITED``...)."""

    def __init__(self, chan: Channel, pid: int, conn: Connection):
        super().__init__(chan, pid=pid)
        self.conn = conn
        #: Exit statuses by pid (the template's ``_exits`` are taken by their waiters).
        self.returncodes: dict[int, int] = {}

    def __repr__(self) -> str:
        return f"<anyfork.remote agent pid={self._pid} on {self.conn.destination!r}>"

    @override
    def _name(self) -> str:
        return f"the anyfork agent (pid {self._pid}) on {self.conn.destination!r}"

    @override
    def _apply(self, op: int, payload: bytes) -> None:
        super()._apply(op, payload)
        if op == _wire.EXITED:
            pid, code = _wire.unpack_exit(payload)
            if len(self.returncodes) >= _KEEP:
                self.returncodes.pop(next(iter(self.returncodes)))
            self.returncodes[pid] = code

    @override
    def _death(self, returncode: int | None) -> SpawnError:
        return self.conn.loss()

    @override
    def _fork_ahead(self) -> None:
        """Nothing: the agent's processes are asked for on connections of their own
        (``Host.new``), never forked ahead on its control connection."""

    def made_one(self) -> None:
        """Count a process made on the host: a wait for it drains the agent's reports once
        many have exits to report (``ProcessProtocol._drain``)."""
        self._forked += 1

    def signal(self, pid: int, sig: int) -> None:
        """Have the agent send ``sig`` (by name: numbers differ between systems) to ``pid``."""
        name = signal.Signals(sig).name
        self._command(KILL, _wire.pack_values([str(pid), name]))

    def is_lost(self) -> bool:
        """The connection to the host is gone (reads what has arrived to know).

        ssh's end of its stdin and stdout closes first when it exits (the lowest fds): a
        process's connection that ends with ssh may show EOF before this one does."""
        self._poll_reports()
        return self._failure is not None or self._chan.sock is None or self.conn.ssh_ended()


class RemoteProcess(Process):  # type: ignore[misc]  # (a Process elsewhere: overrides its hooks)
    """A :class:`anyfork.Process` on a remote host (made by :meth:`Host.new_exec` or
    :meth:`Host.new`).

    Everything a local process offers works the same (``require``, ``eval``, ``send_arg``,
    ``run`` and its socket, ``rpc``, ``pid``, the blocking twins), with these differences:

    * ``send_fh``, ``to_fh`` and ``to_fh_blocking`` raise ``NotImplementedError`` at the call:
      file descriptors cannot travel to another machine.
    * ``fork`` forks on the host (copy-on-write there): remote templates nest as local ones
      do; the child's connection is a new channel through the host's ssh connection.  Its
      children are not forked ahead of need.
    * A bare name or ``__main__:name`` resolves in the remote process's own ``__main__``
      (where ``eval`` code runs): this program's main script is not on the host.
    * ``kill`` has the host's agent send the signal; it returns before the signal arrives.
    * ``returncode`` is known once the host has reported the exit (for every remote process,
      not only direct children).
    * ``pid`` is the process id on the remote host.
    * Errors name the host; a lost connection is a :class:`anyfork.RemoteHostError`.
    """

    def __init__(
        self,
        chan: Channel,
        host: Host,
        agent: AgentProcess,
        template: RemoteProcess | None = None,
    ):
        super().__init__(chan, template=agent if template is None else template)
        #: The host the process runs on (it keeps the connection open while it lives).
        self.host = host
        self._agent = agent

    def __repr__(self) -> str:
        where = self.host.destination
        return f"<anyfork.remote.RemoteProcess pid={self._pid} {self._state} on {where!r}>"

    @override
    def _name(self) -> str:
        where = f"on {self.host.destination!r}"
        return f"process pid {self._pid} {where}" if self._pid is not None else f"process {where}"

    @override
    def _where(self) -> str:
        where = f" on {self.host.destination!r}"
        if self._agent.is_lost():
            where += f": {self._agent.conn.loss()}"
        return where

    @property
    def returncode(self) -> int | None:
        """Exit status (``-N`` for signal N) once the host has reported the process's exit;
        ``None`` before."""
        return self._status()

    @override
    def _status(self) -> int | None:
        # The host reports the exits of every process it made on its own connection, by pid
        # (which the process says on its connection first): what ``wait`` and ``poll`` read.
        # A process forked from a remote template is reported by it, as a local one is.
        if self._returncode is None and self._template is self._agent:
            if self._pid is None and self._chan.sock is not None:
                self._receive()
            if self._pid is not None:
                self._agent._poll_reports()
                self._returncode = self._agent.returncodes.get(self._pid)
        return self._returncode

    @override
    def _known_exit_code(self) -> int | None:
        return self._status()

    @override
    def _exit_op(self) -> Op[int]:
        # The host reports exits by pid, which only the process itself says (STARTED).
        if self._pid is None and self._state == _OPEN and self._template is self._agent:
            yield from self._started_op()
        if self._pid is None and self._template is self._agent:
            raise ChildProcessError(
                f"the exit status of {self._name()} cannot be known: it was closed before it "
                f"said its pid (wait_started first)"
            )
        code: int = yield from super()._exit_op()
        return code

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Have the host send ``sig`` to the process; returns before it arrives.

        Raises:
            ProcessLookupError: the pid is not known yet, the process has exited, or the
                connection to the host is lost (its processes are killed then).
        """
        pid = self.pid
        if pid is None:
            raise ProcessLookupError("the process has not reported its pid yet")
        if self.returncode is not None:
            raise ProcessLookupError(f"{self._name()} has exited")
        try:
            self._agent.signal(pid, sig)
        except SpawnError as exc:
            raise ProcessLookupError(f"{self._name()} is gone: {exc}") from exc

    def send_fh(self, *handles: FdLike) -> NoReturn:
        """Not possible: file descriptors cannot travel to another host.

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError(
            f"send_fh cannot pass file descriptors to {self._name()}: they do not cross "
            f"hosts (send data with send_arg, or have the process open what it needs)"
        )

    def to_fh(self, *, timeout: float | None = None) -> NoReturn:
        """Not possible: the process's socket is a connection through ssh, not a socket to
        hand to another process.

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError(f"to_fh cannot hand over {self._name()}: it is on another host")

    def to_fh_blocking(self, *, timeout: float | None = None) -> NoReturn:
        """Not possible (see :meth:`to_fh`).

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError(f"to_fh cannot hand over {self._name()}: it is on another host")

    def fork(self) -> RemoteProcess:
        """Return a new process forked from this one on its host (copy-on-write there), as
        :meth:`anyfork.Process.fork` does here: it inherits everything sent to this one
        before the fork.  Its connection is a new channel through the host's ssh connection,
        parked at the host's agent until this process fetches it and forks.

        Raises:
            SpawnError: this process is known to be dead, or failed; RemoteHostError: the
                connection to the host is lost.
            ClosedError: this process has run, been handed over or closed.
            OSError: no file descriptors left for the new process's socket.
        """
        if self._agent.is_lost():
            raise self._agent.conn.loss()  # (what the host's loss is, not this process's end)
        child = self._fork()
        assert isinstance(child, RemoteProcess)
        return child

    @override
    def _new_child(self) -> Process:
        # Marked hook of ``Lineage._fork``: a FORK frame without an fd names a connection the
        # template fetches from the agent (``_child._fetch``), parked there under a token.
        agent = self._agent
        token = secrets.token_hex(16)
        child = RemoteProcess._create(agent.conn.open(PARK, token.encode()), self.host, agent, self)
        where = os.path.join(agent.conn.remote_dir, "agent.sock")
        try:
            child._fork_frame = self._command(_wire.FORK, _wire.pack_values([where, token]))
        except BaseException:
            child._let_go()
            raise
        self._unforked.append(weakref.ref(child))
        self._forked += 1
        return child

    @override
    def _drain(self) -> Drain | None:
        # Always: a child this template could not fork learns it from the template's reports
        # (FORK_FAILED), not from its own connection, which stays open, parked at the agent.
        return self._chan, self._receive

    @override
    def _apply(self, op: int, payload: bytes) -> None:
        failed = self._unforked[0]() if op == _wire.FORK_FAILED and self._unforked else None
        super()._apply(op, payload)
        if isinstance(failed, RemoteProcess) and failed._chan.sock is not None:
            # Its wait sees EOF now, and the reason (``_death``); the agent drops the parked
            # connection once ssh has closed the channel.
            try:
                failed._chan.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @override
    def _fork_ahead(self) -> None:
        """Nothing: a remote template's children are not forked ahead (each would hold a
        channel of the ssh connection, and a remote fork is mostly the round trip)."""

    @override
    def _prepare_func(self, func: Func | None, *, now: bool = False) -> str:
        """The reference only: this program's main script is not on the remote host (a MAIN
        command would name a path there), so a bare name or ``__main__:name`` resolves in the
        remote process's own ``__main__``, where ``eval`` code runs."""
        return "" if func is None else func_ref(func)

    @override
    def _exit_code_op(self) -> Op[int | None]:
        code = yield from super()._exit_code_op()
        if self._pid is None:
            # Ended before it said its pid: if its host went with it, the agent's connection
            # (or ssh's stdio) closes too, in a moment.
            agent = self._agent
            until = time.monotonic() + _SETTLE
            while not agent.is_lost() and agent._chan.readable():
                if not (yield Wait(READ, agent._chan, until)):
                    break
        return code

    @override
    def _death(self, returncode: int | None) -> SpawnError:
        if self._agent.is_lost():
            loss = self._agent.conn.loss()
            return RemoteHostError(f"{self._name()} is gone: {loss}", loss.host)
        return super()._death(returncode)
