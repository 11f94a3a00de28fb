"""The executor's engine (``_pool_threads``): paths the stdlib-style executor tests do not reach.

Each worker has a thread of its own; these tests kill, retire and recycle real workers and check
that the executor's futures and statistics tell the truth, with nothing left behind.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import socket
import threading
from types import SimpleNamespace
from typing import Any

import pytest

import anyfork
import pool_funcs
from helpers import alive, eventually

WAIT = 20


def test_an_idle_worker_killed_loses_no_call() -> None:
    with anyfork.PoolExecutor(func=pool_funcs.pid, max_workers=1, idle=1) as ex:
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


def test_a_call_held_by_a_dead_workers_thread_is_not_run_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The interleaving that once left a worker busy forever (and shutdown hanging): the dead
    worker's thread has taken the call from its inbox when a waiting caller claims it, finds
    the worker dead and queues it again.  The thread must then leave the call alone."""
    from anyfork._pool._threads import ThreadsEngine

    armed, requeued = threading.Event(), threading.Event()
    real_claim, real_lost = ThreadsEngine._claim, ThreadsEngine._lost

    def claim(self: ThreadsEngine, worker: Any, call: Any) -> bool:
        if armed.is_set() and worker.id == 1:
            assert requeued.wait(WAIT), "the waiting caller never found the worker dead"
        return real_claim(self, worker, call)

    def lost(self: ThreadsEngine, worker: Any, died: Any, unstarted: Any = None) -> None:
        real_lost(self, worker, died, unstarted)
        requeued.set()

    monkeypatch.setattr(ThreadsEngine, "_claim", claim)
    monkeypatch.setattr(ThreadsEngine, "_lost", lost)
    with anyfork.PoolExecutor(func=pool_funcs.pid, max_workers=1, idle=1) as ex:
        _, first = ex.submit(pool_funcs.pid, 1).result(WAIT)
        os.kill(first, signal.SIGKILL)
        eventually(lambda: not alive(first), what="the killed worker to die")
        armed.set()
        tag, second = ex.submit(pool_funcs.pid, 2).result()  # no timeout: the caller helps
        assert (tag, second != first) == (2, True)
        engine = ex._engine
        eventually(
            lambda: all(w.load == 0 for w in engine._core.workers.values()),
            what="the replacement worker to be idle (not loaded with a ghost copy of the call)",
        )
        stats = ex.statistics()
    assert requeued.is_set()
    assert stats.calls == 2
    assert stats.died == 1


def test_a_reply_in_flight_is_not_taken_for_a_death() -> None:
    """``died_idle`` (is an idle worker dead?) must wait for a call another thread has in flight
    on the same client: until that call reads its reply, the socket is readable without any
    death.  (Modelled with a socketpair; the pool's real race needs a loaded machine.)"""
    from anyfork._pool._watch import died_idle

    class SpyLock:
        """The client's lock, telling when someone tries to take it."""

        def __init__(self) -> None:
            self.inner = threading.RLock()
            self.tried = threading.Event()

        def __enter__(self) -> None:
            self.tried.set()
            self.inner.acquire()

        def __exit__(self, *exc: object) -> None:
            self.inner.release()

    a, b = socket.socketpair()
    with a, b:
        lock = SpyLock()
        client = SimpleNamespace(_sock=a, _lock=lock)
        answers: list[bool] = []
        with lock.inner:  # a call in flight: its request is out, and its reply arrives
            b.sendall(b"reply")
            other = threading.Thread(target=lambda: answers.append(died_idle(client)))  # type: ignore[arg-type]
            other.start()
            assert lock.tried.wait(5), "died_idle looked at the socket without the client's lock"
            assert a.recv(5) == b"reply"  # the call reads its reply, then lets go
        other.join(WAIT)
        assert answers == [False]
        b.close()
        assert died_idle(client) is True  # type: ignore[arg-type]  # EOF: that one is a death


def test_a_worker_dying_mid_call_fails_only_that_call() -> None:
    with anyfork.PoolExecutor(func=pool_funcs.die, max_workers=1) as ex:
        with pytest.raises(anyfork.WorkerDiedError) as info:
            ex.submit(pool_funcs.die, 7).result(WAIT)
        assert info.value.returncode == 7
    with anyfork.PoolExecutor(func=None, max_workers=1) as ex:
        dying = ex.submit(pool_funcs.die, 3)
        after = ex.submit(pool_funcs.double, 21)
        with pytest.raises(anyfork.WorkerDiedError):
            dying.result(WAIT)
        assert after.result(WAIT) == 42  # queued behind it, served by the replacement
        assert ex.statistics().died == 1


def test_retire_and_max_calls_replace_workers() -> None:
    with anyfork.PoolExecutor(func=pool_funcs.retire_after, max_workers=1, idle=1) as ex:
        pids = [ex.submit(pool_funcs.retire_after, i).result(WAIT)[1] for i in range(3)]
        stats = ex.statistics()
    assert len(set(pids)) == 3  # each call retired its worker
    assert stats.retired >= 2
    with anyfork.PoolExecutor(func=pool_funcs.pid, max_workers=1, max_tasks_per_child=2) as ex:
        pids = [ex.submit(pool_funcs.pid, i).result(WAIT)[1] for i in range(6)]
    assert len(set(pids)) == 3  # recycled every 2 calls


# -- a caller waiting in result() runs its call itself ----------------------------------------


def result_within(fut: cf.Future[Any], deadline: float = WAIT) -> Any:
    """``fut.result()`` without a timeout (the path where the caller runs the call itself), in a
    thread joined with a deadline: the test fails instead of hanging."""
    out: list[Any] = []

    def wait() -> None:
        try:
            out.append(("ok", fut.result()))
        except BaseException as exc:
            out.append(("error", exc))

    thread = threading.Thread(target=wait, name="test-waiter")
    thread.start()
    thread.join(deadline)
    assert not thread.is_alive(), "result() did not return in time"
    kind, value = out[0]
    if kind == "error":
        raise value
    return value


def test_a_waiting_caller_runs_its_call_and_death_is_handled_once() -> None:
    with anyfork.PoolExecutor(func=None, max_workers=1) as ex:
        assert result_within(ex.submit(pool_funcs.double, 4)) == 8
        with pytest.raises(anyfork.WorkerDiedError) as info:
            result_within(ex.submit(pool_funcs.die, 5))
        assert info.value.returncode == 5
        assert result_within(ex.submit(pool_funcs.double, 5)) == 10  # a replacement serves
        stats = ex.statistics()
    assert stats.died == 1
    assert stats.calls == 2


def test_a_waiting_caller_finds_an_idle_worker_dead_and_loses_nothing() -> None:
    with anyfork.PoolExecutor(func=pool_funcs.pid, max_workers=1, idle=1) as ex:
        _, first = result_within(ex.submit(pool_funcs.pid, 1))
        os.kill(first, signal.SIGKILL)
        eventually(lambda: not alive(first), what="the killed worker to die")
        tag, second = result_within(ex.submit(pool_funcs.pid, 2))
    assert tag == 2
    assert second != first


def test_many_threads_waiting_and_not_waiting() -> None:
    """Callers that wait (and so run calls themselves) mixed with callers that only collect
    (so the workers' threads run theirs): every call runs exactly once, in its own future."""
    with anyfork.PoolExecutor(func=pool_funcs.double, max_workers=2, idle=2) as ex:

        def waiter(base: int) -> list[Any]:
            return [ex.submit(pool_funcs.double, base + i).result() for i in range(100)]

        def collector(base: int) -> list[Any]:
            futs = [ex.submit(pool_funcs.double, base + i) for i in range(100)]
            done, _ = cf.wait(futs, timeout=WAIT)
            assert len(done) == 100
            return [f.result(0) for f in futs]

        with cf.ThreadPoolExecutor(4, thread_name_prefix="test-caller") as callers:
            jobs = [callers.submit(waiter, 0), callers.submit(waiter, 1000)]
            jobs += [callers.submit(collector, 2000), callers.submit(collector, 3000)]
            results = [job.result(WAIT) for job in jobs]
        stats = ex.statistics()
    for base, got in zip((0, 1000, 2000, 3000), results, strict=True):
        assert got == [2 * (base + i) for i in range(100)]
    assert stats.calls == 400


def test_the_executor_checks_its_options_as_the_pool_does() -> None:
    with pytest.raises(ValueError, match="max_tasks_per_child must be >= 1"):
        anyfork.PoolExecutor(func=pool_funcs.pid, max_tasks_per_child=0)
    with pytest.raises(ValueError, match="max_memory"):
        anyfork.PoolExecutor(func=pool_funcs.pid, max_memory=-1)
    with pytest.raises(ValueError, match="load"):
        anyfork.PoolExecutor(func=pool_funcs.pid, load=0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        anyfork.PoolExecutor(func=pool_funcs.pid, bogus=1)  # type: ignore[call-arg]


def blocked_signals(thread: threading.Thread) -> set[int]:
    """The signals ``thread`` blocks, as the kernel has them (its SigBlk mask)."""
    with open(f"/proc/self/task/{thread.native_id}/status") as status:
        for line in status:
            if line.startswith("SigBlk:"):
                mask = int(line.split()[1], 16)
                return {sig for sig in range(1, 65) if mask & (1 << (sig - 1))}
    raise AssertionError("no SigBlk line")


@pytest.mark.parametrize("face", ["BlockingPool", "PoolExecutor"])
def test_the_engines_threads_leave_ctrl_c_to_the_main_thread(face: str) -> None:
    """The kernel gives a process-directed SIGINT to any thread that does not block it, and
    CPython acts on it only in the main thread: if one of the engine's threads took it, a main
    thread asleep in ``result()`` or ``map`` was never woken (a Ctrl-C hang seen under load).
    Every thread the engine starts (a worker's, the watcher) blocks it; the
    caller's mask is left as it was."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    if face == "BlockingPool":
        pool: Any = anyfork.BlockingPool(None, "pool_funcs:double", max=1, idle=1)
        call = pool.call
        close = pool.close
    else:
        pool = anyfork.PoolExecutor(1)
        call = lambda x: pool.submit(pool_funcs.double, x).result(WAIT)  # noqa: E731
        close = pool.shutdown
    try:
        assert call(21) == 42
        ours = [t for t in threading.enumerate() if t.name.startswith("anyfork-pool")]
        assert ours, "the engine started no thread"
        eventually(lambda: all(t.native_id for t in ours), what="the threads to be running")
        for thread in ours:
            assert {signal.SIGINT, signal.SIGTERM, signal.SIGCHLD} <= blocked_signals(thread), (
                thread.name
            )
            assert signal.SIGSEGV not in blocked_signals(thread)
        assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before
        assert signal.SIGINT not in blocked_signals(threading.main_thread())
    finally:
        close()
