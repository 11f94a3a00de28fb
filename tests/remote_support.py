"""What the remote tests share: the SSH servers, a connected host, the check that nothing is
left on the "remote" side after a test, and the code remote processes run.

Import the fixtures into a test module to use them there (``from remote_support import
sshd, host1, remote_clean  # noqa: F401``); the servers and the shared host are made once per
session whichever module asks first (pytest keeps one fixture per module that imports it, so
the objects themselves are kept here).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from anyfork.remote import Host
from anyfork.remote._connection import Connection
from helpers import eventually, interpreters
from sshd import SshServers, comm, descendants

TESTS_DIR = str(Path(__file__).resolve().parent)

INTERPRETERS = interpreters()
SUPPORTED = sorted(v for v in INTERPRETERS if v >= (3, 8))
#: The oldest and the newest Python this machine has that anyfork supports remotely.
OLDEST_AND_NEWEST = sorted({SUPPORTED[0], SUPPORTED[-1]})
#: The ones it refuses (older than 3.8), if this machine has any.
TOO_OLD = sorted(v for v in INTERPRETERS if v < (3, 8))


def interpreter(version: tuple[int, int]) -> str:
    return INTERPRETERS[version]


#: Functions for remote processes, defined there with ``eval`` (nothing of the tests needs to
#: be importable on the remote host).
CODE = """\
import os, select, socket, sys

def echo(sock, *args):
    sock.sendall(repr((os.getpid(), os.getppid(), args)).encode() + b"\\n")
    while True:
        data = sock.recv(65536)
        if not data:
            return
        sock.sendall(data)

def wait_eof(sock):
    sock.sendall(b"x")
    while sock.recv(4096):
        pass

def block_forever(sock):
    sock.sendall(b"x")
    select.select([], [], [])

def started_then_block(*args):
    import anyfork.worker
    anyfork.worker.event("started", os.getpid())
    select.select([], [], [])

def pid_of_worker():
    return os.getpid()

def fail(kind, message):
    import builtins
    raise getattr(builtins, kind)(message)
"""

_servers: SshServers | None = None
_host: Host | None = None


@pytest.fixture(scope="session")
def sshd() -> Iterator[SshServers]:
    """The two SSH servers (started once per session)."""
    global _servers
    if _servers is None:
        _servers = SshServers().start()
    try:
        yield _servers
    finally:
        if _servers is not None and _host is None:
            _servers.stop()
            _servers = None


@pytest.fixture(scope="session")
def host1(sshd: SshServers) -> Iterator[Host]:
    """A host connected once per session (for the tests that do not break it)."""
    global _host
    if _host is None:
        _host = Host("host1", ssh_options=sshd.ssh_options)
        _host.connect_blocking(timeout=60)
    try:
        yield _host
    finally:
        if _host is not None:
            _host.close()
            _host = None


def connection_of(host: Host) -> Connection:
    """The host's connection (it must be connected)."""
    conn = host._conn
    assert conn is not None
    assert conn.agent is not None
    return conn


def agent_of(host: Host) -> int:
    """The pid of the host's agent (on the "remote" side, this machine)."""
    agent = connection_of(host).agent
    assert agent is not None
    pid = agent.proc.pid
    assert pid is not None
    return pid


def shared_agent() -> int | None:
    if _host is None or _host._conn is None or _host._conn.agent is None:
        return None
    return agent_of(_host)


def leftovers(servers: SshServers) -> list[tuple[int, str]]:
    """Processes on the "remote" side that belong to no live host: everything under the
    servers but the shared host's agent, keeper and spare."""
    keep = shared_agent()
    found = []
    for server in servers.servers.values():
        for pid in server.processes():
            name = comm(pid)
            if pid == keep or (name in ("af:keeper", "af:spare") and _under(pid, keep)):
                continue
            if name:
                found.append((pid, name))
    return found


def _under(pid: int, ancestor: int | None) -> bool:
    return ancestor is not None and pid in descendants(ancestor)


@pytest.fixture
def remote_clean(sshd: SshServers) -> Iterator[None]:
    """After the test, nothing it made is left on the remote side (its hosts closed, their
    processes gone)."""
    yield
    try:
        eventually(lambda: not leftovers(sshd), timeout=15, what="remote processes to exit")
    except AssertionError:
        left = leftovers(sshd)
        for pid, _ in left:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        pytest.fail(f"processes left on the remote side: {left}")


# -- faces ------------------------------------------------------------------------------------


def connect(face: str, host: Host, timeout: float = 60) -> None:
    """``host.connect`` awaited in ``asyncio.run``, or its blocking twin."""
    if face == "blocking":
        host.connect_blocking(timeout=timeout)
    else:
        asyncio.run(host.connect(timeout=timeout))


def close(face: str, host: Host) -> None:
    if face == "blocking":
        host.close()
    else:
        asyncio.run(host.aclose())


def pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def run_remote(face: str, proc: Any, func: str, timeout: float = 30) -> Any:
    """``proc.run(func)`` on ``face``; a blocking socket either way."""
    if face == "blocking":
        sock = proc.run_blocking(func, timeout=timeout)
    else:

        async def main() -> Any:
            return await proc.run(func, timeout=timeout)

        sock = asyncio.run(main())
    sock.setblocking(True)
    return sock
