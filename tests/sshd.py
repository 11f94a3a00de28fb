"""Two SSH servers for the remote tests (and ``bench/remote.py``): "two hosts" are two servers.

``SshServers`` starts OpenSSH's ``sshd`` on 127.0.0.1 and on 127.0.0.2, each with its own
generated host key, its own config (no system config), key authentication only, for the user
running the tests (root may log in with a key).  The client side is the system's ``ssh`` with
the config this writes (``ssh_options``), whose aliases name every case the tests need:

* ``host1``, ``host2``: the two servers;
* ``badkey``: host1 with a user key the server does not know;
* ``badhostkey``: host1 with a known_hosts file that holds another key for it;
* ``closed``: a port on 127.0.0.1 where nothing listens.

Without ``sshd`` (and not root, so that it cannot be installed: CI installs it), the servers are
asyncssh's (a dev dependency), each in a subprocess of its own: ``python tests/sshd.py
--asyncssh ...``.  ``ANYFORK_TEST_SSHD=asyncssh`` forces that fallback.

What runs "on the remote host" runs on this machine, so the tests can look at it in ``/proc``:
``session_of(pid)`` are the server's processes for the connection that runs ``pid``, which
``cut`` kills and ``freeze``/``thaw`` stop and continue (a connection that goes silent).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from helpers import children, eventually

HERE = Path(__file__).resolve().parent
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)

_SSHD_CONFIG = """\
ListenAddress {addr}
Port {port}
HostKey {dir}/{name}_host_key
AuthorizedKeysFile {dir}/authorized_keys
PidFile {dir}/{name}.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
UseDNS no
AllowStreamLocalForwarding yes
StreamLocalBindUnlink yes
AllowAgentForwarding no
X11Forwarding no
MaxStartups 100
MaxSessions 100
LogLevel INFO
"""

_SSH_HOST = """\
Host {alias}
  HostName {addr}
  Port {port}
  User {user}
  IdentityFile {dir}/{identity}
  IdentitiesOnly yes
  UserKnownHostsFile {dir}/{known}
  StrictHostKeyChecking yes
  BatchMode yes
"""


def _free_port(addr: str) -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "anyfork-test", "-f", str(path)],
        check=True,
        timeout=30,
    )
    return path.with_suffix(".pub").read_text().strip()


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, depth first."""
    out: list[int] = []
    for child in sorted(children(pid, spares=True)):
        out.append(child)
        out += descendants(child)
    return out


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class Server:
    """One SSH server: OpenSSH's sshd, or the asyncssh fallback."""

    def __init__(self, name: str, addr: str, directory: Path, kind: str):
        self.name = name
        self.addr = addr
        self.dir = directory
        self.kind = kind
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / f"{name}.log"
        self.frozen: list[int] = []

    def start(self) -> None:
        for _ in range(10):  # a port taken between choosing and binding: choose again
            self.port = _free_port(self.addr)
            if self._try_start():
                return
        raise RuntimeError(f"could not start the {self.kind} server {self.name}: {self._said()}")

    def _said(self) -> str:
        try:
            return self.log.read_text()[-2000:]
        except OSError:
            return ""

    def _try_start(self) -> bool:
        if self.kind == "openssh":
            config = self.dir / f"{self.name}_sshd_config"
            config.write_text(
                _SSHD_CONFIG.format(addr=self.addr, port=self.port, dir=self.dir, name=self.name)
            )
            if os.geteuid() == 0:
                os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation
            assert SSHD is not None
            argv = [SSHD, "-D", "-f", str(config), "-E", str(self.log)]
            self.log.write_text("")
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
            ready = "Server listening on"
        else:
            argv = [sys.executable, str(Path(__file__)), "--asyncssh", self.addr, str(self.port)]
            argv += [str(self.dir / f"{self.name}_host_key"), str(self.dir / "authorized_keys")]
            with open(self.log, "wb") as log:
                self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=log)
            ready = "listening"
        proc = self.proc
        try:
            eventually(
                lambda: ready in self._said() or proc.poll() is not None,
                timeout=30,
                what=f"the {self.kind} server {self.name} to listen",
            )
        except AssertionError:
            self.stop()
            return False
        if ready in self._said():
            return True
        self.stop()
        return False

    def sessions(self) -> list[int]:
        """The server's per-connection processes (not what they run)."""
        assert self.proc is not None
        if self.kind == "openssh":
            return [p for p in descendants(self.proc.pid) if comm(p) == "sshd"]
        return [self.proc.pid]

    def processes(self) -> list[int]:
        """What runs under the server (our remote processes), its own processes excepted."""
        assert self.proc is not None
        own = {"sshd"} if self.kind == "openssh" else set()
        return [p for p in descendants(self.proc.pid) if comm(p) not in own]

    def session_of(self, pid: int) -> list[int]:
        """The server's processes for the connection that runs ``pid`` (its command)."""
        assert self.proc is not None
        if self.kind != "openssh":
            return [self.proc.pid]  # (one process serves every connection)
        found = []
        while (parent := _parent(pid)) not in (self.proc.pid, 0, 1):
            if comm(parent) == "sshd":
                found.append(parent)
            pid = parent
        return found

    def cut(self, pid: int) -> None:
        """Cut, from the server's side, the connection whose command is ``pid``."""
        if self.kind == "openssh":
            for session in self.session_of(pid):
                try:
                    os.kill(session, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        else:
            self._command(f"cut {pid}\n".encode())

    def freeze(self, pid: int) -> None:
        """Stop answering on the connection whose command is ``pid`` (as a network that goes
        silent; the asyncssh server stops answering on all of them)."""
        for session in self.session_of(pid):
            os.kill(session, signal.SIGSTOP)
            self.frozen.append(session)

    def thaw(self) -> None:
        """Continue what ``freeze`` stopped."""
        frozen, self.frozen = self.frozen, []
        for session in frozen:
            try:
                os.kill(session, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def _command(self, line: bytes) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(line)
        self.proc.stdin.flush()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc.stdin is not None:
            proc.stdin.close()


class SshServers:
    """The two servers and the ssh config that reaches them (see the module docstring)."""

    def __init__(self, kind: str | None = None):
        if kind is None:
            kind = os.environ.get("ANYFORK_TEST_SSHD") or ("openssh" if SSHD else "asyncssh")
        self.kind = kind
        self.dir = Path(tempfile.mkdtemp(prefix="anyfork-sshd-"))
        self.user = getpass.getuser()
        self.servers = {
            "host1": Server("host1", "127.0.0.1", self.dir, kind),
            "host2": Server("host2", "127.0.0.2", self.dir, kind),
        }
        self.config = self.dir / "ssh_config"

    @property
    def ssh_options(self) -> tuple[str, ...]:
        return ("-F", str(self.config))

    def start(self) -> SshServers:
        d = self.dir
        host_keys = {name: _keygen(d / f"{name}_host_key") for name in self.servers}
        user_key = _keygen(d / "user_key")
        _keygen(d / "stranger_key")
        _keygen(d / "impostor_host_key")
        (d / "authorized_keys").write_text(user_key + "\n")
        for server in self.servers.values():
            server.start()
        h1, h2 = self.servers["host1"], self.servers["host2"]
        known = [f"[{s.addr}]:{s.port} {host_keys[n]}" for n, s in self.servers.items()]
        (d / "known_hosts").write_text("\n".join(known) + "\n")
        impostor = (d / "impostor_host_key.pub").read_text().strip()
        (d / "known_hosts_bad").write_text(f"[{h1.addr}]:{h1.port} {impostor}\n")
        blocks = [
            ("host1", h1.addr, h1.port, "user_key", "known_hosts"),
            ("host2", h2.addr, h2.port, "user_key", "known_hosts"),
            ("badkey", h1.addr, h1.port, "stranger_key", "known_hosts"),
            ("badhostkey", h1.addr, h1.port, "user_key", "known_hosts_bad"),
            ("closed", "127.0.0.1", _free_port("127.0.0.1"), "user_key", "known_hosts"),
        ]
        self.config.write_text(
            "".join(
                _SSH_HOST.format(
                    alias=alias,
                    addr=addr,
                    port=port,
                    user=self.user,
                    dir=d,
                    identity=identity,
                    known=known_file,
                )
                for alias, addr, port, identity, known_file in blocks
            )
        )
        return self

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- the asyncssh fallback server (a process of its own) -------------------------------------


def _asyncssh_main(
    addr: str, port: int, host_key: str, authorized: str
) -> None:  # pragma: no cover
    """Serve like the sshd above: exec sessions through the user's shell, key authentication,
    connections to unix sockets (direct-streamlocal), keepalive answers.  Commands on stdin:
    ``cut`` aborts every connection."""
    import asyncio
    import pwd

    import asyncssh

    shell = pwd.getpwuid(os.getuid()).pw_shell or "/bin/sh"
    home = os.path.expanduser("~")

    async def main() -> None:
        conns: set[asyncssh.SSHServerConnection] = set()
        commands: dict[asyncssh.SSHServerConnection, set[int]] = {}

        class Handler(asyncssh.SSHServer):
            def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
                self.conn = conn
                conns.add(conn)

            def connection_lost(self, exc: Exception | None) -> None:
                conns.discard(self.conn)

            def unix_connection_requested(self, dest_path: str) -> bool:
                return True

        async def session(process: asyncssh.SSHServerProcess[bytes]) -> None:
            """Run the command through the user's shell, as sshd does, with its stdin, stdout
            and stderr pumped to and from the channel; its exit status last, once its output
            has all been sent (nothing may follow the channel's EOF)."""
            child = await asyncio.create_subprocess_exec(
                shell,
                "-c",
                process.command or "",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=home,
            )
            assert child.stdin is not None
            assert child.stdout is not None
            assert child.stderr is not None
            commands.setdefault(process.get_extra_info("connection"), set()).add(child.pid)
            stdin = child.stdin

            async def pump_in() -> None:
                try:
                    while data := await process.stdin.read(65536):
                        stdin.write(data)
                        await stdin.drain()
                except (OSError, asyncssh.Error):
                    pass  # the connection or the command has gone
                finally:
                    stdin.close()  # EOF for the command, as sshd gives it

            async def pump_out(source: asyncio.StreamReader, sink: Any) -> None:
                sending = True
                while data := await source.read(65536):
                    if sending:
                        try:
                            sink.write(data)
                            await sink.drain()
                        except (OSError, asyncssh.Error):
                            sending = False  # gone: keep reading, so the command never blocks

            feeding = asyncio.ensure_future(pump_in())
            await asyncio.gather(
                pump_out(child.stdout, process.stdout), pump_out(child.stderr, process.stderr)
            )
            code = await child.wait()
            feeding.cancel()
            try:
                process.exit(code)
            except (OSError, asyncssh.Error):
                pass

        await asyncssh.create_server(
            Handler,
            addr,
            port,
            server_host_keys=[host_key],
            authorized_client_keys=authorized,
            process_factory=session,
            encoding=None,
            allow_scp=False,
        )
        sys.stderr.write("listening\n")
        sys.stderr.flush()
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            words = line.split()
            if words[:1] == [b"cut"]:
                for conn in list(conns):
                    if int(words[1]) in commands.get(conn, ()):
                        conn.abort()

    asyncio.run(main())


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:2] == ["--asyncssh"]:
        _asyncssh_main(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
