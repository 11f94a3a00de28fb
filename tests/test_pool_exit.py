"""Whole programs using the blocking pools, run as subprocesses (``tests/scripts/``): one that
never shuts its pool down must exit as it would with the standard library's executors (queued
calls still run); Ctrl-C in ``BlockingPool.map`` is a ``KeyboardInterrupt``.  Every wait on
the program has a deadline."""

from __future__ import annotations

import _thread
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import anyfork
import pool_funcs
from helpers import WAIT, alive, eventually

SCRIPTS = Path(__file__).resolve().with_name("scripts")
TESTS = str(Path(__file__).resolve().parent)
SRC = str(Path(anyfork.__file__).resolve().parent.parent)


def start(name: str, *args: str) -> subprocess.Popen[bytes]:
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join((SRC, TESTS))
    environ.pop("ANYFORK_PYTHON", None)
    return subprocess.Popen(
        [sys.executable, str(SCRIPTS / name), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environ,
    )


def read_until(proc: subprocess.Popen[bytes], marker: bytes) -> bytes:
    """What the program printed up to and including the line that starts with ``marker``."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    out = b""
    deadline = time.monotonic() + WAIT
    while b"\n" + marker not in b"\n" + out:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no {marker!r} from the program within {WAIT} s: {out!r}"
        chunk = os.read(fd, 4096)
        assert chunk, f"the program ended before {marker!r}: {out!r}"
        out += chunk
    return out


def finish(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """The rest of the program's output once it has exited (it must, within the deadline)."""
    try:
        out, err = proc.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the program did not exit within {WAIT} s: {out!r} {err!r}")
    return out, err


@pytest.mark.parametrize("mode", ["executor", "blocking"])
def test_a_pool_never_shut_down_lets_the_program_exit(mode: str, tmp_path: Path) -> None:
    path = tmp_path / "calls"
    proc = start("pool_left_open.py", mode, str(path))
    out, err = finish(proc)
    assert (proc.returncode, err) == (0, b""), err.decode()
    worker = int(out.split()[0])
    # The queued calls ran, in order, before the program was gone ...
    assert path.read_text().split() == [str(i) for i in range(21)]
    # ... and its worker with it.
    eventually(lambda: not alive(worker), timeout=WAIT, what="the worker to exit")


def test_ctrl_c_in_blocking_pool_map_is_a_keyboard_interrupt() -> None:
    proc = start("pool_interrupt.py")
    try:
        read_until(proc, b"started 0 ")
        proc.send_signal(signal.SIGINT)
        out, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = out.decode().splitlines()
    assert "interrupted" in lines, (out, err)
    assert "after after" in lines  # the pool is still usable after the interrupt
    assert lines[-1] == "closed"
    assert (proc.returncode, err) == (0, b""), err.decode()


WAITS: dict[str, Callable[[Any], object]] = {
    "BlockingPool.map": lambda pool: list(pool.map(range(3), chunksize=1)),
    "PoolExecutor.map": lambda ex: list(ex.map(pool_funcs.gated, range(3), chunksize=1)),
    "PoolExecutor result(timeout)": lambda ex: ex.submit(pool_funcs.gated, 0).result(WAIT * 2),
    "PoolExecutor.shutdown": lambda ex: (ex.submit(pool_funcs.gated, 0), ex.shutdown(wait=True)),
}


@pytest.mark.parametrize("wait", list(WAITS))
def test_an_interrupt_the_main_thread_gets_just_before_it_sleeps_is_not_lost(wait: str) -> None:
    """CPython interrupts a lock's sleep only if the signal comes once the sleep has begun; one
    that lands just before it is acted on after the sleep.  ``_thread.interrupt_main`` is that
    case made certain (it sets the interrupt without waking any sleep): the waiting face must
    still raise ``KeyboardInterrupt`` while the call runs, not once the gate opens."""
    r, w = os.pipe()
    tmpl = anyfork.new().require("pool_funcs").send_fh(r)
    os.close(r)
    started = threading.Event()
    gave_up = threading.Event()  # the interrupt was lost: the watchdog opened the gate

    def on_event(kind: str, *args: Any) -> None:
        if kind == "started":
            started.set()

    def interrupter() -> None:
        if started.wait(WAIT):
            _thread.interrupt_main()
        if not done.wait(WAIT):
            gave_up.set()
        os.write(w, b"x" * 8)  # let whatever still runs finish

    done = threading.Event()
    thread = threading.Thread(target=interrupter)
    if wait.startswith("BlockingPool"):
        face: Any = anyfork.BlockingPool(
            tmpl, "pool_funcs:gated", init="pool_funcs:init_gate", on_event=on_event, max=1
        )
    else:
        face = anyfork.PoolExecutor(
            1, template=tmpl, init="pool_funcs:init_gate", on_event=on_event
        )
    try:
        thread.start()
        with pytest.raises(KeyboardInterrupt):
            WAITS[wait](face)
        done.set()
    finally:
        done.set()
        thread.join(WAIT)
        if isinstance(face, anyfork.BlockingPool):
            face.close(cancel=True)
        else:
            face.shutdown(wait=True, cancel_futures=True)
        tmpl.close()
        os.close(w)
    assert not gave_up.is_set(), "the interrupt was acted on only once the call had finished"
