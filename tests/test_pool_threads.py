"""The executor's engine (``_pool_threads``): paths the stdlib-style executor tests do not reach.

Each worker has a thread of its own; these tests kill, retire and recycle real workers and check
that the executor's futures and statistics tell the truth, with nothing left behind.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

import anyfork
import pool_funcs
from helpers import alive, eventually

WAIT = 20


@pytest.fixture(autouse=True)
def no_threads() -> Iterator[None]:
    yield
    left = [t.name for t in threading.enumerate() if t.name.startswith("anyfork-pool")]
    assert not left, f"pool threads outlived their pool: {left}"


def test_an_idle_worker_killed_loses_no_call() -> None:
    with anyfork.PoolExecutor(None, pool_funcs.pid, max_workers=1, idle=1) as ex:
        _, first = ex.submit(pool_funcs.pid, 1).result(WAIT)
        os.kill(first, signal.SIGKILL)
        eventually(lambda: not alive(first), what="the killed worker to die")
        # Handed to the dead worker, found dead before it was sent: queued again, and served.
        tag, second = ex.submit(pool_funcs.pid, 2).result(WAIT)
        assert tag == 2
        assert second != first
        stats = ex.statistics()
    assert stats.died == 1
    assert stats.calls == 2


def test_a_worker_dying_mid_call_fails_only_that_call() -> None:
    with anyfork.PoolExecutor(None, pool_funcs.die, max_workers=1) as ex:
        with pytest.raises(anyfork.WorkerDiedError) as info:
            ex.submit(pool_funcs.die, 7).result(WAIT)
        assert info.value.returncode == 7
    with anyfork.PoolExecutor(None, None, max_workers=1) as ex:
        dying = ex.submit(pool_funcs.die, 3)
        after = ex.submit(pool_funcs.double, 21)
        with pytest.raises(anyfork.WorkerDiedError):
            dying.result(WAIT)
        assert after.result(WAIT) == 42  # queued behind it, served by the replacement
        assert ex.statistics().died == 1


def test_retire_and_max_calls_replace_workers() -> None:
    with anyfork.PoolExecutor(None, pool_funcs.retire_after, max_workers=1, idle=1) as ex:
        pids = [ex.submit(pool_funcs.retire_after, i).result(WAIT)[1] for i in range(3)]
        stats = ex.statistics()
    assert len(set(pids)) == 3  # each call retired its worker
    assert stats.retired >= 2
    with anyfork.PoolExecutor(None, pool_funcs.pid, max_workers=1, max_calls=2) as ex:
        pids = [ex.submit(pool_funcs.pid, i).result(WAIT)[1] for i in range(6)]
    assert len(set(pids)) == 3  # recycled every 2 calls
