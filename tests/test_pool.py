"""anyfork.Pool over real processes: calls, load limits, scaling, lifecycle, faults, close.

No test depends on timing: calls that must stay busy wait on a gate pipe the test writes to
(``pool_funcs.gated``, which reports with an event that it started), and the pool's own state is
awaited with ``pool.wait_for`` (checked at each change, never polled).  Timing rules (pacing)
are tested with a fake clock in test_policy.py; here ``start``/``stop`` are 0 or irrelevant.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

import anyfork
import pool_funcs
from anyfork import PoolStatistics
from helpers import alive

T = TypeVar("T")
DEADLINE = 30.0
WAIT = 15.0


def _run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, DEADLINE)

    return asyncio.run(bounded())


class Gate:
    """A pipe whose read end every worker inherits; ``release(n)`` lets ``n`` gated calls
    finish.  ``started`` collects the ``("started", tag, pid)`` events."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.started: list[tuple[Any, int]] = []
        self._changed: asyncio.Event | None = None
        self.templates: list[anyfork.Process] = []

    def template(self) -> anyfork.Process:
        """A template holding the gate (closed with the gate)."""
        tmpl = anyfork.new().require("pool_funcs").send_fh(self.r)
        self.templates.append(tmpl)
        return tmpl

    def on_event(self, kind: str, tag: Any, pid: int) -> None:
        assert kind == "started"
        self.started.append((tag, pid))
        if self._changed is not None:
            self._changed.set()

    async def wait_started(self, n: int) -> list[tuple[Any, int]]:
        self._changed = asyncio.Event()
        while len(self.started) < n:
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), WAIT)
        return self.started

    def release(self, n: int = 1) -> None:
        os.write(self.w, b"x" * n)

    def close(self) -> None:
        for tmpl in self.templates:
            tmpl.close()
        os.close(self.r)
        os.close(self.w)


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    try:
        yield g
    finally:
        g.close()


def gated_pool(gate: Gate, tmpl: anyfork.Process, **kw: Any) -> anyfork.Pool:
    return anyfork.Pool(
        tmpl, "pool_funcs:gated", init="pool_funcs:init_gate", on_event=gate.on_event, **kw
    )


def loads(pool: anyfork.Pool) -> list[int]:
    return [w.load for w in pool._core.workers.values()]


async def until(pool: anyfork.Pool, pred: Callable[[PoolStatistics], bool]) -> PoolStatistics:
    return await pool.wait_until(pred, timeout=WAIT)


# -- calls ---------------------------------------------------------------------------------------


def test_calls_results_exceptions_and_statistics() -> None:
    async def main() -> None:
        async with anyfork.Pool(None, pool_funcs.double, max=2, idle=1) as pool:
            assert pool.statistics().workers == 1  # the initial size, ready on entry
            assert await pool(21) == 42
            assert await pool.call("ab", timeout=10) == "abab"
            results = await asyncio.gather(*(pool(i) for i in range(40)))
            assert results == [2 * i for i in range(40)]
            s = pool.statistics()
            assert s.calls == 42
            assert 1 <= s.started <= 2
            assert s.died == s.retired == s.queued == 0
            assert s.workers == s.idle + s.busy + s.starting
        assert pool.statistics().workers == 0

    _run(main())


def test_exceptions_keep_their_type_and_kwargs_pass_through() -> None:
    async def main() -> None:
        async with anyfork.Pool(None, "pool_funcs:kwargs", max=1) as pool:
            # A keyword named "timeout" goes to the function with pool(...).
            assert await pool(1, timeout=5, x="y") == ([1], {"timeout": 5, "x": "y"})
            assert await pool.call(2, timeout=10, x=1) == ([2], {"x": 1})
        async with anyfork.Pool(None, "pool_funcs:fail", max=1) as pool:
            with pytest.raises(pool_funcs.PoolError, match="boom"):
                await pool("boom")
            assert pool.statistics().died == 0

    _run(main())


def test_bad_function_or_init_fails_on_entry() -> None:
    async def main() -> None:
        with pytest.raises(AttributeError):
            async with anyfork.Pool(None, "pool_funcs:no_such_function", max=1):
                pass
        with pytest.raises(AttributeError):
            async with anyfork.Pool(None, "pool_funcs:double", init="pool_funcs:nope", max=1):
                pass
        # idle=0: nothing starts on entry; the call fails with the start-up error (its own
        # type, and an AnyforkError, as rpc() raises it) instead of hanging.
        async with anyfork.Pool(None, "pool_funcs:no_such_function", idle=0, max=1) as pool:
            with pytest.raises(AttributeError, match="no_such_function") as info:
                await pool(1)
            assert isinstance(info.value, anyfork.AnyforkError)
            assert isinstance(info.value.__cause__, anyfork.RemoteTraceback)
            assert pool.statistics().failed_starts == 1

    _run(main())


def test_settings_errors() -> None:
    with pytest.raises(ValueError, match="max is the largest number of workers"):
        anyfork.Pool(None, "pool_funcs:double", max=0)
    with pytest.raises(ValueError, match="load is the number of concurrent calls"):
        anyfork.Pool(None, "pool_funcs:double", load=0)
    with pytest.raises(ValueError, match="max_calls"):
        anyfork.Pool(None, "pool_funcs:double", max_calls=0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        anyfork.Pool(None, "pool_funcs:double", on_close_worker=None)
    with pytest.raises(TypeError, match="lambda"):
        anyfork.Pool(None, lambda: None)
    pool = anyfork.Pool(None, "pool_funcs:double", idle=0, start=0, stop=0)
    assert pool._core.settings.max == len(os.sched_getaffinity(0))
    assert anyfork.Pool(None, "pool_funcs:double", idle=64)._core.settings.max == 64


# -- load, scaling -------------------------------------------------------------------------------


def test_load_limit_and_queue(gate: Gate) -> None:
    async def main() -> None:
        pool = gated_pool(gate, gate.template(), max=2, idle=0, load=2, start=0)
        async with pool:
            tasks = [asyncio.ensure_future(pool(i)) for i in range(7)]
            started = await gate.wait_started(2)  # one running per worker (sync backend)
            s = await until(pool, lambda s: s.workers == 2 and s.starting == 0)
            assert len({pid for _, pid in started}) == 2
            assert sorted(loads(pool)) == [2, 2]  # never more than `load` on a worker
            assert s.queued == 3
            assert s.busy == 2
            gate.release(7)
            results = await asyncio.gather(*tasks)
            assert [tag for tag, _ in results] == list(range(7))
            assert {pid for _, pid in results} == {pid for _, pid in started}
            assert pool.statistics().workers == 2  # stop=10: the idle ones stay a while

    _run(main())


def test_scale_up_to_max_and_down_to_zero(gate: Gate) -> None:
    async def main() -> None:
        pool = gated_pool(gate, gate.template(), max=3, idle=0, load=1, start=0, stop=0)
        async with pool:
            assert pool.statistics().workers == 0  # idle=0: an empty pool
            tasks = [asyncio.ensure_future(pool(i)) for i in range(5)]
            await gate.wait_started(3)
            s = await until(pool, lambda s: s.busy == 3)
            assert (s.workers, s.queued) == (3, 2)  # never beyond max
            gate.release(5)
            await asyncio.gather(*tasks)
            # stop=0 and idle=0: the pool shrinks to zero (the original never does).
            s = await until(pool, lambda s: s.workers == 0)
            assert s.started == 3
            assert s.died == 0
            # ... and grows again on demand.
            gate.release(1)
            assert (await pool("again"))[0] == "again"

    _run(main())


def test_idle_minimum_is_kept() -> None:
    async def main() -> None:
        async with anyfork.Pool(None, "pool_funcs:pid", max=3, idle=2, stop=0) as pool:
            s = pool.statistics()
            assert (s.workers, s.idle) == (2, 2)
            await asyncio.gather(*(pool(i) for i in range(20)))
            s = await until(pool, lambda s: s.busy == 0 and s.starting == 0)
            assert s.idle == 2

    _run(main())


# -- worker lifecycle ------------------------------------------------------------------------


def test_retire_replaces_the_worker() -> None:
    async def main() -> None:
        async with anyfork.Pool(None, "pool_funcs:retire_after", max=2, idle=1) as pool:
            pids = [(await pool(i))[1] for i in range(4)]
            assert len(set(pids)) == 4  # a new worker for every call
            s = await until(pool, lambda s: s.retired == 4)
            assert s.workers <= 2
            assert s.died == 0

    _run(main())


def test_retire_finishes_calls_already_sent(gate: Gate) -> None:
    async def main() -> None:
        tmpl = gate.template()
        pool = anyfork.Pool(tmpl, "pool_funcs:retire_after", max=1, idle=1, load=3, start=0, stop=0)
        async with pool:
            results = await asyncio.gather(*(pool(i) for i in range(3)))
            # All three were sent to the one worker before its retire event arrived: it
            # finished them all, and was then replaced.
            assert len({pid for _, pid in results}) == 1
            await until(pool, lambda s: s.retired == 1 and s.idle == 1)
        tmpl.close()

    _run(main())


def test_max_calls_recycles() -> None:
    async def main() -> None:
        async with anyfork.Pool(None, "pool_funcs:pid", max=1, idle=1, max_calls=2) as pool:
            pids = [(await pool(i))[1] for i in range(6)]
            assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] == pids[5]
            assert len(set(pids)) == 3
            await until(pool, lambda s: s.retired == 3)

    _run(main())


def test_max_memory_recycles() -> None:
    async def main() -> None:
        limit = 200 << 20
        async with anyfork.Pool(None, "pool_funcs:hoard", max=1, max_memory=limit) as pool:
            _, first = await pool(0)
            assert (await pool(0))[1] == first  # small: kept
            assert (await pool(256))[1] == first  # grows beyond the limit during this call
            _, second = await pool(0)
            assert second != first  # ... so the next call has a fresh worker
            await until(pool, lambda s: s.retired == 1)

    _run(main())


def test_kill_busy_worker_fails_only_its_calls(gate: Gate) -> None:
    async def main() -> None:
        errors: list[BaseException] = []
        pool = gated_pool(gate, gate.template(), max=2, idle=2, load=1, on_error=errors.append)
        async with pool:
            a = asyncio.ensure_future(pool("a"))
            b = asyncio.ensure_future(pool("b"))
            queued = [asyncio.ensure_future(pool(f"q{i}")) for i in range(3)]
            started = dict(await gate.wait_started(2))
            assert pool.statistics().queued == 3
            os.kill(started["a"], signal.SIGKILL)
            with pytest.raises(anyfork.WorkerDiedError) as info:
                await a
            assert info.value.pid == started["a"]
            assert info.value.returncode == -signal.SIGKILL
            gate.release(4)
            assert (await b)[0] == "b"  # the other worker's call is unaffected
            results = await asyncio.gather(*queued)  # the queue is not lost
            assert [tag for tag, _ in results] == ["q0", "q1", "q2"]
            assert started["a"] not in {pid for _, pid in results}
            s = await until(pool, lambda s: s.idle == 2)  # replaced
            assert s.died == 1
            assert s.started == 3
            assert [type(e) for e in errors] == [anyfork.WorkerDiedError]

    _run(main())


def test_kill_idle_worker_is_noticed_and_replaced() -> None:
    async def main() -> None:
        async with anyfork.Pool(None, "pool_funcs:pid", max=2, idle=2) as pool:
            victim, other = pool.worker_pids()
            os.kill(victim, signal.SIGKILL)
            s = await until(pool, lambda s: s.died == 1 and s.idle == 2)  # without any call
            assert s.started == 3
            pids = set(pool.worker_pids())
            assert victim not in pids
            assert other in pids
            assert (await pool(1))[1] in pids

    _run(main())


def test_worker_exit_mid_call_is_replaced() -> None:
    async def main() -> None:
        async with anyfork.Pool(None, "pool_funcs:die", max=1, idle=1) as pool:
            with pytest.raises(anyfork.WorkerDiedError) as info:
                await pool(7)
            assert info.value.returncode == 7
            await until(pool, lambda s: s.died == 1 and s.idle == 1)

    _run(main())


def test_dead_user_template_fails_calls_clearly() -> None:
    async def main() -> None:
        tmpl = anyfork.new().require("pool_funcs")
        async with anyfork.Pool(tmpl, "pool_funcs:pid", max=1, idle=0, stop=0) as pool:
            assert (await pool(1))[0] == 1
            await until(pool, lambda s: s.workers == 0)
            tmpl.kill()
            for _ in range(3):  # every call fails, none hangs
                with pytest.raises(anyfork.SpawnError):
                    await pool(2)
            assert pool.statistics().failed_starts == 3
        tmpl.close()

    _run(main())


def test_dead_own_template_is_recreated() -> None:
    async def main() -> None:
        async with anyfork.Pool(None, "pool_funcs:pid", max=1, idle=0, stop=0) as pool:
            assert (await pool(1))[0] == 1
            await until(pool, lambda s: s.workers == 0)
            tmpl = pool._starter.current
            assert tmpl is not None
            tmpl.kill()
            assert (await pool(2))[0] == 2
            assert pool._starter.current is not tmpl

    _run(main())


# -- timeouts, close, cancel ---------------------------------------------------------------------


def test_timeout_while_queued_and_while_running(gate: Gate) -> None:
    async def main() -> None:
        pool = gated_pool(gate, gate.template(), max=1, idle=1, load=1)
        async with pool:
            running = asyncio.ensure_future(pool("running"))
            await gate.wait_started(1)
            with pytest.raises(TimeoutError):
                await pool.call("queued", timeout=0.05)
            assert pool.statistics().queued == 0  # withdrawn
            gate.release(1)
            assert (await running)[0] == "running"
            # Timing out a running call kills its worker (sync backend); it is replaced.
            with pytest.raises(TimeoutError):
                await pool.call("slow", timeout=0.05)
            await until(pool, lambda s: s.idle == 1 and s.died == 1)
            gate.release(1)
            assert (await pool("after"))[0] == "after"

    _run(main())


def test_cancel_a_queued_call_withdraws_it(gate: Gate) -> None:
    async def main() -> None:
        pool = gated_pool(gate, gate.template(), max=1, idle=1, load=1)
        async with pool:
            running = asyncio.ensure_future(pool("running"))
            queued = asyncio.ensure_future(pool("queued"))
            await gate.wait_started(1)
            queued.cancel()
            with pytest.raises(asyncio.CancelledError):
                await queued
            assert pool.statistics().queued == 0
            gate.release(2)
            assert (await running)[0] == "running"
            assert (await pool("next"))[0] == "next"
            assert pool.statistics().died == 0

    _run(main())


def test_graceful_close_finishes_queued_calls(gate: Gate) -> None:
    async def main() -> None:
        closed: list[int] = []
        pool = gated_pool(
            gate, gate.template(), max=1, idle=1, load=1, on_close=lambda: closed.append(1)
        )
        await pool.__aenter__()
        tasks = [asyncio.ensure_future(pool(i)) for i in range(4)]
        await gate.wait_started(1)
        closing = asyncio.ensure_future(pool.aclose())
        s = await until(pool, lambda s: pool._core.closing)  # aclose() has begun
        assert s.queued == 3
        with pytest.raises(anyfork.ClosedError):
            await pool(99)
        gate.release(4)
        assert [tag for tag, _ in await asyncio.gather(*tasks)] == [0, 1, 2, 3]
        await asyncio.wait_for(closing, WAIT)
        assert closed == [1]
        assert pool.statistics().workers == 0
        await pool.aclose()  # idempotent
        assert closed == [1]

    _run(main())


def test_cancel_kills_workers_and_fails_queued_calls(gate: Gate) -> None:
    async def main() -> None:
        pool = gated_pool(gate, gate.template(), max=2, idle=0, load=1, start=0)
        await pool.__aenter__()
        tasks = [asyncio.ensure_future(pool(i)) for i in range(5)]
        started = await gate.wait_started(2)
        await pool.aclose(cancel=True)
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert [type(o) for o in outcomes[:2]] == [anyfork.WorkerDiedError] * 2
        assert [type(o) for o in outcomes[2:]] == [anyfork.ClosedError] * 3
        assert not any(alive(pid) for _, pid in started)  # killed, and waited for

    _run(main())


def test_exception_in_block_cancels(gate: Gate) -> None:
    async def main() -> None:
        pool = gated_pool(gate, gate.template(), max=1, idle=1, load=1)
        tasks: list[asyncio.Future[Any]] = []

        async def block() -> None:
            async with pool:
                tasks.append(asyncio.ensure_future(pool(1)))
                await gate.wait_started(1)
                raise RuntimeError("in the block")

        with pytest.raises(RuntimeError, match="in the block"):
            await block()
        with pytest.raises(anyfork.WorkerDiedError):
            await tasks[0]

    _run(main())


def test_unused_pool_closes() -> None:
    closed: list[int] = []
    pool = anyfork.Pool(None, "pool_funcs:double", on_close=lambda: closed.append(1))
    _run(pool.aclose())
    assert closed == [1]

    async def call() -> Any:
        return await pool(1)  # pool(...) needs the running loop it then belongs to

    with pytest.raises(anyfork.ClosedError):
        _run(call())
