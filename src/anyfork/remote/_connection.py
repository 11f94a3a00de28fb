"""``Connection``: one ssh connection to a remote host, its master and its agent, brought up
and taken down (the work behind ``Host``).

Connecting (``connect_op``, run by ``_drive.drive_async`` or ``drive_blocking``, so both faces
share every step)::

    parent                                       ssh master (our child)        remote host
    ------                                       ----------------------        -----------
    LOCAL = mkdtemp (0700): the control socket, the forward, ssh's log
    spawn ssh -M -S LOCAL/c ... -- DEST 'exec python3 -c BOOTSTRAP', its stdin and stdout a
    socketpair (the session)                     connects, authenticates ----> BOOTSTRAP
    "anyfork-boot 1 3.11.7"  <--------------------------------------------------  version
    12 digits, the loader, the archive  ------------------------------------->  _boot.load
    "anyfork-ready 1 2 PID DIR"  <---------------------------------------------  _agent.main
    ssh -S LOCAL/c -O forward -L LOCAL/a:DIR/agent.sock  (one short ssh run, ~10 ms)
    connect(LOCAL/a), CONTROL  ----------------------------------------------->  the agent's
                                                                                 control
                                                                                 connection

READY implies the master listens on its control socket: ssh starts listening before it opens
the session whose output carries READY.  Then every ``new_exec()``/``new()`` is one
``connect()`` to ``LOCAL/a``, which the master turns into a channel to the agent's socket (no
TCP, no key exchange), and the process's command stream follows on it.

Closing (``close_op``): everything queued for the agent is written, then EOF on its control
connection; it kills every process it made, removes its directory and says RUNNING (its last
report); then the master is ended (SIGTERM) and reaped, and ``LOCAL`` removed.  The parent
exiting or being killed closes our ends of the session and the control connection, which the
agent sees as EOF, and so does a lost connection.
"""

from __future__ import annotations

import importlib.resources
import os
import select
import shutil
import signal
import socket
import tempfile
import time
import weakref
from collections.abc import Sequence

from .._child import _wire
from .._core import _reaper, _spawn
from .._core._channel import READ, WRITE, Channel, Op, Wait
from .._errors import RemoteHostError
from . import _boot, _ssh
from ._agent import CONTROL
from ._transport import Agent

#: The most bytes the remote side may print before the bootstrap's line (a login banner...).
_MAX_JUNK = 64 << 10
#: How long the parent waits for ssh to exit once its stdout has closed (an OS fact: polled).
_EXIT_WAIT = 2.0

_payload: bytes | None = None


class Connection:
    """One connection to a host: the ssh master, the private directory, the agent."""

    def __init__(
        self,
        destination: str,
        python: Sequence[str],
        ssh: Sequence[str],
        options: Sequence[str],
        timeout: float,
    ):
        self.destination = destination
        self.python = list(python)
        self.ssh = list(ssh)
        self.options = list(options)
        self.timeout = timeout
        self.creator = os.getpid()
        self.local = _local_dir()
        self.control = os.path.join(self.local, "c")
        self.log = os.path.join(self.local, "log")
        self.forward = os.path.join(self.local, "a")
        self.ssh_pid = 0
        self.helpers: list[int] = []  # short ssh runs (-O forward) while they run
        #: ssh's stdin and stdout: the session's, then the agent's lifeline (its EOF ends it).
        self.session: Channel | None = None
        #: The agent (its control connection: commands, reports; its EOF: the agent is gone).
        self.agent: Agent | None = None
        self.python_version = ""
        self.remote_dir = ""

    def ssh_returncode(self) -> int | None:
        return _reaper.returncode(self.ssh_pid) if self.ssh_pid else None

    def ssh_ended(self) -> bool:
        """ssh has exited (or is exiting: its end of our socketpair is closed)."""
        if self.ssh_returncode() is not None:
            return True
        session = self.session
        if session is None or session.sock is None:
            return False
        try:
            return session.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def loss(self) -> RemoteHostError:
        """The error for a connection that is gone: ssh ended, or the agent did."""
        dest = self.destination
        said = _ssh.log_tail(self.log)
        if self.ssh_ended():
            code = self.ssh_returncode()
            if code is None:
                code = _exited(self.ssh_pid, 0.5)  # (its stdio closed: it is exiting)
            how = "ssh has exited" if code is None else f"ssh exited with status {code}"
            why = f"{how}: {said}" if said else how
        else:
            failure = self.agent.failure() if self.agent is not None else None
            why = "the anyfork agent there has gone, with every process it made"
            if failure is not None and not isinstance(failure, RemoteHostError):
                why += f" (it failed: {failure})"
        return RemoteHostError(f"the connection to {dest!r} was lost ({why})", dest)

    def abandon(self) -> None:
        """Let go at once, without waiting for anything: close our end (the agent's EOF), end
        ssh, remove the local directory.  Only in the process that connected (a forked copy
        of the program must not touch its parent's connection)."""
        if os.getpid() != self.creator:
            return
        for chan in (self.agent.control if self.agent is not None else None, self.session):
            if chan is not None:
                chan.close()
        for pid in (*self.helpers, self.ssh_pid):
            if pid and _reaper.returncode(pid) is None:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.local, ignore_errors=True)

    # -- connecting ----------------------------------------------------------------------------

    def connect_op(self) -> Op[None]:
        """Start ssh, bring the agent up, set up the forward (see the module docstring)."""
        dest = self.destination
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            argv = _ssh.master_argv(
                self.ssh,
                self.options,
                dest,
                self.control,
                self.log,
                self.python,
                self.timeout,
            )
            self.ssh_pid = _ssh.spawn(argv, theirs.fileno(), dest)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        _reaper.watch(self.ssh_pid)
        chan = self.session = Channel(ours)
        _sessions.add(chan)

        line, junk = yield from _read_line(chan, (_boot.BOOT_LINE,))
        if line is None:
            raise (yield from self._failed(junk))
        words = line.split()
        version = words[2].decode() if len(words) == 3 else "?"
        if words[1:2] != [str(_boot.PROTOCOL).encode()]:
            raise RemoteHostError(
                f"cannot start anyfork on {dest!r}: the bootstrap speaks another protocol "
                f"({line!r})",
                dest,
            )
        self.python_version = version
        if tuple(int(p) for p in version.split(".")[:2]) < _boot.MIN_PYTHON:
            yield from _exit_status(self.ssh_pid)
            raise _ssh.too_old(dest, self.python, version)

        chan.queue(_bootstrap_payload())
        try:
            while not chan.flush_nowait():
                yield Wait(WRITE, chan)
        except OSError:
            raise (yield from self._failed(junk)) from None

        line, junk = yield from _read_line(chan, (_boot.READY_LINE, _boot.FAILED_LINE))
        if line is None:
            raise (yield from self._failed(junk))
        if line.startswith(_boot.FAILED_LINE):
            why = line[len(_boot.FAILED_LINE) :].decode("utf-8", "replace").strip()
            raise RemoteHostError(f"cannot start anyfork on {dest!r}: {why}", dest)
        words = line[len(_boot.READY_LINE) :].rstrip(b"\n").split(b" ", 3)
        expected = [str(_boot.PROTOCOL).encode(), str(_wire.VERSION).encode()]
        if len(words) != 4 or words[:2] != expected:
            raise RemoteHostError(
                f"cannot start anyfork on {dest!r}: the agent answered {line!r}, expected "
                f"protocol {_boot.PROTOCOL} and command protocol {_wire.VERSION}",
                dest,
            )
        agent_pid = int(words[2])
        self.remote_dir = os.fsdecode(words[3])
        yield from self._forward_op()
        self.agent = Agent(self, self.open(CONTROL), agent_pid)

    def open(self, request: int, payload: bytes = b"") -> Channel:
        """A new connection to the agent (through the forward), its request queued first."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.forward)
        except OSError as exc:
            sock.close()
            if self.agent is not None and self.agent.is_lost():
                raise self.loss() from exc
            raise RemoteHostError(
                f"cannot reach the agent on {self.destination!r} through ssh: {exc}",
                self.destination,
            ) from exc
        chan = Channel(sock)
        chan.queue(_wire.frame(request, payload))
        try:
            chan.flush_nowait()
        except OSError:
            pass  # gone already: the first wait says how
        return chan

    def _forward_op(self) -> Op[None]:
        remote = os.path.join(self.remote_dir, "agent.sock")
        argv = _ssh.forward_argv(
            self.ssh, self.options, self.destination, self.control, self.forward, remote
        )
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = _ssh.spawn(argv, theirs.fileno(), self.destination)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.helpers.append(pid)
        _reaper.watch(pid)
        chan = Channel(ours)
        said = b""
        try:
            while True:
                try:
                    data = ours.recv(4096, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    yield Wait(READ, chan)
                    continue
                if not data:
                    break
                said = (said + data)[-2000:]
        finally:
            chan.close()
        code = yield from _exit_status(pid)
        self.helpers.remove(pid)
        if code != 0:
            text = said.decode("utf-8", "replace").strip() or _ssh.log_tail(self.log)
            raise RemoteHostError(
                f"cannot connect to {self.destination!r}: ssh could not forward the agent's "
                f"socket (status {code}: {text})",
                self.destination,
            )

    def _failed(self, junk: bytes) -> Op[RemoteHostError]:
        """The error for an ssh that ended before the agent was up."""
        code = yield from _exit_status(self.ssh_pid)
        return _ssh.failure(self.destination, code, self.log, self.python, junk)

    # -- closing -------------------------------------------------------------------------------

    def close_op(self, timeout: float) -> Op[None]:
        """EOF to the agent, its last reports, then the end of ssh (see the module docstring)."""
        until = time.monotonic() + timeout
        agent, session = self.agent, self.session
        try:
            chan = agent.control if agent is not None else None
            if agent is not None and chan is not None and chan.sock is not None:
                try:
                    while not chan.flush_nowait():
                        if not (yield Wait(WRITE, chan, until)):
                            break
                    chan.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass  # gone already
                while chan.readable():
                    agent.read()  # up to RUNNING, the agent's last word (or EOF)
                    if not chan.readable() or not (yield Wait(READ, chan, until)):
                        break
            if self.ssh_pid and _reaper.returncode(self.ssh_pid) is None:
                try:
                    os.kill(self.ssh_pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                # ssh exiting closes its stdin and stdout: our socket's EOF.
                while session is not None and session.sock is not None:
                    try:
                        if not session.sock.recv(4096, socket.MSG_DONTWAIT):
                            break
                    except (BlockingIOError, InterruptedError):
                        if not (yield Wait(READ, session, until)):
                            break
                    except OSError:
                        break
                if (yield from _exit_status(self.ssh_pid)) is None:
                    os.kill(self.ssh_pid, signal.SIGKILL)
        finally:
            self.abandon()


#: Every ssh session's socket (ssh's stdin and stdout), for the at-fork reset.
_sessions: weakref.WeakSet[Channel] = weakref.WeakSet()


def _forget_in_child() -> None:
    """A forked copy of this program must not hold ssh's stdin open: the agent takes the
    program's death for the host's end only once every copy is closed.  (The agents' control
    connections are closed in the copy with every process socket, by ``_core._protocol``.)"""
    for chan in list(_sessions):
        chan.forget()
    _sessions.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def _exited(pid: int, timeout: float) -> int | None:
    """The exit status of a child that is exiting, waited for (at most ``timeout`` seconds) on
    a pidfd: readable once the process has ended."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return _reaper.returncode(pid)  # (reaped already, or no pidfd: what is known now)
    try:
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    return _reaper.returncode(pid)


def _local_dir() -> str:
    """A private local directory with a short path (unix socket paths are ~100 bytes at most,
    and ssh adds a 17-byte suffix to the control socket's while it creates it)."""
    base = tempfile.mkdtemp(prefix="anyfork-ssh-")
    if len(base) > 80:
        os.rmdir(base)
        base = tempfile.mkdtemp(prefix="anyfork-ssh-", dir="/tmp")
    return base


def _read_line(chan: Channel, prefixes: tuple[bytes, ...]) -> Op[tuple[bytes | None, bytes]]:
    """Read lines until one starts with one of ``prefixes``; return it and what came before it
    (``None`` and that at EOF).  Never reads past that line's newline: what follows is not
    ours to read here."""
    sock = chan.sock
    assert sock is not None
    junk = bytearray()
    line = bytearray()
    while True:
        try:
            data = sock.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            yield Wait(READ, chan)
            continue
        except OSError:
            data = b""
        if not data:
            return None, bytes(junk + line)
        end = data.find(b"\n")
        line += sock.recv(len(data) if end < 0 else end + 1, socket.MSG_DONTWAIT)
        if not line.endswith(b"\n"):
            continue
        if line.startswith(prefixes):
            return bytes(line), bytes(junk)
        junk += line
        line.clear()
        if len(junk) > _MAX_JUNK:
            raise RemoteHostError(
                f"the remote side printed more than {_MAX_JUNK} bytes before anyfork's "
                f"bootstrap answered: {bytes(junk[:200])!r}..."
            )


def _exit_status(pid: int) -> Op[int | None]:
    """The exit status of a child whose stdout has closed (it is exiting): bounded polling for
    the OS to say (timer waits, which the asyncio driver sleeps without blocking the loop)."""
    until = time.monotonic() + _EXIT_WAIT
    while (code := _reaper.returncode(pid)) is None and time.monotonic() < until:
        yield Wait(READ, None, min(until, time.monotonic() + 0.002))
    return code


def _bootstrap_payload() -> bytes:
    """What the parent sends after the bootstrap's line: the loader (stage 2), then the
    archive: the child side (``anyfork``, ``anyfork.worker``, ``anyfork._child``, a pool
    worker's start-up step), the agent,
    and the settings it needs.  Built once."""
    global _payload
    if _payload is None:
        root = importlib.resources.files("anyfork")
        child = root.joinpath("_child")
        files = [
            ("anyfork/__init__.py", root.joinpath("__init__.py")),
            ("anyfork/worker.py", root.joinpath("worker.py")),
            *(
                (f"anyfork/_child/{entry.name}", entry)
                for entry in sorted(child.iterdir(), key=lambda e: e.name)
                if entry.name.endswith(".py")
            ),
            # A pool worker's start-up step (``_pool._in_worker``: stdlib only), for pools
            # whose templates are on the host.
            ("anyfork/_pool/__init__.py", root.joinpath("_pool").joinpath("__init__.py")),
            ("anyfork/_pool/_in_worker.py", root.joinpath("_pool").joinpath("_in_worker.py")),
            (f"{_boot.AGENT_MODULE}.py", root.joinpath("remote").joinpath("_agent.py")),
        ]
        settings = {
            "boot": _spawn.BOOT,
            "protocol": str(_boot.PROTOCOL),
            "ready": _boot.READY_LINE.decode(),
        }
        archive = _boot.pack_archive(
            [(name, entry.read_bytes()) for name, entry in files], settings
        )
        loader = root.joinpath("remote").joinpath("_boot.py").read_bytes()
        _payload = b"%012d" % len(loader) + loader + archive
    return _payload
