"""The pool contracts, each checked on every face that offers it (``Pool``, ``BlockingPool``,
``PoolExecutor``; see ``pool_faces.py``): results, order of map, a worker killed mid-call fails
only its call and is replaced, a dead idle worker is replaced, a start-up failure raises the same
error type at once, an abandoned call takes its sync-backend worker out of rotation, retire,
max_calls, close, statistics.

Synchronisation: gated calls (``helpers.Gate``) and the pool's own ``wait_until``, never sleeps.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest

import anyfork
import pool_faces
from anyfork import PoolStatistics
from helpers import WAIT, Gate, alive, eventually, run
from pool_faces import FACES, Face

ALL = list(FACES)
#: The faces that can abandon a running call (a timeout): the executor's calls have none.
ABANDONING = ["Pool", "BlockingPool"]


face = pool_faces.face  # the fixture: each test taking it runs on every face


def faces(*names: str) -> pytest.MarkDecorator:
    """Run the test on these faces only (those that offer what it checks)."""
    return pytest.mark.parametrize("face", names, indirect=True)


def queued_is(n: int) -> Callable[[PoolStatistics], bool]:
    return lambda s: s.queued == n


def open_gated(face: Face, gate: Gate, **options: Any) -> None:
    face.open(gate.template(), "pool_funcs:gated", **gate.options(), **options)


# -- results, order, statistics ------------------------------------------------------------------


def test_results_exceptions_and_statistics(face: Face) -> None:
    face.open(None, "pool_funcs:double", max=2, idle=1)
    if face.name in ABANDONING:  # the executor starts its workers with the first call
        assert face.statistics().workers == 1  # the initial size, ready once open
        assert face.call("ab", timeout=10) == "abab"
    else:
        assert face.call("ab") == "abab"
    assert face.call(21) == 42
    pending = [face.start(i) for i in range(30)]
    assert [p.result() for p in pending] == [2 * i for i in range(30)]
    with pytest.raises(TypeError):  # None * 2, raised in the worker: its own type
        face.call(None)
    s = face.statistics()
    assert s.calls == 33  # the failed call ran to its end too
    assert 1 <= s.started <= 2
    assert (s.died, s.retired, s.queued, s.failed_starts) == (0, 0, 0, 0)
    assert s.workers == s.idle + s.busy + s.starting
    face.close()
    assert face.statistics().workers == 0
    with pytest.raises(face.closed_error):
        face.call(1)


def test_map_keeps_the_order(face: Face) -> None:
    face.open(None, "pool_funcs:double", max=2, load=2)
    assert face.map(range(100)) == [2 * i for i in range(100)]
    assert face.map([]) == []


@faces(*ABANDONING)
def test_map_is_lazy_bounded_reports_progress_and_withdraws_when_stopped(
    face: Face, gate: Gate
) -> None:
    open_gated(face, gate, max=1, idle=1, load=1)
    consumed: list[int] = []
    progress: list[tuple[int, int | None]] = []

    def lazy() -> Iterator[int]:
        for i in range(10):
            consumed.append(i)
            yield i

    results = face.map_iter(
        lazy(), max_in_flight=3, chunksize=1, progress=lambda *p: progress.append(p)
    )
    assert consumed == []  # nothing before the first result is asked for
    gate.release(1)
    assert next(results)[0] == 0
    assert consumed == [0, 1, 2]  # read lazily, at most 3 calls in flight
    assert progress == [(1, None)]  # an iterator has no length
    face.wait_until(lambda s: s.busy == 1 and s.queued == 1)  # 1 runs, 2 waits
    gate.wait_started(2)
    results.close()  # stopped early: the queued call is withdrawn, the running one finishes
    assert consumed == [0, 1, 2]
    s = face.wait_until(lambda s: s.queued == 0)
    assert s.busy == 1
    gate.release(1)
    s = face.wait_until(lambda s: s.busy == 0)
    assert (s.calls, s.died) == (2, 0)


# -- faults --------------------------------------------------------------------------------------


def test_a_worker_killed_mid_call_fails_only_its_call_and_is_replaced(
    face: Face, gate: Gate
) -> None:
    errors: list[BaseException] = []
    open_gated(face, gate, max=2, idle=2, load=1, on_error=errors.append)
    a = face.start("a")
    face.wait_until(lambda s: s.busy == 1)  # in this order (a face may call from threads)
    b = face.start("b")
    face.wait_until(lambda s: s.busy == 2)
    queued = []
    for i in range(3):
        queued.append(face.start(f"q{i}"))
        face.wait_until(queued_is(i + 1))
    started = dict(gate.wait_started(2))
    os.kill(started["a"], signal.SIGKILL)
    with pytest.raises(anyfork.WorkerDiedError) as info:
        a.result()
    assert info.value.pid == started["a"]
    assert info.value.returncode == -signal.SIGKILL
    gate.release(4)
    assert b.result() == ("b", started["b"])  # the other worker's call is unaffected
    results = [p.result() for p in queued]  # the queue is not lost
    assert [tag for tag, _ in results] == ["q0", "q1", "q2"]
    assert started["a"] not in {pid for _, pid in results}
    s = face.wait_until(lambda s: s.idle == 2)  # replaced
    assert (s.died, s.started) == (1, 3)
    assert started["a"] not in face.worker_pids()
    # A worker's death, also the stdlib's BrokenProcessPool (for code written for executors).
    assert len(errors) == 1
    assert isinstance(errors[0], anyfork.WorkerDiedError)
    assert isinstance(errors[0], BrokenProcessPool)


def test_a_worker_exiting_mid_call_fails_that_call_and_is_replaced(face: Face) -> None:
    face.open(None, "pool_funcs:die", max=1, idle=1)
    with pytest.raises(anyfork.WorkerDiedError) as info:
        face.call(7)
    assert info.value.returncode == 7
    s = face.wait_until(lambda s: s.died == 1 and s.idle == 1)
    assert s.calls == 0  # a call whose worker died did not run to its end


def test_a_dead_idle_worker_is_replaced_without_a_call(face: Face) -> None:
    face.open(None, "pool_funcs:pid", max=2, idle=2)
    face.call(0)  # the executor starts its workers with the first call
    face.wait_until(lambda s: s.idle == 2)
    victim, other = face.worker_pids()
    os.kill(victim, signal.SIGKILL)
    s = face.wait_until(lambda s: s.died == 1 and s.idle == 2)  # no call needed to notice
    assert s.started == 3
    pids = face.worker_pids()
    assert victim not in pids
    assert other in pids
    assert face.call(1)[1] in pids


@pytest.mark.parametrize(
    ("template", "func", "error"),
    [
        (None, "no_such_module:work", ModuleNotFoundError),  # a typo in the function's module
        (None, "pool_funcs:no_such_function", AttributeError),  # ... or in its name
        ("require", "pool_funcs:double", anyfork.SpawnError),  # a template whose require failed
    ],
)
def test_a_start_up_failure_fails_every_waiting_call_at_once(
    face: Face, template: str | None, func: str, error: type[Exception]
) -> None:
    """The same mistake raises the same type through rpc() and every face, and that error is
    an AnyforkError too; no caller waits for a worker that cannot start (the executor once hung
    here: a future's callback came back into the pool's lock)."""
    tmpl = anyfork.new().require("no_such_module") if template == "require" else None
    try:
        with pytest.raises(error) as through_rpc:
            run(anyfork.rpc(tmpl.fork() if tmpl else anyfork.new(), func, timeout=WAIT))
        assert isinstance(through_rpc.value, anyfork.AnyforkError)
        face.open(tmpl, func, max=2, idle=0)
        pending = [face.start(i) for i in range(3)]
        for p in pending:
            with pytest.raises(error) as info:
                p.result()
            # The same type (an AnyforkError too); the executor's also a BrokenProcessPool.
            assert isinstance(info.value, type(through_rpc.value))
            assert type(info.value) is type(through_rpc.value) or (
                face.name == "PoolExecutor" and isinstance(info.value, BrokenProcessPool)
            )
        assert face.statistics().failed_starts >= 1
    finally:
        if tmpl is not None:
            tmpl.close()


def test_a_start_up_timeout_is_an_anyfork_error_too(face: Face) -> None:
    """Every start-up failure of a pool's worker is an AnyforkError, whatever its own type
    (here the builtin TimeoutError of a start-up deadline no start can meet)."""
    face.open(None, "pool_funcs:double", max=1, idle=0, timeout=1e-9)
    with pytest.raises(TimeoutError) as info:
        face.start(1).result()
    assert isinstance(info.value, anyfork.AnyforkError)
    assert face.statistics().failed_starts == 1


@faces("Pool", "BlockingPool")
def test_a_start_up_failure_raises_when_the_pool_opens(face: Face) -> None:
    with pytest.raises(ModuleNotFoundError) as info:
        face.open(None, "no_such_module:work", max=1, idle=1)
    assert isinstance(info.value, anyfork.AnyforkError)


def test_a_template_must_be_a_process(face: Face) -> None:
    with pytest.raises(TypeError, match=r"template is an anyfork\.Process or None"):
        face.open("pool_funcs:double", "pool_funcs:double")  # type: ignore[arg-type]


@faces(*ABANDONING)
def test_a_timed_out_call_takes_its_sync_worker_out_of_rotation(face: Face, gate: Gate) -> None:
    """The call queued behind a call that times out goes to the replacement, not to the worker
    being killed (it used to fail with WorkerDiedError, blaming the other call)."""
    open_gated(face, gate, max=1, idle=1, load=1)
    (victim,) = face.worker_pids()
    slow = face.start("slow", timeout=0.5)  # never released: it times out
    face.wait_until(lambda s: s.busy == 1 or slow.done())
    after = face.start("after")
    face.wait_until(lambda s: s.queued == 1 or slow.done())
    with pytest.raises(TimeoutError):
        slow.result()
    killed = face.statistics().died == 1  # unless it expired before it was sent
    if killed:
        # Counted out when it was killed; until it is gone, it could still take the gate's
        # byte (a pipe read woken by SIGKILL takes what came meanwhile).
        eventually(lambda: not alive(victim), what="the killed worker to exit")
    gate.release(1)
    tag, pid = after.result()
    assert tag == "after"
    s = face.wait_until(lambda s: s.idle == 1)
    assert s.died == killed
    if killed:  # the slow call had been sent: its worker was killed, and replaced
        assert pid != victim


@faces(*ABANDONING)
def test_close_cancel_kills_workers_and_fails_queued_calls(face: Face, gate: Gate) -> None:
    open_gated(face, gate, max=2, idle=0, load=1, start=0)
    pending = {i: face.start(i) for i in range(5)}
    started = gate.wait_started(2)
    face.wait_until(lambda s: s.queued == 3)
    face.close(cancel=True)
    running = {tag for tag, _ in started}
    for tag, p in pending.items():
        with pytest.raises(anyfork.AnyforkError) as info:
            p.result()
        # The running calls' workers are killed; the queued calls fail without running.
        if tag in running:
            assert isinstance(info.value, anyfork.WorkerDiedError)
            assert isinstance(info.value, BrokenProcessPool)
        else:
            assert type(info.value) is anyfork.ClosedError
    assert not any(alive(pid) for _, pid in started)  # killed, and waited for


def test_a_graceful_close_runs_the_queued_calls(face: Face, gate: Gate) -> None:
    closed: list[int] = []
    open_gated(face, gate, max=1, idle=1, load=1, on_close=lambda: closed.append(1))
    pending = [face.start(i) for i in range(4)]
    gate.wait_started(1)
    face.wait_until(lambda s: s.queued == 3)
    with cf.ThreadPoolExecutor(1, thread_name_prefix="test-closer") as closer:
        closing = closer.submit(face.close)
        gate.release(1)
        assert pending[0].result()[0] == 0
        assert not closing.done()  # it waits for the queued calls, which wait for the gate
        gate.release(3)
        assert [p.result()[0] for p in pending] == [0, 1, 2, 3]
        closing.result(WAIT)
    assert closed == [1]
    assert face.statistics().workers == 0
    with pytest.raises(face.closed_error):
        face.call(99)


# -- recycling -----------------------------------------------------------------------------------


def test_retire_replaces_the_worker(face: Face) -> None:
    face.open(None, "pool_funcs:retire_after", max=2, idle=1)
    pids = [face.call(i)[1] for i in range(4)]
    assert len(set(pids)) == 4  # a new worker for every call
    s = face.wait_until(lambda s: s.retired == 4)
    assert s.workers <= 2
    assert s.died == 0


def test_max_calls_recycles(face: Face) -> None:
    face.open(None, "pool_funcs:pid", max=1, idle=1, max_calls=2)
    pids = [face.call(i)[1] for i in range(6)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] == pids[5]
    assert len(set(pids)) == 3
    s = face.wait_until(lambda s: s.retired == 3)
    assert s.died == 0


def test_an_idle_worker_beyond_idle_stops_at_the_policys_wake_time(face: Face) -> None:
    """The policy's ``Wake`` (here: an idle stop ``stop`` seconds after the last call) is kept
    by every engine: the asyncio engine's timer, the threads engine's watcher thread."""
    face.open(None, "pool_funcs:double", max=2, idle=0, load=1, start=0, stop=0.1)
    assert face.call(21) == 42
    s = face.wait_until(lambda s: s.workers == 0)
    assert (s.started, s.died, s.calls) == (1, 0, 1)
