"""Bursts of children through one template (issue 8, point 2).

A template reports every child's exit (EXITED) to its creator.  It must never block on a creator
that has not read them yet: a template blocked in a write stops reading FORK frames, and every
child still queued behind them then waits for ever.  And the parent drains a template's reports
on its own: whenever it touches the template, and while it waits for one of the template's
children if many of them may have exits to report.  A test for each half stops the template
while its children exit (so that it reaps them all at once, more than its socket holds).

``ANYFORK_BURST`` sets the burst size (default 600; the issue's bar is 5,000, checked with
``ANYFORK_BURST=5000``); any size above a few hundred overflowed the template's socket before.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import NamedTuple

import pytest

import anyfork
from helpers import FACES, ahead, alive, children, eventually, recv_all, state

BURST = int(os.environ.get("ANYFORK_BURST", "600"))
#: For the whole burst; a hang shows as a TimeoutError here, before pytest-timeout's backstop.
DEADLINE = 50.0
THREADS = 8
#: What every child runs: a function every template has loaded (no import in the child), which
#: closes the socket at once: the child exits as soon as it has started.
CLOSE = "socket:socket.close"

MakeChild = Callable[[], anyfork.Process]


@pytest.fixture(params=["default", "user"])
def make_child(request: pytest.FixtureRequest) -> Iterator[MakeChild]:
    """Children of the default template (``anyfork.new``) or of a template of the test's own."""
    if request.param == "default":
        yield anyfork.new
        return
    with anyfork.new() as tmpl:
        yield tmpl.fork


async def _read_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    chunks = []
    while chunk := await loop.sock_recv(sock, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


def test_burst_on_an_event_loop(make_child: MakeChild) -> None:
    async def one() -> bytes:
        with await make_child().run(CLOSE, timeout=DEADLINE) as sock:
            return await _read_all(sock)

    async def main() -> list[bytes]:
        return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(BURST))), DEADLINE)

    assert asyncio.run(main()) == [b""] * BURST


@pytest.mark.timeout(180)
def test_the_issues_burst_of_5000_through_one_template() -> None:
    """The issue's bar, always run: 5,000 ``run``s through one user template, all gathered at
    once on one event loop (no template may block on exit reports nobody has read yet)."""
    n = 5000

    async def main() -> list[bytes]:
        with anyfork.new() as tmpl:

            async def one() -> bytes:
                with await tmpl.fork().run(CLOSE, timeout=150) as sock:
                    return await _read_all(sock)

            return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), 150)

    assert asyncio.run(main()) == [b""] * n


def test_burst_from_threads(make_child: MakeChild) -> None:
    """Each thread forks its share at once, then runs them one by one: the blocking face."""
    done: list[bytes] = []
    errors: list[BaseException] = []

    def share() -> None:
        try:
            for proc in [make_child() for _ in range(BURST // THREADS)]:
                with proc.run_blocking(CLOSE, timeout=DEADLINE) as sock:
                    done.append(recv_all(sock))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=share) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert not errors
    assert done == [b""] * (BURST // THREADS * THREADS)


def test_a_template_keeps_reaping_and_forking_while_nobody_reads_its_reports() -> None:
    """The template side alone: its children exit while it is stopped, FORK frames wait in its
    input, and then the parent does nothing at all (no wait, nothing that reads the template).
    The template reaps every child and forks what waits: it never blocks on its creator."""
    exited, queued = 400, 10
    with anyfork.new() as tmpl:
        tmpl_pid = tmpl.wait_started_blocking(timeout=10)
        first = [tmpl.fork() for _ in range(exited)]
        for proc in first:
            proc.wait_started_blocking(timeout=10)
        os.kill(tmpl_pid, signal.SIGSTOP)
        try:
            eventually(lambda: state(tmpl_pid) == "T", what="the template to stop")
            # A command each, so that each is named a child, not a spare, once forked.
            second = [tmpl.fork().send_arg(str(i)) for i in range(queued)]
            for proc in first:
                proc.run_blocking(CLOSE, timeout=DEADLINE).close()
        finally:
            os.kill(tmpl_pid, signal.SIGCONT)

        def reaped_and_forked() -> bool:
            kids = children(tmpl_pid) - ahead(tmpl)
            return len(kids) == queued and all(alive(kid) for kid in kids)

        eventually(reaped_and_forked, timeout=DEADLINE, what="the template to reap and fork")
        outputs = []
        for proc in second:
            with proc.run_blocking("childfuncs:echo_args", timeout=DEADLINE) as sock:
                outputs.append(recv_all(sock))
        assert outputs == [repr(str(i)).encode() for i in range(queued)]


@pytest.mark.parametrize("face", FACES)
def test_a_template_never_blocks_on_exit_reports_nobody_has_read(face: str) -> None:
    """Deterministically what a burst did by chance: the template's children exit while it is
    stopped (so that it reaps them all at once, more exits than its socket holds), with FORK
    frames waiting behind in its input.  It must report them all and fork what waits; and a
    wait for one of its children, spanning all that, drains the reports."""
    exited, queued = 400, 10
    gate_r, gate_w = os.pipe()
    with anyfork.new() as tmpl:
        tmpl_pid = tmpl.wait_started_blocking(timeout=10)
        first = [tmpl.fork() for _ in range(exited)]
        pids = {proc.wait_started_blocking(timeout=10) for proc in first}
        witness = (
            tmpl.fork()
            .send_fh(gate_r)
            .eval("import anyfork.worker\nanyfork.worker.take_args()[0].read(1)")
        )
        os.close(gate_r)
        witness.wait_started_blocking(timeout=10)
        os.kill(tmpl_pid, signal.SIGSTOP)
        try:
            eventually(lambda: state(tmpl_pid) == "T", what="the template to stop")
            scene = Scene(tmpl_pid, first, [tmpl.fork().send_arg(str(i)) for i in range(queued)])
            if face == "asyncio":
                outputs = asyncio.run(_stopped_and_resumed(scene, witness, gate_w))
            else:
                outputs = _stopped_and_resumed_blocking(scene, witness, gate_w)
        finally:
            os.kill(tmpl_pid, signal.SIGCONT)
            os.close(gate_w)
        assert outputs == [repr(str(i)).encode() for i in range(queued)]
        # The witness's wait drained the template's reports: every exit is known.
        assert pids <= set(tmpl._exits)


class Scene(NamedTuple):
    """A stopped template, the children that exit while it is stopped, those queued behind."""

    tmpl_pid: int
    first: list[anyfork.Process]
    second: list[anyfork.Process]


async def _stopped_and_resumed(scene: Scene, witness: anyfork.Process, gate_w: int) -> list[bytes]:
    async def run(proc: anyfork.Process, func: str = "childfuncs:echo_args") -> bytes:
        with await proc.run(func, timeout=DEADLINE) as sock:
            return await _read_all(sock)

    watching = asyncio.ensure_future(witness.run("childfuncs:echo_args", timeout=DEADLINE))
    await asyncio.wait_for(asyncio.gather(*(run(p, CLOSE) for p in scene.first)), DEADLINE)
    # It reaps them all at once: more exits than its socket holds.
    os.kill(scene.tmpl_pid, signal.SIGCONT)
    outputs = await asyncio.wait_for(
        asyncio.gather(*(run(proc) for proc in scene.second)), DEADLINE
    )
    os.write(gate_w, b"x")
    (await asyncio.wait_for(watching, DEADLINE)).close()
    return outputs


def _stopped_and_resumed_blocking(
    scene: Scene, witness: anyfork.Process, gate_w: int
) -> list[bytes]:
    def run(proc: anyfork.Process, func: str = "childfuncs:echo_args") -> bytes:
        with proc.run_blocking(func, timeout=DEADLINE) as sock:
            return recv_all(sock)

    watched: list[bytes] = []
    watching = threading.Thread(target=lambda: watched.append(run(witness)))
    watching.start()
    try:
        for proc in scene.first:
            run(proc, CLOSE)
        # It reaps them all at once: more exits than its socket holds.
        os.kill(scene.tmpl_pid, signal.SIGCONT)
        outputs = [run(proc) for proc in scene.second]
    finally:
        os.write(gate_w, b"x")
        watching.join(DEADLINE)
    assert watched == [b""]
    return outputs
