"""Lifetimes you can observe (issue 9, point 6): ``wait()``, ``wait_blocking()``, ``poll()`` and
``returncode`` for every kind of process, forked ones included; ``kill()``/``terminate()``; and
the shutdown of a prefork server (close the template, signal the workers, wait for them).

Each kind of process (``new()``, a fork of a user template, of a nested template, ``new_exec()``)
ends in each way (normal exit, exit status n, killed), waited for on each face.  The early and
main templates fork the program itself: ``tests/scripts/tmpl_wait.py`` does the same there.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator

import pytest

import anyfork
from anyfork._child import _wire
from helpers import (
    FACES,
    alive,
    eventually,
    recv_all,
    recv_exactly,
    result,
    run_script,
    wait_on,
)

MakeProcess = Callable[[], anyfork.Process]


@pytest.fixture(params=["new", "user template", "nested template", "new_exec"])
def make(request: pytest.FixtureRequest) -> Iterator[MakeProcess]:
    """A maker of processes of one kind (the templates are the test's, closed after it)."""
    if request.param == "new":
        yield anyfork.new
    elif request.param == "new_exec":
        yield lambda: anyfork.new_exec(python=sys.executable)  # exec'd even if early exists
    elif request.param == "user template":
        with anyfork.new().require("childfuncs") as tmpl:
            yield tmpl.fork
    else:
        # (Held in a list emptied at the end: pytest keeps the fixture's value a while, and a
        # live ``inner`` would keep ``outer`` reading its exit report, with its fd open.)
        with anyfork.new().require("childfuncs") as outer, outer.fork() as inner:
            held = [inner]
            yield lambda: held[0].fork()
            held.clear()


#: How the process ends: the function it runs (and its argument), what ``wait`` returns.
ENDINGS = {
    "normal exit": ("childfuncs:echo_args", "x", 0),
    "exit status 3": ("childfuncs:exit_with", "3", 3),
    "killed": ("childfuncs:wait_for_eof", "x", -signal.SIGKILL),
}


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_wait_returns_the_exit_status_of_every_kind(
    make: MakeProcess, ending: str, face: str
) -> None:
    func, arg, expected = ENDINGS[ending]
    proc = make()
    with proc.send_arg(arg).run_blocking(func, timeout=10):
        # The handle is spent for commands after run, not for waiting.
        if expected == -signal.SIGKILL:
            assert proc.poll() is None
            assert proc.returncode is None
            proc.kill()
        assert wait_on(face, proc, "wait") == expected
    assert proc.returncode == expected
    assert proc.poll() == expected
    assert wait_on(face, proc, "wait") == expected  # again: known, at once


@pytest.mark.parametrize("face", FACES)
def test_a_process_that_never_ran(make: MakeProcess, face: str) -> None:
    """Closed before run, it carries out its commands and exits 0; a failed command ends it
    with status 1 (and run said why)."""
    closed = make().send_arg("x")
    closed.close()
    assert wait_on(face, closed, "wait") == 0
    failed = make().require("no_such_module_here")
    with pytest.raises(ModuleNotFoundError):
        failed.run_blocking("childfuncs:echo_args", timeout=10)
    assert wait_on(face, failed, "wait") == 1


@pytest.mark.parametrize("face", FACES)
def test_a_timeout_leaves_the_process_as_it_was(face: str) -> None:
    proc = anyfork.new()
    with proc.run_blocking("childfuncs:wait_for_eof", timeout=10) as sock:
        with pytest.raises(TimeoutError):
            wait_on(face, proc, "wait", timeout=0.05)
        assert alive(proc.pid)  # type: ignore[arg-type]
        sock.sendall(b"still there")  # and still running its function
    assert wait_on(face, proc, "wait") == 0


def test_a_cancelled_wait_leaves_the_process_as_it_was() -> None:
    async def main() -> int:
        proc = anyfork.new()
        sock = await proc.run("childfuncs:wait_for_eof", timeout=10)
        started = asyncio.Event()

        async def waiting() -> int:
            started.set()  # (no await between this and the wait's first one)
            return await proc.wait()

        waiter = asyncio.ensure_future(waiting())
        await started.wait()  # returns once the waiter is suspended inside wait()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert alive(proc.pid)  # type: ignore[arg-type]
        sock.close()
        return await proc.wait(timeout=10)

    assert asyncio.run(main()) == 0


@pytest.mark.parametrize("face", FACES)
def test_waiting_after_the_template_was_closed(face: str) -> None:
    """A closed template stops serving, but reaps the children it forked and reports their exits
    while they run; it exits after the last."""
    with anyfork.new() as tmpl:
        workers = [tmpl.fork() for _ in range(2)]
        socks = [w.run_blocking("childfuncs:wait_for_eof", timeout=10) for w in workers]
    with pytest.raises(anyfork.ClosedError):
        tmpl.fork()
    workers[0].kill()
    assert wait_on(face, workers[0], "wait") == -signal.SIGKILL
    assert alive(tmpl.pid)  # type: ignore[arg-type]  # it waits for its other child
    socks[1].close()
    assert wait_on(face, workers[1], "wait") == 0
    assert wait_on(face, tmpl, "wait") == 0
    socks[0].close()


@pytest.mark.parametrize("face", FACES)
def test_prefork_server_shutdown_recipe(face: str) -> None:
    """The recipe in ``Process.close``: close the template, signal the workers, wait for them
    (and for the template, which exits after its last worker)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0anyfork-test-prefork-" + face)
    listener.listen()
    address = listener.getsockname()
    tmpl = anyfork.new().send_fh(listener).require("childfuncs")
    listener.close()
    workers = [tmpl.fork() for _ in range(3)]
    socks = [w.run_blocking("childfuncs:serve_pids", timeout=10) for w in workers]
    for sock in socks:
        assert recv_exactly(sock, 5) == b"ready"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(address)
        assert int(recv_all(client)) in {w.pid for w in workers}

    tmpl.close()
    for worker in workers:
        worker.terminate()
    assert [wait_on(face, w, "wait") for w in workers] == [-signal.SIGTERM] * 3
    assert wait_on(face, tmpl, "wait") == 0
    for sock in socks:
        sock.close()


def test_status_lost_with_the_template_is_a_clear_error() -> None:
    tmpl = anyfork.new()
    child = tmpl.fork()
    sock = child.run_blocking("childfuncs:wait_for_eof", timeout=10)
    tmpl.kill()  # before it could report its child's exit
    assert tmpl.wait_blocking(timeout=10) == -signal.SIGKILL
    with pytest.raises(ChildProcessError, match=r"is lost: its template \(process pid \d+\)"):
        child.wait_blocking(timeout=10)
    pid = child.pid
    assert pid is not None
    sock.close()
    eventually(lambda: not alive(pid), what="the orphaned child to exit")


def test_an_adopted_process_cannot_be_waited_for() -> None:
    handed = anyfork.new().to_fh_blocking(timeout=10)
    adopted = anyfork.new_from_fh(handed)
    with pytest.raises(ChildProcessError, match="adopted with new_from_fh"):
        adopted.wait_blocking(timeout=10)
    adopted.close()


def test_kill_after_the_exit_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the exit is known the pid may be another process's: ``kill`` leaves it alone."""
    proc = anyfork.new()
    proc.run_blocking("childfuncs:wait_for_eof", timeout=10).close()
    assert proc.wait_blocking(timeout=10) == 0
    signalled: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: signalled.append((pid, sig)))
    proc.kill()
    proc.terminate()
    assert signalled == []


def test_pid_returns_what_is_known_without_reading() -> None:
    """``pid`` is a plain property: it does not read the reports that have arrived."""
    ours, theirs = socket.socketpair()
    with theirs:
        proc = anyfork.new_from_fh(ours)
        theirs.sendall(_wire.frame(_wire.STARTED, _wire.U32.pack(4242)))
        seen = [proc.pid]
        assert proc.wait_started_blocking(timeout=10) == 4242
        seen.append(proc.pid)
        proc.close()
    assert seen == [None, 4242]


@pytest.mark.parametrize("how", ["main", "early"])
def test_early_and_main_templates_and_their_children(how: str) -> None:
    out = result(run_script("tmpl_wait.py", how))
    assert out["children"] == {"normal exit": 0, "exit status 3": 3, "killed": -9}
    assert out["template"] == 0
    assert out["template_returncode"] == 0


def test_many_threads_waiting_on_children_of_one_template_all_return() -> None:
    """Threads waiting at once for children of one template (a pool's workers closing) wait on
    the same template socket: whichever reads the reports takes the others' too, so each wait
    must look again for its status (once, the others slept until their deadline: 5 s each)."""
    import threading

    tmpl = anyfork.new().eval("def until_eof(sock):\n    sock.recv(1)\n")
    children = [tmpl.fork() for _ in range(8)]
    socks = [child.run_blocking("until_eof", timeout=10) for child in children]
    statuses: dict[int, object] = {}

    def wait(i: int) -> None:
        try:
            statuses[i] = children[i].wait_blocking(timeout=8)
        except BaseException as exc:
            statuses[i] = exc

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(len(children))]
    for thread in threads:
        thread.start()
    for sock in socks:  # the children see EOF and exit together
        sock.close()
    for thread in threads:
        thread.join(30)
    tmpl.close()
    assert statuses == dict.fromkeys(range(len(children)), 0)
