"""anyfork.remote's failures: each a clear ``anyfork`` error naming the host, never a hang,
and nothing left behind (on either side).

Connection failures: unreachable port, wrong user key, changed host key, a server that never
answers, a missing or too old remote Python.  Losses: the ssh process killed, the server's
session process killed, the network going silent (keepalives), the host's agent killed, a
remote worker killed.  The RPC ones run on both client faces (``face``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import anyfork
import remote_support
import rpc_faces
from anyfork._child import _wire
from anyfork._core import _reaper
from anyfork._core._protocol import ProcessProtocol
from anyfork.remote import Host, RemoteHostError, _boot, _connection
from anyfork.remote._transport import Remote
from helpers import FACES, children, eventually, recv_exactly
from remote_support import (
    CODE,
    TOO_OLD,
    agent_of,
    close,
    connect,
    connection_of,
    interpreter,
    pid_gone,
    run_remote,
)
from rpc_faces import Face
from sshd import SshServers

sshd = remote_support.sshd
host1 = remote_support.host1
remote_clean = remote_support.remote_clean
face = rpc_faces.face

pytestmark = pytest.mark.usefixtures("remote_clean")


@pytest.fixture
def no_local_dirs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A failed connection leaves no private directory here (those the test's hosts made)."""
    made: list[str] = []
    real = _connection._local_dir

    def recording() -> str:
        made.append(real())
        return made[-1]

    monkeypatch.setattr(_connection, "_local_dir", recording)
    yield
    assert made
    assert not [d for d in made if os.path.exists(d)]


@pytest.mark.usefixtures("no_local_dirs")
@pytest.mark.parametrize(
    ("alias", "cause"),
    [
        ("closed", "connection refused"),
        ("badkey", "authentication failed"),
        ("badhostkey", "host key verification failed"),
    ],
)
@pytest.mark.parametrize("how", FACES)
def test_ssh_failures_say_why_and_name_the_host(
    sshd: SshServers, how: str, alias: str, cause: str
) -> None:
    host = Host(alias, ssh_options=sshd.ssh_options)
    with pytest.raises(RemoteHostError) as info:
        connect(how, host)
    err = info.value
    assert isinstance(err, anyfork.SpawnError)
    assert isinstance(err, anyfork.AnyforkError)
    assert err.host == alias
    assert str(err).startswith(f"cannot connect to {alias!r}: {cause} (ssh exited with status 255")
    # Nothing half made: the next use tries again, and fails the same way.
    with pytest.raises(RemoteHostError, match=cause):
        host.new_exec()
    close(how, host)


#: A Python that says it is 3.7 (on any machine, old Pythons or not).
FAKE_OLD = "import sys, runpy\nsys.version_info = (3, 7, 99, 'final', 0)\nexec(sys.argv.pop(2))\n"


@pytest.mark.usefixtures("no_local_dirs")
@pytest.mark.parametrize(
    ("python", "expected"),
    [
        ("/nonexistent/python3", r"^/nonexistent/python3 was not found on 'host1'"),
        ("python3; touch MARKER", r"^'python3; touch MARKER' was not found on 'host1'"),
        ("fake 3.7", r" on 'host1' is Python 3\.7\.99, too old: anyfork needs Python 3\.8 or "),
        *(
            (version, rf" on 'host1' is Python {version[0]}\.{version[1]}\.\d+, too old")
            for version in TOO_OLD
        ),
    ],
    ids=str,
)
def test_a_missing_or_old_remote_python_is_named(
    sshd: SshServers, python: str | tuple[int, int], expected: str, tmp_path: Path
) -> None:
    marker = tmp_path / "MARKER"
    words: list[str]
    if isinstance(python, tuple):
        words = [interpreter(python)]
    elif python == "fake 3.7":
        words = [sys.executable, "-c", FAKE_OLD]  # (then "-c BOOTSTRAP": quoted word by word)
    else:  # a path with a space and ";": one word for the remote shell, never two commands
        words = [python.replace("MARKER", str(marker))]
        expected = expected.replace("MARKER", str(marker))
    host = Host("host1", python=words, ssh_options=sshd.ssh_options)
    with pytest.raises(RemoteHostError, match=expected):
        host.connect_blocking()
    assert not marker.exists()
    host.close()


@pytest.mark.usefixtures("no_local_dirs")
@pytest.mark.parametrize("which", ["bootstrap", "command protocol"])
def test_another_protocol_on_the_remote_side_is_refused(
    sshd: SshServers, which: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child side travels as source and is checked against the protocol versions: the
    bootstrap's line and the agent's READY (the command protocol of what it imported there).
    Here the parent pretends to speak another version of each."""
    if which == "bootstrap":
        monkeypatch.setattr(_boot, "PROTOCOL", _boot.PROTOCOL + 1)
        expected = r"^cannot start anyfork on 'host1': the bootstrap speaks another protocol"
    else:
        monkeypatch.setattr(_wire, "VERSION", _wire.VERSION + 100)
        expected = (
            rf"^cannot start anyfork on 'host1': the agent answered .*, expected protocol "
            rf"{_boot.PROTOCOL} and command protocol {_wire.VERSION}$"
        )
    host = Host("host1", ssh_options=sshd.ssh_options)
    with pytest.raises(RemoteHostError, match=expected):
        host.connect_blocking()
    host.close()


def test_a_destination_is_never_run_by_a_shell(sshd: SshServers, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    for destination in (f"127.0.0.1; touch {marker}", f"host1 touch {marker}", "a b"):
        host = Host(destination, ssh_options=sshd.ssh_options, connect_timeout=10)
        with pytest.raises(RemoteHostError) as info:
            host.connect_blocking()
        assert repr(destination) in str(info.value)
        assert info.value.host == destination
        host.close()
    assert not marker.exists()


@pytest.mark.usefixtures("no_local_dirs")
@pytest.mark.parametrize("how", FACES)
def test_a_server_that_never_answers_times_out(how: str) -> None:
    """TCP connects, nothing ever answers: our deadline ends it, and ssh with it."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # (never accepted)
        port = silent.getsockname()[1]
        host = Host("127.0.0.1", ssh_options=("-p", str(port), "-F", "/dev/null"))
        ours = children()
        with pytest.raises(
            TimeoutError, match=r"connecting to '127\.0\.0\.1' took longer than 1 s"
        ):
            connect(how, host, timeout=1)
        host.close()

    # ssh was ended, and is reaped (an OS fact: polled).
    def gone() -> bool:
        _reaper.poll()
        return children() <= ours

    eventually(gone, what="ssh to be gone")


# -- losses ------------------------------------------------------------------------------------


def _cutters(sshd: SshServers) -> dict[str, Callable[[Host], None]]:
    def ssh(host: Host) -> None:
        os.kill(connection_of(host).ssh_pid, signal.SIGKILL)

    def sshd_session(host: Host) -> None:
        sshd.servers["host1"].cut(agent_of(host))

    def agent(host: Host) -> None:
        os.kill(agent_of(host), signal.SIGKILL)

    return {"ssh killed": ssh, "sshd session killed": sshd_session, "agent killed": agent}


@pytest.mark.parametrize("cut", ["ssh killed", "sshd session killed", "agent killed"])
def test_a_connection_cut_mid_call_fails_the_call_at_once(
    sshd: SshServers, face: Face, cut: str
) -> None:
    host = Host("host1", ssh_options=sshd.ssh_options)
    try:
        host.connect_blocking(timeout=60)
        cutter = _cutters(sshd)[cut]
        client = face.rpc(host.new().eval(CODE), "started_then_block")
        other = face.rpc(host.new_exec().eval(CODE), "math:comb")
        tmpl = host.new_exec().eval(CODE)
        forked = face.rpc(tmpl.fork(), "math:comb")  # (forked on the host by a template there)
        try:
            # The call is running remotely when the connection is cut (the worker's event
            # says so); it would block for ever, so only the cut can end it.
            with pytest.raises(anyfork.WorkerDiedError) as info:
                face.call(client, "x", timeout=60, on_event=lambda *a: cutter(host))
            message = str(info.value)
            assert "'host1'" in message
            assert "the connection to 'host1' was lost" in message
            # Every call on the connection fails at once, not only the one running.
            for rest in (other, forked):
                with pytest.raises((anyfork.WorkerDiedError, anyfork.ClosedError)):
                    face.call(rest, 5, 2, timeout=60)
            with pytest.raises(RemoteHostError, match="the connection to 'host1' was lost"):
                tmpl.fork()
        finally:
            face.close(client)
            face.close(other)
            face.close(forked)
            tmpl.close()
        with pytest.raises(RemoteHostError, match="the connection to 'host1' was lost"):
            host.new_exec()
    finally:
        host.close()


def test_a_silent_connection_is_given_up_by_the_keepalives(sshd: SshServers, face: Face) -> None:
    """The server stops answering (stopped, as a dead network would be): with keepalives every
    second, given up after two, the call fails well before its own deadline."""
    options = (*sshd.ssh_options, "-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=2")
    host = Host("host1", ssh_options=options)
    server = sshd.servers["host1"]
    agent = 0
    try:
        host.connect_blocking(timeout=60)
        agent = agent_of(host)
        client = face.rpc(host.new().eval(CODE), "started_then_block")
        try:
            with pytest.raises(anyfork.WorkerDiedError, match="the connection to 'host1' was lost"):
                face.call(client, "x", timeout=120, on_event=lambda *a: server.freeze(agent))
        finally:
            server.thaw()
            face.close(client)
    finally:
        server.thaw()
        host.close()


def test_a_remote_worker_killed_is_reported_with_its_status(
    sshd: SshServers, face: Face, host1: Host
) -> None:
    client = face.rpc(host1.new().eval(CODE), "started_then_block")
    try:
        with pytest.raises(anyfork.WorkerDiedError, match=r"killed by SIGKILL") as info:
            face.call(client, "x", timeout=60, on_event=lambda _, pid: os.kill(pid, 9))
        assert info.value.returncode == -signal.SIGKILL
        assert "'host1'" in str(info.value)
        assert "lost" not in str(info.value)  # the host is fine
    finally:
        face.close(client)
    with run_remote("blocking", host1.new().eval(CODE), "wait_eof") as sock:
        assert recv_exactly(sock, 1) == b"x"


def test_a_lost_host_fails_new_processes_at_once_and_connect_reconnects(sshd: SshServers) -> None:
    host = Host("host1", ssh_options=sshd.ssh_options)
    try:
        host.connect_blocking(timeout=60)
        proc = host.new_exec()  # made before the loss, waited for after
        first = connection_of(host)
        os.kill(first.ssh_pid, signal.SIGKILL)
        with pytest.raises(RemoteHostError, match="the connection to 'host1' was lost"):
            proc.run_blocking("os:getpid", timeout=60)
        with pytest.raises(RemoteHostError, match="the connection to 'host1' was lost"):
            host.new()
        host.connect_blocking(timeout=60)
        assert host._conn is not first
        with run_remote("blocking", host.new().eval(CODE), "wait_eof") as sock:
            assert recv_exactly(sock, 1) == b"x"
    finally:
        host.close()
    assert pid_gone(first.ssh_pid)


def test_an_abandoned_call_kills_the_remote_worker_through_its_host(
    host1: Host, face: Face, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync-backend worker whose call is abandoned is killed: by its host, never by a local
    ``os.kill`` of a pid that means another process here."""
    sent: list[tuple[int | None, int]] = []
    kill = Remote.kill

    def recording(
        self: Remote, proc: ProcessProtocol, pid: int | None, sig: int, exited: bool
    ) -> None:
        sent.append((pid, sig))
        kill(self, proc, pid, sig, exited)

    monkeypatch.setattr(Remote, "kill", recording)
    proc = host1.new().eval(CODE)
    client = face.rpc(proc, "started_then_block")
    try:
        with pytest.raises(TimeoutError):
            face.call(client, "x", timeout=0.5)
        assert sent == [(proc.pid, signal.SIGKILL)]
        with pytest.raises(anyfork.WorkerDiedError, match="killed because call 1 timed out"):
            face.call(client, "y", timeout=60)
    finally:
        face.close(client)
    assert client.returncode == -signal.SIGKILL  # as the host reported it


def test_a_process_that_ends_with_its_host_blames_the_host() -> None:
    """A process whose connection ends before it has said its pid waits a moment for the
    host's fate: when ssh dies, the connections it carried close one after the other, the
    host's own (its agent's) possibly last.  Here the agent's closes just after the wait
    starts (deterministically: the next callback on the loop)."""
    from anyfork._core._channel import Channel
    from anyfork.remote._connection import Connection
    from anyfork.remote._transport import Agent

    host = Host("h")
    conn = Connection("h", ["python3"], ["ssh"], [], 1.0)
    agent_ours, agent_theirs = socket.socketpair()
    proc_ours, proc_theirs = socket.socketpair()
    proc_theirs.close()  # the process's connection: gone before a word
    conn.agent = agent = Agent(conn, Channel(agent_ours), 1)
    proc = Remote(host, agent).made(Channel(proc_ours))

    async def main() -> None:
        asyncio.get_running_loop().call_soon(agent_theirs.close)
        await proc.run("f", timeout=30)

    try:
        with pytest.raises(
            RemoteHostError,
            match=r"^process on 'h' is gone: the connection to 'h' was lost \(the anyfork agent",
        ):
            asyncio.run(main())
    finally:
        agent.proc.close()
        conn.abandon()


def test_a_template_that_cannot_fetch_a_child_says_so_and_serves_on(
    host1: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The template fetches a forked child's connection from the agent: when that fails (here:
    the FORK frame names a socket that does not exist), the fork fails (FORK_FAILED, the
    child's error says why) and the template goes on serving."""
    tmpl = host1.new_exec().eval(CODE)
    try:
        conn = connection_of(host1)
        with monkeypatch.context() as patch:
            patch.setattr(conn, "remote_dir", "/nonexistent-anyfork-dir")
            lost = tmpl.fork()
        with pytest.raises(anyfork.SpawnError, match="could not fork it: fetching its connection"):
            lost.wait_started_blocking(timeout=60)
        lost.close()
        child = tmpl.fork()
        assert child.wait_started_blocking(timeout=60) > 0
        with run_remote("blocking", child, "wait_eof") as sock:
            assert recv_exactly(sock, 1) == b"x"
    finally:
        tmpl.close()
