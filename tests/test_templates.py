"""Early and main-program templates (AnyEvent::Fork::Early and ::Template).

Both fork the *calling* program, so every test runs a small script from ``tests/scripts/`` in a
subprocess and checks what it prints (one JSON line) and what the OS says afterwards.  The
scripts are written to be read: each one's docstring says what it sets up.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import pytest

import anyfork
from helpers import alive, eventually, interpreters, result, run_script

#: The program's interpreter, and every other this machine has from 3.12 on (where CPython
#: warns about forking a threaded process): pyenv's here; a machine without them tests its own.
INTERPRETERS = [
    pytest.param(sys.executable, id="current"),
    *(
        pytest.param(path, id=f"{major}.{minor}")
        for (major, minor), path in sorted(interpreters().items())
        if (major, minor) >= (3, 12) and (major, minor) != sys.version_info[:2]
    ),
]
#: Where CPython writes its perf maps (a fixed place).
PERF_MAPS = Path("/tmp")


# -- the early template -------------------------------------------------------------------------


def test_early_template_serves_new_and_new_exec_without_exec() -> None:
    out = result(run_script("tmpl_early.py"))
    main = out["main"]
    early = out["early_pid"]
    assert out["early_ppid"] == main["pid"]  # a direct child of the program
    assert out["same_again"]  # start_early() again returns the same template

    kids = [out["new"], out["new_exec"], out["by_module"], out["eval"]]
    assert len({kid["pid"] for kid in kids}) == len(kids)
    for kid in kids:
        # Forked from the early template: a copy of this program, not a fresh interpreter
        # (an exec'd one would have ``sys.argv == ['-c']`` and the main program as parent).
        assert kid["ppid"] == early
        assert kid["argv"] == main["argv"]
        assert kid["exe"] == main["exe"]
    # The script also replaced the exec path with one that raises: it was never taken.
    assert out["new"]["args"] == ["defined_before"]
    assert out["new_exec"]["args"] == ["defined_before", "x"]


def test_early_template_is_a_copy_of_the_program_at_that_moment() -> None:
    """A function defined in ``__main__`` after ``import anyfork.early`` is not in the template:
    the child says so, by name, and ``eval`` or an importable module are the ways around."""
    out = result(run_script("tmpl_early.py"))
    assert out["after_error"] is not None
    assert "'defined_after'" in out["after_error"]
    assert "__main__" in out["after_error"]
    # It says why, and the ways out.
    assert "a copy of the main program as it was when" in out["after_error"]
    assert "start_early()" in out["after_error"]
    assert "eval()" in out["after_error"]
    assert out["eval"]["ppid"] == out["early_pid"]


def test_early_template_children_do_not_carry_asyncio() -> None:
    out = result(run_script("tmpl_early.py"))
    assert not out["new"]["asyncio"]


def test_killed_early_template_never_hangs_and_is_replaced() -> None:
    """After the early template dies, anyfork forgets it: ``new`` recreates the default template
    by exec and ``new_exec`` execs; a call racing with the death fails fast or succeeds."""
    out = result(run_script("tmpl_kill_early.py"))
    main, early = out["main_pid"], out["early_pid"]

    racing = out["racing_new"]
    assert racing["outcome"] in ("ok", "SpawnError"), racing
    assert racing["seconds"] < 5
    if racing["outcome"] == "ok":
        assert racing["child"]["ppid"] not in (early, main)  # from a new default template

    assert out["early_returncode"] == -9
    for step in ("new", "new_exec", "new_exec_python", "again_new"):
        assert out[step]["outcome"] == "ok", out[step]
        assert out[step]["seconds"] < 5

    assert out["default_pid"] not in (None, early)
    assert out["new"]["child"]["ppid"] == out["default_pid"]
    assert out["new"]["child"]["argv"] == ["-c"]  # the new default template was exec'd
    for step in ("new_exec", "new_exec_python"):
        assert out[step]["child"]["ppid"] == main
        assert out[step]["child"]["argv"] == ["-c"]

    # start_early() makes a fresh early template, and new() forks from it again.
    assert out["again_pid"] not in (None, early, out["default_pid"])
    assert out["again_new"]["child"]["ppid"] == out["again_pid"]
    assert out["again_new"]["child"]["argv"][0].endswith("tmpl_kill_early.py")


# -- the main-program template ------------------------------------------------------------------


def test_main_template_children_inherit_modules_and_main_functions(tmp_path: Path) -> None:
    counter = tmp_path / "imports"
    out = result(run_script("tmpl_main.py", env={"TMPL_COUNTER": str(counter)}))
    main, tmpl = out["main_pid"], out["tmpl_pid_at_once"]
    assert isinstance(tmpl, int)  # a direct child: its pid is known at once
    assert out["tmpl_ppid"] == main
    assert out["counted_here"] == main

    kids = out["blocking"] + out["async"]
    assert [kid["args"] for kid in kids] == [["0"], ["1"], ["a0"], ["a1"], ["a2"]]
    assert len({kid["pid"] for kid in kids}) == 5
    for kid in kids:
        assert kid["ppid"] == tmpl
        assert kid["main_name"] == "__main__"
        # The module came with the fork (imported once, by the program) ...
        assert kid["counted_imported_by"] == main
        assert kid["table_ok"]
        # ... and so did the program's state.
        assert kid["config"] == {"set_up_by": main}
    # The import side effect ran exactly once, in the program.
    assert counter.read_text().split() == [str(main)]


# -- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["main", "early", "import"])
def test_refuses_while_a_thread_runs(how: str) -> None:
    out = result(run_script("tmpl_refuse.py", "thread", how))
    refusal = out["refusal"]
    assert refusal["error"] == "RuntimeError"
    assert "threads" in refusal["message"]
    assert "blocker-thread" in refusal["message"]  # it names the culprit
    assert refusal["children"] == []  # nothing was forked
    assert not out["early_set"]
    # Once the thread has ended, the same call works.
    assert out["later"]["ppid"] == out["later_tmpl_pid"]


@pytest.mark.parametrize("how", ["main", "early", "import"])
def test_refuses_inside_a_running_event_loop(how: str) -> None:
    out = result(run_script("tmpl_refuse.py", "loop", how))
    refusal = out["refusal"]
    assert refusal["error"] == "RuntimeError"
    assert "event loop" in refusal["message"]
    assert refusal["children"] == []
    assert not out["early_set"]
    assert out["later"]["ppid"] == out["later_tmpl_pid"]


# -- what a copy of the program must not repeat, and must not outlive ---------------------------


@pytest.mark.parametrize("how", ["main", "early"])
def test_atexit_handlers_and_buffered_stdout_are_not_repeated(how: str, tmp_path: Path) -> None:
    log = tmp_path / "atexit.log"
    proc = run_script("tmpl_exit.py", how, str(log))
    out = result(proc)
    main, tmpl, workers = out["main"], out["template"], out["workers"]
    assert out["buffered"]  # or the stdout checks below would prove nothing
    # Handlers run at exit: wait until every copy of the program has gone.
    eventually(lambda: not any(alive(p) for p in (tmpl, *workers)), 10, "the template to exit")

    lines = sorted(log.read_text().splitlines())
    expected = [f"main-handler {main}"] + [f"worker-handler {w}" for w in workers]
    assert lines == sorted(expected)  # the template never ran the program's handler

    assert proc.stdout.count("buffered-before-template") == 1
    for pid in workers:
        assert proc.stdout.count(f"worker-output {pid}\n") == 1
    assert proc.stdout.count("worker-output") == len(workers)


@pytest.mark.parametrize(("how", "code"), [("return", 0), ("os_exit", 0), ("sigkill", -9)])
def test_templates_and_their_children_die_with_the_program(how: str, code: int) -> None:
    out = result(run_script("tmpl_orphan.py", how, returncode=code))
    pids = out["templates"] + out["idle"] + out["running"]
    assert len(set(pids)) == 6
    eventually(
        lambda: not [p for p in pids if alive(p)], 10, "the templates and their children to exit"
    )


# -- threads: anyfork never forks the threaded caller -------------------------------------------


@pytest.mark.parametrize("python", INTERPRETERS)
@pytest.mark.parametrize("mode", ["anyfork", "early"])
def test_no_fork_warning_in_a_threaded_program(python: str, mode: str) -> None:
    proc = run_script(
        "tmpl_threads_warn.py", mode, python=python, flags=("-W", "error::DeprecationWarning")
    )
    out = result(proc)
    assert out["threads_during"] >= 2
    assert out["warnings"] == []
    main = out["main_pid"]
    new, new_exec, in_loop = out["children"]
    if mode == "anyfork":
        # new: forked from the exec'd default template; new_exec: exec'd by the program.
        assert new["ppid"] not in (main, new["pid"])
        assert in_loop["ppid"] == new["ppid"]
        assert new_exec["ppid"] == main
        assert new["argv"] == new_exec["argv"] == ["-c"]
        assert not new["asyncio"]
        assert not new_exec["asyncio"]
    else:
        # The early template predates the thread; all three are its children.
        assert new["ppid"] == new_exec["ppid"] == in_loop["ppid"] != main


@pytest.mark.parametrize("python", INTERPRETERS)
def test_os_fork_in_a_threaded_program_does_warn(python: str) -> None:
    """The control for the test above: on 3.12+ the warning exists and the script records it."""
    out = result(
        run_script(
            "tmpl_threads_warn.py",
            "os.fork",
            python=python,
            flags=("-W", "error::DeprecationWarning"),
        )
    )
    warned = [w for w in out["warnings"] if w.startswith("DeprecationWarning") and "fork" in w]
    if tuple(out["version"]) < (3, 12):
        # The warning is new in 3.12 (gh-100228): before, the same fork is silent, which is why
        # the 3.12 and 3.13 runs of this test are the control for the one above.
        assert not warned, out["warnings"]
    else:
        assert warned, out["warnings"]


def test_the_first_new_in_an_event_loop_does_not_wait_for_the_template(tmp_path: Path) -> None:
    """The default template starts in the background: ``new()`` returns, the loop runs a task
    (which lets the template start at all: an fd handshake), then ``run`` finds the process."""
    wrapper = tmp_path / "python"
    wrapper.write_text(
        f"#!{sys.executable} -S\n"
        "import os, sys\n"
        "os.read(os.open(os.environ['GATE_PATH'], os.O_RDONLY), 1)  # until the task opens it\n"
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
    )
    wrapper.chmod(0o755)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    env = {"GATE_PYTHON": str(wrapper), "GATE_PATH": str(gate)}
    out = result(run_script("first_new_in_loop.py", env=env))
    assert out["events"] == ["new returned", "task ran", "ran", "child of a template: True"]


def test_an_exec_started_from_a_thread_that_blocks_signals_blocks_none() -> None:
    """posix_spawn keeps the calling thread's signal mask: a template started from a thread
    that blocks SIGCHLD (a pool's threads block the asynchronous signals) would never reap
    its children, nor obey SIGTERM.  The new interpreter starts with none blocked."""
    procs: list[anyfork.Process] = []

    def spawn() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT})
        procs.append(anyfork.new_exec())

    thread = threading.Thread(target=spawn)
    thread.start()
    thread.join(10)
    (proc,) = procs
    with proc:
        proc.wait_started_blocking(timeout=10)
        with open(f"/proc/{proc.pid}/status") as status:
            masks = [line.split()[1] for line in status if line.startswith("SigBlk:")]
        assert masks == ["0" * 16]


# -- what an exec'd interpreter opens itself ----------------------------------------------------


@pytest.mark.parametrize(
    "python",
    [
        pytest.param(path, id=f"{major}.{minor}")
        for (major, minor), path in sorted(interpreters().items())
        if (major, minor) >= (3, 12)  # where PYTHONPERFSUPPORT exists
    ],
)
def test_exec_d_interpreters_keep_their_perf_maps(python: str) -> None:
    """PYTHONPERFSUPPORT=1: the perf map each interpreter opens at start-up stays open (once,
    closing it let a socket reuse its number: perf-map text on the command stream), while an
    fd the program leaves inheritable still reaches none of them."""
    before = set(PERF_MAPS.glob("perf-*.map"))
    try:
        out = result(run_script("tmpl_perfmap.py", python=python))
    finally:
        # Ours (spares' too): the interpreter never removes its map.
        for path in set(PERF_MAPS.glob("perf-*.map")) - before:
            path.unlink(missing_ok=True)
    for how in ("new", "new_exec", "exec_fork"):
        assert out[how]["own"], how  # the child holds its own map
        assert not out[how]["holds_leaked"], how
        # stdio, the socket, the map (nothing else of ours either)
        assert len(out[how]["fds"]) == 4 + len(out[how]["own"]), how
    assert out["new"]["parent"]  # the default template too, and what was forked from
    assert out["exec_fork"]["parent"]  # a template made with new_exec()
