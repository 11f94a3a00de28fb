"""Test helpers: bounded waiting for OS facts (never a bare sleep), process and fd inspection."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def eventually(predicate: Callable[[], T], timeout: float = 5.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns a truthy value, at most ``timeout`` seconds.

    Only for facts that only the OS knows (a pid has gone, a zombie was reaped); never as a way
    to wait for our own code, which has handshakes for that.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def is_spare(pid: int) -> bool:
    """A live spare: the next child a template has forked in advance (it waits, named
    ``af:spare``, for the next FORK).  A template keeps one on purpose; a zombie one is a bug."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return comm == "af:spare" and alive(pid)


def children(pid: int | None = None, *, spares: bool = False) -> set[int]:
    """The pids of ``pid``'s children (zombies included, live spares only if ``spares``)."""
    pid = os.getpid() if pid is None else pid
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.update(int(p) for p in f.read().split())
        except FileNotFoundError:
            pass
    if not spares:
        found = {p for p in found if not is_spare(p)}
    return found


def state(pid: int) -> str | None:
    """The one-letter process state ('Z' for a zombie), or None if the pid is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def alive(pid: int) -> bool:
    s = state(pid)
    return s is not None and s != "Z"


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def recv_exactly(sock: socket.socket, n: int, timeout: float = 10.0) -> bytes:
    """Read exactly ``n`` bytes from a socket with a deadline."""
    sock.settimeout(timeout)
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def recv_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Read until EOF with a deadline."""
    sock.settimeout(timeout)
    chunks: list[bytes] = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


#: The two faces of every wait a process offers: awaited on an event loop, or its blocking twin.
FACES = ("asyncio", "blocking")


def wait_on(face: str, proc: object, what: str, *args: object, timeout: float = 10.0) -> Any:
    """``proc.<what>(*args, timeout=timeout)`` on ``face``: awaited in ``asyncio.run``, or the
    ``<what>_blocking`` twin.  A socket comes back blocking either way."""
    if face == "blocking":
        result = getattr(proc, f"{what}_blocking")(*args, timeout=timeout)
    else:

        async def main() -> Any:
            return await getattr(proc, what)(*args, timeout=timeout)

        result = asyncio.run(main())
    if isinstance(result, socket.socket):
        result.setblocking(True)
    return result
