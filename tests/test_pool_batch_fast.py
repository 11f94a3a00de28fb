"""The batch hot path (issue 9, point 1, part 3): what a map's batch costs per item.

``PoolExecutor`` without a fixed function serves ``_target.apply(fn, *args)``; its map's batch
runs ``fn`` on the item columns directly (``_rpc_server.batch_calls``), on both backends."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import itertools
import sys
import weakref
from typing import Any

import pytest

import anyfork
import batch_funcs
import pool_funcs
from anyfork._child import _target
from anyfork._child._rpc_server import batch_calls
from anyfork._pool._aio import STRETCH
from anyfork._pool._map import Delivery, MapJob, Unit
from anyfork._rpc._batching import BatchResult, Sizer
from anyfork._rpc._connection import Backend
from helpers import WAIT


def _other(x: Any) -> Any:
    return x


def test_batch_calls_runs_the_one_function_of_an_executors_batch() -> None:
    fn = batch_funcs.caller
    columns: list[Any] = [[fn, fn, fn], [1, 2, 3], ["a", "b", "c"]]
    func, args = batch_calls(_target.apply, columns)
    assert func is fn
    assert args == [[1, 2, 3], ["a", "b", "c"]]


@pytest.mark.parametrize(
    ("func", "columns"),
    [
        (_target.apply, [[batch_funcs.caller, _other], [1, 2]]),  # two functions
        (_target.apply, [[batch_funcs.Same("a"), batch_funcs.Same("b")], [1, 2]]),  # equal only
        (_target.apply, [[_other, _other]]),  # fn() without arguments: map() needs a column
        (_target.apply, [[], []]),
        (_other, [[_other, _other], [1, 2]]),  # another function served
    ],
)
def test_batch_calls_leaves_any_other_batch_as_it_is(func: Any, columns: list[Any]) -> None:
    got_func, got_columns = batch_calls(func, columns)
    assert got_func is func
    assert got_columns is columns


@pytest.mark.parametrize("backend", ["sync", "async"])
def test_executor_map_calls_fn_without_an_apply_frame_per_item(backend: Backend) -> None:
    with anyfork.PoolExecutor(1, backend=backend) as ex:
        got = list(ex.map(batch_funcs.caller, range(20), chunksize=5, timeout=WAIT))
        single = ex.submit(batch_funcs.caller, 0).result(WAIT)
    assert [x for x, _ in got] == list(range(20))
    assert "apply" not in {name for _, name in got}
    assert single == (0, "apply")  # a single call still goes through it


@pytest.mark.parametrize("backend", ["sync", "async"])
def test_executor_map_error_at_its_item_on_the_direct_path(backend: Backend) -> None:
    with anyfork.PoolExecutor(1, backend=backend) as ex:
        it = ex.map(batch_funcs.fail_at_3, range(10), chunksize=10, timeout=WAIT)
        assert [next(it) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match="item 3"):
            next(it)


@pytest.mark.parametrize("face", ["BlockingPool", "PoolExecutor"])
def test_blocking_map_results_cost_no_python_code_each(face: str) -> None:
    """Results already delivered come out of the iterator without running Python code (no
    generator resumed per result): a profile hook sees no Python call while 999 are taken."""
    calls: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            calls.append(frame.f_code.co_name)

    with contextlib.ExitStack() as stack:
        if face == "BlockingPool":
            pool = stack.enter_context(anyfork.BlockingPool(None, batch_funcs.fail_at_3, max=1))
            it = pool.map(range(4, 1004), chunksize=1000)
        else:
            ex = stack.enter_context(anyfork.PoolExecutor(1))
            it = ex.map(batch_funcs.fail_at_3, range(4, 1004), chunksize=1000, timeout=WAIT)
        assert next(it) == 4  # the one batch is in
        sys.setprofile(profile)
        try:
            rest = list(itertools.islice(it, 999))
        finally:
            sys.setprofile(None)
        assert rest == list(range(5, 1004))
        assert calls == []
        it.close()  # (nothing left to stop; close() is there all the same)


# -- a map of a range: its slices travel, the parent makes no int -------------------------------


def carried(unit: Unit | None) -> list[Any]:
    """The columns of a call (a range's slice stands in for a list in them)."""
    assert unit is not None
    columns: list[Any] | None = unit.columns
    assert columns is not None
    return columns


def test_a_range_is_fed_whole_and_each_call_carries_a_slice_of_it() -> None:
    job: MapJob[Unit] = MapJob(lambda job, unit: unit, chunksize=3, batchable=True, workers=1)
    requeued: list[object] = []
    delivery = Delivery(job, (range(10, 20),), 2, False, requeued.append, print)
    assert job.complete
    assert job.fed == 10
    assert not requeued
    delivery.pump()  # the first look queues the job, once
    delivery.pump()
    assert requeued == [job]
    first, second = job.take(0.0), job.take(0.0)
    assert carried(first) == [range(10, 13)]
    assert carried(second) == [range(13, 16)]
    assert first is not None
    assert job.take(0.0) is None  # max_in_flight=2 calls cut and not delivered
    assert job.units(8) == 0
    answer: cf.Future[Any] = cf.Future()
    answer.set_result(BatchResult([10, 11, 12]))
    job.answered(first, answer, 0.001, cf.CancelledError)
    with job.changed:
        assert delivery.next_unit() is first
    delivery.delivered(first)
    assert requeued == [job, job]  # it has items left: back in the queue
    assert job.units(8) == 1
    assert carried(job.take(0.0)) == [range(16, 19)]


def test_a_long_range_forgets_what_was_cut() -> None:
    job: MapJob[Unit] = MapJob(lambda job, unit: unit, chunksize=5000, batchable=True, workers=1)
    Delivery(job, (range(10**12),), 3, False, print, print)
    assert [carried(job.take(0.0)) for _ in range(3)] == [
        [range(5000)],
        [range(5000, 10000)],
        [range(10000, 15000)],
    ]


def test_pool_map_lets_go_of_each_result_as_it_gives_it() -> None:
    """``Pool.map`` holds no reference to a result it has given (the rest of its batch is
    still held): dropped by its consumer, it is freed at once (refcounts alone)."""

    async def main() -> None:
        async with anyfork.Pool(None, "cf_funcs:make_dummy_object", max=1) as pool:
            freed = 0
            async for obj in pool.map(range(10), chunksize=10):
                ref = weakref.ref(obj)
                del obj
                freed += ref() is None
            assert freed == 10

    asyncio.run(asyncio.wait_for(main(), WAIT))


def test_the_default_target_keeps_a_big_batch_measured_with_the_parents_delays() -> None:
    """32,768 cheap items measured at 70 ms (the parent's delays in it, on a busy machine)
    keep their size: the default target is 0.1 s."""
    sizer = Sizer(workers=2)
    sizer.size = 32768
    sizer.observe(32768, 0.07)
    assert sizer.next_size() == 32768
    sizer.observe(32768, 0.3)  # items that got slower still shrink it
    assert sizer.next_size() < 32768


def test_pool_map_lets_the_loop_run_while_its_consumer_takes_a_big_batch() -> None:
    """Other tasks (the pool's reading of answers, its dispatch) run every ``STRETCH``
    results, not only between calls."""

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        ticks = 0
        stopped = False

        def tick() -> None:  # a callback that comes back at each run of the loop
            nonlocal ticks
            ticks += 1
            if not stopped:
                loop.call_soon(tick)

        async with anyfork.Pool(None, "pool_funcs:double", max=1) as pool:
            results = pool.map(range(4 * STRETCH), chunksize=4 * STRETCH)
            first = await anext(results)
            loop.call_soon(tick)
            seen = [ticks async for _ in results]
            stopped = True
        assert first == 0
        return seen

    seen = asyncio.run(asyncio.wait_for(main(), WAIT))
    assert len(seen) == 4 * STRETCH - 1
    assert len(set(seen)) >= 3  # the ticker ran while the one call's results were taken


def test_awaiting_a_pool_map_gives_the_list_and_the_first_failure_in_item_order() -> None:
    """``await pool.map(xs)`` is ``multiprocessing.Pool.map``'s list, in order, batches and
    all; a failure is raised instead of the list (the first in item order), and the results
    are taken once, one way or the other."""

    async def main() -> None:
        async with anyfork.Pool(None, "pool_funcs:double", max=2) as pool:
            assert await pool.map(range(20_000)) == [2 * x for x in range(20_000)]
            assert await pool.map([]) == []
            assert await pool.map(range(5), chunksize=2) == [0, 2, 4, 6, 8]
            results = pool.map(range(3))
            assert await results == [0, 2, 4]
            with pytest.raises(RuntimeError, match="taken once"):
                await results
            with pytest.raises(RuntimeError, match="taken once"):
                async for _ in results:
                    pass
            assert await anext(pool.map([21])) == 42
        async with anyfork.Pool(None, "pool_funcs:fail_at", max=2) as pool:
            with pytest.raises(pool_funcs.PoolError, match="item 7"):
                await pool.map([7] * 5000, range(5000))

    asyncio.run(asyncio.wait_for(main(), WAIT))


def test_a_pool_map_closed_before_it_is_taken_cannot_be_taken_and_queued_nothing() -> None:
    async def main() -> None:
        async with anyfork.Pool(None, "pool_funcs:double", max=1) as pool:
            results = pool.map(itertools.count())
            await results.aclose()
            with pytest.raises(RuntimeError, match="taken once"):
                await results
            assert await pool(4) == 8
            assert pool.statistics().queued == 0

    asyncio.run(asyncio.wait_for(main(), WAIT))


def test_an_executors_map_sends_its_function_once_per_batch() -> None:
    """``PoolExecutor.map``'s function column is a ``Same``: sliced by the job, pickled as the
    function and a count (not once per item), run by the worker on the other columns."""
    import pickle

    from anyfork._child._serializers import Same, get

    fn = batch_funcs.caller
    column = Same(fn, 10)
    assert (len(column), list(column), column[3]) == (10, [fn] * 10, fn)
    part = column[2:7]
    assert (type(part), len(part), part.value) == (Same, 5, fn)
    del column[:4]
    assert len(column) == 6
    with pytest.raises(IndexError):
        column[6]
    assert len(pickle.dumps(Same(fn, 100_000))) < 200  # the count, not 100,000 references
    codec = get("pickle")
    given: list[Any] = [Same(fn, 3), [1, 2, 3]]
    columns, n = codec.load_batch(b"".join(codec.dump_batch(given)))
    assert n == 3
    func, args = batch_calls(_target.apply, columns)
    assert (func, args) == (fn, [[1, 2, 3]])
