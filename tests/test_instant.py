"""Instant processes (issue 9, point 5) and the default template's ``sys.path`` (point 7).

A template keeps its next child forked and connected ahead of need, so ``anyfork.new()`` (and
``fork()`` of an unchanged template: see test_process.py) hands over a process that is up and
waiting; the first ``new()`` never waits for the default template to start, so it does not
block an event loop; and the default template follows the program's ``sys.path``.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import pytest

import anyfork
from anyfork._core import _templates
from helpers import recv_all


def test_new_hands_over_the_children_forked_ahead() -> None:
    # A start makes the default template fork children ahead, if none waits.
    anyfork.new().run_blocking("socket:socket.close", timeout=10).close()
    template = _templates._default
    assert template is not None
    ahead = list(template._ready)
    assert ahead
    pids = [proc.wait_started_blocking(timeout=10) for proc in ahead]  # up, connected, waiting
    for expected, pid in zip(ahead, pids, strict=True):
        proc = anyfork.new()
        assert proc is expected
        assert proc.pid == pid  # known at once
        with proc.send_arg("now").run_blocking("childfuncs:echo_args", timeout=10) as sock:
            assert recv_all(sock) == b"'now'"
    assert template._ready  # and the next ones were forked when the last was used
    assert not set(template._ready) & set(ahead)


def test_the_first_new_in_an_event_loop_does_not_wait_for_the_default_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default template's interpreter is held at a gate (a FIFO its wrapper reads before it
    execs Python): ``new()`` returns all the same, and ``run`` then waits on the loop."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nread go < "{gate}"\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("ANYFORK_PYTHON", str(wrapper))
    monkeypatch.setattr(_templates, "_default", None)
    monkeypatch.setattr(_templates, "_default_path", [])

    def open_gate() -> None:
        with open(gate, "w") as opened:  # (blocks until the wrapper has opened it to read)
            opened.write("go\n")

    async def main() -> tuple[bool, int | None, bytes]:
        proc = anyfork.new()  # returns while the template's interpreter waits at the gate
        template = _templates._default
        assert template is not None
        started, pid = template._started, proc.pid
        await asyncio.to_thread(open_gate)
        sock = await proc.send_arg("up").run("childfuncs:echo_args", timeout=20)
        sock.setblocking(True)
        with sock:
            data = recv_all(sock)
        template.close()
        assert await template.wait(timeout=20) == 0
        return started, pid, data

    started, pid, data = asyncio.run(main())
    assert not started  # new() returned before the template had even started
    assert pid is None
    assert data == b"'up'"


def test_the_default_template_follows_sys_path(tmp_path: Path) -> None:
    anyfork.new().close()  # the default template is up, with the path it started with
    (tmp_path / "added_later.py").write_text("def hi(sock):\n    sock.sendall(b'found')\n")
    (tmp_path / "never_imported.py").write_text("def hi(sock):\n    pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with anyfork.new().run_blocking("added_later:hi", timeout=10) as sock:
            assert recv_all(sock) == b"found"
    finally:
        sys.path.remove(str(tmp_path))
    with pytest.raises(ModuleNotFoundError):  # removals reach it too
        anyfork.new().run_blocking("never_imported:hi", timeout=10)
