"""The pool policy, without processes: a fake clock, a model pool, hypothesis.

``decide`` is pure, so every timing rule (start pacing, stop pacing, idle minimum, shrinking to
zero) is checked here with exact times, and hypothesis drives a model pool through random calls,
completions, deaths, retirements and clock jumps to check the invariants: never more than
``max`` workers, never more than ``load`` calls on a worker, no call lost, and eventual
scale-down to ``idle``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anyfork._pool._policy import (
    FAILED_START_BACKOFF,
    Dispatch,
    PoolView,
    Settings,
    Start,
    Stop,
    Wake,
    WorkerView,
    decide,
)

# -- settings -----------------------------------------------------------------------------------


def test_settings_defaults_and_zero_values() -> None:
    s = Settings(max=4)
    assert (s.idle, s.load, s.start, s.stop) == (1, 2, 0.1, 10.0)
    Settings(max=1, idle=0, start=0, stop=0)  # zero is valid where it makes sense


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max": 0}, "max is the largest number of workers"),
        ({"max": 2, "load": 0}, "load is the number of concurrent calls"),
        ({"max": 2, "idle": -1}, "idle is a number"),
        ({"max": 2, "idle": 3}, r"idle \(3\) cannot exceed max \(2\)"),
        ({"max": 2, "start": -0.1}, "start is a delay"),
        ({"max": 2, "stop": float("inf")}, "stop is a delay"),
        ({"max": 2.5}, "max is"),
        ({"max": True}, "max is"),
        ({"max": 2, "load": "2"}, "load is"),
    ],
)
def test_settings_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Settings(**kwargs)  # type: ignore[arg-type]


# -- single decisions ---------------------------------------------------------------------------


def W(wid: int, load: int = 0, **kw: object) -> WorkerView:
    return WorkerView(wid, load, **kw)  # type: ignore[arg-type]


def test_least_loaded_gets_the_call() -> None:
    state = PoolView(workers=[W(1, 1), W(2, 0), W(3, 1)], queued=1, last_start=0.0)
    assert decide(5.0, state, Settings(max=3, idle=0)) == [Dispatch(2)]


def test_ties_go_to_the_lowest_id_and_load_is_spread() -> None:
    state = PoolView(workers=[W(2), W(1)], queued=3, last_start=0.0)
    assert decide(5.0, state, Settings(max=2, idle=0, load=2)) == [
        Dispatch(1),
        Dispatch(2),
        Dispatch(1),
    ]


def test_full_workers_queue_and_start_one() -> None:
    state = PoolView(workers=[W(1, 2)], queued=1, last_start=0.0)
    assert decide(5.0, state, Settings(max=2, idle=0, load=2)) == [Start()]


def test_no_start_beyond_max() -> None:
    state = PoolView(workers=[W(1, 2), W(2, 2)], queued=5, last_start=0.0)
    assert decide(5.0, state, Settings(max=2, idle=0, load=2)) == []


def test_starting_and_retiring_workers_get_no_calls() -> None:
    state = PoolView(workers=[W(1, ready=False), W(2, 1, retiring=True)], queued=1, last_start=0)
    # The starting worker will take the queued call: no second start.
    assert decide(5.0, state, Settings(max=4, idle=0, load=2)) == []


def test_queued_beyond_starting_capacity_starts_more() -> None:
    state = PoolView(workers=[W(1, ready=False)], queued=3, last_start=0.0)
    assert decide(5.0, state, Settings(max=4, idle=0, load=2, start=0)) == [Start()]


def test_first_worker_of_an_empty_pool_is_not_paced() -> None:
    state = PoolView(queued=1, last_start=10.0)
    assert decide(10.0, state, Settings(max=4, idle=0, start=5)) == [Start()]


def test_start_pacing() -> None:
    s = Settings(max=4, idle=0, load=1, start=0.5)
    state = PoolView(workers=[W(1, 1)], queued=2, last_start=10.0)
    assert decide(10.2, state, s) == [Wake(10.5)]
    assert decide(10.5, state, s) == [Start(), Wake(11.0)]  # one start, then the gap again
    assert decide(10.5, replace(state, last_start=None), s) == [Start(), Wake(11.0)]


def test_start_zero_starts_all_needed_at_once() -> None:
    s = Settings(max=4, idle=0, load=1, start=0)
    state = PoolView(workers=[W(1, 1)], queued=5, last_start=10.0)
    assert decide(10.0, state, s) == [Start(), Start(), Start()]


def test_initial_size_is_idle_without_pacing() -> None:
    assert decide(0.0, PoolView(), Settings(max=4, idle=3, start=1)) == [Start()] * 3
    assert decide(0.0, PoolView(), Settings(max=4, idle=0)) == []


def test_idle_minimum_beyond_initial_size_is_paced() -> None:
    # idle=1: when the only worker becomes busy, a spare one is started, paced.
    s = Settings(max=4, idle=1, load=2, start=1)
    state = PoolView(workers=[W(1, 1)], last_start=0.0)
    assert decide(0.5, state, s) == [Wake(1.0)]
    assert decide(1.0, state, s) == [Start()]


def test_dead_workers_are_replaced_up_to_idle_at_once() -> None:
    s = Settings(max=4, idle=2, start=10)
    state = PoolView(workers=[W(1)], last_start=0.0)
    assert decide(0.1, state, s) == [Start()]


def test_after_failed_start_only_calls_start_workers_with_backoff() -> None:
    s = Settings(max=4, idle=2, load=1, start=0)
    assert decide(5.0, PoolView(last_start=5.0, start_failed=True), s) == []
    # The pool is empty and a call waits: start at once (the call fails if it fails again).
    assert decide(5.0, PoolView(queued=1, last_start=5.0, start_failed=True), s) == [Start()]
    busy = PoolView(workers=[W(1, 1)], queued=1, last_start=5.0, start_failed=True)
    assert decide(5.0, busy, s) == [Wake(5.0 + FAILED_START_BACKOFF)]


def test_idle_stop_waits_stop_seconds_and_paces() -> None:
    s = Settings(max=4, idle=0, stop=10)
    state = PoolView(workers=[W(1, idle_since=0.0), W(2, idle_since=3.0)], last_start=0.0)
    assert decide(5.0, state, s) == [Wake(10.0)]
    assert decide(10.0, state, s) == [Stop(1, "idle"), Wake(20.0)]
    after = PoolView(workers=[W(2, idle_since=3.0)], last_start=0.0, last_stop=10.0)
    assert decide(15.0, after, s) == [Wake(20.0)]
    # An idle=0 pool shrinks to zero (the original never stops anything with idle=0).
    assert decide(20.0, after, s) == [Stop(2, "idle")]


def test_stop_zero_stops_every_excess_worker_at_once() -> None:
    s = Settings(max=4, idle=1, stop=0)
    state = PoolView(workers=[W(1, idle_since=1), W(2, idle_since=2), W(3, 1)], last_start=0)
    assert decide(2.0, state, s) == [Stop(1, "idle")]
    state = replace(state, workers=[W(1, idle_since=1), W(2, idle_since=2), W(3, idle_since=2)])
    assert decide(2.0, state, s) == [Stop(1, "idle"), Stop(3, "idle")]


def test_starting_workers_count_as_idle() -> None:
    s = Settings(max=4, idle=1, stop=0)
    state = PoolView(workers=[W(1, idle_since=1), W(2, ready=False)], last_start=0)
    assert decide(2.0, state, s) == [Stop(1, "idle")]


def test_retiring_worker_stops_when_drained_and_is_replaced() -> None:
    s = Settings(max=1, idle=1, start=5)
    state = PoolView(workers=[W(1, 1, retiring=True)], queued=2, last_start=0.0)
    assert decide(1.0, state, s) == []  # counts against max until it has drained
    drained = replace(state, workers=[W(1, 0, retiring=True)])
    assert decide(1.0, drained, s) == [Stop(1, "retired"), Start()]


def test_closing_serves_the_queue_then_stops_everything() -> None:
    s = Settings(max=2, idle=2, load=1, stop=100)
    state = PoolView(workers=[W(1, 1), W(2)], queued=2, last_start=0.0, closing=True)
    assert decide(1.0, state, s) == [Dispatch(2)]
    state = PoolView(workers=[W(1, 1), W(2)], last_start=0.0, closing=True)
    assert decide(1.0, state, s) == [Stop(2, "closing")]
    assert decide(1.0, PoolView(queued=1, closing=True), s) == [Start()]
    assert decide(1.0, PoolView(closing=True), s) == []


# -- a model pool driven by hypothesis -------------------------------------------------------


@dataclass
class _W:
    id: int
    ready: bool = False
    retiring: bool = False
    idle_since: float = 0.0
    calls: list[int] = field(default_factory=list)


@dataclass
class Model:
    """A pool that applies ``decide``'s actions to itself and checks the invariants."""

    s: Settings
    now: float = 0.0
    workers: dict[int, _W] = field(default_factory=dict)
    queue: list[int] = field(default_factory=list)
    last_start: float | None = None
    last_stop: float | None = None
    start_failed: bool = False
    closing: bool = False
    wake: float | None = None
    next_id: int = 1
    next_call: int = 0
    done: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)

    def view(self) -> PoolView:
        return PoolView(
            workers=[
                WorkerView(w.id, len(w.calls), w.ready, w.retiring, w.idle_since)
                for w in self.workers.values()
            ],
            queued=len(self.queue),
            last_start=self.last_start,
            last_stop=self.last_stop,
            closing=self.closing,
            start_failed=self.start_failed,
        )

    def step(self) -> list[object]:
        actions = decide(self.now, self.view(), self.s)
        self.wake = None
        for a in actions:
            if isinstance(a, Dispatch):
                w = self.workers[a.worker]
                assert w.ready
                assert not w.retiring
                w.calls.append(self.queue.pop(0))
                assert len(w.calls) <= self.s.load
            elif isinstance(a, Start):
                self.workers[self.next_id] = _W(self.next_id)
                self.next_id += 1
                self.last_start = self.now
            elif isinstance(a, Stop):
                w = self.workers.pop(a.worker)
                assert not w.calls, "a worker with calls was stopped"
                if a.why == "idle":
                    self.last_stop = self.now
                    assert len(self.workers) >= self.s.idle or self.closing
            else:
                assert isinstance(a, Wake)
                assert a.at > self.now
                self.wake = a.at
            assert len(self.workers) <= self.s.max
        self.check()
        return list(actions)

    def settle(self) -> None:
        self.step()
        # A decision accounts for its own effects: deciding again right away changes nothing.
        again = decide(self.now, self.view(), self.s)
        assert all(isinstance(a, Wake) for a in again), again

    def check(self) -> None:
        assert len(self.workers) <= self.s.max
        in_flight = [c for w in self.workers.values() for c in w.calls]
        assert len(in_flight) == len(set(in_flight))
        every = set(in_flight) | set(self.queue) | self.done | self.failed
        assert every == set(range(self.next_call)), "a call was lost"
        for w in self.workers.values():
            assert len(w.calls) <= self.s.load

    # -- events -----------------------------------------------------------------------------

    def call(self) -> None:
        self.queue.append(self.next_call)
        self.next_call += 1

    def _pick(self, n: int, pred: object = None) -> _W | None:
        ws = [w for w in self.workers.values() if pred is None or pred(w)]  # type: ignore[operator]
        return ws[n % len(ws)] if ws else None

    def finish(self, n: int) -> None:
        w = self._pick(n, lambda w: w.calls)
        if w is not None:
            self.done.add(w.calls.pop(0))
            if not w.calls:
                w.idle_since = self.now

    def ready(self, n: int) -> None:
        w = self._pick(n, lambda w: not w.ready)
        if w is not None:
            w.ready, w.idle_since = True, self.now
            self.start_failed = False

    def start_fails(self, n: int) -> None:
        w = self._pick(n, lambda w: not w.ready)
        if w is not None:
            del self.workers[w.id]
            self.start_failed = True
            if not self.workers:  # what the pool does: nobody can serve the queue
                self.failed.update(self.queue)
                self.queue.clear()

    def die(self, n: int) -> None:
        w = self._pick(n, lambda w: w.ready)
        if w is not None:
            del self.workers[w.id]
            self.failed.update(w.calls)  # only its own calls fail

    def retire(self, n: int) -> None:
        w = self._pick(n, lambda w: w.ready)
        if w is not None:
            w.retiring = True

    def pending_wake(self) -> float | None:
        return self.wake

    def tick(self, dt: float) -> None:
        self.now += dt

    def jump(self) -> None:
        if self.wake is not None:
            self.now = self.wake


events = st.one_of(
    st.tuples(st.just("call"), st.just(0)),
    st.tuples(st.just("finish"), st.integers(0, 7)),
    st.tuples(st.just("ready"), st.integers(0, 7)),
    st.tuples(st.just("start_fails"), st.integers(0, 7)),
    st.tuples(st.just("die"), st.integers(0, 7)),
    st.tuples(st.just("retire"), st.integers(0, 7)),
    st.tuples(st.just("tick"), st.sampled_from([0.0, 0.01, 0.1, 1.0, 7.0])),
    st.tuples(st.just("jump"), st.just(0)),
)

pool_settings = st.builds(
    lambda mx, idle, load, start, stop: Settings(mx, min(idle, mx), load, start, stop),
    st.integers(1, 5),
    st.integers(0, 3),
    st.integers(1, 3),
    st.sampled_from([0.0, 0.1, 1.0]),
    st.sampled_from([0.0, 0.5, 10.0]),
)


def drain(m: Model) -> None:
    """No more trouble: workers start, calls finish, time passes.  Returns when stable."""
    for _ in range(10_000):
        m.settle()
        busy = [w for w in m.workers.values() if w.calls or not w.ready]
        if busy:
            for w in busy:
                if not w.ready:
                    m.ready(list(m.workers).index(w.id))
                elif w.calls:
                    m.done.add(w.calls.pop(0))
                    if not w.calls:
                        w.idle_since = m.now
            continue
        if m.queue:
            continue
        if m.wake is None:
            return
        m.now = m.wake
    raise AssertionError("the pool never settled")


@settings(max_examples=400, deadline=None)
@given(pool_settings, st.lists(events, max_size=60))
def test_model_invariants_and_eventual_scale_down(
    s: Settings, script: list[tuple[str, float]]
) -> None:
    m = Model(s)
    m.settle()
    for name, arg in script:
        method = getattr(m, name)
        if name in ("call", "jump"):
            method()
        elif name == "tick":
            m.tick(arg)
        else:
            method(int(arg))
        m.settle()
    drain(m)
    assert not m.queue, "queued calls were never served"
    assert m.done | m.failed == set(range(m.next_call))
    # Eventual scale-down (to zero with idle=0), and never below idle once stable.
    assert len(m.workers) == s.idle or (m.start_failed and len(m.workers) < s.idle)
    assert all(not w.retiring for w in m.workers.values())


@settings(max_examples=200, deadline=None)
@given(pool_settings, st.lists(events, max_size=40))
def test_model_closing_serves_the_queue_then_empties(
    s: Settings, script: list[tuple[str, float]]
) -> None:
    m = Model(s)
    m.settle()
    for name, arg in script:
        method = getattr(m, name)
        if name in ("call", "jump"):
            method()
        elif name == "tick":
            m.tick(arg)
        else:
            method(int(arg))
        m.settle()
    m.closing = True
    drain(m)
    assert not m.queue
    assert m.done | m.failed == set(range(m.next_call))
    assert not m.workers, "a closing pool keeps no worker"


def test_scale_up_and_down_with_a_fake_clock() -> None:
    """max=4, load=1, start=1, stop=10, idle=1: the whole life of a pool, step by step."""
    m = Model(Settings(max=4, idle=1, load=1, start=1.0, stop=10.0))
    m.settle()
    assert len(m.workers) == 1  # the initial size
    m.ready(0)
    m.tick(5.0)
    for _ in range(6):
        m.call()
    m.settle()
    assert len(m.workers) == 2  # worker 1 took a call; a second started for the spare
    sizes = []
    for _ in range(5):
        m.jump()
        m.settle()
        for i in range(len(m.workers)):
            m.ready(i)
        m.settle()
        sizes.append(len(m.workers))
    assert sizes == [3, 4, 4, 4, 4]  # one more per `start` second, up to max
    assert m.wake is None
    t_done = m.now
    while any(w.calls for w in m.workers.values()):
        for i in range(4):
            m.finish(i)
        m.settle()
    assert len(m.workers) == 4
    stops: list[tuple[float, int]] = []
    while m.pending_wake() is not None:
        m.jump()
        m.settle()
        stops.append((m.now - t_done, len(m.workers)))
    assert stops == [(10.0, 3), (20.0, 2), (30.0, 1)]  # one per `stop` seconds, down to idle
