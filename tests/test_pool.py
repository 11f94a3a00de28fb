"""anyfork.Pool over real processes: calls, load limits, scaling, lifecycle, faults, close.

No test depends on timing: calls that must stay busy wait on a gate pipe the test writes to
(``pool_funcs.gated``, which reports with an event that it started), and the pool's own state is
awaited with ``pool.wait_until`` (checked at each change, never polled).  Timing rules (pacing)
are tested with a fake clock in test_policy.py; here ``start``/``stop`` are 0 or irrelevant.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest

import anyfork
import pool_funcs
from anyfork import PoolStatistics
from helpers import WAIT, Gate, alive, eventually, run


def gated_pool(gate: Gate, tmpl: anyfork.Process, **kw: Any) -> anyfork.Pool:
    return anyfork.Pool(tmpl, "pool_funcs:gated", **gate.options(), **kw)


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

    run(main())


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

    run(main())


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

    run(main())


def test_settings_errors() -> None:
    with pytest.raises(ValueError, match="max is the largest number of workers"):
        anyfork.Pool(None, "pool_funcs:double", max=0)
    with pytest.raises(ValueError, match="load is the number of concurrent calls"):
        anyfork.Pool(None, "pool_funcs:double", load=0)
    with pytest.raises(ValueError, match="max_calls"):
        anyfork.Pool(None, "pool_funcs:double", max_calls=0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        anyfork.Pool(None, "pool_funcs:double", on_close_worker=None)  # type: ignore[call-arg]
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
            started = await gate.wait_started_async(2)  # one running per worker (sync backend)
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

    run(main())


def test_scale_up_to_max_and_down_to_zero(gate: Gate) -> None:
    async def main() -> None:
        pool = gated_pool(gate, gate.template(), max=3, idle=0, load=1, start=0, stop=0)
        async with pool:
            assert pool.statistics().workers == 0  # idle=0: an empty pool
            tasks = [asyncio.ensure_future(pool(i)) for i in range(5)]
            await gate.wait_started_async(3)
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

    run(main())


def test_idle_minimum_is_kept() -> None:
    async def main() -> None:
        async with anyfork.Pool(None, "pool_funcs:pid", max=3, idle=2, stop=0) as pool:
            s = pool.statistics()
            assert (s.workers, s.idle) == (2, 2)
            await asyncio.gather(*(pool(i) for i in range(20)))
            s = await until(pool, lambda s: s.busy == 0 and s.starting == 0)
            assert s.idle == 2

    run(main())


# -- worker lifecycle ------------------------------------------------------------------------


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

    run(main())


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

    run(main())


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

    run(main())


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

    run(main())


# -- timeouts, close, cancel ---------------------------------------------------------------------


def test_timeout_while_queued_and_while_running(gate: Gate) -> None:
    async def main() -> None:
        pool = gated_pool(gate, gate.template(), max=1, idle=1, load=1)
        async with pool:
            running = asyncio.ensure_future(pool("running"))
            await gate.wait_started_async(1)
            with pytest.raises(TimeoutError):
                await pool.call("queued", timeout=0.05)
            assert pool.statistics().queued == 0  # withdrawn
            gate.release(1)
            assert (await running)[0] == "running"
            # Timing out a running call kills its worker (sync backend); it is replaced.
            (victim,) = pool.worker_pids()
            with pytest.raises(TimeoutError):
                await pool.call("slow", timeout=0.05)
            await until(pool, lambda s: s.idle == 1 and s.died == 1)
            # The pool counts the worker out when it kills it; until it is gone, it could
            # still take the gate's next byte (a pipe read woken by SIGKILL takes what came).
            eventually(lambda: not alive(victim), what="the killed worker to exit")
            gate.release(1)
            assert (await pool("after"))[0] == "after"

    run(main())


def test_cancel_a_queued_call_withdraws_it(gate: Gate) -> None:
    async def main() -> None:
        pool = gated_pool(gate, gate.template(), max=1, idle=1, load=1)
        async with pool:
            running = asyncio.ensure_future(pool("running"))
            queued = asyncio.ensure_future(pool("queued"))
            await gate.wait_started_async(1)
            queued.cancel()
            with pytest.raises(asyncio.CancelledError):
                await queued
            assert pool.statistics().queued == 0
            gate.release(2)
            assert (await running)[0] == "running"
            assert (await pool("next"))[0] == "next"
            assert pool.statistics().died == 0

    run(main())


def test_graceful_close_finishes_queued_calls(gate: Gate) -> None:
    async def main() -> None:
        closed: list[int] = []
        pool = gated_pool(
            gate, gate.template(), max=1, idle=1, load=1, on_close=lambda: closed.append(1)
        )
        await pool.__aenter__()
        tasks = [asyncio.ensure_future(pool(i)) for i in range(4)]
        await gate.wait_started_async(1)
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

    run(main())


def test_exception_in_block_cancels(gate: Gate) -> None:
    async def main() -> None:
        pool = gated_pool(gate, gate.template(), max=1, idle=1, load=1)
        tasks: list[asyncio.Future[Any]] = []

        async def block() -> None:
            async with pool:
                tasks.append(asyncio.ensure_future(pool(1)))
                await gate.wait_started_async(1)
                raise RuntimeError("in the block")

        with pytest.raises(RuntimeError, match="in the block"):
            await block()
        with pytest.raises(anyfork.WorkerDiedError):
            await tasks[0]

    run(main())


def test_unused_pool_closes() -> None:
    closed: list[int] = []
    pool = anyfork.Pool(None, "pool_funcs:double", on_close=lambda: closed.append(1))
    run(pool.aclose())
    assert closed == [1]

    async def call() -> Any:
        return await pool(1)  # pool(...) needs the running loop it then belongs to

    with pytest.raises(anyfork.ClosedError):
        run(call())


# -- calls are queued when made; an abandoned call's worker leaves the rotation at once --------


def test_a_call_is_queued_when_it_is_made(gate: Gate) -> None:
    """``pool(...)`` returns a future already queued, as a client's call does: calls made
    without awaiting each one all run, in the order they were made."""

    async def main() -> None:
        pool = gated_pool(gate, gate.template(), max=1, idle=1, load=1)
        async with pool:
            calls = [pool(i) for i in range(3)]  # none awaited yet
            s = pool.statistics()
            assert (s.busy, s.queued) == (1, 2)  # one sent, two queued, at once
            for i in range(3, 6):
                pool(i)  # fire and forget
            gate.release(7)
            assert (await pool("last"))[0] == "last"
            assert [tag for tag, _ in gate.started] == [0, 1, 2, 3, 4, 5, "last"]
            assert [(await c)[0] for c in calls] == [0, 1, 2]
            assert pool.statistics().calls == 7

    run(main())


def test_cancelling_a_running_call_takes_its_sync_worker_out_of_rotation(gate: Gate) -> None:
    """Cancelling a running call kills its (sync-backend) worker: the calls already sent to
    that worker fail with it, and every call made from then on goes to another worker."""

    async def main() -> None:
        pool = gated_pool(gate, gate.template(), max=1, idle=1, load=2)
        async with pool:
            (victim,) = pool.worker_pids()
            slow, behind = pool("slow"), pool("behind")  # both sent to the one worker
            await gate.wait_started_async(1)
            slow.cancel()
            after = pool("after")  # made the moment after: not for the condemned worker
            s = pool.statistics()
            assert (s.died, s.queued) == (1, 1)
            assert victim not in pool.worker_pids()
            with pytest.raises(anyfork.WorkerDiedError, match=r"call \d+ was cancelled"):
                await behind  # it was running on that worker (waiting in its socket)
            gate.release(1)
            tag, pid = await after
            assert (tag, pid != victim) == ("after", True)
            with pytest.raises(asyncio.CancelledError):
                await slow
            await until(pool, lambda s: s.idle == 1 and s.died == 1)

    run(main())


def test_wait_for_is_a_deprecated_alias_of_wait_until() -> None:
    async def main() -> None:
        async with anyfork.Pool(None, "pool_funcs:double", max=1, idle=1) as pool:
            with pytest.deprecated_call(match="wait_until"):
                s = await pool.wait_for(lambda s: s.idle == 1, timeout=WAIT)
            assert s.idle == 1

    run(main())
    with (
        anyfork.BlockingPool(None, "pool_funcs:double", max=1, idle=1) as bpool,
        pytest.deprecated_call(match="wait_until"),
    ):
        assert bpool.wait_for(lambda s: s.idle == 1, timeout=WAIT).idle == 1
