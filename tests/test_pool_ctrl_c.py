"""Ctrl-C (SIGINT to a real program, ``tests/scripts/pool_ctrl_c.py``) while it waits for its
pool, on every face and in every place a caller waits: ``result()``, ``map``, ``shutdown``, the
end of a ``with`` block, ``BlockingPool`` calls and maps, ``asyncio.run`` around ``async with
Pool``.  The ``KeyboardInterrupt`` comes out at once, the busy workers are killed (their calls
fail), what is pending fails (cancelled), and no worker outlives the program.  Every wait on the
program has a deadline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import WAIT, alive, eventually, state
from test_pool_exit import finish, read_until, start

MODES = [
    "executor-result",
    "executor-map",
    "executor-shutdown",
    "executor-with",
    "blocking-call",
    "blocking-map",
    "pool-asyncio",
]


def interrupt(mode: str, *, group: bool = False) -> tuple[list[str], list[int], bytes]:
    """Run the program in ``mode`` until its calls wait, send SIGINT (to the program, or to
    its process group as a terminal's Ctrl-C does), and return its output lines, the pids of
    the workers that ran the calls, and its stderr."""
    proc = start("pool_ctrl_c.py", mode) if not group else _start_in_group(mode)
    try:
        head = read_until(proc, b"waiting").decode()
        # It says so right before it waits: once its main thread sleeps, it is in the wait.
        eventually(lambda: state(proc.pid) == "S", WAIT, "the program to wait")
        if group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        out, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = (head + out.decode()).splitlines()
    pids = [int(line.split()[2]) for line in lines if line.startswith("started ")]
    if mode != "outside":
        assert proc.returncode == 0, (lines, err.decode())
    return lines, pids, err


def _start_in_group(mode: str) -> subprocess.Popen[bytes]:
    """``start``, in a process group of its own (its workers and templates join it)."""
    from test_pool_exit import SCRIPTS, SRC, TESTS

    environ = dict(os.environ, PYTHONPATH=os.pathsep.join((SRC, TESTS)))
    environ.pop("ANYFORK_PYTHON", None)
    return subprocess.Popen(
        [sys.executable, str(Path(SCRIPTS) / "pool_ctrl_c.py"), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environ,
        start_new_session=True,
    )


@pytest.mark.parametrize("mode", MODES)
def test_ctrl_c_kills_the_busy_workers_and_fails_what_is_pending(mode: str) -> None:
    lines, pids, err = interrupt(mode)
    assert err == b"", err.decode()
    assert "interrupted" in lines, lines
    assert lines[-1] == "closed", lines
    assert len(pids) == 2, lines
    # The busy workers were killed at the interrupt (the gate never opens: nothing else ends
    # them), and are gone with the program.
    eventually(lambda: not any(alive(pid) for pid in pids), WAIT, "the workers to exit")
    calls = dict(line.split()[1:] for line in lines if line.startswith("call "))
    running = {line.split()[1] for line in lines if line.startswith("started ")}
    for tag, how in calls.items():
        # A running call fails with its worker's death; a pending one is cancelled.
        assert how == ("WorkerDiedError" if tag in running else "cancelled"), (tag, lines)


def test_ctrl_c_outside_the_pools_ends_the_program_without_waiting_for_them() -> None:
    """The interrupt lands in a wait of the program's own and ends it: the executor it left
    open is closed the fast way at exit (workers killed), not the graceful way (which would
    wait forever for the calls still running and queued)."""
    lines, pids, err = interrupt("outside")
    assert "KeyboardInterrupt" in err.decode()
    assert "closed" not in lines
    eventually(lambda: not any(alive(pid) for pid in pids), WAIT, "the workers to exit")


def test_ctrl_c_at_a_terminal_reaches_the_workers_too() -> None:
    """A terminal's Ctrl-C goes to the whole process group: the workers get it too (and end,
    as any program does), the program still ends at once and leaves nothing behind."""
    lines, pids, _ = interrupt("executor-result", group=True)
    assert "interrupted" in lines, lines
    assert lines[-1] == "closed", lines
    eventually(lambda: not any(alive(pid) for pid in pids), WAIT, "the workers to exit")
