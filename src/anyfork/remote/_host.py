"""``Host``: one ssh connection to a remote host, and the processes made there.

The connection itself (ssh, the agent, the private directories) is ``_connection``'s; a host
holds at most one at a time, connects it (or again, once it is lost), hands out its processes,
and closes it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from types import TracebackType

from .._core import _reaper
from .._core._drive import drive_async, drive_blocking
from .._core._process import Process
from .._errors import ClosedError
from ._agent import EXEC, NEW
from ._connection import Connection
from ._transport import Remote

__all__ = ["Host"]

#: ssh options a host sets itself (the master, its session and control socket): a user's would
#: replace them (ssh takes the last -S) or break the session (a pty, no command, backgrounding).
_OURS = frozenset(("-M", "-S", "-O", "-N", "-f", "-W", "-s", "-t", "-tt", "-n", "-G", "-V"))


class Host:
    """A remote host reached with OpenSSH, where processes are made as they are here.

    One ssh connection per host (a ControlMaster), made by :meth:`connect` (or ``with`` /
    ``async with``, or the first :meth:`new_exec`), carries everything: each new process is a
    channel through it, with no new TCP connection or key exchange.  Only ``python3`` (3.8 or
    newer) must exist on the host: anyfork sends its child side there at connect time, into a
    private directory (mode 0700) that is removed when the host is closed.

    Args:
        destination: what ``ssh`` is given: ``"host"``, ``"user@host"``, an alias of your ssh
            config, ``"ssh://user@host:port"``.  Passed to ssh as one argument, never through
            a local shell.
        python: the remote interpreter: a command name or path, or a list of words (each is
            quoted for the remote shell).
        ssh: the local ssh command (and leading arguments of it).
        ssh_options: more ssh arguments (``("-F", "config")``, ``("-i", "key")``,
            ``("-o", "Port=2222")``...); they take precedence over anyfork's defaults
            (keepalives, ``ConnectTimeout``), not over what a host needs to work (the master,
            no pty, ``BatchMode``).
        connect_timeout: seconds for connecting (ssh's ``ConnectTimeout`` too) when
            :meth:`connect` is given no timeout.

    A connection that goes silent is given up after about 20 s (``ServerAliveInterval=5``,
    ``ServerAliveCountMax=3``; change them with ``ssh_options``), and a lost connection fails
    every call on it at once.  Closing the host (:meth:`close`, :meth:`aclose`, leaving a
    ``with`` block), the program exiting or being killed, and a lost connection all end every
    process made on the host (SIGKILL).

    Security: only ssh is used; nothing listens on TCP; the sockets on both sides are in
    directories only the user can enter.  Results and events come back through the RPC
    serialiser: with pickle (the default), a remote host can run code in this program, so use
    hosts you trust as much as this program, or a data-only serialiser (``"json"``,
    ``"msgpack"``).
    """

    def __init__(
        self,
        destination: str,
        *,
        python: str | Sequence[str] = "python3",
        ssh: Sequence[str] = ("ssh",),
        ssh_options: Sequence[str] = (),
        connect_timeout: float = 30.0,
    ):
        if not isinstance(destination, str) or not destination:
            raise TypeError(f"destination is a non-empty str, not {destination!r}")
        words = [python] if isinstance(python, str) else list(python)
        for name, seq in (("python", words), ("ssh", list(ssh))):
            if not seq or not all(isinstance(w, str) and w for w in seq):
                raise TypeError(f"{name} is a non-empty str or sequence of them, not {seq!r}")
        if isinstance(ssh_options, str) or not all(isinstance(w, str) for w in ssh_options):
            raise TypeError(f"ssh_options is a sequence of str, not {ssh_options!r}")
        taken = sorted(set(ssh_options) & _OURS)
        if taken:
            raise ValueError(
                f"ssh_options may not contain {', '.join(taken)}: the host needs its own "
                f"master connection, session and control socket"
            )
        if not connect_timeout > 0:
            raise ValueError(f"connect_timeout is a positive number, not {connect_timeout!r}")
        self._destination = destination
        self._python = words
        self._ssh = list(ssh)
        self._ssh_options = list(ssh_options)
        self.connect_timeout = float(connect_timeout)
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._closed = False
        self._finalizer: weakref.finalize[[], Host] | None = None

    def __repr__(self) -> str:
        conn = self._conn
        state = "closed" if self._closed else "connected" if conn is not None else "new"
        return f"<anyfork.remote.Host {self._destination!r} {state}>"

    @property
    def destination(self) -> str:
        """The destination given to ssh."""
        return self._destination

    @property
    def python_version(self) -> str | None:
        """The remote interpreter's version (``"3.11.7"``) once connected, else ``None``."""
        conn = self._conn
        return conn.python_version if conn is not None else None

    # -- connecting ----------------------------------------------------------------------------

    async def connect(self, *, timeout: float | None = None) -> None:
        """Connect (a no-op when connected; after a lost connection, connect anew).

        Args:
            timeout: seconds for the whole connection (default: ``connect_timeout``).

        Raises:
            RemoteHostError: ssh could not connect (the message says why: unreachable,
                refused, authentication, host key), or the remote Python is missing or
                older than 3.8.
            ClosedError: the host has been closed.
            TimeoutError: after ``timeout`` seconds.

        Cancellation (or timeout): ssh is ended and nothing is left behind on either side.
        """
        conn = self._start_connecting()
        if conn is None:
            return
        budget = self.connect_timeout if timeout is None else timeout
        with self._connecting(conn, budget):
            await drive_async(conn.connect_op(), budget)

    def connect_blocking(self, *, timeout: float | None = None) -> None:
        """The blocking twin of :meth:`connect` (same arguments and errors)."""
        conn = self._start_connecting()
        if conn is None:
            return
        budget = self.connect_timeout if timeout is None else timeout
        with self._connecting(conn, budget):
            drive_blocking(conn.connect_op(), budget)

    @contextlib.contextmanager
    def _connecting(self, conn: Connection, budget: float) -> Iterator[None]:
        """Around a connection's ``connect_op``: installed if it succeeds, abandoned (ssh ended,
        its directory removed) if not; a timeout says which host."""
        try:
            yield
        except TimeoutError:
            conn.abandon()
            raise TimeoutError(
                f"connecting to {self._destination!r} took longer than {budget} s"
            ) from None
        except BaseException:
            conn.abandon()
            raise
        self._install(conn)

    def _start_connecting(self) -> Connection | None:
        """A new connection to bring up, or ``None`` when the current one is fine."""
        with self._lock:
            self._check_open()
            conn = self._conn
        if conn is not None and conn.agent is not None and not conn.agent.is_lost():
            return None
        _reaper.poll_unhandled()
        return Connection(
            self._destination, self._python, self._ssh, self._ssh_options, self.connect_timeout
        )

    def _install(self, conn: Connection) -> None:
        with self._lock:
            old = self._conn
            if self._closed or (
                old is not None and old.agent is not None and not old.agent.is_lost()
            ):
                # Closed meanwhile, or another thread connected first: ours is not needed.
                conn.abandon()
                self._check_open()
                return
            self._conn = conn
            if self._finalizer is not None:
                self._finalizer.detach()
            self._finalizer = weakref.finalize(self, conn.abandon)
        if old is not None:
            old.abandon()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"the host {self._destination!r} has been closed")

    def _connection(self) -> Connection:
        """The live connection, connecting first if there has never been one."""
        conn = self._conn
        if conn is None:
            self.connect_blocking()
            conn = self._conn
        self._check_open()
        if conn is None or conn.agent is None:
            raise ClosedError(f"the host {self._destination!r} has been closed")
        if conn.creator != os.getpid():
            raise ClosedError(
                f"the host {self._destination!r} belongs to the process that connected it "
                f"(pid {conn.creator}), not to this forked copy"
            )
        if conn.agent.is_lost():
            raise conn.loss()
        return conn

    # -- processes -----------------------------------------------------------------------------

    def new_exec(self) -> Process:
        """A new process: a fresh interpreter on the host (``python -S``, the child side
        loaded from the private directory, the host's ``sys.path``).

        Connects first if the host has never been connected (blocking: in asyncio code,
        ``await host.connect()`` or ``async with host`` first).

        Raises:
            RemoteHostError: the host cannot be connected, or the connection is lost.
            ClosedError: the host has been closed.
            OSError: no file descriptors left for the new process's socket.
        """
        return self._new(EXEC)

    def new(self) -> Process:
        """A new process forked on the host from its template (the host's agent: an
        interpreter with the child side loaded, and the modules that RPC workers need once
        one has started), as :func:`anyfork.new` forks from the default template here.

        Raises, and connects, as :meth:`new_exec`.
        """
        return self._new(NEW)

    def _new(self, request: int) -> Process:
        conn = self._connection()
        agent = conn.agent
        assert agent is not None
        return Remote(self, agent).made(conn.open(request))

    # -- closing -------------------------------------------------------------------------------

    def close(self, *, timeout: float = 10.0) -> None:
        """Close the host: every process made on it is killed (SIGKILL), the private directory
        on the host removed, and the ssh connection ended.

        Args:
            timeout: seconds to wait for the host to confirm before the connection is cut
                anyway (the agent then still kills everything: it sees EOF).
        """
        conn = self._take()
        if conn is not None:
            drive_blocking(conn.close_op(timeout), None)

    async def aclose(self, *, timeout: float = 10.0) -> None:
        """The asyncio twin of :meth:`close` (same argument).

        Cancellation: the connection is cut at once; the host still kills every process (it
        sees EOF)."""
        conn = self._take()
        if conn is not None:
            await drive_async(conn.close_op(timeout), None)

    def _take(self) -> Connection | None:
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
        if conn is not None and conn.creator != os.getpid():
            return None
        return conn

    def __enter__(self) -> Host:
        self.connect_blocking()
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Host:
        await self.connect()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
