"""The remote side's protocols, without ssh: the bootstrap, the loader's archive, the agent's
requests and commands, and the parent's line reader (byte at a time, hypothesis).

``LocalAgent`` runs the bootstrap in a local interpreter over pipes, exactly as ssh would run
it on a host, and talks to the agent's socket directly.
"""

from __future__ import annotations

import io
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anyfork
from anyfork._child import _wire
from anyfork._core._channel import Channel
from anyfork.remote import _boot, _ssh
from anyfork.remote._agent import CONTROL, EXEC, KILL, NEW
from anyfork.remote._connection import _MAX_JUNK, _bootstrap_payload, _read_line
from helpers import eventually, recv_exactly
from remote_support import pid_gone
from sshd import comm, descendants

DEADLINE = 30.0


def read_line(stream: IO[bytes]) -> bytes:
    """One line of an unbuffered pipe (no read past it), within the deadline."""
    ready, _, _ = select.select([stream], [], [], DEADLINE)
    assert ready, "no line within the deadline"
    return stream.readline()


class LocalAgent:
    """The bootstrap and the agent in a local interpreter, over pipes (as ssh would run it)."""

    def __init__(self, python: str = sys.executable):
        self.proc = subprocess.Popen(
            [python, "-c", _boot.BOOTSTRAP],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        try:
            self._start()
        except BaseException:
            self.kill()
            raise

    def _start(self) -> None:
        assert read_line(self.stdout) == b"\n"
        boot = read_line(self.stdout)
        assert boot.startswith(_boot.BOOT_LINE), boot
        self.stdin.write(_bootstrap_payload())
        ready = read_line(self.stdout)
        assert ready.startswith(_boot.READY_LINE), ready
        _, _, pid, self.dir = ready[len(_boot.READY_LINE) :].decode().rstrip("\n").split(" ", 3)
        self.pid = int(pid)
        self.control = self.connect(CONTROL)

    def connect(self, request: int | None = None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(DEADLINE)
        sock.connect(os.path.join(self.dir, "agent.sock"))
        if request is not None:
            sock.sendall(_wire.frame(request))
        return sock

    def process(self, request: int = NEW) -> anyfork.Process:
        """A process made by the agent, driven through anyfork's own ``Process``."""
        sock = self.connect(request)
        sock.settimeout(None)
        return anyfork.new_from_fh(sock)

    def command(self, op: int, *values: str) -> None:
        self.control.sendall(_wire.frame(op, _wire.pack_values(values)))

    def children(self) -> list[int]:
        return [p for p in descendants(self.pid) if comm(p) not in ("af:keeper", "af:spare")]

    def end(self) -> bytes:
        """EOF on the control connection: the agent's last reports, up to RUNNING."""
        self.control.shutdown(socket.SHUT_WR)
        reports = b""
        while chunk := self.control.recv(65536):
            reports += chunk
        self.control.close()
        assert self.proc.wait(timeout=DEADLINE) == 0
        self.stdin.close()
        self.stdout.close()
        return reports

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=DEADLINE)
        if hasattr(self, "control"):
            self.control.close()
        self.stdin.close()
        self.stdout.close()


@pytest.fixture
def agent() -> Iterator[LocalAgent]:
    made = LocalAgent()
    try:
        yield made
    finally:
        made.kill()
        eventually(lambda: not made.children(), what="the agent's processes to exit")


def closed(sock: socket.socket) -> bool:
    """The other end closed the connection (EOF, or a reset: it left our bytes unread)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def frames(data: bytes) -> list[tuple[int, bytes]]:
    dec = _wire.Decoder(_wire.REPORTS, _wire.MAX_REPORT, stop_after=_wire.RUNNING)
    dec.receive(data)
    out = []
    while (frame := dec.next_frame()) is not None:
        out.append((frame[0], frame[1]))
    return out


def test_the_agent_execs_and_forks_and_reports_every_exit(agent: LocalAgent) -> None:
    made = [agent.process(EXEC), agent.process(NEW)]
    pids = [proc.wait_started_blocking(timeout=DEADLINE) for proc in made]
    for proc, pid in zip(made, pids, strict=True):
        assert pid in descendants(agent.pid)
        sock = proc.eval("def f(sock):\n    sock.sendall(b'ok')\n").run_blocking("f", timeout=30)
        assert recv_exactly(sock, 2) == b"ok"
        sock.close()
    eventually(lambda: all(pid_gone(p) for p in pids), what="the processes to end")
    reports = frames(agent.end())
    exits = {_wire.unpack_exit(payload)[0] for op, payload in reports if op == _wire.EXITED}
    assert set(pids) <= exits
    assert reports[-1] == (_wire.RUNNING, _wire.U32.pack(agent.pid))
    assert not os.path.exists(agent.dir)


def test_a_request_may_arrive_byte_by_byte(agent: LocalAgent) -> None:
    sock = agent.connect()
    for byte in _wire.frame(NEW):
        sock.send(bytes([byte]))
    sock.settimeout(None)
    proc = anyfork.new_from_fh(sock)
    assert proc.wait_started_blocking(timeout=DEADLINE) in descendants(agent.pid)
    proc.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(garbage=st.binary(min_size=0, max_size=12))
def test_a_bad_request_closes_that_connection_only(agent: LocalAgent, garbage: bytes) -> None:
    """Anything but a request frame: the connection is closed (or the agent still waits for
    the rest of a frame); the agent goes on serving."""
    is_request = len(garbage) >= 5 and garbage[0] in (EXEC, NEW) and garbage[1:5] == bytes(4)
    if is_request:
        garbage = garbage[:1] + b"\1\0\0\0"  # (a payload: refused, as any request with one)
    sock = agent.connect()
    sock.sendall(garbage)
    sock.shutdown(socket.SHUT_WR)
    assert closed(sock)
    sock.close()
    proc = agent.process()
    assert proc.wait_started_blocking(timeout=DEADLINE) > 0
    proc.close()


def test_a_parked_connection_goes_to_the_fetcher_of_its_token(agent: LocalAgent) -> None:
    """PARK and FETCH (how a template on the host gets a forked child's connection): matched
    by token in either order, byte by byte; a second PARK of a token is refused, and one whose
    other half never comes is dropped when it closes."""
    from anyfork._child._fetch import FETCH, PARK
    from anyfork._child._forking import fds_from

    parked = agent.connect()
    parked.sendall(_wire.frame(PARK, b"tok1"))
    parked.sendall(b"commands")  # (queued behind the request, for whoever serves it)
    twice = agent.connect()
    twice.sendall(_wire.frame(PARK, b"tok1"))
    assert twice.recv(1) == b""
    twice.close()
    lonely = agent.connect()
    lonely.sendall(_wire.frame(FETCH, b"tok2"))
    lonely.close()  # (given up by the agent: a PARK of tok2 now waits for a new fetcher)
    fetcher = agent.connect()
    for byte in _wire.frame(FETCH, b"tok1"):
        fetcher.send(bytes([byte]))
    _, anc, _, _ = fetcher.recvmsg(1, socket.CMSG_SPACE(4))
    (fd,) = fds_from(anc)
    with socket.socket(fileno=fd) as got, parked, fetcher:
        assert recv_exactly(got, 8) == b"commands"
        got.sendall(b"back")
        assert recv_exactly(parked, 4) == b"back"
        assert fetcher.recv(1) == b""  # (the agent lets go of both)
    late = agent.connect()
    late.sendall(_wire.frame(PARK, b"tok2"))
    fetcher = agent.connect()
    fetcher.sendall(_wire.frame(FETCH, b"tok2"))
    _, anc, _, _ = fetcher.recvmsg(1, socket.CMSG_SPACE(4))
    (fd,) = fds_from(anc)
    with socket.socket(fileno=fd) as got, late, fetcher:
        late.sendall(b"ok")
        assert recv_exactly(got, 2) == b"ok"


def test_a_second_control_connection_is_refused(agent: LocalAgent) -> None:
    other = agent.connect(CONTROL)
    assert closed(other)
    other.close()
    # The first one still works: a command carried out.
    proc = agent.process(EXEC)
    pid = proc.wait_started_blocking(timeout=DEADLINE)
    agent.command(KILL, str(pid), "SIGKILL")
    eventually(lambda: pid_gone(pid), what="the killed process to exit")
    proc.close()


def test_kill_reaches_only_processes_made_by_the_agent(agent: LocalAgent) -> None:
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        proc = agent.process()
        pid = proc.wait_started_blocking(timeout=DEADLINE)
        agent.command(KILL, str(bystander.pid), "SIGKILL")  # not ours: ignored
        agent.command(KILL, str(pid), "SIGNOPE")  # no such signal: ignored
        agent.command(KILL, str(pid), "getpid")  # not a signal: ignored
        agent.command(_wire.IMPORT, "anyfork_no_such_module", "json")  # preloading only
        agent.command(KILL, str(pid), "SIGTERM")  # (carried out in order: after the others)
        eventually(lambda: pid_gone(pid), what="the killed process to exit")
        assert bystander.poll() is None
        proc.close()
        forked = agent.process()
        sock = forked.eval(
            "import sys\ndef f(sock):\n    sock.sendall(str('json' in sys.modules).encode())\n"
        ).run_blocking("f", timeout=30)
        assert sock.recv(10) == b"True"  # forked after the IMPORT: json came with it
        sock.close()
    finally:
        assert bystander.stdin is not None
        bystander.stdin.close()
        bystander.wait(timeout=DEADLINE)
    reports = frames(agent.end())
    codes = dict(_wire.unpack_exit(payload) for op, payload in reports if op == _wire.EXITED)
    assert codes[pid] == -signal.SIGTERM


@pytest.mark.parametrize("end", ["stdin", "control", "agent killed"])
def test_the_end_kills_every_process_and_removes_the_directory(end: str) -> None:
    agent = LocalAgent()
    try:
        made = [agent.process(EXEC), agent.process(NEW)]
        pids = [proc.wait_started_blocking(timeout=DEADLINE) for proc in made]
        sock = made[1].eval("def f(sock):\n    sock.recv(1)\n").run_blocking("f", timeout=30)
        if end == "stdin":
            agent.stdin.close()  # the parent or the connection is gone
        elif end == "control":
            agent.control.shutdown(socket.SHUT_WR)
        else:
            os.kill(agent.pid, signal.SIGKILL)  # the keeper ends them
        eventually(lambda: all(pid_gone(p) for p in pids), what="the processes to be killed")
        assert sock.recv(1) == b""
        sock.close()
        made[0].close()
        if end != "agent killed":
            assert agent.proc.wait(timeout=DEADLINE) == 0
        # The agent removed its directory, or (killed) its keeper did before it killed them.
        assert not os.path.exists(agent.dir)
    finally:
        agent.kill()


def test_the_agent_runs_on_the_oldest_python() -> None:
    from remote_support import INTERPRETERS, SUPPORTED

    agent = LocalAgent(INTERPRETERS[SUPPORTED[0]])
    try:
        proc = agent.process(EXEC)
        assert proc.wait_started_blocking(timeout=DEADLINE) > 0
        proc.close()
    finally:
        agent.end()


# -- the archive -------------------------------------------------------------------------------

_NAME = st.text(
    st.characters(min_codepoint=33, max_codepoint=0x2FF, blacklist_characters="/"),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", "..") and not s.startswith("@"))


@settings(max_examples=50, deadline=None)
@given(
    files=st.dictionaries(
        st.lists(_NAME, min_size=1, max_size=3).map("/".join), st.binary(max_size=300), max_size=5
    ),
    options=st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=3),
)
def test_the_archive_round_trips(
    files: dict[str, bytes], options: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    # (a file and a directory of the same name cannot both exist: keep the leaves apart)
    names = sorted(files)
    files = {n: d for n, d in files.items() if not any(o.startswith(n + "/") for o in names)}
    lib = tmp_path_factory.mktemp("lib")
    data = io.BytesIO(_boot.pack_archive(list(files.items()), options))
    assert _boot.unpack_archive(data.read, str(lib)) == options
    assert data.read() == b""  # not a byte more
    for name, content in files.items():
        path = lib / name
        assert path.read_bytes() == content
        assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("name", ["/etc/x", "../x", "a/../../x", "a//b", "./x", "a/"])
def test_the_archive_refuses_names_that_leave_its_directory(name: str, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    data = io.BytesIO(_boot.pack_archive([(name, b"x")], {}))
    with pytest.raises(ValueError, match="a bad path in the archive"):
        _boot.unpack_archive(data.read, str(lib))
    assert [p for p in tmp_path.rglob("*") if p != lib] == []


# -- the parent's line reader --------------------------------------------------------------------


def _drive(op: Any, feed: socket.socket, data: bytes) -> tuple[bytes | None, bytes]:
    """Run a line-reading generator, giving it ``data`` one byte per wait, then EOF."""
    try:
        next(op)
        for byte in data:
            feed.send(bytes([byte]))
            op.send(True)
        feed.shutdown(socket.SHUT_WR)
        while True:
            op.send(True)
    except StopIteration as stop:
        result: tuple[bytes | None, bytes] = stop.value
        return result


def test_a_line_is_read_byte_by_byte() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        stream = b"banner\n\nanyfork-boot 1 3.8.18\n"
        line, junk = _drive(_read_line(Channel(ours), (b"anyfork-boot ",)), theirs, stream)
        assert line == b"anyfork-boot 1 3.8.18\n"
        assert junk == b"banner\n\n"


def test_a_line_reader_never_reads_past_its_line() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"banner\nanyfork-ready 1 2 3 /d\nAFTER\nMORE")
        line, junk = _drive(_read_line(Channel(ours), (b"anyfork-ready ",)), theirs, b"")
        assert (line, junk) == (b"anyfork-ready 1 2 3 /d\n", b"banner\n")
        assert ours.recv(100) == b"AFTER\nMORE"


def test_a_line_reader_at_eof_returns_what_came() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        line, junk = _drive(
            _read_line(Channel(ours), (b"anyfork-boot ",)), theirs, b"sh: no\npartial"
        )
        assert line is None
        assert junk == b"sh: no\npartial"


def test_a_line_reader_gives_up_on_endless_junk() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.setblocking(False)
        op = _read_line(Channel(ours), (b"anyfork-boot ",))
        junk = (b"x" * 99 + b"\n") * (_MAX_JUNK // 100 + 2)

        def feed() -> None:
            next(op)
            sent = 0
            while True:
                try:
                    sent += theirs.send(junk[sent:])
                except BlockingIOError:
                    pass
                op.send(True)

        with pytest.raises(anyfork.RemoteHostError, match="printed more than"):
            feed()


# -- reading ssh's failures ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("log", "code", "expected"),
    [
        ("root@h: Permission denied (publickey).", 255, "authentication failed"),
        ("Host key verification failed.", 255, "host key verification failed"),
        ("ssh: connect to host h port 1: Connection refused", 255, "connection refused"),
        ("ssh: connect to host h port 22: No route to host", 255, "host unreachable"),
        (
            "ssh: Could not resolve hostname nope: Name or service not known",
            255,
            "host unreachable",
        ),
        ("", 255, "ssh failed"),
        ("", 127, "python3 was not found on 'h'"),
        ("", 126, "python3 cannot be executed on 'h'"),
        ("", 3, "the bootstrap (python3) on 'h' exited with status 3"),
    ],
)
def test_ssh_failures_are_named(log: str, code: int, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_text(log + "\n")
    err = _ssh.failure("h", code, str(path), ["python3"])
    assert expected in str(err)
    assert err.host == "h"
