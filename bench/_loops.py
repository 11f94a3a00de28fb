"""The measured loops: one process per iteration, created, read to its first byte, read to EOF
and (where it is ours) reaped, strictly one after the other, as in the AnyEvent::Fork docs'
benchmark.  Each ``*_once`` returns its start-to-first-byte latency in seconds.

Imported by run.py in the bench parent and in the ``--big-parent`` subprocess, and (as part of
``__mp_main__``) by multiprocessing's spawn and forkserver children, so importing it must stay
cheap: nothing heavy at module level.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyfork
from bench import _children

HELLO = "bench._children:hello"
#: Generous: a single process creation takes milliseconds; this only stops a hung bench.
TIMEOUT = 10.0


@dataclass
class Sample:
    """One timed run of a loop."""

    count: int
    elapsed: float
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.count / self.elapsed if self.elapsed > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "elapsed": self.elapsed, "latencies": self.latencies}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sample:
        return cls(int(data["count"]), float(data["elapsed"]), list(data["latencies"]))


def timed(once: Callable[[], float | None], budget: float, min_count: int = 3) -> Sample:
    """Call ``once`` until ``budget`` seconds have passed (and at least ``min_count`` times).

    The rate counts whole iterations over the wall time they took, so it includes waiting for
    each process to exit: what "new processes per second" means for a sequential creator."""
    once()  # warm-up, untimed: first-use costs (a template's exec, a forkserver's start)
    latencies: list[float] = []
    count = 0
    start = time.perf_counter()
    while True:
        lat = once()
        count += 1
        if lat is not None:
            latencies.append(lat)
        elapsed = time.perf_counter() - start
        if elapsed >= budget and count >= min_count:
            return Sample(count, elapsed, latencies)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# -- anyfork ---------------------------------------------------------------------------------


def _drain_blocking(sock: socket.socket, t0: float) -> float:
    """Read the first byte (timestamped), then to EOF: the child has exited."""
    try:
        first = sock.recv(1)
        lat = time.perf_counter() - t0
        if first != b"x":
            raise RuntimeError(f"expected b'x' from the child, got {first!r}")
        while sock.recv(4096):
            pass
    finally:
        sock.close()
    return lat


def anyfork_new_once() -> float:
    t0 = time.perf_counter()
    sock = anyfork.new().run_blocking(HELLO, timeout=TIMEOUT)
    return _drain_blocking(sock, t0)


#: A function the default template has loaded already (it preloads ``socket``): the child
#: imports nothing, like Perl's ``->run("CORE::exit")``.  It closes the socket, so the parent
#: reads EOF and the latency is start-to-EOF, as in Perl's row.
PRELOADED = "socket:socket.close"

#: ``->eval(sub hello)->run(hello)`` in Python: the child compiles its function from a string.
HELLO_CODE = "def hello(sock):\n    sock.sendall(b'x')\n"


def anyfork_new_preloaded_once() -> float:
    t0 = time.perf_counter()
    sock = anyfork.new().run_blocking(PRELOADED, timeout=TIMEOUT)
    try:
        while sock.recv(4096):
            pass
        return time.perf_counter() - t0
    finally:
        sock.close()


def anyfork_new_eval_once() -> float:
    t0 = time.perf_counter()
    sock = anyfork.new().eval(HELLO_CODE).run_blocking("hello", timeout=TIMEOUT)
    return _drain_blocking(sock, t0)


def anyfork_exec_once() -> float:
    t0 = time.perf_counter()
    sock = anyfork.new_exec().run_blocking(HELLO, timeout=TIMEOUT)
    return _drain_blocking(sock, t0)


def anyfork_fork_once(tmpl: anyfork.Process) -> Callable[[], float]:
    def once() -> float:
        t0 = time.perf_counter()
        sock = tmpl.fork().run_blocking(HELLO, timeout=TIMEOUT)
        return _drain_blocking(sock, t0)

    return once


def anyfork_new_async(budget: float, min_count: int = 3) -> Sample:
    """``await anyfork.new().run(...)`` in a fresh event loop, reading through the loop too."""

    async def once(loop: asyncio.AbstractEventLoop) -> float:
        t0 = time.perf_counter()
        sock = await anyfork.new().run(HELLO, timeout=TIMEOUT)
        try:
            first = await loop.sock_recv(sock, 1)
            lat = time.perf_counter() - t0
            if first != b"x":
                raise RuntimeError(f"expected b'x' from the child, got {first!r}")
            while await loop.sock_recv(sock, 4096):
                pass
        finally:
            sock.close()
        return lat

    async def main() -> Sample:
        loop = asyncio.get_running_loop()
        await once(loop)
        latencies: list[float] = []
        start = time.perf_counter()
        while True:
            latencies.append(await once(loop))
            elapsed = time.perf_counter() - start
            if elapsed >= budget and len(latencies) >= min_count:
                return Sample(len(latencies), elapsed, latencies)

    return asyncio.run(main())


def spaced(once: Callable[[], float], budget: float, pause: float, min_count: int = 3) -> Sample:
    """``once`` after a pause each time (``pause`` seconds, not timed): spaced single starts,
    nothing of one overlapping the next (a template has done all it does between starts, its
    children forked ahead included).  Latencies only: the rate counts the pauses."""
    once()  # warm-up, untimed
    latencies: list[float] = []
    start = time.perf_counter()
    while True:
        time.sleep(pause)
        latencies.append(once())
        elapsed = time.perf_counter() - start
        if elapsed >= budget and len(latencies) >= min_count:
            return Sample(len(latencies), elapsed, latencies)


# -- floors and peers ------------------------------------------------------------------------


#: The floor rows' template: a ``python -S`` holding what anyfork's default template holds, that
#: forks a child for each socket it is sent (SCM_RIGHTS), which waits for one byte on it,
#: answers one (``acks``: with a yield, as anyfork's RUNNING) or not, closes it and exits.  It
#: writes each child's pid back once the child is forked.
_AHEAD_TEMPLATE = """
import os, signal, socket, struct, sys
sys.path[:0] = sys.argv[3:]
import anyfork._child._serve, fcntl, select  # what anyfork's default template holds
import gc; gc.freeze()
acks = sys.argv[1] == "1"
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
ctl = socket.socket(fileno=int(sys.argv[2]))
while True:
    msg, anc, _, _ = ctl.recvmsg(1, socket.CMSG_SPACE(4))
    if not msg:
        os._exit(0)
    fd = struct.unpack("i", anc[0][2][:4])[0]
    pid = os.fork()
    if pid == 0:
        ctl.close()
        sock = socket.socket(fileno=fd)
        sock.recv(1)
        if acks:
            sock.send(b"R")
            os.sched_yield()
        sock.close()
        os._exit(0)
    os.close(fd)
    try:
        ctl.send(struct.pack("i", pid))
    except OSError:  # the bench has closed us
        os._exit(0)
"""


class ForkedAhead:
    """The floor of a start with the child already forked and connected: a plain Python child,
    forked by a template-sized ``python -S`` (as anyfork's are by its default template) and
    blocked in ``recv`` on its socketpair, is sent one byte (the "run"); it closes the socket
    (``acks=0``: the parent's latency is to EOF, one wake-up each way), or first answers with
    one byte and yields, then closes (``acks=1``: the parent reads the answer, then EOF, as
    anyfork's ``run`` reads RUNNING).  The next child is forked after each start, untimed: with
    ``spaced`` it waits in ``recv`` by the next start.  No anyfork code runs: the OS's and
    CPython's share of a start."""

    def __init__(self, acks: int) -> None:
        self.ctl, theirs = socket.socketpair()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-S",
                "-c",
                _AHEAD_TEMPLATE,
                str(acks),
                str(theirs.fileno()),
                *sys.path,
            ],
            pass_fds=[theirs.fileno()],
        )
        theirs.close()
        self.sock: socket.socket | None = None

    def _fork_next(self) -> None:
        ours, theirs = socket.socketpair()
        fd = struct.pack("i", theirs.fileno())
        self.ctl.sendmsg([b"f"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd)])
        theirs.close()
        if len(self.ctl.recv(4)) != 4:
            raise RuntimeError("the floor template has gone")
        self.sock = ours

    def once(self) -> float:
        if self.sock is None:
            self._fork_next()
        sock = self.sock
        assert sock is not None
        t0 = time.perf_counter()
        sock.send(b"r")
        while sock.recv(4096):
            pass
        lat = time.perf_counter() - t0
        sock.close()
        self._fork_next()
        return lat

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()  # its child sees EOF and exits
            self.sock = None
        self.ctl.close()  # the template sees EOF and exits
        self.proc.wait(TIMEOUT)


def os_fork_once() -> float:
    """Raw fork from this process: the cost grows with our size (page tables, CoW setup)."""
    t0 = time.perf_counter()
    parent, child = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the child: one byte, and out without any interpreter teardown
        try:
            parent.close()
            child.sendall(b"x")
        finally:
            os._exit(0)
    child.close()
    lat = _drain_blocking(parent, t0)
    os.waitpid(pid, 0)
    return lat


def mp_once(ctx: Any) -> Callable[[], float]:
    """``multiprocessing`` Process start + first byte through a Pipe + join."""

    def once() -> float:
        t0 = time.perf_counter()
        reader, writer = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_children.mp_hello, args=(writer,))
        proc.start()
        writer.close()
        try:
            first = reader.recv_bytes()
            lat = time.perf_counter() - t0
            if first != b"x":
                raise RuntimeError(f"expected b'x' from the child, got {first!r}")
        finally:
            reader.close()
        proc.join(TIMEOUT)
        if proc.exitcode != 0:
            raise RuntimeError(f"multiprocessing child exit code {proc.exitcode}")
        proc.close()
        return lat

    return once


def bare_python_once() -> None:
    """``python -S -c pass``: what any exec'd interpreter pays at least (no first byte)."""
    subprocess.run([sys.executable, "-S", "-c", "pass"], check=True, timeout=TIMEOUT)


def perl_run(script: str, mode: str, budget: float, pause: float = 0.0) -> Sample:
    """One run of bench/perl_fork.pl; its own warm-up happens before its timer starts."""
    out = subprocess.run(
        ["perl", script, mode, str(budget), str(pause)],
        capture_output=True,
        text=True,
        check=True,
        timeout=budget + 60,
    ).stdout
    fields = dict(item.split("=", 1) for item in out.split())
    count = int(fields["count"])
    # The script reports only the median latency; keep it as a single pooled value per run.
    return Sample(count, float(fields["elapsed"]), [float(fields["lat_med_us"]) / 1e6])


#: A fork loop run inside a fresh ``python -S``: CPython's own floor for a process of that size,
#: with no anyfork and no IPC beyond the one byte (the child writes it and ``os._exit``s).
_MIN_FORK = """
import os, sys, time, _socket
mode = sys.argv[2]
if mode != "empty":
    sys.path[:0] = sys.argv[3:]
    import anyfork._child._serve, socket, fcntl, select  # what anyfork's default template holds
    import gc; gc.freeze()
overlap = mode == "overlap"
budget = float(sys.argv[1])
count, start = 0, time.perf_counter()
while time.perf_counter() - start < budget:
    a, b = _socket.socketpair()
    pid = os.fork()
    if pid == 0:
        b.send(b"x")
        os._exit(0)
    b.close()
    a.recv(1)
    if overlap:  # as a template does: reap whoever has exited, never wait for this one
        a.close()
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
    else:
        a.recv(1)
        a.close()
        os.waitpid(pid, 0)
    count += 1
print(count, time.perf_counter() - start)
"""


def min_fork_run(budget: float, mode: str) -> Sample:
    """``os.fork`` + ``_exit`` in a loop, inside a fresh ``python -S``: ``empty``, or holding
    what anyfork's default template holds (``template``), or that and the child's exit left to
    run alongside the next fork (``overlap``, as a template reaps): the fork rate CPython itself
    allows at that size, with no protocol at all."""
    argv = [sys.executable, "-S", "-c", _MIN_FORK, str(budget), mode]
    if mode != "empty":
        argv += sys.path
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=budget + 60)
    count, elapsed = out.stdout.split()
    return Sample(int(count), float(elapsed))
