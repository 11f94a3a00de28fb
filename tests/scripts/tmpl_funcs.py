"""Worker functions for the template scripts, importable by name in every child (the scripts'
directory is ``sys.path[0]``, and children inherit ``sys.path``).  Stdlib only."""

from __future__ import annotations

import json
import os
import socket
import sys


def facts() -> dict[str, object]:
    """What tells a forked child from an exec'd one: its parent, its argv and its binary."""
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "argv": sys.argv,
        "exe": os.readlink("/proc/self/exe"),
        "asyncio": "asyncio" in sys.modules,
    }


def report(sock: socket.socket, *args: object) -> None:
    """Send :func:`facts` as JSON and return (the child then exits)."""
    sock.sendall(json.dumps({**facts(), "args": [str(a) for a in args]}).encode())


def wait_for_eof(sock: socket.socket, *args: object) -> None:
    """Block until the creator closes its end (or dies)."""
    while sock.recv(4096):
        pass


def read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Read until EOF, with a deadline, and close the socket."""
    sock.settimeout(timeout)
    chunks: list[bytes] = []
    with sock:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def read_json(sock: socket.socket) -> dict[str, object]:
    value: dict[str, object] = json.loads(read_all(sock))
    return value


def emit(value: object) -> None:
    """The scripts' result: one JSON line on stdout (the tests parse the last line)."""
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def ppid_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])
