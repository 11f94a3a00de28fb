"""The pool's core without processes, threads or an event loop: the bookkeeping both engines
share (``_pool._core.PoolCore``), driven by hand and by hypothesis through random sequences of
what can happen to a pool, checking that no call is lost or given twice and that no call is
given to a worker that cannot take it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import anyfork
from anyfork._pool import _core, _policy
from anyfork._pool._core import Halt, Launch, PoolCore, Send
from anyfork._pool._records import Worker

Core = PoolCore[Worker, str]
POOL = Path(anyfork.__file__).resolve().parent / "_pool"


def make(
    max: int = 2,
    idle: int = 1,
    load: int = 1,
    max_calls: int | None = None,
    max_memory: int | None = None,
    sizes: dict[int, int] | None = None,
) -> Core:
    return PoolCore(
        _policy.Settings(max, idle, load, start=0, stop=0),
        max_calls=max_calls,
        max_memory=max_memory,
        new_worker=Worker,
        measure=lambda pid: (sizes or {}).get(pid),
    )


def launches(effects: list[_core.Effect[Worker, str]]) -> list[Worker]:
    return [e.worker for e in effects if isinstance(e, Launch)]


def sends(effects: list[_core.Effect[Worker, str]]) -> list[tuple[int, str]]:
    return [(e.worker.id, e.call) for e in effects if isinstance(e, Send)]


def halts(effects: list[_core.Effect[Worker, str]]) -> list[int]:
    return [e.worker.id for e in effects if isinstance(e, Halt)]


def test_the_core_imports_no_io() -> None:
    """The core and the policy are sans-IO: no sockets, clocks, threads or event loop."""
    banned = {"asyncio", "socket", "select", "selectors", "threading", "time", "os", "subprocess"}
    for name in ("_core.py", "_policy.py", "_records.py"):
        tree = ast.parse((POOL / name).read_text())
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
        assert not imported & banned, (name, imported & banned)


def test_a_call_goes_to_a_ready_worker_and_the_worker_gets_it_back() -> None:
    core = make()
    core.submit("a")
    (w,) = launches(core.schedule(0.0))  # idle=1: one worker starts
    assert sends(core.schedule(0.0)) == []  # not ready: nothing sent
    assert core.started(w, 100, 1.0)
    assert sends(core.schedule(1.0)) == [(w.id, "a")]
    assert (w.load, core.statistics().busy) == (1, 1)
    core.finished(w, 2.0, completed=True)
    assert (w.load, w.idle_since, core.totals.calls) == (0, 2.0, 1)
    assert core.worker_pids() == [100]


def test_a_lost_worker_leaves_the_rotation_at_once() -> None:
    core = make(max=2, idle=1, load=2)
    (w,) = launches(core.schedule(0.0))
    core.started(w, 100, 0.0)
    core.submit("a")
    effects = core.schedule(0.0)
    assert sends(effects) == [(w.id, "a")]
    (w2,) = launches(effects)  # idle=1: another one starts while w is busy
    assert core.lost(w)  # a call it ran was abandoned: the pool kills it
    assert not core.lost(w)  # once
    core.submit("b")
    assert sends(core.schedule(0.0)) == []  # not for the condemned worker, though it had room
    core.finished(w, 0.0, completed=False)  # "a" ends (failed): nothing changes for w
    assert (w.load, core.statistics().died) == (1, 1)
    core.started(w2, 101, 0.0)
    assert sends(core.schedule(0.0)) == [(w2.id, "b")]


def test_calls_found_undeliverable_are_queued_again_first_in_order() -> None:
    core = make()
    for call in "abc":
        core.submit(call)
    core.queue.popleft()
    core.queue.popleft()
    assert core.requeue(["a", "b"]) == []
    assert list(core.queue) == ["a", "b", "c"]
    assert core.withdraw("b")
    assert not core.withdraw("b")
    assert list(core.queue) == ["a", "c"]


def test_a_failed_start_fails_the_queue_only_when_no_worker_is_left() -> None:
    core = make(max=2, idle=0)
    core.submit("a")
    core.submit("b")
    core.submit("c")
    w1, w2 = launches(core.schedule(0.0))
    error, calls = core.start_failed(w1, ModuleNotFoundError("No module named 'x'"))
    assert calls == []  # w2 may still serve them
    assert isinstance(error, ModuleNotFoundError)
    assert isinstance(error, anyfork.AnyforkError)  # and it is anyfork's failure too
    error2, calls = core.start_failed(w2, TimeoutError("start-up"))
    assert calls == ["a", "b", "c"]  # nobody can serve them: the engine fails them
    assert isinstance(error2, TimeoutError)
    assert isinstance(error2, anyfork.AnyforkError)
    assert core.start_error is error2
    assert (core.statistics().failed_starts, len(core.queue)) == (2, 0)
    spawn = anyfork.SpawnError("template dead")
    core.submit("d")
    (w3,) = launches(core.schedule(0.0))  # an empty pool starts on demand, at once
    assert core.start_failed(w3, spawn)[0] is spawn  # already an AnyforkError: itself


def test_max_calls_and_max_memory_retire_workers() -> None:
    core = make(max=1, idle=1, max_calls=2)
    (w,) = launches(core.schedule(0.0))
    core.started(w, 100, 0.0)
    for call in "ab":
        core.submit(call)
        assert sends(core.schedule(0.0)) == [(w.id, call)]
        assert w.retiring is (call == "b")
        core.finished(w, 0.0, completed=True)
    effects = core.schedule(0.0)
    assert halts(effects) == [w.id]
    assert len(launches(effects)) == 1  # replaced
    assert core.totals.retired == 1
    core = make(max=1, idle=1, max_memory=1000, sizes={100: 999, 101: 1001})
    (w,) = launches(core.schedule(0.0))
    core.started(w, 100, 0.0)
    core.submit("a")
    core.schedule(0.0)
    core.finished(w, 0.0, completed=True)
    assert not w.retiring
    w.pid = 101
    core.submit("b")
    core.schedule(0.0)
    core.finished(w, 0.0, completed=True)
    assert w.retiring


def test_cancel_hands_everything_back_and_stops_scheduling() -> None:
    core = make()
    (w,) = launches(core.schedule(0.0))
    core.submit("a")
    calls, workers = core.cancel()
    assert (calls, workers, w.stopping) == (["a"], [w], True)
    assert core.schedule(0.0) == []
    assert core.requeue(["b"]) == ["b"]  # the engine fails it
    assert not core.started(w, 100, 0.0)  # the engine closes it
    assert core.drained


def test_the_settings_are_checked() -> None:
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="max_calls is None or an int >= 1"):
            make(max_calls=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="max_memory is None or a number of bytes"):
            make(max_memory=bad)  # type: ignore[arg-type]


# -- a model: random histories ----------------------------------------------------------------

EVENT = st.sampled_from(["submit", "start", "fail", "finish", "lose", "retire", "withdraw"])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(EVENT, st.integers(0, 7)), max_size=80),
    st.integers(1, 3),
    st.integers(0, 2),
    st.integers(1, 3),
)
def test_no_call_is_lost_given_twice_or_given_to_a_worker_that_cannot_take_it(
    history: list[tuple[str, int]], max: int, idle: int, load: int
) -> None:
    core = make(max=max, idle=min(idle, max), load=load)
    starting: list[Worker] = []
    running: dict[str, Worker] = {}  # call -> the worker it was sent to
    finished: set[str] = set()
    submitted = 0
    now = 0.0

    def step() -> None:
        for effect in core.schedule(now):
            if isinstance(effect, Launch):
                starting.append(effect.worker)
            elif isinstance(effect, Send):
                w, call = effect.worker, effect.call
                assert w.ready
                assert not w.dead
                assert not w.stopping
                assert not w.retiring
                assert w.load <= load
                assert call not in running
                assert call not in finished
                running[call] = w
            elif isinstance(effect, Halt):
                assert effect.worker.load == 0
        assert len(core.workers) <= max

    for kind, n in history:
        now += 1.0
        if kind == "submit":
            core.submit(f"c{submitted}")
            submitted += 1
        elif kind == "start" and starting:
            core.started(starting.pop(n % len(starting)), n, now)
        elif kind == "fail" and starting:
            _, failed = core.start_failed(starting.pop(n % len(starting)), OSError("no fork"))
            finished.update(c for c in failed if isinstance(c, str))  # no jobs here
        elif kind in ("finish", "lose") and running:
            call = sorted(running)[n % len(running)]
            w = running.pop(call)
            if kind == "lose" and core.lost(w):
                # Its calls not sent are not the core's concern; those sent fail with it.
                for other in [c for c, x in running.items() if x is w]:
                    core.finished(running.pop(other), now, completed=False)
                    finished.add(other)
            core.finished(w, now, completed=kind == "finish")
            finished.add(call)
        elif kind == "retire" and core.workers:
            core.retire(list(core.workers.values())[n % len(core.workers)])
        elif kind == "withdraw" and core.queue:
            entry = core.queue[n % len(core.queue)]
            assert isinstance(entry, str)
            assert core.withdraw(entry)
            call = entry
            finished.add(call)
        step()
    # Every call made is queued, with a worker, or over: exactly one of them.
    queued = set(core.queue)
    assert len(queued) == len(core.queue)
    assert not queued & set(running)
    assert not (queued | set(running)) & finished
    assert len(queued) + len(running) + len(finished) == submitted
    for w in core.workers.values():
        assert w.load == sum(1 for x in running.values() if x is w)
