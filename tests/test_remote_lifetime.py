"""Nothing is left behind by a host, and only ssh is used: every remote process ends when the
host is closed, when the program exits, and when it is killed (checked on the remote side,
which is this machine); the private directories are the user's alone; nothing listens on TCP.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import anyfork
import remote_support
from anyfork.remote import Host
from helpers import FACES, eventually, recv_exactly
from remote_support import CODE, agent_of, close, connection_of, pid_gone, run_remote
from sshd import SshServers, comm, descendants

sshd = remote_support.sshd
host1 = remote_support.host1
remote_clean = remote_support.remote_clean

pytestmark = pytest.mark.usefixtures("remote_clean")

SRC = str(Path(anyfork.__file__).resolve().parent.parent)


def keeper_of(agent: int) -> int:
    # (An OS fact that may lag: the keeper names itself once it runs, maybe after READY.)
    def keepers() -> list[int]:
        return [p for p in descendants(agent) if comm(p) == "af:keeper"]

    (keeper,) = eventually(keepers, what="the agent's keeper to name itself")
    return keeper


@pytest.mark.parametrize("how", FACES)
def test_closing_the_host_ends_every_process_and_removes_its_directories(
    sshd: SshServers, how: str
) -> None:
    host = Host("host1", ssh_options=sshd.ssh_options)
    host.connect_blocking(timeout=60)
    conn, agent = connection_of(host), agent_of(host)
    keeper = keeper_of(agent)
    running = host.new_exec().eval(CODE)
    sock = run_remote("blocking", running, "block_forever")
    client = host.new().rpc_blocking("math:comb", timeout=30)
    idle = host.new().eval(CODE)
    idle.wait_started_blocking(timeout=30)
    fresh = host.new_exec()
    fresh.wait_started_blocking(timeout=30)
    forked = idle.fork()  # (forked on the host by a template there)
    forked.wait_started_blocking(timeout=30)
    made = (running, client, idle, fresh, forked)
    pids = [p for p in (*(m.pid for m in made), agent, keeper) if p]
    assert len(pids) == 7
    try:
        assert recv_exactly(sock, 1) == b"x"
        assert os.path.isdir(conn.remote_dir)
        close(how, host)
        # The agent removed its directory before its last word; ssh has been ended and reaped.
        assert not os.path.exists(conn.remote_dir)
        assert not os.path.exists(conn.local)
        assert pid_gone(conn.ssh_pid)
        eventually(lambda: all(pid_gone(p) for p in pids), what="the remote processes to exit")
        assert recv_exactly(sock, 1) == b""  # the function's socket sees the end
    finally:
        sock.close()
        client.close()
        idle.close()
        fresh.close()


_PARENT = """\
import json, os, sys
sys.path[:0] = [{src!r}]
from anyfork.remote import Host

host = Host("host1", ssh_options={options!r})
host.connect_blocking(timeout=60)
code = {code!r}
running = host.new().eval(code)
sock = running.run_blocking("block_forever", timeout=30)
assert sock.recv(1) == b"x"
client = host.new_exec().rpc_blocking("math:comb", timeout=30)
conn = host._conn
print(json.dumps({{
    "pids": [running.pid, client.pid, conn.agent.proc.pid],
    "remote": conn.remote_dir, "local": conn.local, "ssh": conn.ssh_pid,
}}), flush=True)
sys.stdin.readline()  # "wait": until killed; "exit": until the test has looked (a handshake)
"""


@pytest.mark.parametrize("end", ["exit", "SIGKILL"])
def test_the_parent_exiting_or_killed_ends_every_remote_process(
    sshd: SshServers, end: str, tmp_path: Path
) -> None:
    script = tmp_path / "parent.py"
    script.write_text(
        _PARENT.format(src=SRC, options=sshd.ssh_options, code=CODE), encoding="utf-8"
    )
    mode = "wait" if end == "SIGKILL" else "exit"
    parent = subprocess.Popen(
        [sys.executable, str(script), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    facts: dict[str, object] = {}
    try:
        assert parent.stdout is not None
        ready, _, _ = select.select([parent.stdout], [], [], 60)
        assert ready, "the parent script said nothing"
        facts = json.loads(parent.stdout.readline())
        pids = facts["pids"]
        assert isinstance(pids, list)
        assert all(not pid_gone(p) for p in pids)
        if end == "SIGKILL":
            parent.kill()
        else:
            assert parent.stdin is not None
            parent.stdin.write(b"\n")  # now exit
            parent.stdin.flush()
        assert parent.wait(timeout=60) == (-signal.SIGKILL if end == "SIGKILL" else 0)
        ssh = facts["ssh"]
        assert isinstance(ssh, int)
        eventually(
            lambda: all(pid_gone(p) for p in pids) and pid_gone(ssh),
            timeout=20,
            what="the remote processes and ssh to exit",
        )
        assert not os.path.exists(str(facts["remote"]))
        if end == "exit":
            assert not os.path.exists(str(facts["local"]))  # the host's finaliser removed it
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=60)
        assert parent.stdin is not None
        assert parent.stdout is not None
        parent.stdin.close()
        parent.stdout.close()
        if facts:  # killed: nobody was left to remove the local directory
            shutil.rmtree(str(facts["local"]), ignore_errors=True)


def test_a_forked_copy_of_the_program_leaves_the_connection_alone(
    sshd: SshServers, tmp_path: Path
) -> None:
    """A copy forked from the program (multiprocessing, a user's fork) that drops the host
    and exits, running its finalisers, must not close the parent's connection."""
    script = tmp_path / "fork.py"
    script.write_text(
        textwrap.dedent(
            f"""\
            import gc, os, sys
            sys.path[:0] = [{SRC!r}]
            from anyfork.remote import Host
            host = Host("host1", ssh_options={sshd.ssh_options!r})
            host.connect_blocking(timeout=60)
            conn = host._conn
            ours = {{os.fstat(c.sock.fileno()).st_ino for c in (conn.session, conn.agent.control)}}
            pid = os.fork()
            if pid == 0:
                held = set()
                for fd in os.listdir("/proc/self/fd"):
                    try:
                        held.add(os.fstat(int(fd)).st_ino)
                    except OSError:
                        pass  # (the listing's own)
                print("child holds the host's sockets:", bool(held & ours), flush=True)
                try:
                    host.new_exec()
                except Exception as exc:
                    print("child:", type(exc).__name__, exc)
                del host, conn
                gc.collect()
                sys.exit(0)  # finalisers and atexit run
            os.waitpid(pid, 0)
            sock = host.new().eval({CODE!r}).run_blocking("wait_eof", timeout=30)
            print("parent:", sock.recv(1))
            sock.close()
            host.close()
            """
        ),
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "child holds the host's sockets: False" in result.stdout
    assert "child: ClosedError" in result.stdout
    assert "belongs to the process that connected it" in result.stdout
    assert "parent: b'x'" in result.stdout


def _listening_tcp_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def test_only_private_unix_sockets_and_no_tcp_listener(host1: Host) -> None:
    conn, agent = connection_of(host1), agent_of(host1)
    for directory in (conn.remote_dir, conn.local):
        info = os.stat(directory)
        assert stat.S_IMODE(info.st_mode) == 0o700, directory
        assert info.st_uid == os.getuid()
    assert sorted(os.listdir(conn.remote_dir)) == ["agent.sock", "lib"]
    assert stat.S_ISSOCK(os.stat(os.path.join(conn.remote_dir, "agent.sock")).st_mode)
    assert stat.S_ISSOCK(os.stat(conn.forward).st_mode)
    procs = [host1.new().eval(CODE), host1.new_exec().eval(CODE)]
    socks = [run_remote("blocking", p, "wait_eof") for p in procs]
    try:
        for sock in socks:
            assert recv_exactly(sock, 1) == b"x"
        ours = [conn.ssh_pid, agent, keeper_of(agent), *(p.pid for p in procs)]
        listening = _listening_tcp_inodes()
        for pid in ours:
            assert pid is not None
            assert not _socket_inodes(pid) & listening, f"{pid} ({comm(pid)}) listens on TCP"
    finally:
        for sock in socks:
            sock.close()


def test_a_killed_keeper_is_replaced(sshd: SshServers) -> None:
    """The keeper kills every process made on the host if the agent dies; killed itself, the
    agent starts another, which guards the processes made after."""
    with Host("host1", ssh_options=sshd.ssh_options) as host:
        agent = agent_of(host)
        first = keeper_of(agent)
        os.kill(first, signal.SIGKILL)
        second = eventually(
            lambda: [p for p in descendants(agent) if comm(p) == "af:keeper" and p != first],
            what="a new keeper",
        )[0]
        proc = host.new().eval(CODE)
        with run_remote("blocking", proc, "block_forever") as sock:
            assert recv_exactly(sock, 1) == b"x"
            pid = proc.pid
            assert pid is not None
            os.kill(agent, signal.SIGKILL)
            eventually(lambda: pid_gone(pid) and pid_gone(second), what="the keeper's kill")
            assert recv_exactly(sock, 1) == b""
