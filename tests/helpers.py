"""Test helpers: bounded waiting for OS facts (never a bare sleep), process and fd inspection,
and the pools' deadline and gate."""

from __future__ import annotations

import ast
import asyncio
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyfork

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
    except (FileNotFoundError, ProcessLookupError):  # gone, or going (ESRCH) meanwhile
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.update(int(p) for p in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    if not spares:
        found = {p for p in found if not is_spare(p)}
    return found


def ahead(tmpl: anyfork.Process) -> set[int]:
    """The pids of the children ``tmpl`` keeps forked ahead of need (waited for until they
    have started: a template's own count of children includes them)."""
    return {child.wait_started_blocking(timeout=10) for child in tmpl._ready}


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


# -- pools: a deadline around asyncio.run, and the gate pipe the pool tests' workers wait on ---

#: The most a test's asyncio.run may take (the backstop; each wait has its own deadline too).
DEADLINE = 30.0
#: The most one wait for a pool's state or a worker's event may take.
WAIT = 15.0


def run(coro: Awaitable[T], deadline: float = DEADLINE) -> T:
    """``asyncio.run(coro)`` with a deadline: a test fails instead of hanging."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, deadline)

    return asyncio.run(bounded())


class Gate:
    """A pipe whose read end every worker inherits (through :meth:`template`): the gated calls
    (``pool_funcs.gated``) report that they started, then wait for one byte each, so the test
    decides exactly when each may finish (``release(n)``).

    ``started`` collects the ``(tag, pid)`` of the ``("started", tag, pid)`` events, whichever
    thread the pool delivers them in; :meth:`wait_started` waits for them blocking,
    :meth:`wait_started_async` from the event loop."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.started: list[tuple[Any, int]] = []
        self._cond = threading.Condition()
        self._wakers: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self.templates: list[Any] = []

    def template(self) -> Any:  # anyfork.Process (helpers import nothing of anyfork)
        """A template holding the gate (closed with the gate)."""
        import anyfork

        tmpl = anyfork.new().require("pool_funcs").send_fh(self.r)
        self.templates.append(tmpl)
        return tmpl

    def options(self) -> dict[str, Any]:
        """The pool options of a gated pool: the worker's init keeps the gate, events come here."""
        return {"init": "pool_funcs:init_gate", "on_event": self.on_event}

    def on_event(self, kind: str, tag: Any, pid: int) -> None:
        assert kind == "started"
        with self._cond:
            self.started.append((tag, pid))
            self._cond.notify_all()
            wakers = list(self._wakers)
        for loop, event in wakers:
            loop.call_soon_threadsafe(event.set)

    def wait_started(self, n: int) -> list[tuple[Any, int]]:
        """Block until ``n`` gated calls have started; their ``(tag, pid)``."""
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.started) >= n, WAIT), (
                f"{n} calls did not start within {WAIT} s: {self.started}"
            )
            return list(self.started)

    async def wait_started_async(self, n: int) -> list[tuple[Any, int]]:
        """:meth:`wait_started` for the event loop."""
        event = asyncio.Event()
        waker = (asyncio.get_running_loop(), event)
        with self._cond:
            self._wakers.append(waker)
        try:
            while True:
                with self._cond:
                    if len(self.started) >= n:
                        return list(self.started)
                    event.clear()
                await asyncio.wait_for(event.wait(), WAIT)
        finally:
            with self._cond:
                self._wakers.remove(waker)

    def release(self, n: int = 1) -> None:
        os.write(self.w, b"x" * n)

    def close(self) -> None:
        for tmpl in self.templates:
            tmpl.close()
        os.close(self.r)
        os.close(self.w)


# -- whole programs (tests/scripts/) ------------------------------------------------------------

SCRIPTS = Path(__file__).resolve().with_name("scripts")
#: anyfork has no dependencies, so any interpreter runs the scripts with just this on its path.
SRC = str(Path(anyfork.__file__).resolve().parent.parent)


def modules_after(statement: str) -> set[str]:
    """``sys.modules`` of a fresh interpreter (``-S``: no site) once it has run ``statement``."""
    code = f"import sys; sys.path[:0] = [{SRC!r}]; {statement}; print(sorted(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    modules: list[str] = ast.literal_eval(result.stdout.strip())
    return set(modules)


def run_script(
    name: str,
    *args: str,
    python: str = sys.executable,
    flags: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    returncode: int = 0,
    module: bool = False,
    code: str | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``tests/scripts/<name>`` (``module``: as ``python -m name``, from that directory;
    ``code``: ``python -c code``; ``stdin``: ``python -`` reading it), with a deadline; check
    its exit code and that it wrote nothing to stderr (no traceback from the program, its
    templates or their children)."""
    environ = {**os.environ, **(env or {})}
    environ["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, environ.get("PYTHONPATH", "")) if p)
    environ.pop("ANYFORK_PYTHON", None)
    environ.pop("PYTHONUNBUFFERED", None)  # the scripts' stdout must be block-buffered
    if code is not None:
        target = ["-c", code]
    elif stdin is not None:
        target = ["-"]
    elif module:
        target = ["-m", name]
    else:
        target = [str(SCRIPTS / name)]
    proc = subprocess.run(
        [python, *flags, *target, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=environ,
        check=False,
        cwd=SCRIPTS,
        input=stdin,
    )
    assert proc.returncode == returncode, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.stderr == ""
    return proc


def result(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The script's JSON line (the last line of its stdout)."""
    value: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return value


# -- the interpreters this machine has ----------------------------------------------------------

#: Where this machine's interpreters may be (pyenv's, the system's).
PYENV = Path(os.path.expanduser("~/.pyenv/versions"))


@functools.cache
def interpreters() -> dict[tuple[int, int], str]:
    """Every Python this machine has, by version (the newest of each minor version)."""
    candidates = sorted(PYENV.glob("*/bin/python3")) + sorted(PYENV.glob("*/bin/python"))
    for minor in range(6, 20):
        found = shutil.which(f"python3.{minor}")
        if found:
            candidates.append(Path(found))
    found = shutil.which("python3")
    if found:
        candidates.append(Path(found))
    by_version: dict[tuple[int, int], str] = {}
    for path in candidates:
        try:
            out = subprocess.run(
                [str(path), "-c", "import sys; print('%d %d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.split()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if len(out) == 2:
            by_version.setdefault((int(out[0]), int(out[1])), str(path))
    return by_version
