"""Bad input and dead processes: a clear error in the parent, at once or at run, never a hang."""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest

import anyfork
from anyfork._child import _wire
from anyfork._core import _reaper, _templates
from helpers import FACES, ahead, alive, children, eventually, open_fds, recv_all, state, wait_on


def wait_gone(pid: int) -> None:
    eventually(lambda: not alive(pid), what=f"pid {pid} to exit")


# -- errors that surface at once, in the call that got the bad input ----------------------------


def test_send_arg_rejects_other_types_at_once() -> None:
    proc = anyfork.new()
    with pytest.raises(TypeError, match="only str and bytes"):
        proc.send_arg("ok", 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="only str and bytes"):
        proc.eval("pass", None)  # type: ignore[arg-type]
    # nothing was queued by the failed calls: the process still works
    with proc.send_arg("fine").run_blocking("childfuncs:echo_args", timeout=10) as s:
        assert recv_all(s) == b"'fine'"


def test_send_fh_rejects_closed_and_bogus_fds_at_once() -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    proc = anyfork.new()
    with pytest.raises(ValueError, match="not an open file descriptor"):
        proc.send_fh(w)
    with pytest.raises(ValueError, match="no open file descriptor"):
        proc.send_fh(-1)
    with pytest.raises(AttributeError):
        proc.send_fh("not a file")  # type: ignore[arg-type]
    proc.close()


def test_send_fh_at_the_fd_limit_says_what_happened() -> None:
    """Out of fds, ``send_fh`` cannot duplicate one: an ``OSError`` with errno EMFILE, not a
    claim that the (open) fd is not open.  Nothing is queued: the process works after."""
    proc = anyfork.new()
    r, w = os.pipe()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(open_fds()) + 1, hard))
    try:
        while len(fillers) < 100_000:  # take every free fd number below the limit
            try:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        with pytest.raises(OSError, match=r"^\[Errno 24\] Too many open files \(send_fh") as info:
            proc.send_fh(w)
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert type(info.value) is OSError
    assert info.value.errno == errno.EMFILE
    assert f"send_fh could not duplicate fd {w}" in str(info.value)
    try:
        proc.send_fh(w).eval("import anyfork.worker\nanyfork.worker.take_args()[0].write(b'ok')")
        with proc.run_blocking("childfuncs:echo_args", timeout=10) as sock:
            assert recv_all(sock) == b""
        assert os.read(r, 10) == b"ok"
    finally:
        os.close(r)
        os.close(w)


def test_a_command_over_the_maximum_frame_size_is_refused_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The parent never sends what the child would refuse (``_wire.MAX_COMMAND``, 1 GiB; made
    small here): a clear error at the call, nothing queued, the process unharmed."""
    monkeypatch.setattr(_wire, "MAX_COMMAND", 1000)
    proc = anyfork.new()
    with pytest.raises(ValueError, match="exceeds the maximum of 1000 bytes"):
        proc.send_arg("x" * 1000)
    with proc.send_arg("fine").run_blocking("childfuncs:echo_args", timeout=10) as sock:
        assert recv_all(sock) == b"'fine'"


def test_eval_syntax_error_is_raised_in_the_caller() -> None:
    proc = anyfork.new()
    with pytest.raises(SyntaxError):
        proc.eval("def broken(:")
    proc.close()


def test_run_refuses_functions_that_cannot_be_named() -> None:
    def local(sock: object) -> None:
        pass

    proc = anyfork.new()
    with pytest.raises(TypeError, match="module level"):
        proc.run_blocking(local, timeout=10)
    with pytest.raises(TypeError, match="module level"):
        proc.run_blocking(lambda sock: None, timeout=10)
    with pytest.raises(ValueError, match="bad function reference"):
        proc.run_blocking("mod:", timeout=10)
    proc.close()


@pytest.mark.parametrize("face", FACES)
def test_use_after_run_or_close_is_a_clear_error(face: str) -> None:
    proc = anyfork.new()
    wait_on(face, proc, "run", "childfuncs:echo_args").close()
    for use in (
        lambda: proc.send_arg("x"),
        lambda: proc.require("os"),
        lambda: proc.eval("pass"),
        lambda: proc.send_fh(0),
        proc.fork,
        lambda: wait_on(face, proc, "run", "childfuncs:echo_args"),
        lambda: wait_on(face, proc, "to_fh"),
    ):
        with pytest.raises(anyfork.ClosedError, match="already run"):
            use()
    closed = anyfork.new()
    closed.close()
    with pytest.raises(anyfork.ClosedError, match="closed"):
        closed.send_arg("x")


# -- errors the child reports, raised at run as their own type -----------------------------------


@pytest.mark.parametrize("face", FACES)
def test_unimportable_module_raises_module_not_found_at_run(face: str) -> None:
    proc = anyfork.new().require("os", "no_such_module_here")
    with pytest.raises(ModuleNotFoundError, match="no_such_module_here") as info:
        wait_on(face, proc, "run", "childfuncs:echo_args")
    assert isinstance(info.value.__cause__, anyfork.RemoteTraceback)
    assert "no_such_module_here" in str(info.value.__cause__)
    assert isinstance(info.value, anyfork.AnyforkError)
    assert any("in require of process pid" in note for note in info.value.__notes__)


@pytest.mark.parametrize("face", FACES)
def test_exception_in_eval_raises_its_type_at_run(face: str) -> None:
    proc = anyfork.new().eval("x = 1").eval("raise KeyError('nope')")
    with pytest.raises(KeyError):
        wait_on(face, proc, "run", "childfuncs:echo_args")


@pytest.mark.parametrize("face", FACES)
def test_non_builtin_exception_becomes_remote_error(face: str) -> None:
    code = "class Custom(Exception):\n    pass\nraise Custom('custom failure')"
    with pytest.raises(anyfork.RemoteError, match="Custom: custom failure") as info:
        wait_on(face, anyfork.new().eval(code), "run", "childfuncs:echo_args")
    assert info.value.type_name == "__main__.Custom"
    assert "custom failure" in info.value.remote_traceback


@pytest.mark.parametrize("face", FACES)
def test_missing_function_and_module_at_run(face: str) -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        wait_on(face, anyfork.new(), "run", "childfuncs:nope")
    with pytest.raises(ModuleNotFoundError):
        wait_on(face, anyfork.new(), "run", "no_such_mod:f")
    with pytest.raises(AttributeError, match="__main__"):
        wait_on(face, anyfork.new_exec(), "run", "undefined_name")
    with pytest.raises(TypeError, match="not callable"):
        wait_on(face, anyfork.new().eval("thing = 3"), "run", "thing")


GATE = "import anyfork.worker\nanyfork.worker.take_args()[0].read(1)"

#: anyfork's own commands failing in the child: how to make each fail, the function ``run``
#: names, and the type the failure keeps.
FAILING: dict[str, tuple[Callable[[anyfork.Process], anyfork.Process], str]] = {
    "require": (lambda p: p.require("os", "no_such_module_here"), "childfuncs:echo_args"),
    "eval": (lambda p: p.eval("x = 1").eval("raise KeyError('nope')"), "childfuncs:echo_args"),
    "run": (lambda p: p, "childfuncs:no_such_function"),
}
FAILING_TYPES = {"require": ModuleNotFoundError, "eval": KeyError, "run": AttributeError}


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("command", sorted(FAILING))
def test_a_failed_command_is_its_own_type_and_an_anyfork_error_at_run(
    face: str, command: str
) -> None:
    prepare, func = FAILING[command]
    with pytest.raises(FAILING_TYPES[command]) as info:
        wait_on(face, prepare(anyfork.new()), "run", func)
    assert isinstance(info.value, anyfork.AnyforkError)
    assert isinstance(info.value.__cause__, anyfork.RemoteTraceback)
    assert any(f"in {command} of process pid" in note for note in info.value.__notes__)


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("command", sorted(FAILING))
def test_a_failed_command_is_its_own_type_and_an_anyfork_error_at_wait_started(
    face: str, command: str
) -> None:
    """``wait_started`` raises the error of a failed command once it has been reported: after
    the child has gone (require, eval), or after ``run`` raised it."""
    prepare, func = FAILING[command]
    gate_r, gate_w = os.pipe()
    try:
        proc = prepare(anyfork.new().send_fh(gate_r).eval(GATE))
        pid = proc.wait_started_blocking(timeout=10)  # the child waits at the gate
        os.write(gate_w, b"x")
        if command == "run":
            with pytest.raises(AttributeError):
                proc.run_blocking(func, timeout=10)
        eventually(lambda: state(pid) is None, what="the failed child to exit")
        with pytest.raises(FAILING_TYPES[command]) as info:
            wait_on(face, proc, "wait_started")
    finally:
        os.close(gate_r)
        os.close(gate_w)
    assert isinstance(info.value, anyfork.AnyforkError)
    assert any(f"in {command} of process pid {pid}" in note for note in info.value.__notes__)


@pytest.mark.parametrize("face", FACES)
def test_children_of_a_failed_template_fail_with_its_error(face: str) -> None:
    with anyfork.new().require("no_such_module_either") as tmpl:
        child = tmpl.fork()
        with pytest.raises(anyfork.SpawnError, match="no_such_module_either") as info:
            wait_on(face, child, "run", "childfuncs:echo_args")
        assert isinstance(info.value.__cause__, ModuleNotFoundError)
        # and now that the failure is known, the next fork fails at once
        with pytest.raises(anyfork.SpawnError, match="no_such_module_either"):
            tmpl.fork()


@pytest.mark.parametrize("face", FACES)
def test_function_errors_after_run_are_the_childs_own_business(face: str) -> None:
    # After run the function owns the socket: its exception goes to its stderr, the parent
    # sees EOF.  (The RPC layer is where exceptions travel back.)
    proc = anyfork.new().eval("def bad(sock):\n    raise RuntimeError('in the function')")
    with wait_on(face, proc, "run", "bad") as sock:
        assert recv_all(sock) == b""


# -- dead processes ------------------------------------------------------------------------------


@pytest.mark.parametrize("face", FACES)
def test_killed_template_fails_the_next_fork_at_once(face: str) -> None:
    tmpl = anyfork.new().require("json")
    pid = tmpl.wait_started_blocking(timeout=10)
    queued = tmpl.fork()  # forked before the kill: its run must fail, not hang
    queued_pid = queued.wait_started_blocking(timeout=10)
    os.kill(pid, signal.SIGKILL)
    # Its creator (the default template) reaps it at once and reports how it died; a moment
    # may pass between the two (seen under CPU load), and fork() does not wait for the report.
    default = _templates._default
    assert default is not None

    def reported() -> bool:
        default._poll_reports()
        return pid in default._exits

    eventually(reported, what="the default template to report the kill")
    with pytest.raises(anyfork.SpawnError, match="killed by SIGKILL"):
        tmpl.fork()
    # a child forked before the template died lives on: it is its own process
    with wait_on(face, queued.send_arg("orphan"), "run", "childfuncs:echo_args") as s:
        assert recv_all(s) == b"'orphan'"
    assert queued_pid == queued.pid
    tmpl.close()


@pytest.mark.parametrize("face", FACES)
def test_template_killed_with_forks_queued_never_hangs(face: str) -> None:
    tmpl = anyfork.new()
    pid = tmpl.wait_started_blocking(timeout=10)
    os.kill(pid, signal.SIGSTOP)  # queue forks it cannot serve yet
    try:
        kids = [tmpl.fork().send_arg(str(i)) for i in range(5)]
    finally:
        os.kill(pid, signal.SIGKILL)
    for kid in kids:
        with pytest.raises(anyfork.SpawnError, match="template"):
            wait_on(face, kid, "run", "childfuncs:echo_args")
    tmpl.close()


@pytest.mark.parametrize("face", FACES)
def test_default_template_is_recreated_transparently(face: str) -> None:
    anyfork.new().close()
    old = _templates._default
    assert old is not None
    assert old.pid is not None
    os.kill(old.pid, signal.SIGKILL)
    eventually(lambda: _reaper.returncode(old.pid) is not None, what="the template to be reaped")  # type: ignore[arg-type]
    with wait_on(face, anyfork.new().send_arg("x"), "run", "childfuncs:echo_args") as s:
        assert recv_all(s) == b"'x'"
    assert _templates._default is not old
    assert old.returncode == -signal.SIGKILL


@pytest.mark.parametrize("face", FACES)
def test_killed_child_before_run(face: str) -> None:
    proc = anyfork.new()
    pid = wait_on(face, proc, "wait_started")
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(anyfork.SpawnError, match=f"pid {pid} exited before run"):
        wait_on(face, proc, "run", "childfuncs:echo_args")


@pytest.mark.parametrize("face", FACES)
def test_killed_exec_child_reports_the_signal(face: str) -> None:
    # (on the event loop, the exit status is waited for without blocking the loop)
    proc = anyfork.new_exec()
    os.kill(wait_on(face, proc, "wait_started"), signal.SIGKILL)
    with pytest.raises(anyfork.SpawnError, match="killed by SIGKILL"):
        wait_on(face, proc, "run", "childfuncs:echo_args")
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("face", FACES)
def test_child_exiting_during_eval_reports_its_status(face: str) -> None:
    proc = anyfork.new_exec().eval("import os\nos._exit(7)")
    with pytest.raises(anyfork.SpawnError, match="exit status 7"):
        wait_on(face, proc, "run", "childfuncs:echo_args")


# -- no hangs: timeouts and cancellation -----------------------------------------------------------


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("what", ["run", "to_fh"])
def test_a_wait_that_times_out_lets_the_child_go(face: str, what: str) -> None:
    r, w = os.pipe()
    try:
        # The eval blocks until we write to the pipe: run cannot complete in time.  Nor can
        # to_fh, which waits only until everything queued is written: an argument larger than
        # any socket buffer (net.core.wmem_max is 4 MiB by default) waits for the eval too.
        proc = (
            anyfork.new()
            .send_fh(r)
            .eval("import anyfork.worker\ngate = anyfork.worker.take_args()[0]\ngate.read(1)")
        )
        pid = wait_on(face, proc, "wait_started")  # (its pid, whatever the timeout leaves)
        if what == "to_fh":
            proc.send_arg(bytes(64 << 20))
        args = ("childfuncs:echo_args",) if what == "run" else ()
        with pytest.raises(TimeoutError):
            wait_on(face, proc, what, *args, timeout=0.2)
        os.write(w, b"x")  # release the eval: the child then sees our end closed and exits
        eventually(lambda: not alive(pid), what="the timed-out child to exit")
    finally:
        os.close(r)
        os.close(w)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def test_an_interrupted_run_blocking_lets_the_child_go() -> None:
    """Ctrl-C while ``run_blocking`` waits for a started child's RUNNING (its short path) closes
    our end: the child, whose function waits for EOF, then exits."""
    r, w = os.pipe()
    old = signal.signal(signal.SIGALRM, _interrupt)
    try:
        proc = (
            anyfork.new()
            .send_fh(r)
            .eval("import anyfork.worker\ngate = anyfork.worker.take_args()[0]\ngate.read(1)")
        )
        pid = proc.wait_started_blocking(timeout=10)
        # Not a synchronisation: the child cannot answer before the gate opens, below.
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(KeyboardInterrupt):
            proc.run_blocking("childfuncs:wait_for_eof", timeout=60)
        os.write(w, b"x")  # the child finds its function, then our end closed
        eventually(lambda: not alive(pid), what="the interrupted child to exit")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        os.close(r)
        os.close(w)


def test_run_cancellation_closes_our_end() -> None:
    """(The asyncio face only: the blocking one cannot be cancelled; its counterpart is the
    timeout test above.)"""
    r, w = os.pipe()

    async def main() -> int:
        proc = (
            anyfork.new()
            .send_fh(r)
            .eval("import anyfork.worker\ngate = anyfork.worker.take_args()[0]\ngate.read(1)")
        )
        pid = await proc.wait_started(timeout=10)
        task = asyncio.ensure_future(proc.run("childfuncs:echo_args"))
        await asyncio.wait([task], timeout=0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pid

    try:
        pid = asyncio.run(main())
        os.write(w, b"x")
        eventually(lambda: not alive(pid), what="the cancelled child to exit")
    finally:
        os.close(r)
        os.close(w)


# -- lifetimes: nothing outlives its creator, no zombies -------------------------------------------


def test_process_exits_when_its_creator_closes_the_socket() -> None:
    tmpl = anyfork.new()
    child = tmpl.fork()
    pids = [tmpl.wait_started_blocking(timeout=10), child.wait_started_blocking(timeout=10)]
    exec_proc = anyfork.new_exec()
    pids.append(exec_proc.wait_started_blocking(timeout=10))
    for proc in (tmpl, child, exec_proc):
        proc.close()
    for pid in pids:
        wait_gone(pid)


def test_dropping_the_last_reference_closes_it() -> None:
    proc = anyfork.new_exec()
    pid = proc.wait_started_blocking(timeout=10)
    del proc
    eventually(lambda: state(pid) is None, what="the dropped process to exit and be reaped")


def test_templates_reap_their_children_at_once() -> None:
    with anyfork.new() as tmpl:
        tmpl_pid = tmpl.wait_started_blocking(timeout=10)
        for i in range(5):
            with tmpl.fork().send_arg(str(i)).run_blocking("childfuncs:echo_args", timeout=10) as s:
                recv_all(s)
        # The children have exited; the template reaped each at once (no zombie lingers until
        # its next command, unlike AnyEvent::Fork 1.32).  (Its children forked ahead live on.)
        waiting = ahead(tmpl)
        eventually(
            lambda: not children(tmpl_pid) - waiting, what="the template's children to be reaped"
        )


def test_nothing_outlives_a_parent_that_was_killed(tmp_path: object) -> None:
    script = textwrap.dedent(
        """
        import os, sys, anyfork
        tmpl = anyfork.new().require("json")
        child = tmpl.fork()
        exec_proc = anyfork.new_exec()
        pids = [tmpl.wait_started_blocking(timeout=10), child.wait_started_blocking(timeout=10),
                exec_proc.pid, anyfork._core._templates._default.pid]
        print(" ".join(map(str, pids)), flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 4
        proc.kill()
    finally:
        proc.wait(10)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
    for pid in pids:
        wait_gone(pid)


def test_processes_dropped_before_they_start_exit_silently() -> None:
    script = textwrap.dedent(
        """
        import anyfork
        for _ in range(10):
            anyfork.new().close()
        tmpl = anyfork.new()
        tmpl.wait_started_blocking(timeout=10)
        for _ in range(10):
            tmpl.fork().close()
        tmpl.close()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0
    assert done.stderr == b""


@pytest.mark.parametrize(
    "exc",
    [
        anyfork.WorkerDiedError("died", 12, -9),
        anyfork.EncodeError("bad value", "child"),
        anyfork.RemoteError("Custom: boom", "mod.Custom", "Traceback..."),
        anyfork.SpawnError("no"),
    ],
)
def test_errors_pickle_with_their_attributes(exc: Exception) -> None:
    import pickle

    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is type(exc)
    assert vars(copy) == vars(exc)
    assert str(copy) == str(exc)
    assert type(exc).__module__ == "anyfork"


def test_a_process_found_dead_lets_go_of_its_socket_at_once() -> None:
    proc = anyfork.new()
    pid = proc.wait_started_blocking(timeout=10)
    fd = proc._chan.fd
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    with pytest.raises(anyfork.SpawnError, match=f"pid {pid}") as info:
        proc.send_arg("x")
    # We still hold the process and the error (with its traceback), as a pool holds its last
    # start error: the fd must be closed all the same, not whenever the garbage collector runs.
    assert info.value is not None
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)  # (listing /proc/self/fd would itself reuse the freed number)
    assert not proc._usable()
