"""The process API: new, new_exec, fork, preparation commands, run, pids, fd passing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import threading
from typing import Any, TypeVar

import pytest

import anyfork
from anyfork._core import _lineage, _templates
from helpers import FACES, alive, children, eventually, is_spare, recv_all, run, state, wait_on

T = TypeVar("T")


def lines(data: bytes) -> list[str]:
    return data.decode().split("\n")


def facts_of(proc: anyfork.Process, **kw: Any) -> dict[str, Any]:
    sock = proc.run_blocking("childfuncs:facts", timeout=10, **kw)
    try:
        return json.loads(recv_all(sock))  # type: ignore[no-any-return]
    finally:
        sock.close()


# -- run and arguments ------------------------------------------------------------------------


@pytest.mark.parametrize("face", FACES)
def test_run_gets_args_and_fds_in_order_with_their_types(face: str) -> None:
    r, w = os.pipe()
    a, b = socket.socketpair()
    try:
        proc = anyfork.new().send_arg("one", b"two", "é", b"\x00\xff").send_fh(w, a)
        with wait_on(face, proc.send_arg("", b""), "run", "childfuncs:echo_args") as sock:
            got = lines(recv_all(sock))
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()
    assert got == ["'one'", "b'two'", "'é'", "b'\\x00\\xff'", "FileIO", "socket", "''", "b''"]


@pytest.mark.parametrize("what", ["run", "to_fh"])
def test_each_face_hands_out_its_kind_of_socket(what: str) -> None:
    """Non-blocking from the asyncio face, blocking from the blocking one (face-specific)."""
    args = ("childfuncs:echo_args",) if what == "run" else ()

    async def main() -> socket.socket:
        return await getattr(anyfork.new(), what)(*args, timeout=10)  # type: ignore[no-any-return]

    with asyncio.run(main()) as sock:
        assert not sock.getblocking()
    with getattr(anyfork.new(), f"{what}_blocking")(*args, timeout=10) as sock:
        assert sock.getblocking()


def test_function_object_is_sent_by_name() -> None:
    import childfuncs

    with anyfork.new().send_arg("x").run_blocking(childfuncs.echo_args, timeout=10) as sock:
        assert recv_all(sock) == b"'x'"


def test_first_byte_read_is_the_functions_first_byte() -> None:
    # The parent reads the child's reports frame by frame and stops at RUNNING: nothing of the
    # function's stream may be consumed, even when it writes at once and a lot.
    proc = anyfork.new().eval("def blast(sock):\n    sock.sendall(bytes(range(256)) * 4096)")
    with proc.run_blocking("blast", timeout=10) as sock:
        assert recv_all(sock) == bytes(range(256)) * 4096


def test_eval_defines_functions_and_sees_its_args() -> None:
    code = "marker = args\ndef show(sock):\n    sock.sendall(repr(marker).encode())"
    with anyfork.new().eval(code, "a", b"b").run_blocking("show", timeout=10) as sock:
        assert recv_all(sock) == b"('a', b'b')"


def test_eval_args_binding_leaves_a_programs_own_args_global_alone() -> None:
    proc = anyfork.new().eval("args_seen = args").eval("args = 'mine'").eval("x = args")
    proc.eval("def show(sock):\n    sock.sendall(repr((args_seen, args, x)).encode())")
    with proc.run_blocking("show", timeout=10) as sock:
        # ``args`` is bound while each eval runs; a global the code assigns itself survives.
        assert recv_all(sock) == b"((), 'mine', ())"


def test_take_args_in_eval_clears_them() -> None:
    r, w = os.pipe()
    try:
        proc = anyfork.new().send_arg("kept-by-eval").send_fh(w)
        proc.eval("import anyfork.worker\ntaken = anyfork.worker.take_args()")
        proc.eval(
            "def show(sock, *a):\n"
            "    sock.sendall(repr((taken[0], type(taken[1]).__name__, a)).encode())"
        )
        proc.send_arg("after")
        with proc.run_blocking("show", timeout=10) as sock:
            assert recv_all(sock) == b"('kept-by-eval', 'FileIO', ('after',))"
    finally:
        os.close(r)
        os.close(w)


# -- fork, templates, pids ----------------------------------------------------------------------


def test_fork_clones_args_and_fds_and_the_template_keeps_them() -> None:
    r, w = os.pipe()
    try:
        tmpl = anyfork.new().send_arg("t1").send_fh(w).send_arg(b"t2")
        os.close(w)  # the caller may close its copy right after send_fh
        with tmpl:
            outs = []
            for name in ("c1", "c2", "c3"):
                with (
                    tmpl.fork()
                    .send_arg(name)
                    .run_blocking("childfuncs:write_to_fds", timeout=10) as s
                ):
                    outs.append(recv_all(s))
        assert outs == [b"str,FileIO,bytes,str"] * 3
        data = b""
        while len(data) < 3 * len(b"hello 1"):
            data += os.read(r, 100)
        assert data == b"hello 1" * 3  # every child got the template's pipe as its second arg
    finally:
        os.close(r)


def test_nested_templates_inherit_state_at_each_level() -> None:
    with anyfork.new().eval("marker = 'level1'").send_arg("a") as t1:
        with t1.fork().eval("marker += '+level2'").send_arg("b") as t2:
            info = facts_of(t2.fork().send_arg("c"))
            t2_pid = t2.pid
        # t1 is untouched by what was sent to t2 after the fork
        info1 = facts_of(t1.fork())
    assert info["main_marker"] == "level1+level2"
    assert info["args"] == ["a", "b", "c"]
    assert info["ppid"] == t2_pid
    assert info1["main_marker"] == "level1"
    assert info1["args"] == ["a"]


def test_every_process_knows_its_pid() -> None:
    exec_proc = anyfork.new_exec()
    assert exec_proc.pid is not None  # a direct child: known at once
    info = facts_of(exec_proc)
    assert info["pid"] == exec_proc.pid
    assert info["ppid"] == os.getpid()

    forked = anyfork.new()
    pid = forked.wait_started_blocking(timeout=10)
    assert forked.pid == pid
    info = facts_of(forked)
    assert info["pid"] == pid
    assert info["ppid"] == _templates._default.pid  # type: ignore[union-attr]


@pytest.mark.parametrize("face", FACES)
def test_wait_started(face: str) -> None:
    proc = anyfork.new()
    pid = wait_on(face, proc, "wait_started")
    proc.close()
    assert pid == proc.pid
    eventually(lambda: state(pid) is None, what="the closed process to exit")


def test_forked_child_is_clean() -> None:
    """gc frozen, signals reset, named, random reseeded."""
    code = "import random, signal\nsignal.signal(signal.SIGUSR1, lambda *a: None)\nmarker = 1"
    with anyfork.new().eval(code) as tmpl:
        one = facts_of(tmpl.fork())
        two = facts_of(tmpl.fork())
    assert one["freeze_count"] > 0  # the template froze its heap before forking
    assert one["sigint_default"]
    assert one["sigusr1_default"]
    assert one["sigchld_default"]
    assert one["comm"] == "af:facts"
    assert one["random"] != two["random"]


def test_many_concurrent_runs_share_the_template_queue() -> None:
    """(The asyncio face: concurrency on one loop; the blocking face waits one run at a time.)"""

    async def one(i: int) -> bytes:
        sock = await anyfork.new().send_arg(str(i)).run("childfuncs:echo_args", timeout=20)
        sock.setblocking(True)
        with sock:
            return recv_all(sock)

    async def main() -> list[bytes]:
        return await asyncio.gather(*(one(i) for i in range(24)))

    assert run(main()) == [repr(str(i)).encode() for i in range(24)]


# -- new_exec -----------------------------------------------------------------------------------


def test_new_exec_finds_the_parents_modules(tmp_path: Any) -> None:
    (tmp_path / "only_here_mod.py").write_text("def hi(sock):\n    sock.sendall(b'found')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with anyfork.new_exec().run_blocking("only_here_mod:hi", timeout=10) as sock:
            assert recv_all(sock) == b"found"
    finally:
        sys.path.remove(str(tmp_path))


def test_new_exec_uses_this_interpreter_and_not_asyncio() -> None:
    sock = anyfork.new_exec().run_blocking("childfuncs:report", timeout=10)
    with sock:
        info = json.loads(recv_all(sock))
    assert info["executable"] == sys.executable
    assert not info["asyncio"]
    assert info["path"] == [p for p in sys.path if isinstance(p, str)]


def test_no_fork_from_a_threaded_caller() -> None:
    # filterwarnings=error turns 3.12+'s "multi-threaded, use of fork()" DeprecationWarning into
    # a failure, if anyfork ever forked this (threaded) process.
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    try:
        with anyfork.new_exec().send_arg("x").run_blocking("childfuncs:echo_args", timeout=10) as s:
            assert recv_all(s) == b"'x'"
        with anyfork.new().send_arg("y").run_blocking("childfuncs:echo_args", timeout=10) as s:
            assert recv_all(s) == b"'y'"
    finally:
        stop.set()
        thread.join(10)


# -- fd passing -----------------------------------------------------------------------------------


def test_fd_kinds_arrive_as_the_objects_users_expect() -> None:
    r, w = os.pipe()
    a, b = socket.socketpair()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "f")
        fw = open(path, "wb")  # noqa: SIM115
        dir_fd = os.open(d, os.O_RDONLY)
        try:
            proc = anyfork.new().send_fh(w, b, fw, dir_fd)
            with proc.run_blocking("childfuncs:write_to_fds", timeout=10) as s:
                # A pipe's int fd arrives unbuffered; the buffered file as a buffered one,
                # flushed when the function returns (see test_passed_files).
                assert recv_all(s) == b"FileIO,socket,BufferedWriter,int"
            assert os.read(r, 100) == b"hello 0"
            assert a.recv(100) == b"hello 1"
            fw.close()
            with open(path, "rb") as f:
                assert f.read() == b"hello 2"
        finally:
            for fd in (r, w, dir_fd):
                os.close(fd)
            a.close()
            b.close()
            if not fw.closed:
                fw.close()


def test_many_fds_in_one_call() -> None:
    pipes = [os.pipe() for _ in range(300)]  # more than one frame's worth (253)
    try:
        proc = anyfork.new().send_fh(*(w for _, w in pipes))
        with proc.run_blocking("childfuncs:write_to_fds", timeout=20) as s:
            assert recv_all(s).split(b",") == [b"FileIO"] * 300
        assert [os.read(r, 20) for r, _ in pipes[:3]] == [b"hello 0", b"hello 1", b"hello 2"]
        assert os.read(pipes[299][0], 20) == b"hello 299"
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)


# -- to_fh / new_from_fh ---------------------------------------------------------------------


@pytest.mark.parametrize("face", FACES)
def test_to_fh_and_new_from_fh_in_the_same_process(face: str) -> None:
    proc = anyfork.new().send_arg("before")
    handed = wait_on(face, proc, "to_fh")
    with pytest.raises(anyfork.ClosedError):
        proc.send_arg("x")
    adopted = anyfork.new_from_fh(handed).send_arg("after")
    with wait_on(face, adopted, "run", "childfuncs:echo_args") as s:
        assert recv_all(s) == b"'before'\n'after'"
    assert adopted.pid is not None


def test_a_socket_adopted_by_its_fd_after_an_async_to_fh_runs_blocking() -> None:
    """Blocking-ness belongs to the open file: an fd whose sender made it non-blocking (the
    asyncio ``to_fh``) is adopted as a blocking socket, so ``run_blocking``'s socket blocks."""

    async def hand() -> socket.socket:
        return await anyfork.new().to_fh(timeout=10)

    handed = asyncio.run(hand())
    try:
        assert not handed.getblocking()
        adopted = anyfork.new_from_fh(os.dup(handed.fileno()))  # as another process gets it
    finally:
        handed.close()
    with adopted.run_blocking("childfuncs:wait_for_eof", timeout=10) as sock:
        assert os.get_blocking(sock.fileno())


@pytest.mark.parametrize("face", FACES)
def test_hand_a_half_prepared_process_to_another_process(face: str) -> None:
    handed = wait_on(face, anyfork.new().send_arg("from the first owner"), "to_fh")
    adopter = anyfork.new_exec().send_fh(handed)
    handed.close()
    with wait_on(face, adopter, "run", "childfuncs:adopt_and_run") as sock:
        out = recv_all(sock).split(b"\n")
    assert out[:2] == [b"'from the first owner'", b"'added by adopter'"]
    assert out[2].startswith(b"pid=")


@pytest.mark.parametrize("face", FACES)
def test_wait_started_waits_for_an_exec_child_to_report_in(face: str) -> None:
    proc = anyfork.new_exec()
    pid = wait_on(face, proc, "wait_started")
    assert pid == proc.pid
    # It has reported in, not merely been spawned: the interpreter is up and anyfork's command
    # server has loaded the _socket extension (nothing a freshly spawned process has mapped).
    with open(f"/proc/{pid}/maps") as maps:
        assert "_socket" in maps.read()
    proc.close()


# -- forked ahead: the next child, connected (parent side), and the template's spare -------------
#
# After a fork, a template has two processes ready: the next child, forked ahead and connected to
# the parent (``Process._ready``, which the next ``fork()`` returns), and behind it the template's
# spare, forked but not connected (it becomes the child of the next FORK frame).


def ahead_of(tmpl: anyfork.Process) -> list[int]:
    """The pids of the children ``tmpl`` keeps forked ahead, next first (asking does not use
    them up)."""
    assert tmpl._ready
    return [ready.wait_started_blocking(timeout=10) for ready in tmpl._ready]


def spare_of(template_pid: int, ahead: list[int]) -> int:
    """The template's spare (a child forked ahead also bears a spare's name until its first
    command, when it came from the spare)."""

    def one() -> set[int] | None:
        # A child being forked (or one a let-go was discarded for) is seen for a moment too.
        found = children(template_pid, spares=True) - children(template_pid) - set(ahead)
        return found if len(found) == 1 else None

    found = eventually(one, what="the template's spare, alone")
    assert found is not None  # (eventually returns a truthy value)
    return found.pop()


def kill_spare(template_pid: int, ahead: list[int]) -> int:
    """SIGKILL the template's spare; its pid.  What ``spare_of`` found may be a process passing
    through (see there), gone by the kill (seen under load): then the spare is looked for again."""

    def attempt() -> int | None:
        pid = spare_of(template_pid, ahead)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return None
        return pid

    killed = eventually(attempt, what="the template's spare, killed")
    assert killed is not None  # (eventually returns a truthy value)
    return killed


def test_a_state_change_between_forks_never_reaches_a_stale_spare() -> None:
    r, w = os.pipe()
    try:
        with anyfork.new().eval("marker = 'one'") as tmpl:
            first = facts_of(tmpl.fork().send_arg("a"))
            # A child forked ahead and a spare now wait, forked with marker 'one'.  Every kind
            # of state change must discard both, so each next child sees the change.
            tmpl.eval("marker = 'two'")
            second = facts_of(tmpl.fork())
            tmpl.send_arg("t")
            third = facts_of(tmpl.fork())
            tmpl.send_fh(w)
            fourth = facts_of(tmpl.fork())
            tmpl.require("json")
            fifth = facts_of(tmpl.fork())
    finally:
        os.close(r)
        os.close(w)
    assert [first["main_marker"], second["main_marker"]] == ["one", "two"]
    assert first["args"] == ["a"]
    assert second["args"] == []
    assert third["args"] == ["t"]
    assert fourth["args"][0] == "t"
    assert fourth["args"][1].startswith("<_io.FileIO")
    assert fifth["main_marker"] == "two"


def test_consecutive_children_are_forked_ahead_and_differ() -> None:
    with anyfork.new() as tmpl:
        tmpl_pid = tmpl.wait_started_blocking(timeout=10)
        first = facts_of(tmpl.fork())
        ahead = ahead_of(tmpl)  # forked when the first child ran, up and waiting
        spare = spare_of(tmpl_pid, ahead)
        second = facts_of(tmpl.fork())
        after = ahead_of(tmpl)  # forked when the second child ran: two this time
    assert len(ahead) == 1
    assert second["pid"] == ahead[0]  # the child forked ahead became the second child
    assert len(after) == 2
    assert after[0] == spare  # and the spare became the next one ahead
    assert second["ppid"] == tmpl_pid
    assert first["pid"] != second["pid"]


def test_children_asked_for_ahead_are_old_spares() -> None:
    """A template keeps as many spares as its creator last asked for children ahead at once:
    each child asked for is then a spare forked while the template was idle, not a fresh fork
    (whose pages, shared with its siblings', cost copies on its way to ``run``)."""
    with anyfork.new() as tmpl:
        tmpl_pid = tmpl.wait_started_blocking(timeout=10)
        while len(tmpl._ready) < 3:  # until the template is asked for several at once
            facts_of(tmpl.fork())
        ahead = ahead_of(tmpl)

        def spares() -> set[int] | None:
            found = children(tmpl_pid, spares=True) - children(tmpl_pid) - set(ahead)
            return found if len(found) == len(ahead) else None

        old = eventually(spares, what=f"the template's {len(ahead)} spares")
        for _ in ahead:  # the last one's run asks for the next ones
            facts_of(tmpl.fork())
        after = ahead_of(tmpl)
    assert old is not None
    first = after[: len(old)]  # (handed out oldest first; any beyond them are new forks)
    assert set(first) <= old
    assert len(first) < len(old) or set(first) == old


def test_a_template_forked_from_now_and_then_keeps_one_child_ahead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It asks for as many children ahead as it handed out lately (``_RECENT``), so a template
    forked from once in a while does not keep several processes waiting."""
    with anyfork.new() as tmpl:
        tmpl.wait_started_blocking(timeout=10)
        for _ in range(4):
            facts_of(tmpl.fork())
        assert len(ahead_of(tmpl)) > 1  # forked from in quick succession: several ahead
        monkeypatch.setattr(_lineage, "_RECENT", 0.0)  # (every start long after the last)
        for _ in range(len(tmpl._ready)):  # the last one's run asks for the next ones
            facts_of(tmpl.fork())
        assert len(ahead_of(tmpl)) == 1


def test_a_spare_that_became_a_template_no_longer_looks_like_one() -> None:
    """``ps`` (and the leak checks here) must not mistake a working process for a spare."""
    with anyfork.new() as outer:
        outer_pid = outer.wait_started_blocking(timeout=10)
        first = outer.fork()
        spare = spare_of(outer_pid, [first.wait_started_blocking(timeout=10)])
        tmpl = outer.fork()  # (no run yet, so no child forked ahead: the spare gets it)
        tmpl_pid = tmpl.wait_started_blocking(timeout=10)
        assert tmpl_pid == spare
        assert is_spare(tmpl_pid)  # it has had no command but its start
        with tmpl.fork() as child:
            child.wait_started_blocking(timeout=10)
            assert not is_spare(tmpl_pid)
            with open(f"/proc/{tmpl_pid}/comm") as f:
                assert f.read().strip() == "af:child"
        tmpl.close()
        first.close()


def test_a_killed_spare_does_not_break_forking() -> None:
    with anyfork.new() as tmpl:
        tmpl_pid = tmpl.wait_started_blocking(timeout=10)
        facts_of(tmpl.fork())
        waiting = kill_spare(tmpl_pid, ahead_of(tmpl))
        eventually(lambda: state(waiting) is None, what="the killed spare to be reaped")
        facts_of(tmpl.fork())  # the child ahead; the next one is forked without the spare
        info = facts_of(tmpl.fork().send_arg("still works"))
    assert info["args"] == ["still works"]
    assert info["pid"] != waiting


def test_a_killed_child_ahead_is_replaced() -> None:
    """``fork()`` does not hand out the child it forked ahead if that one has died."""
    with anyfork.new() as tmpl:
        facts_of(tmpl.fork())
        (ahead,) = ahead_of(tmpl)
        os.kill(ahead, signal.SIGKILL)
        eventually(lambda: state(ahead) is None, what="the killed child to be reaped")
        info = facts_of(tmpl.fork().send_arg("still works"))
    assert info["args"] == ["still works"]
    assert info["pid"] != ahead


def test_spares_and_children_ahead_go_away_with_their_template() -> None:
    tmpl = anyfork.new()
    tmpl_pid = tmpl.wait_started_blocking(timeout=10)
    facts_of(tmpl.fork())
    ahead = ahead_of(tmpl)
    waiting = spare_of(tmpl_pid, ahead)
    tmpl.close()
    for pid in (*ahead, waiting):
        eventually(lambda: not alive(pid), what="the spare and the child ahead to exit")  # noqa: B023


# -- what a child holds ----------------------------------------------------------------------------

FD_REPORT = (
    "import os\n"
    "def fds(sock, *args):\n"
    "    open_fds = sorted(int(f) for f in os.listdir('/proc/self/fd'))\n"
    "    held = [f for f in open_fds if os.path.exists(f'/proc/self/fd/{f}')]\n"
    "    sock.sendall(repr(held).encode())\n"
)


def test_children_hold_only_stdio_their_socket_and_what_was_sent() -> None:
    # An fd this process leaves inheritable (as libraries do) must not reach any child: not the
    # exec'd default template, nor what it forks.
    leak_r, leak_w = os.pipe()
    os.set_inheritable(leak_w, True)
    sent_r, sent_w = os.pipe()
    try:
        exec_proc = anyfork.new_exec(python=sys.executable)  # a fresh interpreter, even early
        with exec_proc.eval(FD_REPORT).run_blocking("fds", timeout=10) as sock:
            assert eval(recv_all(sock)) == [0, 1, 2, 3]
        with anyfork.new_exec(python=sys.executable) as tmpl:
            for _ in range(3):  # the first child is forked directly, the next ones are spares
                child = tmpl.fork().eval(FD_REPORT).send_fh(sent_w)
                with child.run_blocking("fds", timeout=10) as sock:
                    held = eval(recv_all(sock))
                assert len(held) == 5  # stdio, the socket, the fd we sent
                assert held[:4] == [0, 1, 2, 3]
    finally:
        for fd in (leak_r, leak_w, sent_r, sent_w):
            os.close(fd)
