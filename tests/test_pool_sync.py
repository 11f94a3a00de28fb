"""The pool without an event loop: BlockingPool, and PoolExecutor against a subset of the
stdlib's own ``concurrent.futures`` test expectations (Lib/test/test_concurrent_futures:
submit/result, keyword arguments, exceptions, map order and errors, shutdown semantics,
cancelling pending futures, wait/as_completed, context manager), plus ``run_in_executor``,
threads, and no thread or process left behind."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import anyfork
import pool_funcs
from helpers import WAIT, Gate


def pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("anyfork-pool")]


@pytest.fixture(autouse=True)
def no_threads() -> Iterator[None]:
    yield
    assert not pool_threads(), "a pool thread outlived its pool"


def gated_executor(gate: Gate, **kw: Any) -> anyfork.PoolExecutor:
    return anyfork.PoolExecutor(
        template=gate.template(), func="pool_funcs:gated", **gate.options(), **kw
    )


# -- BlockingPool ---------------------------------------------------------------------------------


def test_blocking_pool_calls_map_statistics_close() -> None:
    closed: list[int] = []
    with anyfork.BlockingPool(
        None, "pool_funcs:double", max=2, on_close=lambda: closed.append(1)
    ) as pool:
        assert pool_threads()
        assert pool(4) == 8
        assert pool.call(5, timeout=10) == 10
        assert list(pool.map(range(20), max_in_flight=3)) == [2 * i for i in range(20)]
        s = pool.statistics()
        assert s.calls == 22
        assert s.workers >= 1
    assert closed == [1]
    assert not pool_threads()
    with pytest.raises(anyfork.ClosedError):
        pool(1)
    pool.close()  # idempotent


def test_blocking_pool_errors_and_death() -> None:
    with pytest.raises(AttributeError):
        anyfork.BlockingPool(None, "pool_funcs:nope", max=1)
    with (
        anyfork.BlockingPool(None, "pool_funcs:fail", max=1) as pool,
        pytest.raises(pool_funcs.PoolError, match="x"),
    ):
        pool("x")
    with anyfork.BlockingPool(None, "pool_funcs:pid", max=1, idle=1) as pool:
        (victim,) = pool.worker_pids()
        os.kill(victim, signal.SIGKILL)
        s = pool.wait_until(lambda s: s.died == 1 and s.idle == 1, timeout=WAIT)
        assert s.started == 2
        assert pool(1)[1] != victim


def test_blocking_pool_map_stops_early_and_cancel(gate: Gate) -> None:
    pool = anyfork.BlockingPool(
        gate.template(), "pool_funcs:gated", **gate.options(), max=1, load=1
    )
    gate.release(2)
    results = pool.map(range(10), max_in_flight=3, chunksize=1)
    assert next(results)[0] == 0
    assert next(results)[0] == 1
    gate.wait_started(3)  # the third call runs (a call not started yet would be withdrawn)
    results.close()  # stops early: queued calls withdrawn, the running one left to finish
    s = pool.wait_until(lambda s: s.queued == 0, timeout=WAIT)
    assert s.busy == 1
    pool.cancel()
    assert not pool_threads()


# -- PoolExecutor: the stdlib's expectations ---------------------------------------------------


def test_submit_result_keywords_and_exceptions() -> None:
    with anyfork.PoolExecutor(max_workers=2) as ex:
        assert not pool_threads()  # nothing runs before the first submit
        assert ex.submit(pow, 2, 8).result(WAIT) == 256
        assert ex.submit(pool_funcs.kwargs, 1, a=2).result(WAIT) == ([1], {"a": 2})
        fut = ex.submit(pool_funcs.fail, "boom")
        assert isinstance(fut.exception(WAIT), pool_funcs.PoolError)
        with pytest.raises(pool_funcs.PoolError, match="boom"):
            fut.result()
        assert pool_threads()
    assert not pool_threads()


def test_map_order_exceptions_and_builtin_equivalence() -> None:
    with anyfork.PoolExecutor(max_workers=2) as ex:
        assert list(ex.map(pow, range(10), range(10))) == list(map(pow, range(10), range(10)))
        assert list(ex.map(pool_funcs.double, [])) == []
        results = ex.map(pool_funcs.fail, ["a"])
        with pytest.raises(pool_funcs.PoolError):
            next(results)


def test_fixed_function_executor() -> None:
    with anyfork.PoolExecutor(1, func=pool_funcs.double) as ex:
        assert ex.submit(pool_funcs.double, 3).result(WAIT) == 6
        assert ex.submit("pool_funcs:double", "a").result(WAIT) == "aa"
        with pytest.raises(ValueError, match="serves pool_funcs:double"):
            ex.submit(pool_funcs.pid, 1)
        assert list(ex.map(pool_funcs.double, range(5))) == [0, 2, 4, 6, 8]


def test_submit_after_shutdown() -> None:
    ex = anyfork.PoolExecutor(max_workers=1)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(pow, 2, 5)
    ex = anyfork.PoolExecutor(max_workers=1)
    assert ex.submit(pow, 2, 5).result(WAIT) == 32
    ex.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(pow, 2, 5)
    ex.shutdown()  # idempotent


def test_shutdown_wait_runs_queued_calls(gate: Gate) -> None:
    ex = gated_executor(gate, max_workers=1, load=1)
    futures = [ex.submit("pool_funcs:gated", i) for i in range(4)]
    gate.wait_started(1)
    gate.release(4)
    ex.shutdown(wait=True)
    assert [f.result(0)[0] for f in futures] == [0, 1, 2, 3]


def test_cancel_pending_future_and_cancel_futures(gate: Gate) -> None:
    ex = gated_executor(gate, max_workers=1, load=1)
    running = ex.submit("pool_funcs:gated", "running")
    pending = [ex.submit("pool_funcs:gated", i) for i in range(3)]
    gate.wait_started(1)
    assert running.running()
    assert not running.cancel()  # a running call is not cancelled
    assert pending[0].cancel()
    assert pending[0].cancelled()
    done, not_done = cf.wait([pending[0]], timeout=WAIT)  # notified, as the stdlib does
    assert done == {pending[0]}
    assert not not_done
    # shutdown(cancel_futures=True) cancels what is still queued, then waits for the rest.
    closer = threading.Thread(target=ex.shutdown, kwargs={"wait": True, "cancel_futures": True})
    closer.start()
    done, not_done = cf.wait(pending, timeout=WAIT)
    assert not not_done
    assert all(f.cancelled() for f in pending)
    assert not running.done()
    gate.release(1)
    closer.join(WAIT)
    assert not closer.is_alive()
    assert running.result(0)[0] == "running"
    assert len(list(cf.as_completed([running, *pending], timeout=WAIT))) == 4


def test_worker_death_fails_only_that_future() -> None:
    with anyfork.PoolExecutor(max_workers=1) as ex:
        fut = ex.submit(pool_funcs.die, 3)
        with pytest.raises(anyfork.WorkerDiedError):
            fut.result(WAIT)
        assert ex.submit(pow, 3, 2).result(WAIT) == 9  # not a broken pool


def test_from_threads_and_run_in_executor() -> None:
    with anyfork.PoolExecutor(max_workers=2) as ex:
        out: list[int] = []
        lock = threading.Lock()

        def worker(k: int) -> None:
            for i in range(10):
                r = ex.submit(pow, k, i).result(WAIT)
                with lock:
                    out.append(r)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert sorted(out) == sorted(k**i for k in range(4) for i in range(10))

        async def main() -> list[Any]:
            loop = asyncio.get_running_loop()
            return await asyncio.gather(
                *(loop.run_in_executor(ex, pool_funcs.double, i) for i in range(5))
            )

        assert asyncio.run(main()) == [0, 2, 4, 6, 8]


def test_cancel_futures_reaches_a_call_already_given_to_a_busy_worker(gate: Gate) -> None:
    # load=2: the second call is handed to the (busy) worker at once, but has not started; it is
    # still pending for concurrent.futures, so shutdown(cancel_futures=True) must cancel it.
    ex = gated_executor(gate, max_workers=1, load=2)
    running = ex.submit("pool_funcs:gated", "running")
    handed = ex.submit("pool_funcs:gated", "handed")
    queued = ex.submit("pool_funcs:gated", "queued")
    gate.wait_started(1)
    assert ex.statistics().queued == 1  # "handed" is with the worker, "queued" is not
    closer = threading.Thread(target=ex.shutdown, kwargs={"wait": True, "cancel_futures": True})
    closer.start()
    _, not_done = cf.wait([handed, queued], timeout=WAIT)
    assert not not_done
    assert handed.cancelled()
    assert queued.cancelled()
    gate.release(1)
    closer.join(WAIT)
    assert not closer.is_alive()
    assert running.result(0)[0] == "running"
