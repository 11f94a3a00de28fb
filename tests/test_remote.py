"""anyfork.remote against a real SSH server: processes on a host work as local ones do.

The "remote host" is this machine reached through sshd (``tests/sshd.py``), so the tests can
see in ``/proc`` what runs there.  After every test nothing it made may be left on the remote
side (``remote_clean``) nor here (``no_leaks``).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import signal
import socket

import pytest

import anyfork
import anyfork.remote
import remote_support
import rpc_faces
from anyfork.remote import Host, RemoteProcess
from helpers import FACES, children, eventually, recv_exactly
from remote_support import (
    CODE,
    OLDEST_AND_NEWEST,
    agent_of,
    close,
    connect,
    interpreter,
    run_remote,
)
from rpc_faces import Face
from sshd import SshServers

# The fixtures, made once per session (see remote_support).
sshd = remote_support.sshd
host1 = remote_support.host1
remote_clean = remote_support.remote_clean
face = rpc_faces.face  # each RPC test runs with each face

pytestmark = pytest.mark.usefixtures("remote_clean")


def read_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = recv_exactly(sock, 1)
        assert chunk, f"EOF after {line!r}"
        line += chunk
    return line


@pytest.mark.parametrize("make", ["new_exec", "new"])
@pytest.mark.parametrize("how", FACES)
def test_a_remote_process_runs_with_args_and_a_real_socket(
    host1: Host, sshd: SshServers, how: str, make: str
) -> None:
    proc = getattr(host1, make)()
    assert isinstance(proc, anyfork.Process)
    assert isinstance(proc, RemoteProcess)
    assert proc.host is host1
    proc.eval(CODE).send_arg("text", b"\x00bytes").send_arg("")
    with run_remote(how, proc, "echo") as sock:
        pid, ppid, args = ast.literal_eval(read_line(sock).decode())
        assert args == ("text", b"\x00bytes", "")
        assert pid == proc.pid
        # It runs on the "remote host": made there by the host's agent (exec'd, or forked
        # from it), not by this process.
        assert ppid == agent_of(host1)
        assert pid in sshd.servers["host1"].processes()
        assert pid not in children()
        # The socket is a real local socket, with everything that works on one.
        with sock.makefile("rwb", buffering=0) as f:
            f.write(b"ping\n")
            assert f.readline() == b"ping\n"
        sock.shutdown(socket.SHUT_WR)
        assert recv_exactly(sock, 1) == b""


def test_async_with_and_asyncio_streams_on_the_socket(sshd: SshServers) -> None:
    async def main() -> bytes:
        async with Host("host1", ssh_options=sshd.ssh_options) as host:
            sock = await host.new().eval(CODE).run("echo", timeout=30)
            reader, writer = await asyncio.open_unix_connection(sock=sock)
            try:
                await asyncio.wait_for(reader.readline(), 30)
                writer.write(b"over asyncio\n")
                return await asyncio.wait_for(reader.readline(), 30)
            finally:
                writer.close()
                await writer.wait_closed()

    assert asyncio.run(main()) == b"over asyncio\n"


@pytest.mark.parametrize("make", ["new_exec", "new"])
def test_rpc_on_a_remote_process(host1: Host, face: Face, make: str) -> None:
    proc = getattr(host1, make)().eval(CODE)
    client = face.rpc(proc, "math:comb")
    try:
        assert face.call(client, 10, 3) == 120
        assert client.pid == proc.pid
    finally:
        face.close(client)
    assert client.returncode == 0  # reported by the host
    client = face.rpc(getattr(host1, make)().eval(CODE), "fail")
    try:
        with pytest.raises(ValueError, match=r"^nope"):
            face.call(client, "ValueError", "nope")
        with pytest.raises(KeyError):
            face.call(client, "KeyError", "k")
    finally:
        face.close(client)


def test_events_and_map_on_a_remote_worker(host1: Host, face: Face) -> None:
    proc = host1.new().eval(
        "import anyfork.worker\n"
        "def work(n):\n"
        "    for i in range(n):\n"
        "        anyfork.worker.event('step', i)\n"
        "    return n\n"
    )
    events: list[tuple[object, ...]] = []
    client = face.rpc(proc, "work", on_event=lambda *a: events.append(a))
    try:
        assert face.call(client, 3) == 3
        assert events == [("step", 0), ("step", 1), ("step", 2)]
        assert face.map(client, [0, 1, 2] * 20, chunksize=7) == [0, 1, 2] * 20
    finally:
        face.close(client)


def test_a_command_that_fails_remotely_names_the_host(host1: Host) -> None:
    proc = host1.new().require("anyfork_no_such_module")
    with pytest.raises(ModuleNotFoundError) as info:
        proc.run_blocking("os:getpid", timeout=30)
    assert isinstance(info.value, anyfork.AnyforkError)
    assert "'host1'" in " ".join(getattr(info.value, "__notes__", []))


def test_what_cannot_cross_hosts_is_refused_at_the_call(host1: Host) -> None:
    proc = host1.new_exec()
    r, w = os.pipe()
    try:
        with pytest.raises(NotImplementedError, match="do not cross hosts"):
            proc.send_fh(r)
        with pytest.raises(NotImplementedError, match="another host"):
            asyncio.run(proc.to_fh())
        with pytest.raises(NotImplementedError, match="another host"):
            proc.to_fh_blocking()
    finally:
        os.close(r)
        os.close(w)
    # Nothing was queued or broken: the process still runs.
    with run_remote("blocking", proc.eval(CODE), "wait_eof") as sock:
        assert recv_exactly(sock, 1) == b"x"


def test_kill_and_returncode_go_through_the_host(host1: Host) -> None:
    proc = host1.new_exec()
    with pytest.raises(ProcessLookupError, match="pid"):
        proc.kill()  # not started: no pid yet
    with run_remote("blocking", proc.eval(CODE), "block_forever") as sock:
        assert recv_exactly(sock, 1) == b"x"
        assert proc.returncode is None
        proc.kill(signal.SIGTERM)
        assert recv_exactly(sock, 1) == b""  # it died: its end of the channel closed
    # The host's report of the exit travels on another channel of the connection.
    assert eventually(lambda: proc.returncode, what="the exit report") == -signal.SIGTERM
    with pytest.raises(ProcessLookupError, match="has exited"):
        proc.kill()


@pytest.mark.parametrize("make", ["new_exec", "new"])
@pytest.mark.parametrize("how", FACES)
def test_wait_and_poll_learn_the_exit_from_the_host(host1: Host, how: str, make: str) -> None:
    proc = getattr(host1, make)()
    with run_remote(how, proc.eval(CODE), "block_forever") as sock:
        assert recv_exactly(sock, 1) == b"x"
        assert proc.poll() is None
        proc.terminate()
        if how == "asyncio":
            code = asyncio.run(proc.wait(timeout=30))
        else:
            code = proc.wait_blocking(timeout=30)
    assert code == proc.returncode == proc.poll() == -signal.SIGTERM
    # A process closed before it ran exits once it has carried out its commands.
    quiet = getattr(host1, make)().eval("x = 1")
    quiet.wait_started_blocking(timeout=30)
    quiet.close()
    assert quiet.wait_blocking(timeout=30) == 0


def test_a_remote_process_can_print(host1: Host) -> None:
    """Its stdout is not the host's protocol stream: printing corrupts nothing."""
    proc = host1.new_exec().eval("print('x' * 100000); import sys; sys.stdout.flush()")
    with run_remote("blocking", proc.eval(CODE), "wait_eof") as sock:
        assert recv_exactly(sock, 1) == b"x"
    forked = host1.new().eval("print('y' * 100000)")
    with run_remote("blocking", forked.eval(CODE), "wait_eof") as sock:
        assert recv_exactly(sock, 1) == b"x"


def test_two_hosts_are_two_servers(host1: Host, sshd: SshServers) -> None:
    with Host("host2", ssh_options=sshd.ssh_options) as host2:
        procs = [(host1, host1.new()), (host2, host2.new_exec()), (host2, host2.new())]
        socks = [run_remote("blocking", p.eval(CODE), "wait_eof") for _, p in procs]
        try:
            for sock in socks:
                assert recv_exactly(sock, 1) == b"x"
            assert procs[0][1].pid in sshd.servers["host1"].processes()
            for _, proc in procs[1:]:
                assert proc.pid in sshd.servers["host2"].processes()
                assert proc.pid not in sshd.servers["host1"].processes()
        finally:
            for sock in socks:
                sock.close()


def test_new_processes_share_one_connection(host1: Host, sshd: SshServers) -> None:
    """A warm host pays no TCP connection, key exchange or session per process: the server
    sees no new connection and this process starts no ssh."""
    sessions = set(sshd.servers["host1"].sessions())
    ours = children()
    socks = []
    try:
        for i in range(10):
            proc = (host1.new if i % 2 else host1.new_exec)().eval(CODE)
            socks.append(run_remote("blocking", proc, "wait_eof"))
        for sock in socks:
            assert recv_exactly(sock, 1) == b"x"
        assert set(sshd.servers["host1"].sessions()) == sessions
        assert children() == ours
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("version", OLDEST_AND_NEWEST, ids=lambda v: f"{v[0]}.{v[1]}")
def test_the_oldest_and_newest_pythons_serve(
    sshd: SshServers, face: Face, version: tuple[int, int]
) -> None:
    with Host("host1", python=interpreter(version), ssh_options=sshd.ssh_options) as host:
        assert host.python_version is not None
        assert host.python_version.startswith(f"{version[0]}.{version[1]}.")
        for make, backend in [("new", "sync"), ("new_exec", "async")]:
            proc = getattr(host, make)().eval(CODE)
            client = face.rpc(proc, "operator:add", backend=backend, serializer="pickle")
            try:
                assert face.call(client, 2, 3) == 5
                assert face.map(client, range(50), range(50), chunksize=8) == list(range(0, 100, 2))
            finally:
                face.close(client)
            assert client.returncode == 0
        proc = host.new().eval(CODE)
        client = face.rpc(proc, "pid_of_worker", serializer="json")
        try:
            assert face.call(client) == proc.pid
        finally:
            face.close(client)
        # A template there forks there (its child's connection fetched from the agent).
        tmpl = host.new_exec().eval(CODE)
        child = tmpl.fork()
        client = face.rpc(child, "pid_of_worker", serializer="json")
        try:
            assert face.call(client) == child.pid
        finally:
            face.close(client)
            tmpl.close()


@pytest.mark.parametrize("how", FACES)
def test_connect_is_explicit_lazy_and_idempotent(sshd: SshServers, how: str) -> None:
    host = Host("host1", ssh_options=sshd.ssh_options)
    assert "new" in repr(host)
    assert host.python_version is None
    try:
        if how == "blocking":
            proc = host.new_exec()  # connects first
        else:
            connect(how, host)
            proc = host.new_exec()
        conn = host._conn
        assert conn is not None
        connect(how, host)  # connected: nothing happens
        assert host._conn is conn
        assert "connected" in repr(host)
        proc.close()
    finally:
        close(how, host)
    assert "closed" in repr(host)
    with pytest.raises(anyfork.ClosedError, match="'host1' has been closed"):
        host.new()
    with pytest.raises(anyfork.ClosedError):
        connect(how, host)
    close(how, host)  # closing twice is harmless


def test_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match="destination"):
        Host("")
    with pytest.raises(TypeError, match="python"):
        Host("h", python=[])
    with pytest.raises(TypeError, match="ssh_options"):
        Host("h", ssh_options="-v")
    with pytest.raises(ValueError, match="connect_timeout"):
        Host("h", connect_timeout=0)
    with pytest.raises(ValueError, match=r"^ssh_options may not contain -S, -t: the host needs"):
        Host("h", ssh_options=("-v", "-S", "/tmp/x", "-t"))


def test_the_remote_api_surface() -> None:
    assert sorted(anyfork.remote.__all__) == ["Host", "RemoteHostError", "RemoteProcess"]
    for name in anyfork.remote.__all__:
        obj = getattr(anyfork.remote, name)
        assert inspect.getdoc(obj), name
        public = [m for m in vars(obj) if not m.startswith("_")]
        assert all(inspect.getdoc(getattr(obj, m)) for m in public), name
    assert Host.__module__ == RemoteProcess.__module__ == "anyfork.remote"
    assert anyfork.remote.RemoteHostError is anyfork.RemoteHostError
    assert issubclass(anyfork.RemoteHostError, anyfork.SpawnError)
    assert "pickle" in (anyfork.remote.__doc__ or "")


@pytest.mark.parametrize("make", ["new_exec", "new"])
@pytest.mark.parametrize("how", FACES)
def test_remote_templates_nest_and_fork_on_the_host(host1: Host, how: str, make: str) -> None:
    """fork() of a remote process forks it there: the child shares what the template was sent
    (and is its child on the host); templates nest; the exits come through the templates."""
    say = "def say(sock, *args):\n    sock.sendall(repr((os.getppid(), shared, args)).encode())\n"
    tmpl = getattr(host1, make)().eval(CODE).eval("shared = 'from the template'").eval(say)
    tmpl_pid = tmpl.wait_started_blocking(timeout=30)
    child = tmpl.fork()
    assert isinstance(child, RemoteProcess)
    assert child.host is host1
    middle = tmpl.fork()
    nested = middle.fork().eval("shared += ' and its child'")
    kids = [child, nested]
    for kid in kids:
        kid.send_arg("arg")
    socks = [run_remote(how, kid, "say") for kid in kids]
    try:
        said = [ast.literal_eval(recv_exactly(sock, 200).decode()) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    assert said == [
        (tmpl_pid, "from the template", ("arg",)),
        (middle.pid, "from the template and its child", ("arg",)),
    ]
    if how == "asyncio":
        codes = [asyncio.run(kid.wait(timeout=30)) for kid in kids]
    else:
        codes = [kid.wait_blocking(timeout=30) for kid in kids]
    assert codes == [0, 0] == [kid.returncode for kid in kids]
    for proc in (middle, tmpl):
        proc.close()
        assert proc.wait_blocking(timeout=30) == 0


def test_a_remote_template_serves_rpc_workers_and_fork_errors_name_the_host(host1: Host) -> None:
    tmpl = host1.new().eval(CODE)
    try:
        clients = [tmpl.fork().rpc_blocking("pid_of_worker") for _ in range(3)]
        try:
            pids = [client() for client in clients]
            assert len(set(pids)) == 3
        finally:
            for client in clients:
                client.close()
        tmpl.kill()
        assert tmpl.wait_blocking(timeout=30) == -signal.SIGKILL
        with pytest.raises(anyfork.SpawnError, match="on 'host1'"):
            tmpl.fork()
    finally:
        tmpl.close()
