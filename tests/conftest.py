"""Every test leaves no child process, no zombie, no fd and no anyfork thread behind (checked
after each test)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

from anyfork._core import _reaper, _templates
from helpers import Gate, children, eventually, open_fds


def _persistent() -> tuple[set[int], set[int], set[int]]:
    """The default and early templates outlive tests on purpose, and so do the children each
    keeps forked ahead (``Process._ready``): their pids and fds are exempt.  Returns the
    templates' pids, the pids of their children ahead (as far as the templates have reported
    them: read here), and all their fds."""
    pids: set[int] = set()
    ahead_pids: set[int] = set()
    fds: set[int] = set()
    for tmpl in (_templates._default, _templates._early):
        if tmpl is None or tmpl._chan.sock is None:
            continue
        tmpl._receive()  # (the FORKED reports that name the children ahead)
        fds.add(tmpl._chan.fd)
        if tmpl._pid is not None:
            pids.add(tmpl._pid)
        for child in tmpl._ready:
            if child._chan.sock is not None:
                fds.add(child._chan.fd)
            if child._pid is not None:
                ahead_pids.add(child._pid)
    return pids, ahead_pids, fds


def _our_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("anyfork")}


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    _, _, skip_fds = _persistent()
    fds_before = open_fds() - skip_fds
    kids_before = children()
    threads_before = _our_threads()
    yield
    skip_pids, _, skip_fds = _persistent()

    def settled() -> bool:
        _reaper.poll()
        extra = children() - kids_before - skip_pids
        ahead = _persistent()[1]
        grandchildren = set().union(*(children(p) for p in skip_pids)) - ahead
        return not extra and not grandchildren

    try:
        eventually(settled, timeout=10, what="the test's processes to exit and be reaped")
    except AssertionError:
        extra = children() - kids_before - skip_pids
        grand = {p: children(p) - _persistent()[1] for p in skip_pids}
        for pid in extra | set().union(*grand.values()):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        pytest.fail(f"leaked processes: children {sorted(extra)}, template children {grand}")
    # A pool's threads end with it (close(wait=False) finishes in the background).
    try:
        eventually(lambda: not _our_threads() - threads_before, timeout=10, what="threads")
    except AssertionError:
        pytest.fail(f"leaked threads: {sorted(t.name for t in _our_threads() - threads_before)}")
    leaked = open_fds() - skip_fds - fds_before
    if leaked:
        targets = {}
        for fd in leaked:
            try:
                targets[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                pass
        if targets:
            pytest.fail(f"leaked fds: {targets}")


@pytest.fixture
def gate() -> Iterator[Gate]:
    """A gate for the pool tests (see ``helpers.Gate``), closed with its templates."""
    g = Gate()
    try:
        yield g
    finally:
        g.close()
